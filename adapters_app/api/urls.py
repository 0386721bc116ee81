from django.urls import path

from adapters_app.api import base_views, study_views, views

app_name = "api"

urlpatterns = [
    path("openapi.json", views.openapi_json, name="openapi"),
    path("base-models", base_views.base_models_collection, name="base-models"),
    path("base-models/<str:name>", base_views.base_model_detail, name="base-model"),
    path("people", views.people_collection, name="people"),
    path("people/<str:person>/adapters", views.person_adapters, name="person-adapters"),
    path("people/<str:person>/erase", views.person_erase, name="person-erase"),
    path("adapters/<str:person>/<str:adapter>", views.adapter_detail, name="adapter"),
    path("adapters/<str:person>/<str:adapter>/datasets", views.adapter_datasets, name="datasets"),
    path("adapters/<str:person>/<str:adapter>/train", views.adapter_train, name="train"),
    path("adapters/<str:person>/<str:adapter>/evaluate", views.adapter_evaluate, name="evaluate"),
    path("adapters/<str:person>/<str:adapter>/infer", views.adapter_infer, name="infer"),
    path("adapters/<str:person>/<str:adapter>/gate", views.adapter_gate, name="gate"),
    path("adapters/<str:person>/<str:adapter>/promote", views.adapter_promote, name="promote"),
    path("adapters/<str:person>/<str:adapter>/rollback", views.adapter_rollback, name="rollback"),
    path("jobs", views.jobs_collection, name="jobs"),
    path("jobs/<int:job_id>", views.job_detail, name="job"),
    path("jobs/<int:job_id>/cancel", views.job_cancel, name="job-cancel"),
    path("revisions/<str:person>/<str:adapter>/<str:rev>/download", views.revision_download, name="download"),
    path("studies", study_views.studies_collection, name="studies"),
    path("studies/<int:study_id>", study_views.study_detail, name="study"),
    path("studies/<int:study_id>/cancel", study_views.study_cancel, name="study-cancel"),
    path("studies/<int:study_id>/resume", study_views.study_resume, name="study-resume"),
    path("studies/<int:study_id>/results", study_views.study_results, name="study-results"),
]
