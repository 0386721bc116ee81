from pathlib import Path

from django.conf import settings
from django.db import transaction

from adapters_app.lifecycle import audit
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import Conflict, Invalid
from adapters_app.models import BaseModel
from adapters_app.models.person import validate_handle
from workers.engine import base_models as engine_bases

MICRO_BASE_NAME = "mint-micro"


def register_base_model(name: str, path: str | Path, *, actor: Actor) -> BaseModel:
    """Register a local HF causal-LM folder; the same weights register once."""
    from django.core.exceptions import ValidationError

    try:
        validate_handle(name)
    except ValidationError as exc:
        raise Invalid(exc.messages[0]) from None
    path = Path(path).resolve()
    try:
        info = engine_bases.describe(path)
    except (engine_bases.BaseModelError, OSError, ValueError) as exc:
        raise Invalid(f"cannot register {path}: {exc}") from None
    existing = BaseModel.objects.filter(digest=info["digest"]).first()
    if existing:
        if existing.name != name:
            raise Conflict(
                f"these weights are already registered as {existing.name!r} (digest {info['digest'][:12]}…)"
            )
        return existing
    if BaseModel.objects.filter(name=name).exists():
        raise Conflict(f"a different base model is already registered as {name!r}")
    with transaction.atomic():
        base = BaseModel.objects.create(
            name=name,
            path=str(path),
            digest=info["digest"],
            parameters=info["parameters"],
            architecture=info["architecture"],
        )
        audit.record(actor, "base_model.register", base, after={"digest": base.digest, "path": base.path})
    return base


def ensure_micro_base(*, actor: Actor | None = None) -> BaseModel:
    """Build (if needed) and register the micro base used by tests and the demo."""
    from workers.engine.micro_base import build_micro_base

    existing = BaseModel.objects.filter(name=MICRO_BASE_NAME).first()
    if existing and Path(existing.path).exists():
        return existing
    folder = Path(settings.MINT_BASES_DIR) / MICRO_BASE_NAME
    if not (folder / "config.json").exists():
        build_micro_base(folder, seed=0)
    return register_base_model(MICRO_BASE_NAME, folder, actor=actor or Actor.system("cli"))
