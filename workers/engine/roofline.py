"""The memory roofline of a decode step: what the bytes alone would cost at this machine's
bandwidth, measured in the same run as the step itself.

A decode step with a batch of rows, one new token each, reads every weight of the base
once, the LoRA factors of every distinct adapter in the batch once, and each row's KV
cache; the arithmetic on them is small beside that (a few FLOPs per byte), so on a CPU, and
on a GPU at small batches, the step is bound by memory traffic. `step_bytes` counts those
bytes from the model's own modules and the batch's adapters; `measure_bandwidth` times
large-array copy and triad through torch, with the threads the decode uses (STREAM's
kernels: best of several repetitions, arrays far larger than the caches). A step's roofline
time is its bytes over the bandwidth; the achieved fraction is that over the step's measured
time, and the ratio "ours ÷ bare" the roofline allows is the bare step's bytes over ours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class Bandwidth:
    copy: float  # bytes per second: b[:] = a reads a and writes b
    triad: float  # a = b + s * c reads two arrays and writes one
    array_bytes: int
    threads: int

    @property
    def best(self) -> float:
        """The figure rooflines divide by: the faster kernel (the most the memory gave)."""
        return max(self.copy, self.triad)


def measure_bandwidth(*, array_bytes: int = 512 << 20, repeats: int = 5, threads: int = 0) -> Bandwidth:
    """Copy and triad over float32 arrays of `array_bytes` each, best of `repeats`, with
    `threads` torch threads (0: as set now). Bytes counted as STREAM counts them."""
    import torch

    if array_bytes < 1 << 20 or repeats < 1:
        raise ValueError("array_bytes must be at least 1 MiB and repeats at least 1")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        n = array_bytes // 4
        a, b, c = (torch.full((n,), value, dtype=torch.float32) for value in (1.0, 2.0, 0.5))
        copy = triad = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            b.copy_(a)
            copy = min(copy, time.perf_counter() - started)
            started = time.perf_counter()
            torch.add(b, c, alpha=3.0, out=a)
            triad = min(triad, time.perf_counter() - started)
        return Bandwidth(2 * n * 4 / copy, 3 * n * 4 / triad, n * 4, torch.get_num_threads())
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True, slots=True)
class StepBytes:
    """What one decode step of a batch reads."""

    base: int  # every weight the step multiplies by (the input embedding: only its rows)
    factors: int  # the LoRA factors of each distinct adapter in the batch
    kv_cache: int  # keys and values of every row's context, every layer

    @property
    def total(self) -> int:
        return self.base + self.factors + self.kv_cache

    def seconds_at(self, bandwidth: float) -> float:
        """The step's time if only its bytes counted."""
        return self.total / bandwidth


def base_weight_bytes(model, rows: int) -> int:
    """Bytes of the weights a decode step reads: every parameter once, except the input
    embedding table, of which only the `rows` looked-up rows are read (a tied output head
    reads the whole table, so it is counted once, whole)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding
    total = 0
    for parameter in {id(p): p for p in model.parameters()}.values():
        if parameter is embedding and not tied:
            total += min(rows, parameter.shape[0]) * parameter.shape[1] * parameter.element_size()
        else:
            total += parameter.numel() * parameter.element_size()
    return total


def factor_bytes(
    module_shapes: dict[str, tuple[int, int]], rank: int, distinct: int, element_size: int = 4
) -> int:
    """Bytes of `distinct` adapters' factors: A (rank x in) and B (out x rank) per module."""
    per_adapter = sum(rank * (fan_in + fan_out) for fan_in, fan_out in module_shapes.values())
    return per_adapter * distinct * element_size


def kv_cache_bytes(config, rows: int, context: int, element_size: int = 4) -> int:
    """Keys and values of `rows` rows of `context` positions, every layer."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * rows * context * heads * head_dim * element_size


def step_bytes(
    model,
    *,
    rows: int,
    context: int,
    module_shapes: dict[str, tuple[int, int]] | None = None,
    rank: int = 0,
    distinct: int = 0,
) -> StepBytes:
    """One decode step's bytes for `rows` rows at `context` positions; with adapters,
    `distinct` of rank `rank` on the modules of `module_shapes` ({name: (in, out)})."""
    element = next(model.parameters()).element_size()
    factors = factor_bytes(module_shapes, rank, distinct, element) if module_shapes and distinct else 0
    return StepBytes(
        base=base_weight_bytes(model, rows),
        factors=factors,
        kv_cache=kv_cache_bytes(model.config, rows, context, element),
    )
