"""/api/base-models: the registered bases, and importing one (admins).

An import runs inside the request: tens of seconds for a real model (most of it dequantizing
a GGUF), under a second for a small HF folder. A client should allow for that in its timeout;
the import is idempotent, so one that timed out on the client's side can simply be repeated.
"""

from ninja import Router, Status

from adapters_app.api import schemas
from adapters_app.api.schemas import answers
from adapters_app.lifecycle.base_models import base_models, get_base_model, import_base_model
from adapters_app.lifecycle.errors import Invalid
from adapters_app.models import BaseModel
from workers.engine.base_import import PACKAGED

router = Router()


@router.get("/base-models", response=answers({200: schemas.BaseModelList}, 401), url_name="base-models")
def list_base_models(request):
    """List the registered base models, each with its serving mode and adapter count."""
    return {"data": list(base_models())}


@router.post(
    "/base-models",
    response=answers({201: schemas.BaseModelDetail, 200: schemas.BaseModelDetail}, 400, 401, 403, 409),
    url_name="base-models",
)
def import_base(request, payload: schemas.BaseModelImport):
    """Import a pretrained causal LM as a base (admin role): a HF folder or .gguf file on the
    server (`from`) or a packaged base (`package`). Runs in the request: tens of seconds for a
    real model. 201 when registered, 200 when these weights already are under this name
    (nothing rewritten); 409 when they are under another name or the name is taken."""
    if not payload.name:
        raise Invalid("name is required")
    if (payload.source is None) == (payload.package is None):
        raise Invalid(
            "give either `from` (a HF folder or .gguf file on the server) or `package` "
            f"({', '.join(PACKAGED)})"
        )
    before = BaseModel.objects.filter(name=payload.name).values_list("digest", flat=True).first()
    base = import_base_model(
        payload.name,
        payload.package or payload.source,
        actor=request.actor,
        license=payload.license,
        expected_sha256=payload.sha256,
    )
    created = before != base.digest
    return Status(201 if created else 200, get_base_model(base.name))


@router.get(
    "/base-models/{name}", response=answers({200: schemas.BaseModelDetail}, 401, 404), url_name="base-model"
)
def base_model_detail(request, name: str):
    """A base model with its folder and size."""
    return get_base_model(name)
