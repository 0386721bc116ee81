"""What the benchmark commands share: the base they measure on and the machine they ran on."""

from __future__ import annotations

import platform
import resource
from pathlib import Path

from django.core.management.base import CommandError

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.base_models import ensure_family_base, ensure_micro_base
from adapters_app.lifecycle.errors import LifecycleError
from adapters_app.management.progress import progress_bar


def bench_base(name: str, stdout):
    """The registered base `name` ("micro" or a family member), pretrained on first use with
    a progress bar on `stdout`; a refusal becomes the command's error."""
    try:
        if name == "micro":
            return ensure_micro_base()
        return ensure_family_base(
            name, actor=Actor.system("cli"), on_step=progress_bar(stdout, name), log=stdout.write
        )
    except LifecycleError as exc:
        raise CommandError(str(exc)) from None


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
