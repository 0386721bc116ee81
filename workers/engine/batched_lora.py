"""Many LoRA adapters in one forward pass: every row of a batch picks its own.

`BatchedLoraModel` replaces each LoRA-targetable `nn.Linear` of a loaded base
(PEFT's "all-linear": every linear layer but the output head) by a `LoraBankLinear`
that holds an adapter bank: A [S, r_max, in], B [S, r_max, out] (both rank-major, B
stored transposed from PEFT's lora_B), scaling [S]. A row whose slot is `s` computes

    base(x) + scaling[s] * (x @ A[s].T) @ B[s]

Slot 0 is the bare base (all zeros: its update is exactly 0). Adapters of smaller rank
are zero-padded to r_max, which is exact, so ranks mix in one bank; a module an
adapter does not target keeps zeros for that slot.

The forward has no loop over adapters. On a CPU in float32 inference it calls one
compiled kernel per module (workers/engine/cpu_kernels.py) that reads each row's factors
straight from the bank. Elsewhere (a GPU, another dtype, a build without the kernel),
when the rows' slots are set, each module gathers its rows' factors once, A[slots] and
scaling[slots] * B[slots], into [batch, in, r] and [batch, r, out] (BGMV-style, as in
S-LoRA / Punica), and every forward until the slots change is two batched matmuls:
`bmm(x, A_rows)` then `baddbmm(base(x), ·, B_rows)`. Layers fed the same hidden states
(q/k/v, gate/up) share one shrink matmul over their concatenated A rows. On both paths
a module no row's adapter targets is skipped. The gathered copy costs batch x r x
(in + out) per module: small next to the base for the models served here; on a large
base a segment matmul over rows grouped by slot would avoid it.

Slots are keyed by the revision's sha256, never a name: loading a different payload
can never be served from a stale slot. Loading copies the adapter's factors into the
bank in place; that copy is the "cold load" to compare with PEFT's `load_adapter`.

Only architectures the table marks as batched (architectures.py) are wrapped: for those
tests check every row against PEFT, grouped-query attention (k/v narrower than q) and
Gemma 3 (head_dim 256, tied and scaled embeddings) included; any other base is refused.

No Django imports.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from workers.engine.payload import AdapterPayload, unpack
from workers.engine.weight_delta import FACTOR_KEY_RE, scaling

BARE = 0  # the slot of the bare base: no update


class BatchedLoraError(ValueError):
    pass


class UnsupportedAdapter(BatchedLoraError):
    """The payload's LoRA variant cannot be served by a plain low-rank bank."""


class BankFull(BatchedLoraError):
    pass


class RowSlots:
    """The per-row slot ids every bank module of one model reads, and a key that changes
    whenever they (or a bank) change, so modules know when to gather again."""

    __slots__ = ("ids", "key")

    def __init__(self) -> None:
        self.ids: torch.Tensor | None = None
        self.key = object()

    def changed(self) -> None:
        self.key = object()


class LoraBankLinear(nn.Module):
    """An `nn.Linear` plus a bank of low-rank updates, one per slot, chosen per row."""

    def __init__(self, base: nn.Linear, slots: int, max_rank: int, rows: RowSlots):
        super().__init__()
        self.base = base
        weight = base.weight
        kw = dict(device=weight.device, dtype=weight.dtype)
        self.register_buffer("lora_a", torch.zeros(slots, max_rank, base.in_features, **kw), persistent=False)
        self.register_buffer(
            "lora_b", torch.zeros(slots, max_rank, base.out_features, **kw), persistent=False
        )
        self.register_buffer("scaling", torch.zeros(slots, **kw), persistent=False)
        self.ranks = [0] * slots  # each slot's rank for this module (0: no update)
        self.rows = rows
        self.group: SharedInput | None = None
        self.kernel = None  # cpu_kernels.bgmv_ when the model serves through it
        self._plain = type(base) is nn.Linear
        self._rank_for_rows: tuple[object, int] = (None, 0)
        self._gathered_for: object = None
        self._gathered: tuple[torch.Tensor | None, torch.Tensor] | None = None

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:  # some callers read a linear layer's weight (dtype, device)
        return self.base.weight

    def put(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None, scale: float) -> None:
        """Write one slot's factors (or zeros when `a` is None)."""
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        self.scaling[slot] = 0.0
        self.ranks[slot] = 0 if a is None else a.shape[0]
        if a is None:
            return
        rank = a.shape[0]
        self.lora_a[slot, :rank].copy_(a)
        self.lora_b[slot, :rank].copy_(b.T)
        self.scaling[slot] = scale

    def rank_for(self, slots: set[int]) -> int:
        """The largest rank among these slots: the bank's columns past it are zeros for
        every row, so gathering and multiplying them would be wasted work."""
        return max((self.ranks[s] for s in slots), default=0)

    def _rows_factors(self) -> tuple[torch.Tensor | None, torch.Tensor] | None:
        """(A rows [batch, in, r], scaled B rows [batch, r, out]) for the rows set now, or
        None when no row's adapter targets this module. r is the largest rank among the
        rows (a bank sized for rank 64 costs rank-8 rows only rank 8). A rows are None in a
        shared-input group, which gathers them for all its members."""
        if self._gathered_for is not self.rows.key:
            self._gathered_for = self.rows.key
            self._gathered = None
            ids = self.rows.ids
            rank = self._rows_rank()
            if self.group is not None and rank:
                rank = self.group.rank
            if rank:
                a_rows = None
                if self.group is None:
                    a_rows = self.lora_a[:, :rank].index_select(0, ids).transpose(1, 2).contiguous()
                b_rows = self.lora_b[:, :rank].index_select(0, ids)
                b_rows = b_rows * self.scaling.index_select(0, ids).view(-1, 1, 1)
                self._gathered = (a_rows, b_rows)
        return self._gathered

    def _rows_rank(self) -> int:
        """The largest rank among the rows set now (0: no row's adapter targets this module)."""
        key, rank = self._rank_for_rows
        if key is not self.rows.key:
            ids = self.rows.ids
            rank = self.rank_for(set(ids.tolist())) if ids is not None else 0
            self._rank_for_rows = (self.rows.key, rank)
        return rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base
        # A plain nn.Linear is called as the function it is: one module call per layer, as
        # in the bare base (a subclass, e.g. a quantized layer, keeps its own forward).
        y = F.linear(x, base.weight, base.bias) if self._plain else base(x)
        if self.kernel is not None and x.dtype == torch.float32 and not torch.is_grad_enabled():
            return self._kernel_forward(x, y)
        factors = self._rows_factors()
        if factors is None:
            return y
        a_rows, b_rows = factors
        if x.shape[0] != b_rows.shape[0]:
            raise BatchedLoraError(
                f"the input has {x.shape[0]} rows but slots were set for {b_rows.shape[0]}"
            )
        x3 = x.reshape(x.shape[0], -1, x.shape[-1]).to(b_rows.dtype)  # 2-D rows become [batch, 1, in]
        xa = self.group.shrink(self, x, x3) if self.group is not None else torch.bmm(x3, a_rows)
        y3 = y.reshape(y.shape[0], -1, y.shape[-1])
        if torch.is_grad_enabled():
            return torch.baddbmm(y3, xa, b_rows).view_as(y)
        return y3.baddbmm_(xa, b_rows).view_as(y)  # y is ours alone: add in place, no new output

    def _kernel_forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rank = self._rows_rank()
        if not rank:
            return y
        ids = self.rows.ids
        if x.dim() != 3 or x.stride(-1) != 1:
            x = x.reshape(x.shape[0], -1, x.shape[-1]).contiguous()
            y3 = y.view(y.shape[0], -1, y.shape[-1])
        else:
            y3 = y
        if x.shape[0] != ids.shape[0]:
            raise BatchedLoraError(f"the input has {x.shape[0]} rows but slots were set for {ids.shape[0]}")
        self.kernel(y3, x, self.lora_a, self.lora_b, self.scaling, ids, rank)
        return y  # y is ours alone: the kernel added into it in place


class SharedInput:
    """Sibling layers that read the same input tensor (q/k/v, gate/up): one shrink matmul
    x @ [A_1 | A_2 | ...] serves them all. Used only when a member is called with the very
    tensor the previous member got; otherwise each member shrinks on its own."""

    def __init__(self, members: list[LoraBankLinear]):
        self.members = members
        self._for: object = None
        self._a_rows: torch.Tensor | None = None  # [batch, in, members x r_max]
        self._x: torch.Tensor | None = None
        self._xa: torch.Tensor | None = None
        self._rank = 0
        for member in members:
            member.group = self

    @property
    def rank(self) -> int:
        """One rank for the whole group (their shrinks are computed together): the largest
        any member has for the rows set now."""
        return max(member._rows_rank() for member in self.members)

    def shrink(self, member: LoraBankLinear, x: torch.Tensor, x3: torch.Tensor) -> torch.Tensor:
        if self._for is not member.rows.key:
            ids = member.rows.ids
            self._rank = self.rank
            a = torch.cat([m.lora_a[:, : self._rank].index_select(0, ids) for m in self.members], dim=1)
            self._a_rows = a.transpose(1, 2).contiguous()
            self._for, self._x = member.rows.key, None
        if x is not self._x:  # the first member to see this input computes every member's shrink
            self._x, self._xa = x, torch.bmm(x3, self._a_rows)
        start = self.members.index(member) * self._rank
        return self._xa[..., start : start + self._rank]


# Linear layers of one parent module that a decoder layer feeds the same hidden states.
SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class BatchedLoraModel:
    """A base causal LM whose linear layers serve up to `max_slots` adapters at once.

    The model is modified in place (its linear layers are wrapped), so give it a base
    instance of its own, as `load_base` returns."""

    def __init__(self, model: nn.Module, max_slots: int = 64, max_rank: int = 16, cpu_kernel: bool = True):
        """`cpu_kernel=False` keeps a CPU float32 model on the torch-ops path (to compare them)."""
        if max_slots < 1 or max_rank < 1:
            raise ValueError("max_slots and max_rank must be at least 1")
        refused = _unbatched_architecture(model.config)
        if refused:
            raise BatchedLoraError(refused)
        self.model = model
        self.max_slots = max_slots
        self.max_rank = max_rank
        self._rows = RowSlots()
        self._slots: dict[str, int] = {}  # revision sha256 -> slot (1..max_slots)
        self._free = list(range(max_slots, 0, -1))  # popped from the end: lowest slot first
        self.modules: dict[str, LoraBankLinear] = {}
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        targets = [
            (name, module)
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module is not head
        ]
        if not targets:
            raise BatchedLoraError("the model has no linear layers to adapt")
        for name, linear in targets:
            bank = LoraBankLinear(linear, max_slots + 1, max_rank, self._rows)
            parent_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, leaf, bank)
            self.modules[name] = bank
        for name in list(self.modules):
            parent, _, leaf = name.rpartition(".")
            for siblings in SHARED_INPUTS:
                if leaf == siblings[0]:
                    members = [self.modules.get(f"{parent}.{s}" if parent else s) for s in siblings]
                    if all(members) and len({m.in_features for m in members}) == 1:
                        SharedInput(members)
        parameter = next(model.parameters())
        if cpu_kernel and parameter.device.type == "cpu" and parameter.dtype == torch.float32:
            from workers.engine.cpu_kernels import bgmv

            kernel = bgmv()
            for bank in self.modules.values():
                bank.kernel = kernel

    @property
    def uses_cpu_kernel(self) -> bool:
        """Whether forwards go through the compiled CPU kernel (else through torch ops)."""
        return any(bank.kernel is not None for bank in self.modules.values())

    # --- the bank ---------------------------------------------------------------------

    @property
    def slots(self) -> dict[str, int]:
        """revision sha256 -> slot, for the adapters loaded now."""
        return dict(self._slots)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def config(self):
        return self.model.config

    def load(self, sha256: str, payload: bytes | AdapterPayload) -> int:
        """Copy an adapter's factors into a free slot and return it. Payload bytes are
        checked against `sha256`; an adapter already loaded keeps its slot."""
        if isinstance(payload, bytes | bytearray | memoryview):
            actual = hashlib.sha256(payload).hexdigest()
            if actual != sha256:
                raise BatchedLoraError(f"payload bytes hash to {actual[:12]}…, not {sha256[:12]}…")
            payload = unpack(bytes(payload))
        if sha256 in self._slots:
            return self._slots[sha256]
        factors = self._factors(payload)
        if not self._free:
            raise BankFull(f"all {self.max_slots} adapter slots are taken; unload one first")
        slot = self._free.pop()
        with torch.no_grad():
            for name, bank in self.modules.items():
                a, b, scale = factors.get(name, (None, None, 0.0))
                bank.put(slot, a, b, scale)
        self._slots[sha256] = slot
        self._rows.changed()
        return slot

    def unload(self, sha256: str) -> None:
        slot = self._slots.pop(sha256, None)
        if slot is None:
            raise KeyError(f"adapter {sha256[:12]}… is not loaded")
        with torch.no_grad():
            for bank in self.modules.values():
                bank.put(slot, None, None, 0.0)
        self._free.append(slot)
        self._free.sort(reverse=True)
        self._rows.changed()

    def bank_bytes(self) -> int:
        """Memory the whole bank takes (all slots, loaded or not)."""
        return sum(
            t.numel() * t.element_size()
            for bank in self.modules.values()
            for t in (bank.lora_a, bank.lora_b, bank.scaling)
        )

    def check(self, payload: AdapterPayload) -> None:
        """Raise `BatchedLoraError` (`UnsupportedAdapter` for a variant a plain low-rank bank
        cannot serve) if `load` would refuse this payload; touches no slot."""
        self._factors(payload)

    def _factors(self, payload: AdapterPayload) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
        """module name -> (A, B, scaling), validated against this model before any slot is written."""
        config = payload.config
        refuse = _unsupported_settings(config)
        if refuse:
            raise UnsupportedAdapter(f"cannot serve this adapter in a batched bank: {refuse}")
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in payload.tensors.items():
            match = FACTOR_KEY_RE.match(key)
            if match is None or ".lora_embedding_" in key:
                raise UnsupportedAdapter(
                    f"cannot serve this adapter in a batched bank: tensor {key!r} is not a linear "
                    "layer's LoRA factor (biases, embeddings and modules_to_save are not supported)"
                )
            pairs.setdefault(match.group("module"), {})[match.group("factor")] = tensor
        if not pairs:
            raise UnsupportedAdapter("the payload holds no LoRA factors (lora_A / lora_B tensors)")
        factors = {}
        for module, pair in pairs.items():
            bank = self.modules.get(module)
            if bank is None:
                raise UnsupportedAdapter(f"the adapter targets {module!r}, which this model cannot adapt")
            if set(pair) != {"A", "B"}:
                raise BatchedLoraError(f"{module} has lora_{''.join(pair)} but not both LoRA factors")
            a, b = pair["A"], pair["B"]
            rank = a.shape[0]
            if a.shape != (rank, bank.in_features) or b.shape != (bank.out_features, rank):
                raise BatchedLoraError(
                    f"{module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit a "
                    f"{bank.in_features}->{bank.out_features} layer (an adapter of another base?)"
                )
            if rank > self.max_rank:
                raise BatchedLoraError(f"{module} has rank {rank}; this bank holds at most {self.max_rank}")
            scale = scaling(config, module, rank=rank)
            if not math.isfinite(scale):
                raise BatchedLoraError(f"{module}: scaling {scale} is not finite")
            factors[module] = (a, b, scale)
        return factors

    # --- rows -------------------------------------------------------------------------

    def slot_ids(self, adapters: Sequence[str | None]) -> torch.Tensor:
        """Per-row slot ids for revision sha256s (None: the bare base)."""
        ids = []
        for sha in adapters:
            if sha is None:
                ids.append(BARE)
            elif sha in self._slots:
                ids.append(self._slots[sha])
            else:
                raise KeyError(f"adapter {sha[:12]}… is not loaded")
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def set_rows(self, slot_ids: torch.Tensor | Sequence[int] | None) -> None:
        """Which slot each row of the following forwards uses (None: all rows bare)."""
        if slot_ids is not None:
            slot_ids = torch.as_tensor(slot_ids, dtype=torch.long).to(self.device)
            if slot_ids.dim() != 1:
                raise BatchedLoraError("slot ids must be one id per row")
            if slot_ids.numel() and not 0 <= int(slot_ids.min()) <= int(slot_ids.max()) <= self.max_slots:
                raise BatchedLoraError(f"slot ids must be in [0, {self.max_slots}]")
        self._rows.ids = slot_ids
        self._rows.changed()

    @contextmanager
    def rows(self, slot_ids: torch.Tensor | Sequence[int] | None) -> Iterator[None]:
        previous = self._rows.ids
        self.set_rows(slot_ids)
        try:
            yield
        finally:
            self.set_rows(previous)

    def __call__(self, *args, rows: torch.Tensor | Sequence[int] | None = None, **kwargs):
        """The wrapped model's forward; with `rows`, for those per-row slots only."""
        if rows is None:
            return self.model(*args, **kwargs)
        with self.rows(rows):
            return self.model(*args, **kwargs)


def _unbatched_architecture(config) -> str:
    """Why the bank cannot serve this base exactly ('' when it can): an architecture the
    table (architectures.py) does not know, or one it marks as not batched."""
    from workers.engine.architectures import UnknownArchitecture, architecture_of

    try:
        arch = architecture_of(config)
    except UnknownArchitecture as exc:
        return str(exc)
    return "" if arch.batched else f"{arch.family} bases are not batched: {arch.unbatched_reason}"


def _unsupported_settings(config: dict) -> str:
    """Why a LoRA config cannot be served as base(x) + s * x A^T B^T ('' when it can)."""
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r} (only LORA)")
    if config.get("use_dora"):
        problems.append("DoRA (use_dora) rescales by the base weight's norm")
    if config.get("lora_bias"):
        problems.append("lora_bias")
    if config.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out (Conv1D layers)")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']}")
    if config.get("trainable_token_indices"):
        problems.append("trainable_token_indices")
    if config.get("layer_replication"):
        problems.append("layer_replication")
    if config.get("use_qalora") or config.get("use_bdlora") or config.get("alora_invocation_tokens"):
        problems.append("a LoRA variant (QALoRA, BD-LoRA or aLoRA)")
    if config.get("target_parameters"):
        problems.append("target_parameters")
    return "; ".join(problems)
