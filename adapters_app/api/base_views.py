"""/api/base-models: the registered bases, and importing one (admins).

An import runs inside the request: tens of seconds for a real model (most of it dequantizing
a GGUF), under a second for a small HF folder. A client should allow for that in its timeout;
the import is idempotent, so one that timed out on the client's side can simply be repeated.
"""

from django.http import JsonResponse

from adapters_app.api import serializers as out
from adapters_app.api.auth import api_endpoint, json_body
from adapters_app.lifecycle.base_models import base_models, get_base_model, import_base_model
from adapters_app.lifecycle.errors import Invalid
from adapters_app.models import BaseModel
from workers.engine.base_import import PACKAGED


@api_endpoint("GET", "POST")
def base_models_collection(request):
    if request.method == "POST":
        return _import(request)
    return JsonResponse({"data": [out.base_model_dict(base) for base in base_models()]})


@api_endpoint("GET")
def base_model_detail(request, name):
    return JsonResponse(out.base_model_dict(get_base_model(name), detail=True))


def _import(request):
    body = json_body(request)
    name, source, package = body.get("name"), body.get("from"), body.get("package")
    if not isinstance(name, str) or not name:
        raise Invalid("name is required")
    if (source is None) == (package is None):
        raise Invalid(
            "give either `from` (a HF folder or .gguf file on the server) or `package` "
            f"({', '.join(PACKAGED)})"
        )
    if package is not None and package not in PACKAGED:
        raise Invalid(f"package must be one of {', '.join(PACKAGED)}")
    for field in ("from", "sha256", "license"):
        if body.get(field) is not None and not isinstance(body[field], str):
            raise Invalid(f"{field} must be a string")
    before = BaseModel.objects.filter(name=name).values_list("digest", flat=True).first()
    base = import_base_model(
        name,
        package or source,
        actor=request.actor,
        license=body.get("license"),
        expected_sha256=body.get("sha256"),
    )
    created = before != base.digest
    return JsonResponse(
        out.base_model_dict(get_base_model(base.name), detail=True), status=201 if created else 200
    )
