"""/api/: the management API, and /api/openapi.json, the document of both APIs."""

from django.http import JsonResponse
from django.urls import path

from adapters_app.api import base_views, study_views, views
from adapters_app.api.auth import answer_wrong_methods_in_json, declare_api, management_error
from adapters_app.api.openapi import openapi_document

app_name = "api"

management = declare_api(
    urls_namespace=app_name,
    render_error=management_error,
    title="MinT console API",
    description="Manage personal adapters (people, adapters, datasets, training jobs, revisions, "
    "the live pointer) and run OpenAI-compatible inference where `model` is `person/adapter`, "
    "`person/adapter@rN`, `person/adapter@<sha256 prefix>` or a base model. "
    "Keys: `python manage.py create_api_key <username>`.",
)
management.add_router("", base_views.router)
management.add_router("", views.router)
management.add_router("", study_views.router)


def openapi_json(request):
    """Generated from the declarations of /api/ and /v1/ (nothing here is written by hand)."""
    document = management.get_openapi_schema()
    # /v1 is still the hand-written description until it is declared with ninja too.
    legacy = openapi_document(request.build_absolute_uri("/"))
    document["paths"].update({p: ops for p, ops in legacy["paths"].items() if p.startswith("/v1/")})
    document["servers"] = [{"url": request.build_absolute_uri("/").rstrip("/")}]
    return JsonResponse(document, json_dumps_params={"indent": 2})


urlpatterns = [
    path("openapi.json", openapi_json, name="openapi"),
    *answer_wrong_methods_in_json(management.urls[0], management_error),
]
