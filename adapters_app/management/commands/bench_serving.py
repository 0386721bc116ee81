"""`make bench-serving`: many personal adapters in one batch, against the bare base and PEFT.

Measured side by side in one run, on one base, the same prompts and the same batched
greedy loop with a KV cache:

  bare base         the plain HF model, no adapter
  ours              BatchedLoraModel, every row its own adapter (workers/engine/batched_lora.py)
  PEFT mixed batch  one PeftModel holding every adapter, forward(..., adapter_names=[...])
  PEFT switching    set_adapter per request, one request (batch 1) at a time

The base is ours (`--base micro|mint-s|…`, pretrained on first use), any registered base by
name (an imported one), or a packaged real model's short name (`smollm2-135m`, `gemma3-270m`),
imported on first use. Prompts are rendered with the base's own chat template and a row
stops at its end-of-turn token (or after --new-tokens); rates count the tokens produced.
Batch, adapters, new tokens, rounds and cold loads default by the base's size
(`defaults_for`), so a 135 M-parameter model runs in minutes on two cores.

The variants run in turn, round after round (after a warm-up round), and the targets are
the median of the per-round ratios, as docs/MEASURING.md asks. Then the cold-load
latency of one adapter (ours: store read + sha256 check + copy into the bank; PEFT:
load_adapter from an exported PEFT folder) and a Zipf replay of adapter requests
through a fast tier (workers/engine/cache_sim.py). A base whose architecture the serving
bank does not batch (workers/engine/architectures.py) is measured without "ours", and the
output says why.

The adapters are random rank-r LoRA factors from a fixed seed on the modules the
architecture table targets (throughput does not depend on what they learned); the command
prints so.
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
from adapters_app.management.bases import base_for_command
from adapters_app.management.benchmarks import cpu_model, peak_rss_mib
from workers.engine.base_family import FAMILY, SMALLEST

TARGET_VS_BARE = 0.85
TARGET_VS_PEFT_MIXED = 4.0
VARIANTS = ("bare", "ours", "peft_mixed", "peft_switch")
# Where ours serves through the compiled CPU kernel, the same batch through torch ops alone
# runs beside it, so the kernel's share of the result is measured too.
TORCH_OPS = "ours_torch_ops"
OURS = ("ours", TORCH_OPS)
LABELS = {
    "bare": "bare base",
    "ours": "ours (heterogeneous batch)",
    TORCH_OPS: "ours, torch ops only (no CPU kernel)",
    "peft_mixed": "PEFT mixed batch (adapter_names=)",
    "peft_switch": "PEFT per-request switching (batch 1)",
}
# A greedy row's positions after its end of turn.
FINISHED = -1

# What a run measures unless told otherwise, by the base's size. Our own bases (micro to
# mint-l) are small enough for a 64-row batch; on a real pretrained one (SmolLM2-135M,
# gemma-3-270m) a pass of per-request switching alone is 64 x 32 full forwards, minutes
# on two shared cores, so the batch, the rounds and the cold loads are cut to keep a run
# near five minutes while still mixing many adapters in one batch.
LARGE_BASE_PARAMETERS = 100_000_000
DEFAULTS = {"batch": 64, "adapters": 64, "new_tokens": 32, "rounds": 5, "loads": 40}
LARGE_BASE_DEFAULTS = {"batch": 16, "adapters": 16, "new_tokens": 32, "rounds": 3, "loads": 20}


def defaults_for(parameters: int) -> dict:
    return LARGE_BASE_DEFAULTS if parameters >= LARGE_BASE_PARAMETERS else DEFAULTS


class Command(BaseCommand):
    help = (
        "Tokens/s of a batch whose rows each use their own adapter (ours, PEFT's mixed batch, "
        "per-request switching) against the bare base; adapter cold-load latency; Zipf cache replay."
    )

    def add_arguments(self, parser):
        from workers.engine.base_import import PACKAGED

        parser.add_argument(
            "--base",
            default=SMALLEST,
            help=(
                f"micro, one of ours ({', '.join(FAMILY)}), any registered base by name, or a packaged "
                f"real model ({', '.join(PACKAGED)}; imported first when not registered yet)"
            ),
        )
        scaled = f"(default by the base's size: {DEFAULTS} or, from {LARGE_BASE_PARAMETERS:,} parameters, "
        scaled += f"{LARGE_BASE_DEFAULTS})"
        parser.add_argument("--batch", type=int, help=f"rows in the batch {scaled}")
        parser.add_argument("--adapters", type=int, help="distinct adapters in the batch")
        parser.add_argument("--rank", type=int, default=8)
        parser.add_argument(
            "--targets",
            default="all-linear",
            choices=["all-linear", "attention"],
            help="the linear modules each adapter adapts (the product's default: all-linear)",
        )
        parser.add_argument(
            "--new-tokens", type=int, help="most tokens a row produces (it stops at end of turn)"
        )
        parser.add_argument("--rounds", type=int, help="timed rounds after one warm-up round")
        parser.add_argument("--loads", type=int, help="cold loads timed per side")
        parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--zipf-requests", type=int, default=200_000)
        parser.add_argument(
            "--bandwidth-mib", type=int, default=512, help="each array of the bandwidth measurement (MiB)"
        )
        parser.add_argument(
            "--switch-rows",
            type=int,
            default=0,
            help="PEFT per-request switching on only this many rows (0: all; its rate is per token)",
        )
        parser.add_argument(
            "--sharing",
            action="store_true",
            help="also ours / bare with the rows over 1, 8 and all adapters, and Zipf(1.0) over 10,000",
        )
        parser.add_argument(
            "--json", dest="json_path", default=str(Path(settings.VAR_DIR) / "reports" / "bench-serving.json")
        )

    def handle(self, *args, **options):
        import torch

        torch.set_num_threads(options["threads"] or len(os.sched_getaffinity(0)))
        row = base_for_command(options["base"], stdout=self.stdout)
        for name, value in defaults_for(row.parameters).items():
            if options.get(name) is None:
                options[name] = value
        if options["batch"] < 1 or options["adapters"] < 1 or options["rounds"] < 1:
            raise CommandError("--batch, --adapters and --rounds must be at least 1")
        if options["new_tokens"] < 1 or options["loads"] < 1:
            raise CommandError("--new-tokens and --loads must be at least 1")
        bench = ServingBench(row.path, row.digest, options, log=self.stdout.write)
        out = self.stdout.write
        out(bench.header(row.name))
        throughput = bench.throughput()
        out(throughput.table())
        roofline = bench.roofline(throughput)
        out(roofline.table())
        sharing = bench.sharing() if options["sharing"] and bench.batched else None
        if sharing is not None:
            out(sharing.table())
        loads = bench.cold_loads()
        out(loads.table())
        zipf = zipf_section(options["zipf_requests"])
        out(zipf["text"])
        memory = f"\npeak RSS of this process: {peak_rss_mib():.0f} MiB"
        if bench.device == "cuda":
            memory += f"; peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
        out(memory)
        report = {
            "base": row.name,
            "conditions": bench.conditions(),
            "throughput": throughput.as_dict(),
            "roofline": roofline.as_dict(),
            "sharing": sharing.as_dict() if sharing is not None else None,
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

        from workers.engine.architectures import UnknownArchitecture, architecture_of
        from workers.engine.base_models import load_base
        from workers.engine.batched_lora import BatchedLoraModel
        from workers.engine.prompting import stop_token_ids

        self.options = options
        self.log = log
        self.batch, self.rank, self.new_tokens = options["batch"], options["rank"], options["new_tokens"]
        self.base = load_base(folder, digest)  # the bare base: a plain HF model
        self.device = self.base.device
        try:
            self.architecture = architecture_of(self.base.model.config)
        except UnknownArchitecture as exc:
            raise CommandError(str(exc)) from None
        self.targets = options["targets"]
        self.modules = lora_target_shapes(self.base.model, self.targets, self.architecture)
        self.payloads = random_payloads(
            self.modules,
            options["adapters"],
            self.rank,
            options["seed"],
            targets=self.targets,
            architecture=self.architecture,
        )
        self.shas = list(self.payloads)
        self.row_adapters = [self.shas[i % len(self.shas)] for i in range(self.batch)]
        self.ids, self.mask = prompts(self.base.tokenizer, self.batch, self.device)
        self.stop_ids = stop_token_ids(self.base.tokenizer, self.base.model)

        self.ours = self.ours_ops = None
        self.variants = tuple(v for v in VARIANTS if v != "ours")
        if self.architecture.batched:
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
        # Per-request switching runs each row alone: at a 7B layer's shape, 64 rows of it take
        # minutes a round, so it may be sampled on the first rows (its rate is per token).
        self.switch_rows = min(self.batch, options.get("switch_rows") or self.batch)
        log(f"loaded {len(self.shas)} adapters into one PeftModel in {time.perf_counter() - started:.1f}s")
        self.torch = torch

    @property
    def batched(self) -> bool:
        return self.ours is not None

    def conditions(self) -> dict:
        import peft
        import torch
        import transformers

        config = self.base.model.config
        lengths = self.mask.sum(1)
        tokenizer = self.base.tokenizer
        return {
            "device": self.device,
            "cpu": cpu_model(),
            "nproc": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "dtype": str(next(self.base.model.parameters()).dtype).removeprefix("torch."),
            "architecture": self.architecture.name,
            "serving_mode": self.architecture.serving_mode,
            "parameters": sum(p.numel() for p in self.base.model.parameters()),
            "layers": config.num_hidden_layers,
            "hidden": config.hidden_size,
            "heads": config.num_attention_heads,
            "kv_heads": getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            "batch": self.batch,
            "distinct_adapters": len(self.shas),
            "rank": self.rank,
            "targets": self.targets,
            "target_modules": self.architecture.target_modules(self.targets),
            "adapted_modules": len(self.modules),
            "new_tokens": self.new_tokens,
            "prompt_tokens": [int(lengths.min()), int(lengths.max())],
            "stop_tokens": sorted(tokenizer.convert_ids_to_tokens(sorted(self.stop_ids))),
            "rounds": self.options["rounds"],
            "loads": self.options["loads"],
            "seed": self.options["seed"],
            "cpu_kernel": bool(self.ours and self.ours.uses_cpu_kernel),
        }

    def header(self, base_name: str) -> str:
        c = self.conditions()
        gpu = ""
        if self.device == "cuda":
            gpu = f", GPU {self.torch.cuda.get_device_name(0)}"
        low, high = c["prompt_tokens"]
        if not self.batched:
            serving = (
                f"ours: not measured: the serving bank does not batch {c['architecture']} "
                f"({self.architecture.unbatched_reason or 'the architecture table says so'}); its "
                "adapters are served one at a time, so only the bare base and PEFT run"
            )
        elif c["cpu_kernel"]:
            serving = (
                "ours serves through the compiled CPU LoRA kernel (kernel on; torch ops alone beside it)"
            )
        else:
            serving = "ours serves through torch ops (kernel off)"
        return (
            f"\nServing benchmark on {base_name} ({c['architecture']}, {c['parameters']:,} parameters, "
            f"{c['layers']} layers, hidden {c['hidden']}, {c['heads']} heads / {c['kv_heads']} KV heads, "
            f"{c['dtype']})\n"
            f"machine: {platform.node()}, {c['cpu']}, nproc {c['nproc']}, "
            f"torch threads {c['torch_threads']}, "
            f"device {c['device']}{gpu}; torch {c['torch']}, transformers {c['transformers']}, "
            f"peft {c['peft']}\n"
            f"batch {c['batch']}, {c['distinct_adapters']} distinct adapters, rank {c['rank']} on "
            f"{c['adapted_modules']} linear modules ({c['targets']}: {', '.join(c['target_modules'])})\n"
            f"prompts of {low}-{high} tokens in the base's chat template (left-padded), up to "
            f"{c['new_tokens']} new tokens a row, greedy, a row stops at {' / '.join(c['stop_tokens'])}; "
            f"{plural(c['rounds'], 'timed round')} after a warm-up, {plural(c['loads'], 'cold load')} a side,"
            f" seed {c['seed']}\n"
            f"{serving}\n"
            "adapters: random-init LoRA factors from the seed (not trained; throughput does not "
            "depend on what they learned)\n"
        )

    # --- throughput -------------------------------------------------------------------------

    def run(self, variant: str) -> tuple[float, object]:
        """Seconds for one pass of `variant` over the whole batch, and the tokens it produced
        (FINISHED after a row's end of turn)."""
        torch = self.torch
        stops = self.stop_ids
        self._sync()
        started = time.perf_counter()
        with torch.no_grad():
            if variant == "bare":
                tokens = greedy(self.base.model, self.ids, self.mask, self.new_tokens, stops)
            elif variant in OURS:
                model = self.ours if variant == "ours" else self.ours_ops
                with model.rows(self.row_slots):
                    tokens = greedy(model.model, self.ids, self.mask, self.new_tokens, stops)
            elif variant == "peft_mixed":
                tokens = greedy(
                    self.peft, self.ids, self.mask, self.new_tokens, stops, adapter_names=self.row_names
                )
            else:
                rows = []
                for row, name in enumerate(self.row_names[: self.switch_rows]):
                    self.peft.set_adapter(name)
                    real = self.mask[row].bool()
                    ids, mask = self.ids[row : row + 1, real], self.mask[row : row + 1, real]
                    rows.append(greedy(self.peft, ids, mask, self.new_tokens, stops))
                tokens = torch.cat(rows)
        self._sync()
        return time.perf_counter() - started, tokens

    def throughput(self) -> Throughput:
        rounds = self.options["rounds"]
        seconds: dict[str, list[float]] = {v: [] for v in self.variants}
        tokens: dict[str, list[int]] = {v: [] for v in self.variants}
        agreement = {}
        for index in range(rounds + 1):  # round 0 warms up
            produced, elapsed = {}, {}
            for variant in self.variants:
                elapsed[variant], produced[variant] = self.run(variant)
                if index:
                    seconds[variant].append(elapsed[variant])
                    tokens[variant].append(int((produced[variant] != FINISHED).sum()))
            if index == 0:
                reference = produced["peft_switch"]  # each adapter alone, unpadded (sampled rows)
                agreement = {
                    v: int((produced[v][: self.switch_rows] == reference).all(dim=1).sum())
                    for v in self.variants
                    if v in (*OURS, "peft_mixed")
                }
            self.log(
                f"round {index}{' (warm-up)' if index == 0 else ''}: "
                + ", ".join(
                    f"{v} {int((produced[v] != FINISHED).sum()) / elapsed[v]:.0f} tok/s"
                    for v in self.variants
                )
            )
        return Throughput(tokens, seconds, agreement, self.batch, self.new_tokens, compared=self.switch_rows)

    def roofline(self, throughput: Throughput) -> Roofline:
        """This machine's memory bandwidth, measured now with the decode's threads, and the
        bytes one pass must read on each side (workers/engine/roofline.py)."""
        from workers.engine.roofline import measure_bandwidth, step_bytes

        bandwidth = measure_bandwidth(
            array_bytes=self.options["bandwidth_mib"] << 20, threads=self.torch.get_num_threads()
        )
        positions = int(self.mask.shape[1])  # the prefill's, then one more each step
        distinct = len(set(self.row_adapters))

        def pass_bytes(adapted: bool) -> int:
            return sum(
                step_bytes(
                    self.base.model,
                    rows=self.batch,
                    context=positions + step,
                    module_shapes=self.modules if adapted else None,
                    rank=self.rank,
                    distinct=distinct if adapted else 0,
                ).total
                for step in range(self.new_tokens + 1)
            )

        sides = {"bare": pass_bytes(False)}
        if self.batched:
            sides["ours"] = pass_bytes(True)
        return Roofline(bandwidth, sides, throughput)

    def sharing(self, zipf_adapters: int = 10_000) -> Sharing:
        """ours / bare with the batch's rows spread over 1, 8 and all the bank's adapters,
        and drawn from Zipf(1.0) popularity over `zipf_adapters` (the draw's distinct
        adapters mapped onto loaded ones: only how many differ matters to the bytes), the
        two sides interleaved round by round like the main table."""
        import numpy as np

        popularity = 1.0 / np.arange(1, zipf_adapters + 1)  # Zipf(1.0): the k-th most asked, 1/k
        rng = np.random.default_rng(self.options["seed"])
        drawn = [int(d) for d in rng.choice(zipf_adapters, size=self.batch, p=popularity / popularity.sum())]
        order = {d: i for i, d in enumerate(dict.fromkeys(drawn))}
        fewer = [k for k in (1, 8) if k < len(self.shas)]  # the bank holds --adapters of them
        spreads = {f"{k} distinct": [self.shas[i % k] for i in range(self.batch)] for k in fewer}
        spreads[f"{len(self.shas)} distinct"] = self.row_adapters
        zipf_rows = [self.shas[order[d] % len(self.shas)] for d in drawn]
        spreads[f"Zipf(1.0) over {zipf_adapters:,} ({len(set(zipf_rows))} distinct)"] = zipf_rows
        kept = self.row_slots
        rows: dict[str, tuple[list[float], float]] = {}
        try:
            for name, adapters in spreads.items():
                self.row_slots = self.ours.slot_ids(adapters)
                ratios = []
                for index in range(self.options["rounds"] + 1):
                    bare_s, bare_tokens = self.run("bare")
                    ours_s, ours_tokens = self.run("ours")
                    if index:  # round 0 warms up
                        bare_rate = int((bare_tokens != FINISHED).sum()) / bare_s
                        ratios.append(int((ours_tokens != FINISHED).sum()) / ours_s / bare_rate)
                rows[name] = (ratios, self._allowed(len(set(adapters))))
                self.log(f"sharing, {name}: ours / bare {statistics.median(ratios):.2f}")
        finally:
            self.row_slots = kept
        return Sharing(rows)

    def _allowed(self, distinct: int) -> float:
        """ours / bare at the roofline for one decode step with `distinct` adapters."""
        from workers.engine.roofline import step_bytes

        context = int(self.mask.shape[1]) + self.new_tokens // 2
        bare = step_bytes(self.base.model, rows=self.batch, context=context).total
        ours = step_bytes(
            self.base.model,
            rows=self.batch,
            context=context,
            module_shapes=self.modules,
            rank=self.rank,
            distinct=distinct,
        ).total
        return bare / ours

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
                ours = None
                if self.batched:
                    self.ours.unload(sha)  # frees its slot; the load below fills it again
                    ours = self._timed(lambda sha=sha: self.ours.load(sha, unpack(store.get(sha))))
                name = f"cold{i}"
                theirs = self._timed(
                    lambda sha=sha, name=name: self.peft.load_adapter(str(folders[sha]), name)
                )
                self.peft.delete_adapter(name)
                if i >= 2:
                    if ours is not None:
                        ours_ms.append(ours * 1000)
                    peft_ms.append(theirs * 1000)
        return ColdLoads(ours_ms, peft_ms, self.payloads[self.shas[0]])


class Throughput:
    """Per variant, the seconds and the tokens produced of each timed round. Rows stop at their
    end of turn, so variants may produce different numbers of tokens (the bare base answers
    otherwise than an adapted one): rates and ratios are tokens per second, round by round."""

    def __init__(
        self,
        tokens: dict[str, list[int]],
        seconds: dict[str, list[float]],
        agreement: dict,
        batch: int,
        new_tokens: int,
        *,
        compared: int | None = None,
    ):
        self.tokens, self.seconds, self.agreement = tokens, seconds, agreement
        self.batch, self.new_tokens = batch, new_tokens
        # Rows per-request switching ran (all, unless sampled): the rows compared with it.
        self.compared = compared or batch

    def rows_of(self, variant: str) -> int:
        return self.compared if variant == "peft_switch" else self.batch

    @property
    def batched(self) -> bool:
        return "ours" in self.seconds

    def rates(self, variant: str) -> list[float]:
        return [t / s for t, s in zip(self.tokens[variant], self.seconds[variant], strict=True)]

    def rate(self, variant: str) -> float:
        return statistics.median(self.rates(variant))

    def ratios(self, top: str, bottom: str) -> list[float]:
        """Per-round throughput ratios top/bottom (the variants ran in the same round)."""
        return [t / b for t, b in zip(self.rates(top), self.rates(bottom), strict=True)]

    def comparisons(self) -> list[tuple[str, str, float | None, str]]:
        """(top, bottom, target or None, note) of every ratio the table shows."""
        if not self.batched:
            return [
                ("peft_mixed", "bare", None, "(context)"),
                ("peft_mixed", "peft_switch", None, "(context)"),
            ]
        rows = [
            ("ours", "bare", TARGET_VS_BARE, ""),
            ("ours", "peft_mixed", TARGET_VS_PEFT_MIXED, ""),
            ("ours", "peft_switch", None, "(context)"),
        ]
        if TORCH_OPS in self.seconds:
            rows.append(("ours", TORCH_OPS, None, "(the CPU kernel's gain)"))
        return rows

    def table(self) -> str:
        lines = ["", f"{'':40} {'tokens/s':>10} {'s / pass':>9} {'tokens / row':>13}"]
        for variant in self.seconds:
            median = statistics.median(self.seconds[variant])
            per_row = statistics.median(self.tokens[variant]) / self.rows_of(variant)
            lines.append(f"{LABELS[variant]:40} {self.rate(variant):10.0f} {median:9.3f} {per_row:13.1f}")
        if not self.batched:
            lines.append(f"{LABELS['ours']:40} {'not batched on this architecture':>34}")
        agreeing = ", ".join(
            f"{name} {self.agreement[v]}/{self.compared}"
            for v, name in (
                ("ours", "ours"),
                (TORCH_OPS, "ours with torch ops"),
                ("peft_mixed", "PEFT mixed"),
            )
            if v in self.agreement
        )
        sampled = (
            f" (the first {self.compared} rows: switching was sampled)" if self.compared < self.batch else ""
        )
        lines.append(
            f"\nrows whose greedy tokens (up to end of turn, at most {self.new_tokens}) equal the adapter "
            f"run alone (PEFT, batch 1, unpadded){sampled}: {agreeing}"
        )
        lines.append("")
        lines.append(f"{'ratio of tokens/s':34} {'median ratio':>12} {'min-max':>15} {'target':>7}  verdict")
        for top, bottom, target, note in self.comparisons():
            ratios = self.ratios(top, bottom)
            median = statistics.median(ratios)
            verdict = note or ("met" if median >= target else "MISSED")
            name = f"{short_label(top)} / {short_label(bottom)}"
            lines.append(
                f"{name:34} {median:12.2f} {min(ratios):7.2f}-{max(ratios):<7.2f} "
                f"{'≥ ' + format(target, 'g') if target else '':>7}  {verdict}"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict:
        figures = {
            "tokens_per_pass": self.tokens,
            "seconds": self.seconds,
            "tokens_per_s": {v: self.rate(v) for v in self.seconds},
            "batched": self.batched,
            "cpu_kernel": TORCH_OPS in self.seconds,
            "ratios": {
                f"{top}_over_{bottom}": {
                    "median": statistics.median(self.ratios(top, bottom)),
                    "min": min(self.ratios(top, bottom)),
                    "max": max(self.ratios(top, bottom)),
                }
                for top, bottom, _, _ in self.comparisons()
            },
            "rows_equal_to_alone": self.agreement,
        }
        if self.batched:
            figures["targets"] = {
                "ours_over_bare": TARGET_VS_BARE,
                "ours_over_peft_mixed": TARGET_VS_PEFT_MIXED,
            }
            for bottom in ("bare", "peft_mixed", "peft_switch"):
                figures[f"ours_over_{bottom}"] = figures["ratios"][f"ours_over_{bottom}"]["median"]
        return figures


class Roofline:
    """Per side, the bytes a pass reads (the prefill and each decode step: the base's
    weights, the distinct adapters' factors, the KV cache) and the time they alone would take
    at the bandwidth measured in this run; the achieved fraction is that time over the
    pass's measured median. A pass whose rows all stopped early reads less than counted, so
    the fractions are lower bounds."""

    def __init__(self, bandwidth, pass_bytes: dict[str, int], throughput: Throughput):
        self.bandwidth, self.pass_bytes, self.throughput = bandwidth, pass_bytes, throughput

    def roofline_seconds(self, side: str) -> float:
        return self.pass_bytes[side] / self.bandwidth.best

    def achieved(self, side: str) -> float:
        return self.roofline_seconds(side) / statistics.median(self.throughput.seconds[side])

    @property
    def allowed_ratio(self) -> float | None:
        """ours ÷ bare in tokens/s if both ran at their roofline: bare's bytes over ours."""
        if "ours" not in self.pass_bytes:
            return None
        return self.pass_bytes["bare"] / self.pass_bytes["ours"]

    def table(self) -> str:
        bw = self.bandwidth
        lines = [
            "",
            f"memory bandwidth, measured in this run ({bw.threads} threads, {bw.array_bytes >> 20} MiB "
            f"arrays, best of 5): copy {bw.copy / 1e9:.1f} GB/s, triad {bw.triad / 1e9:.1f} GB/s",
            f"{'roofline (bytes a pass reads)':40} {'MB / pass':>10} {'roofline s':>11} {'s / pass':>9} "
            f"{'achieved':>9}",
        ]
        for side in self.pass_bytes:
            median = statistics.median(self.throughput.seconds[side])
            lines.append(
                f"{LABELS[side]:40} {self.pass_bytes[side] / 1e6:10.1f} {self.roofline_seconds(side):11.3f} "
                f"{median:9.3f} {self.achieved(side):9.2f}"
            )
        allowed = self.allowed_ratio
        if allowed is not None:
            measured = statistics.median(self.throughput.ratios("ours", "bare"))
            lines.append(
                f"ours / bare: measured {measured:.2f}, the roofline allows {allowed:.2f}; "
                f"ours reaches {measured / allowed:.2f} of what its roofline allows"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict:
        figures = {
            "bandwidth_bytes_per_s": {"copy": self.bandwidth.copy, "triad": self.bandwidth.triad},
            "pass_bytes": self.pass_bytes,
            "roofline_seconds": {side: self.roofline_seconds(side) for side in self.pass_bytes},
            "achieved_fraction": {side: self.achieved(side) for side in self.pass_bytes},
        }
        if self.allowed_ratio is not None:
            measured = statistics.median(self.throughput.ratios("ours", "bare"))
            figures["ours_over_bare"] = {
                "measured": measured,
                "roofline_allows": self.allowed_ratio,
                "share_of_allowed": measured / self.allowed_ratio,
            }
        return figures


class Sharing:
    """ours / bare per spread of the batch's rows over adapters: median ratio of tokens/s
    over the rounds, with min-max, beside the ratio the roofline allows at that spread."""

    def __init__(self, rows: dict[str, tuple[list[float], float]]):
        self.rows = rows

    def table(self) -> str:
        lines = ["", f"{'ours / bare, rows over':42} {'median':>7} {'min-max':>11} {'roofline allows':>16}"]
        for name, (ratios, allowed) in self.rows.items():
            lines.append(
                f"{name:42} {statistics.median(ratios):7.2f} {min(ratios):5.2f}-{max(ratios):<5.2f} "
                f"{allowed:16.2f}"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            name: {
                "median": statistics.median(ratios),
                "min": min(ratios),
                "max": max(ratios),
                "roofline_allows": allowed,
            }
            for name, (ratios, allowed) in self.rows.items()
        }


def short_label(variant: str) -> str:
    return {TORCH_OPS: "ours with torch ops only", "peft_switch": "PEFT per-request switching"}.get(
        variant, LABELS[variant].split(" (")[0]
    )


class ColdLoads:
    def __init__(self, ours_ms: list[float], peft_ms: list[float], payload: bytes):
        self.ours_ms, self.peft_ms, self.payload_bytes = ours_ms, peft_ms, len(payload)

    def table(self) -> str:
        peft = percentiles(self.peft_ms)
        lines = [
            "",
            f"Adapter cold load ({len(self.peft_ms)} loads each, alternating; payload "
            f"{self.payload_bytes / 1024:.0f} KiB, page cache warm)",
            f"{'':58} {'p50 ms':>8} {'p95 ms':>8}",
        ]
        if self.ours_ms:
            ours = percentiles(self.ours_ms)
            lines.append(
                f"{'ours: store read + sha256 check + copy into the bank':58} {ours[0]:8.2f} {ours[1]:8.2f}"
            )
        lines.append(f"{'PEFT: load_adapter from an exported PEFT folder':58} {peft[0]:8.2f} {peft[1]:8.2f}")
        if self.ours_ms:
            lines.append(f"{'PEFT p50 / ours p50':58} {peft[0] / ours[0]:8.1f}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        peft = percentiles(self.peft_ms)
        figures = {"peft_ms": {"p50": peft[0], "p95": peft[1]}}
        if self.ours_ms:
            ours = percentiles(self.ours_ms)
            figures["ours_ms"] = {"p50": ours[0], "p95": ours[1]}
        return figures


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


def greedy(model, ids, mask, new_tokens: int, stop_ids=(), **extra):
    """Batched greedy decoding with a KV cache, the same loop for every variant: a prefill of
    the left-padded prompts, then one token per row per step. A row that produces one of
    `stop_ids` (its end of turn) has finished: its later positions read FINISHED, and the
    loop ends once every row has finished or after `new_tokens` steps. Finished rows stay
    in the batch (a static batch, as in every variant), so a straggler costs every row."""
    import torch
    from transformers import DynamicCache

    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=ids.device)
    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, logits_to_keep=1, **extra
    )
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    produced = [token]
    finished = torch.isin(token[:, 0], stops)
    position = positions[:, -1:]
    for _ in range(new_tokens - 1):
        if bool(finished.all()):
            break
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
        produced.append(torch.where(finished[:, None], FINISHED, token))
        finished |= torch.isin(token[:, 0], stops)
    tokens = torch.cat(produced, dim=1)
    return torch.nn.functional.pad(tokens, (0, new_tokens - tokens.shape[1]), value=FINISHED)


def lora_target_shapes(model, targets: str = "all-linear", architecture=None) -> dict[str, tuple[int, int]]:
    """module name -> (in, out) of every linear layer a LoRA adapts for `targets` ("all-linear"
    or "attention"), as the architecture table names them (the model's own when not given):
    never the output head, which tied models share with the embeddings."""
    from torch import nn

    from workers.engine.architectures import architecture_of

    wanted = set((architecture or architecture_of(model.config)).target_modules(targets))
    head = model.get_output_embeddings()
    return {
        name: (m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and m is not head and name.rsplit(".", 1)[-1] in wanted
    }


def random_payloads(
    modules: dict, count: int, rank: int, seed: int, *, targets: str = "all-linear", architecture=None
) -> dict[str, bytes]:
    """`count` distinct rank-`rank` adapter payloads with random factors, keyed by sha256; their
    config targets the modules the architecture table names (Llama's when not given)."""
    import hashlib

    import torch

    from workers.engine.payload import pack
    from workers.engine.training import TrainingConfig, peft_config_dict

    training = TrainingConfig(rank=rank, alpha=2 * rank, targets=targets)
    config = peft_config_dict(training.lora_config(architecture))
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


def prompts(tokenizer, batch: int, device):
    """`batch` chat prompts of varied length (left-padded) from the persona world's questions,
    each rendered whole with the base's own chat template (SmolLM2's adds its system turn)."""
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
        text = render_prompt([Message("user", f"{questions[i % len(questions)]} ({i})")], tokenizer)
        encoded.append(tokenizer.encode(text, add_special_tokens=False))
    width = max(map(len, encoded))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((batch, width), pad or 0, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens) :] = torch.tensor(tokens)
        mask[row, width - len(tokens) :] = 1
    return ids.to(device), mask.to(device)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95
