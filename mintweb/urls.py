from django.contrib import admin
from django.urls import include, path

from adapters_app.metrics.views import metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("adapters_app.api.urls")),
    path("v1/", include("adapters_app.openai_api.urls")),
    path("metrics", metrics, name="metrics"),
    path("", include("adapters_app.console.urls")),
]
