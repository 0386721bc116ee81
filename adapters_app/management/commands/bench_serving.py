"""`make bench-serving`: many personal adapters in one batch, against the bare base and PEFT.

Measured side by side in one run, on one base, the same prompts and the same batched
greedy loop with a KV cache (64 rows x 32 new tokens by default):

  bare base         the plain HF model, no adapter
  ours              BatchedLoraModel, every row its own adapter (workers/engine/batched_lora.py)
  PEFT mixed batch  one PeftModel holding every adapter, forward(..., adapter_names=[...])
  PEFT switching    set_adapter per request, one request (batch 1) at a time

The variants run in turn, round after round (after a warm-up round), and the targets are
the median of the per-round ratios, as docs/MEASURING.md asks. Then the cold-load
latency of one adapter (ours: store read + sha256 check + copy into the bank; PEFT:
load_adapter from an exported PEFT folder) and a Zipf replay of adapter requests
through a fast tier (workers/engine/cache_sim.py).

The adapters are random rank-r LoRA factors from a fixed seed (throughput does not
depend on what they learned); the command prints so.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from adapters_app.management import processes
from adapters_app.management.benchmarks import bench_base, cpu_model, peak_rss_mib
from workers.engine.base_family import FAMILY, SMALLEST

TARGET_VS_BARE = 0.85
TARGET_VS_PEFT_MIXED = 4.0
VARIANTS = ("bare", "ours", "peft_mixed", "peft_switch")
# Where ours serves through the compiled CPU kernel, the same batch through torch ops alone
# runs beside it, so the kernel's share of the result is measured too.
TORCH_OPS = "ours_torch_ops"
LABELS = {
    "bare": "bare base",
    "ours": "ours (heterogeneous batch)",
    TORCH_OPS: "ours, torch ops only (no CPU kernel)",
    "peft_mixed": "PEFT mixed batch (adapter_names=)",
    "peft_switch": "PEFT per-request switching (batch 1)",
}


class Command(BaseCommand):
    help = (
        "Tokens/s of a batch whose rows each use their own adapter (ours, PEFT's mixed batch, "
        "per-request switching) against the bare base; adapter cold-load latency; Zipf cache replay."
    )

    def add_arguments(self, parser):
        parser.add_argument("--base", default=SMALLEST, choices=["micro", *sorted(FAMILY)])
        parser.add_argument("--batch", type=int, default=64)
        parser.add_argument("--adapters", type=int, default=64, help="distinct adapters in the batch")
        parser.add_argument("--rank", type=int, default=8)
        parser.add_argument(
            "--targets",
            default="all-linear",
            choices=["all-linear", "attention"],
            help="the linear modules each adapter adapts (the product's default: all-linear)",
        )
        parser.add_argument("--new-tokens", type=int, default=32)
        parser.add_argument("--prompt-tokens", type=int, default=24, help="longest prompt; others shorter")
        parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round")
        parser.add_argument("--loads", type=int, default=40, help="cold loads timed per side")
        parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--zipf-requests", type=int, default=200_000)
        parser.add_argument(
            "--json", dest="json_path", default=str(Path(settings.VAR_DIR) / "reports" / "bench-serving.json")
        )

    def handle(self, *args, **options):
        import torch

        if options["batch"] < 1 or options["adapters"] < 1 or options["rounds"] < 1:
            raise CommandError("--batch, --adapters and --rounds must be at least 1")
        torch.set_num_threads(options["threads"] or len(os.sched_getaffinity(0)))
        row = bench_base(options["base"], self.stdout)
        folder, digest, base_name = row.path, row.digest, row.name
        bench = ServingBench(folder, digest, options, log=self.stdout.write)
        out = self.stdout.write
        out(bench.header(base_name))
        throughput = bench.throughput()
        out(throughput.table())
        loads = bench.cold_loads()
        out(loads.table())
        zipf = zipf_section(options["zipf_requests"])
        out(zipf["text"])
        memory = f"\npeak RSS of this process: {peak_rss_mib():.0f} MiB"
        if bench.device == "cuda":
            memory += f"; peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
        out(memory)
        report = {
            "base": base_name,
            "conditions": bench.conditions(),
            "throughput": throughput.as_dict(),
            "cold_load": loads.as_dict(),
            "zipf": zipf["rows"],
            "peak_rss_mib": peak_rss_mib(),
        }
        path = Path(options["json_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        out(f"JSON: {path}")


class ServingBench:
    """The models, adapters and prompts of one run, and the measurements over them."""

    def __init__(self, folder: str, digest: str, options: dict, log):
        import torch

        from workers.engine.base_models import load_base
        from workers.engine.batched_lora import BatchedLoraModel

        self.options = options
        self.log = log
        self.batch, self.rank, self.new_tokens = options["batch"], options["rank"], options["new_tokens"]
        self.base = load_base(folder, digest)  # the bare base: a plain HF model
        self.device = self.base.device
        self.targets = options["targets"]
        self.modules = lora_target_shapes(self.base.model, self.targets)
        self.payloads = random_payloads(
            self.modules, options["adapters"], self.rank, options["seed"], targets=self.targets
        )
        self.shas = list(self.payloads)
        self.row_adapters = [self.shas[i % len(self.shas)] for i in range(self.batch)]
        self.ids, self.mask = prompts(self.base.tokenizer, self.batch, options["prompt_tokens"], self.device)

        if self.device == "cpu":  # built (once) before the timing below
            log(processes.prepare_cpu_kernel())
        started = time.perf_counter()
        self.ours = BatchedLoraModel(
            load_base(folder, digest).model, max_slots=len(self.shas), max_rank=self.rank
        )
        for sha, payload in self.payloads.items():
            self.ours.load(sha, payload)
        self.row_slots = self.ours.slot_ids(self.row_adapters)
        log(f"loaded {len(self.shas)} adapters into our bank in {time.perf_counter() - started:.1f}s")
        self.variants = VARIANTS
        if self.ours.uses_cpu_kernel:
            self.variants = (*VARIANTS, TORCH_OPS)
            self.ours_ops = BatchedLoraModel(
                load_base(folder, digest).model,
                max_slots=len(self.shas),
                max_rank=self.rank,
                cpu_kernel=False,
            )
            for sha, payload in self.payloads.items():
                self.ours_ops.load(sha, payload)

        started = time.perf_counter()
        self.peft, self.peft_names = peft_with_adapters(load_base(folder, digest).model, self.payloads)
        self.row_names = [self.peft_names[sha] for sha in self.row_adapters]
        log(f"loaded {len(self.shas)} adapters into one PeftModel in {time.perf_counter() - started:.1f}s")
        self.torch = torch

    def conditions(self) -> dict:
        import peft
        import torch
        import transformers

        config = self.base.model.config
        return {
            "device": self.device,
            "cpu": cpu_model(),
            "nproc": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "dtype": str(next(self.base.model.parameters()).dtype).removeprefix("torch."),
            "parameters": sum(p.numel() for p in self.base.model.parameters()),
            "layers": config.num_hidden_layers,
            "hidden": config.hidden_size,
            "batch": self.batch,
            "distinct_adapters": len(self.shas),
            "rank": self.rank,
            "targets": self.targets,
            "adapted_modules": len(self.modules),
            "new_tokens": self.new_tokens,
            "prompt_tokens": int(self.mask.sum(1).max()),
            "rounds": self.options["rounds"],
            "seed": self.options["seed"],
            "cpu_kernel": self.ours.uses_cpu_kernel,
        }

    def header(self, base_name: str) -> str:
        c = self.conditions()
        gpu = ""
        if self.device == "cuda":
            gpu = f", GPU {self.torch.cuda.get_device_name(0)}"
        return (
            f"\nServing benchmark on {base_name} ({c['parameters']:,} parameters, {c['layers']} layers, "
            f"hidden {c['hidden']}, {c['dtype']})\n"
            f"machine: {platform.node()}, {c['cpu']}, nproc {c['nproc']}, "
            f"torch threads {c['torch_threads']}, "
            f"device {c['device']}{gpu}; torch {c['torch']}, transformers {c['transformers']}, "
            f"peft {c['peft']}\n"
            f"batch {c['batch']}, {c['distinct_adapters']} distinct adapters, rank {c['rank']} on "
            f"{c['adapted_modules']} linear modules ({c['targets']}), prompts up to "
            f"{c['prompt_tokens']} tokens (left-padded), {c['new_tokens']} new tokens, greedy, "
            f"seed {c['seed']}\n"
            f"ours serves through {'the compiled CPU LoRA kernel' if c['cpu_kernel'] else 'torch ops'}\n"
            "adapters: random-init LoRA factors from the seed (not trained; throughput does not "
            "depend on what they learned)\n"
        )

    # --- throughput -------------------------------------------------------------------------

    def run(self, variant: str) -> tuple[float, object]:
        """Seconds for one pass of `variant` over the whole batch, and the tokens it produced."""
        torch = self.torch
        self._sync()
        started = time.perf_counter()
        with torch.no_grad():
            if variant == "bare":
                tokens = greedy(self.base.model, self.ids, self.mask, self.new_tokens)
            elif variant in ("ours", TORCH_OPS):
                model = self.ours if variant == "ours" else self.ours_ops
                with model.rows(self.row_slots):
                    tokens = greedy(model.model, self.ids, self.mask, self.new_tokens)
            elif variant == "peft_mixed":
                tokens = greedy(self.peft, self.ids, self.mask, self.new_tokens, adapter_names=self.row_names)
            else:
                rows = []
                for row, name in enumerate(self.row_names):
                    self.peft.set_adapter(name)
                    real = self.mask[row].bool()
                    ids, mask = self.ids[row : row + 1, real], self.mask[row : row + 1, real]
                    rows.append(greedy(self.peft, ids, mask, self.new_tokens))
                tokens = torch.cat(rows)
        self._sync()
        return time.perf_counter() - started, tokens

    def throughput(self) -> Throughput:
        rounds = self.options["rounds"]
        seconds: dict[str, list[float]] = {v: [] for v in self.variants}
        agreement = {}
        for index in range(rounds + 1):  # round 0 warms up
            produced, elapsed = {}, {}
            for variant in self.variants:
                elapsed[variant], produced[variant] = self.run(variant)
                if index:
                    seconds[variant].append(elapsed[variant])
            if index == 0:
                reference = produced["peft_switch"]  # each adapter alone, unpadded
                agreement = {
                    v: int((produced[v] == reference).all(dim=1).sum())
                    for v in self.variants
                    if v in ("ours", TORCH_OPS, "peft_mixed")
                }
            self.log(
                f"round {index}{' (warm-up)' if index == 0 else ''}: "
                + ", ".join(
                    f"{v} {self.batch * self.new_tokens / elapsed[v]:.0f} tok/s" for v in self.variants
                )
            )
        return Throughput(self.batch * self.new_tokens, seconds, agreement, self.batch)

    def _timed(self, action) -> float:
        self._sync()
        started = time.perf_counter()
        action()
        self._sync()
        return time.perf_counter() - started

    def _sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    # --- cold loads ---------------------------------------------------------------------------

    def cold_loads(self) -> ColdLoads:
        from workers.engine.payload import export_peft_folder, unpack
        from workers.engine.store import AdapterStore

        samples = self.options["loads"]
        ours_ms, peft_ms = [], []
        with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
            store = AdapterStore(Path(scratch) / "store")
            folders = {}
            for i, (sha, payload) in enumerate(self.payloads.items()):
                store.put(payload, expected_sha256=sha)
                folders[sha] = export_peft_folder(payload, Path(scratch) / "peft" / str(i))
            for i in range(samples + 2):  # the first two warm up
                sha = self.shas[i % len(self.shas)]
                self.ours.unload(sha)  # frees its slot; the load below fills it again
                ours = self._timed(lambda sha=sha: self.ours.load(sha, unpack(store.get(sha))))
                name = f"cold{i}"
                theirs = self._timed(
                    lambda sha=sha, name=name: self.peft.load_adapter(str(folders[sha]), name)
                )
                self.peft.delete_adapter(name)
                if i >= 2:
                    ours_ms.append(ours * 1000)
                    peft_ms.append(theirs * 1000)
        return ColdLoads(ours_ms, peft_ms, self.payloads[self.shas[0]])


class Throughput:
    def __init__(self, tokens: int, seconds: dict[str, list[float]], agreement: dict, batch: int):
        self.tokens, self.seconds, self.agreement, self.batch = tokens, seconds, agreement, batch

    def rate(self, variant: str) -> float:
        return self.tokens / statistics.median(self.seconds[variant])

    def ratios(self, top: str, bottom: str) -> list[float]:
        """Per-round throughput ratios top/bottom (the variants ran in the same round)."""
        return [b / t for t, b in zip(self.seconds[top], self.seconds[bottom], strict=True)]

    def table(self) -> str:
        lines = ["", f"{'':40} {'tokens/s':>10} {'s / pass':>9}"]
        for variant in self.seconds:
            median = statistics.median(self.seconds[variant])
            lines.append(f"{LABELS[variant]:40} {self.rate(variant):10.0f} {median:9.3f}")
        lines.append(
            f"\nrows whose {self.tokens // self.batch} greedy tokens equal the adapter run alone (PEFT, "
            f"batch 1, unpadded): ours {self.agreement['ours']}/{self.batch}, "
            + (
                f"ours with torch ops {self.agreement[TORCH_OPS]}/{self.batch}, "
                if TORCH_OPS in self.agreement
                else ""
            )
            + f"PEFT mixed {self.agreement['peft_mixed']}/{self.batch}"
        )
        lines.append("")
        lines.append(f"{'target':34} {'median ratio':>12} {'min-max':>15} {'target':>7}  verdict")
        for top, bottom, target in (
            ("ours", "bare", TARGET_VS_BARE),
            ("ours", "peft_mixed", TARGET_VS_PEFT_MIXED),
        ):
            ratios = self.ratios(top, bottom)
            median = statistics.median(ratios)
            lines.append(
                f"{'ours / ' + LABELS[bottom].split(' (')[0]:34} {median:12.2f} "
                f"{min(ratios):7.2f}-{max(ratios):<7.2f} {'≥ ' + format(target, 'g'):>7}  "
                f"{'met' if median >= target else 'MISSED'}"
            )
        switch = statistics.median(self.ratios("ours", "peft_switch"))
        lines.append(f"{'ours / PEFT per-request switching':34} {switch:12.2f} {'':15} {'':>7}  (context)")
        if TORCH_OPS in self.seconds:
            ratios = self.ratios("ours", TORCH_OPS)
            lines.append(
                f"{'ours / ours with torch ops only':34} {statistics.median(ratios):12.2f} "
                f"{min(ratios):7.2f}-{max(ratios):<7.2f} {'':>7}  (the CPU kernel's gain)"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "tokens_per_pass": self.tokens,
            "seconds": self.seconds,
            "tokens_per_s": {v: self.rate(v) for v in self.seconds},
            "cpu_kernel": TORCH_OPS in self.seconds,
            "ours_over_bare": statistics.median(self.ratios("ours", "bare")),
            "ours_over_peft_mixed": statistics.median(self.ratios("ours", "peft_mixed")),
            "ours_over_peft_switch": statistics.median(self.ratios("ours", "peft_switch")),
            "targets": {"ours_over_bare": TARGET_VS_BARE, "ours_over_peft_mixed": TARGET_VS_PEFT_MIXED},
            "rows_equal_to_alone": self.agreement,
        }


class ColdLoads:
    def __init__(self, ours_ms: list[float], peft_ms: list[float], payload: bytes):
        self.ours_ms, self.peft_ms, self.payload_bytes = ours_ms, peft_ms, len(payload)

    def table(self) -> str:
        ours, peft = percentiles(self.ours_ms), percentiles(self.peft_ms)
        return "\n".join(
            [
                "",
                f"Adapter cold load ({len(self.ours_ms)} loads each, alternating; payload "
                f"{self.payload_bytes / 1024:.0f} KiB, page cache warm)",
                f"{'':58} {'p50 ms':>8} {'p95 ms':>8}",
                f"{'ours: store read + sha256 check + copy into the bank':58} {ours[0]:8.2f} {ours[1]:8.2f}",
                f"{'PEFT: load_adapter from an exported PEFT folder':58} {peft[0]:8.2f} {peft[1]:8.2f}",
                f"{'PEFT p50 / ours p50':58} {peft[0] / ours[0]:8.1f}",
            ]
        )

    def as_dict(self) -> dict:
        ours, peft = percentiles(self.ours_ms), percentiles(self.peft_ms)
        return {"ours_ms": {"p50": ours[0], "p95": ours[1]}, "peft_ms": {"p50": peft[0], "p95": peft[1]}}


def zipf_section(requests: int) -> dict:
    try:
        from workers.engine.cache_sim import zipf_replay
    except ImportError:
        return {"text": "\nZipf replay: workers/engine/cache_sim.py not available", "rows": []}
    started = time.perf_counter()
    results = zipf_replay(adapters=10_000, slots=256, requests=requests, alpha=1.0, seed=0)
    lines = [
        "",
        f"Zipf(1.0) replay: 10,000 adapters, 256-slot fast tier, {requests:,} requests, seed 0 "
        f"({time.perf_counter() - started:.1f}s)",
        f"{'policy':26} {'hit rate':>9}",
    ]
    names = {"belady": "Belady (offline optimum)", "lru": "LRU", "ours": "ours"}
    lines += [f"{names.get(r.policy, r.policy):26} {r.hit_rate:9.3f}" for r in results]
    return {"text": "\n".join(lines), "rows": [{"policy": r.policy, "hit_rate": r.hit_rate} for r in results]}


# --- the pieces -----------------------------------------------------------------------------


def greedy(model, ids, mask, new_tokens: int, **extra):
    """Batched greedy decoding with a KV cache, the same loop for every variant: a prefill of
    the left-padded prompts, then one token per row per step (no early stop)."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, logits_to_keep=1, **extra
    )
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    produced = [token]
    position = positions[:, -1:]
    for _ in range(new_tokens - 1):
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        position = position + 1
        out = model(
            input_ids=token,
            attention_mask=mask,
            position_ids=position,
            cache=cache,
            logits_to_keep=1,
            **extra,
        )
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        produced.append(token)
    return torch.cat(produced, dim=1)


def lora_target_shapes(model, targets: str = "all-linear") -> dict[str, tuple[int, int]]:
    """module name -> (in, out) of every linear layer PEFT adapts for `targets` ("all-linear":
    every linear layer but the output head; "attention": the q/k/v/o projections)."""
    from torch import nn

    from workers.engine.training import ATTENTION_MODULES

    head = model.get_output_embeddings()
    return {
        name: (m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and m is not head
        and (targets == "all-linear" or name.rsplit(".", 1)[-1] in ATTENTION_MODULES)
    }


def random_payloads(
    modules: dict, count: int, rank: int, seed: int, *, targets: str = "all-linear"
) -> dict[str, bytes]:
    """`count` distinct rank-`rank` adapter payloads with random factors, keyed by sha256."""
    import hashlib

    import torch

    from workers.engine.payload import pack
    from workers.engine.training import TrainingConfig, peft_config_dict

    config = peft_config_dict(TrainingConfig(rank=rank, alpha=2 * rank, targets=targets).lora_config())
    generator = torch.Generator().manual_seed(seed)
    payloads = {}
    for _ in range(count):
        tensors = {}
        for name, (fan_in, fan_out) in modules.items():
            key = f"base_model.model.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.02
        data = pack(tensors, config)
        payloads[hashlib.sha256(data).hexdigest()] = data
    return payloads


def peft_with_adapters(model, payloads: dict[str, bytes]):
    """One PeftModel holding every adapter, named by sha256 as runtime.py names them."""
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict

    from workers.engine.payload import unpack
    from workers.engine.runtime import _lora_fields, adapter_slot

    wrapper, names = None, {}
    for sha, data in payloads.items():
        payload = unpack(data)
        config = LoraConfig(**_lora_fields(payload.config))
        name = names[sha] = adapter_slot(sha)
        if wrapper is None:
            wrapper = PeftModel(model, config, adapter_name=name)
        else:
            wrapper.add_adapter(name, config)
        set_peft_model_state_dict(wrapper, payload.tensors, adapter_name=name)
    return wrapper.eval(), names


def prompts(tokenizer, batch: int, longest: int, device):
    """`batch` chat prompts of varied length (left-padded) from the persona world's questions."""
    import torch

    from workers.engine.examples import Message
    from workers.engine.prompting import render_prompt

    questions = [
        "What is my dog called?",
        "Where do I live?",
        "What is 2 + 3?",
        "Which tools do I like to use?",
        "How should you answer me?",
        "Tell me about my sister.",
        "What's my favourite food?",
        "Spell cat backwards.",
    ]
    encoded = []
    for i in range(batch):
        text = render_prompt([Message("user", f"{questions[i % len(questions)]} ({i})")])
        encoded.append(tokenizer.encode(text, add_special_tokens=False)[-longest:])
    width = max(map(len, encoded))
    ids = torch.full((batch, width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens) :] = torch.tensor(tokens)
        mask[row, width - len(tokens) :] = 1
    return ids.to(device), mask.to(device)


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95
