"""Import a pretrained causal LM as a base: a local HF folder, a .gguf file, or a packaged one.

manage.py import_base NAME --from PATH [--sha256 HEX] [--license TEXT]
manage.py import_base smollm2-135m          (or gemma3-270m: the packaged bases)
"""

import time

from django.core.management.base import BaseCommand, CommandError

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.base_models import import_base_model
from adapters_app.lifecycle.errors import LifecycleError
from adapters_app.models import BaseModel
from workers.engine.architectures import architecture_of
from workers.engine.base_import import PACKAGED


class Command(BaseCommand):
    help = (
        "Import a pretrained causal LM (a local HF folder or a .gguf file, or a packaged base: "
        f"{', '.join(PACKAGED)}) as a float32 safetensors base, and register it."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "name", help=f"the base's name; a packaged base's short name imports it ({', '.join(PACKAGED)})"
        )
        parser.add_argument(
            "--from", dest="source", help="a HF model folder or a .gguf file (not with a packaged name)"
        )
        parser.add_argument("--sha256", help="refuse the import unless the file (or folder digest) has it")
        parser.add_argument("--license", help="the license to record, when the source does not state it")

    def handle(self, *args, name, source, sha256, license, **options):
        if source is None:
            if name not in PACKAGED:
                raise CommandError(
                    f"give --from PATH to import {name!r}, or name a packaged base: {', '.join(PACKAGED)}"
                )
            source = name
        self.stdout.write(f"importing {source} as {name}…")
        before = BaseModel.objects.filter(name=name).values_list("pk", flat=True).first()
        try:
            base = import_base_model(
                name,
                source,
                actor=Actor.system("cli"),
                license=license,
                expected_sha256=sha256,
                on_progress=StageProgress(self.stdout),
            )
        except LifecycleError as exc:
            raise CommandError(str(exc)) from None
        if base.pk == before:
            self.stdout.write(f"{name} was already imported from these weights; nothing changed.")
        arch = architecture_of(base.architecture)
        for label, value in (
            ("name", base.name),
            ("digest", base.digest),
            ("parameters", f"{base.parameters:,}"),
            ("architecture", f"{base.architecture} (serving: {arch.serving_mode})"),
            ("context", f"{base.context_length:,} tokens" if base.context_length else "not stated"),
            ("license", base.license or "not stated"),
            ("source", base.source or "—"),
            ("folder", base.path),
        ):
            self.stdout.write(f"  {label:<13} {value}")


class StageProgress:
    """One line when a stage starts and when it ends, a line every ten seconds between: the
    steps that take time (hashing, dequantizing, writing) are a handful, so lines beat a bar."""

    def __init__(self, stdout, every: float = 10.0):
        self.stdout, self.every = stdout, every
        self.stage, self.started, self.said = None, 0.0, 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self.stage:
            if self.stage is not None:
                self.stdout.write(f"  … {self.stage}: done in {now - self.started:.1f} s")
            self.stage, self.started, self.said = stage, now, now
            self.stdout.write(f"  {stage}…")
        elif total and (done >= total or now - self.said >= self.every):
            self.said = now
            self.stdout.write(f"  {stage}: {done / total:.0%} of {total / 1e6:,.0f} MB")
