"""/v1/: the OpenAI-compatible API, behind the same keys as /api/, with OpenAI's error object."""

from adapters_app.api.auth import declare_api, refuse_in_json
from adapters_app.openai_api import views

app_name = "openai"

openai = declare_api(
    urls_namespace=app_name,
    render_error=views.openai_error,
    # An application serving one person calls /v1 with that person's key (lifecycle.keys).
    person_keys=True,
    max_body_setting="MINT_V1_MAX_BODY_BYTES",
    title="MinT console OpenAI-compatible API",
)
openai.add_router("", views.router)

urlpatterns = refuse_in_json(openai.urls[0], views.openai_error)
