from django.contrib import admin
from django.urls import include, path

from adapters_app.metrics.views import metrics

# Under /api/ and /v1/ each API's JSON error object; elsewhere Django's own pages.
handler400 = "adapters_app.api.error_pages.bad_request"
handler403 = "adapters_app.api.error_pages.permission_denied"
handler404 = "adapters_app.api.error_pages.page_not_found"
handler500 = "adapters_app.api.error_pages.server_error"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("adapters_app.api.urls")),
    path("v1/", include("adapters_app.openai_api.urls")),
    path("metrics", metrics, name="metrics"),
    path("", include("adapters_app.console.urls")),
]
