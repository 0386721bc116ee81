import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, QuerySet

from adapters_app.lifecycle import audit
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import Conflict, Invalid, NotFound
from adapters_app.lifecycle.roles import authorize
from adapters_app.models import BaseModel
from adapters_app.models.person import is_handle, validate_handle
from workers.engine import base_models as engine_bases
from workers.engine.architectures import UnknownArchitecture, architecture_of

MICRO_BASE_NAME = "mint-micro"
# Imported bases live apart from the pretrained family's cached builds (MINT_BASES_DIR/<name>),
# so an import can never land on, or be mistaken for, one of those.
IMPORTED_DIR = "imported"


def base_models() -> QuerySet:
    """Every registered base, each with `adapter_count` (the adapters bound to it)."""
    return BaseModel.objects.annotate(adapter_count=Count("adapter")).order_by("name")


def get_base_model(name: str) -> BaseModel:
    base = base_models().filter(name=name).first() if is_handle(name) else None
    if base is None:
        raise NotFound(f"no base model {name!r}")
    return base


def serving_of(base: BaseModel) -> tuple[str, str]:
    """(how the serving bank serves the base's adapters, why not batched when it is not)."""
    try:
        arch = architecture_of(base.architecture)
    except UnknownArchitecture as exc:
        return "not served", str(exc)
    return arch.serving_mode, "" if arch.batched else arch.unbatched_reason


def bytes_on_disk(base: BaseModel) -> int | None:
    """What the base's folder takes on this machine (None when it is not here)."""
    folder = Path(base.path)
    if not folder.is_dir():
        return None
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


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
            context_length=info.get("context_length"),
        )
        audit.record(actor, "base_model.register", base, after={"digest": base.digest, "path": base.path})
    return base


def import_base_model(
    name: str,
    source: str | Path,
    *,
    actor: Actor,
    license: str | None = None,
    expected_sha256: str | None = None,
    on_progress=None,
) -> BaseModel:
    """Import a pretrained causal LM (a local HF folder, a .gguf file, or a packaged base by its
    short name, `workers.engine.base_import.PACKAGED`) and register it as `name`.

    The import is converted into a hidden folder under MINT_BASES_DIR/imported/ first; only
    once its digest is known is it judged: the same weights already registered under `name`
    return that row and leave its folder untouched; the same weights under another name, or
    another base under `name`, are a Conflict. On any refusal or failure nothing is registered
    and the converted folder is removed. Slow for real models (tens of seconds, most of it
    dequantizing a GGUF); `on_progress(stage, done, total)` hears about each step.
    """
    from workers.engine import base_import

    authorize(actor, "base_model.register")
    _check_name(name)
    existing = BaseModel.objects.filter(name=name).first()
    if existing is not None and _already_imported(existing, source):
        return existing
    root = Path(settings.MINT_BASES_DIR) / IMPORTED_DIR
    root.mkdir(parents=True, exist_ok=True)
    incoming = root / f".incoming-{uuid.uuid4().hex}"
    try:
        try:
            if str(source) in base_import.PACKAGED:
                imported = base_import.import_packaged(
                    str(source), incoming, expected_sha256=expected_sha256, on_progress=on_progress
                )
            else:
                imported = base_import.import_base(
                    source,
                    incoming,
                    expected_sha256=expected_sha256,
                    license=license,
                    on_progress=on_progress,
                )
        except base_import.ImportRefused as exc:
            raise Invalid(f"cannot import {source}: {exc}") from None
        if license and str(source) in base_import.PACKAGED:
            imported.license = license
        twin = BaseModel.objects.filter(digest=imported.digest).first()
        if twin is not None and twin.name == name:
            return twin  # the same weights, again: nothing to change
        if twin is not None:
            raise Conflict(
                f"these weights are already registered as {twin.name!r} (digest {imported.digest[:12]}…)"
            )
        if existing is not None:
            raise Conflict(
                f"a different base model is already registered as {name!r} "
                f"(digest {existing.digest[:12]}…, this import's is {imported.digest[:12]}…)"
            )
        return _publish(name, incoming, root / name, imported, actor=actor)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


def _already_imported(base: BaseModel, source) -> bool:
    """Whether `base` was imported from these very bytes and its folder is intact, which
    is known in seconds, where converting again takes up to a minute."""
    from workers.engine import base_import

    recorded = base_import.import_record(base.path).get("source_sha256")
    if not recorded:
        return False
    try:
        same_source = recorded == base_import.source_sha256(source)
    except base_import.ImportRefused as exc:
        raise Invalid(f"cannot import {source}: {exc}") from None
    return same_source and engine_bases.weights_digest(base.path) == base.digest


def _publish(name: str, incoming: Path, dest: Path, imported, *, actor: Actor) -> BaseModel:
    """Register the base and move its converted folder into place, in one step.

    The row is inserted first: of two imports racing for one name or one digest, the second
    waits on the unique index and is refused there, before it touches the folder. Only then
    is the folder moved, inside the transaction, so a failed commit takes the folder away
    again. A folder already at `dest` belongs to no registered base (the name was free), so
    it is what an interrupted import left; it is replaced."""
    moved = False
    try:
        with transaction.atomic():
            base = BaseModel.objects.create(
                name=name,
                path=str(dest.resolve()),
                digest=imported.digest,
                parameters=imported.parameters,
                architecture=imported.architecture,
                context_length=imported.context_length,
                license=imported.license[:200],
                source=imported.source[:500],
            )
            audit.record(
                actor,
                "base_model.import",
                base,
                after={
                    "digest": base.digest,
                    "path": base.path,
                    "source": base.source,
                    "source_sha256": imported.source_sha256,
                    "license": base.license,
                    "architecture": base.architecture,
                    "notes": imported.notes,
                },
            )
            if BaseModel.objects.filter(path=base.path).exclude(pk=base.pk).exists():
                raise Conflict(f"{dest} is the folder of another registered base")
            if dest.exists():
                shutil.rmtree(dest)
            incoming.rename(dest)
            moved = True
    except IntegrityError:
        raise Conflict(
            f"another import registered {name!r} or these weights (digest "
            f"{imported.digest[:12]}…) at the same time"
        ) from None
    except BaseException:
        if moved:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    return base


def _check_name(name: str) -> None:
    from django.core.exceptions import ValidationError

    try:
        validate_handle(name)
    except ValidationError as exc:
        raise Invalid(exc.messages[0]) from None


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


def ensure_shaped_base(name: str, *, actor: Actor | None = None) -> BaseModel:
    """Build (if needed) and register a base of a known shape (`micro_base.SHAPED`: random
    weights at a real model's layer shape, for benchmarks), under that name."""
    from workers.engine.micro_base import SHAPED, build_micro_base

    existing = BaseModel.objects.filter(name=name).first()
    if existing and Path(existing.path).exists():
        return existing
    folder = Path(settings.MINT_BASES_DIR) / name
    if not (folder / "config.json").exists():
        build_micro_base(folder, seed=0, shape=SHAPED[name])
    return register_base_model(name, folder, actor=actor or Actor.system("cli"))


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
