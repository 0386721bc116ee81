from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("adapters_app.api.urls")),
    path("v1/", include("adapters_app.openai_api.urls")),
    path("", include("adapters_app.console.urls")),
]
