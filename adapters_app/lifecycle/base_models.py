from pathlib import Path

from django.conf import settings
from django.db import transaction

from adapters_app.lifecycle import audit
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import Conflict, Invalid
from adapters_app.lifecycle.roles import authorize
from adapters_app.models import BaseModel
from adapters_app.models.person import validate_handle
from workers.engine import base_models as engine_bases

MICRO_BASE_NAME = "mint-micro"


def register_base_model(name: str, path: str | Path, *, actor: Actor) -> BaseModel:
    """Register a local HF causal-LM folder; the same weights register once."""
    authorize(actor, "base_model.register")
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


def ensure_family_base(
    name: str,
    *,
    actor: Actor,
    rebuild: bool = False,
    device: str = "cpu",
    on_step=None,
    log=lambda line: None,
) -> BaseModel:
    """Pretrain (or reuse from var/bases/, cached by spec) and register one default base.

    `on_step(step, total, loss)` reports pretraining progress."""
    from workers.engine.base_family import FAMILY, build_base, is_built

    if name not in FAMILY:
        raise Invalid(f"unknown base {name!r}; choose from {', '.join(FAMILY)}")
    spec = FAMILY[name]
    dest = (Path(settings.MINT_BASES_DIR) / name).resolve()
    registered = BaseModel.objects.filter(name=name).first()
    if registered and Path(registered.path) != dest:
        raise Conflict(f"{name} is registered from another folder ({registered.path})")
    if registered and not is_built(spec, dest) and dest.exists():
        # Adapters are bound to the registered weights' digest; building over the
        # folder would pull those weights out from under them.
        raise Conflict(
            f"{name} at {dest} is registered (digest {registered.digest[:12]}…) but was built by an older "
            "recipe; use a fresh MINT_VAR_DIR (or move the folder and its registration aside) to build "
            "the current one"
        )
    if rebuild or not is_built(spec, dest):
        build_base(spec, dest, on_step=on_step, device=device)
    else:
        log(f"{name}: cached at {dest}")
    if registered and registered.digest == engine_bases.weights_digest(dest):
        return registered
    return register_base_model(name, dest, actor=actor)


def ensure_micro_base(*, actor: Actor | None = None) -> BaseModel:
    """Build (if needed) and register the micro base the tests use."""
    from workers.engine.micro_base import build_micro_base

    existing = BaseModel.objects.filter(name=MICRO_BASE_NAME).first()
    if existing and Path(existing.path).exists():
        return existing
    folder = Path(settings.MINT_BASES_DIR) / MICRO_BASE_NAME
    if not (folder / "config.json").exists():
        build_micro_base(folder, seed=0)
    return register_base_model(MICRO_BASE_NAME, folder, actor=actor or Actor.system("cli"))
