from django.contrib.auth import views as auth_views
from django.urls import path, register_converter

from adapters_app.console import base_views, compare_views, key_views, study_views, update_views, views
from adapters_app.console import residency as residency_views
from adapters_app.console import workers as worker_views
from adapters_app.console.login import ThrottledLoginView


class RevisionLabelConverter:
    """`r<N>`: a revision's label, so `/people/alice/assistant/r2/` never clashes with an action."""

    regex = r"r[0-9]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(RevisionLabelConverter, "rev")

app_name = "console"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("login/", ThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("people/", views.people, name="people"),
    path("people/new", views.person_create, name="person_create"),
    path("people/<slug:handle>/", views.person, name="person"),
    path("people/<slug:handle>/upload", views.dataset_upload, name="dataset_upload"),
    path("people/<slug:handle>/erase", views.person_erase, name="person_erase"),
    path("people/<slug:handle>/new-adapter", views.adapter_create, name="adapter_create"),
    path("people/<slug:handle>/<slug:adapter>/", views.adapter, name="adapter"),
    path("people/<slug:handle>/<slug:adapter>/train", views.train, name="train"),
    path("people/<slug:handle>/<slug:adapter>/evaluate", views.evaluate, name="evaluate"),
    path("people/<slug:handle>/<slug:adapter>/promote", views.promote, name="promote"),
    path("people/<slug:handle>/<slug:adapter>/rollback", views.rollback, name="rollback"),
    path("people/<slug:handle>/<slug:adapter>/gate", views.gate, name="gate"),
    path("people/<slug:handle>/<slug:adapter>/playground", views.playground, name="playground"),
    path(
        "people/<slug:handle>/<slug:adapter>/retrain-from-updates",
        update_views.retrain,
        name="update_retrain",
    ),
    path("people/<slug:handle>/<slug:adapter>/retrain-policy", update_views.policy, name="retrain_policy"),
    path("people/<slug:handle>/updates/<int:update_id>/dismiss", update_views.dismiss, name="update_dismiss"),
    path("people/<slug:handle>/<slug:adapter>/<rev:rev>/", views.revision, name="revision"),
    path("people/<slug:handle>/<slug:adapter>/<rev:rev>/compare", compare_views.compare, name="compare"),
    path("people/<slug:handle>/<slug:adapter>/<rev:rev>/download", views.download, name="download"),
    path(
        "people/<slug:handle>/<slug:adapter>/<rev:rev>/prefetch",
        residency_views.revision_prefetch,
        name="revision_prefetch",
    ),
    path(
        "people/<slug:handle>/<slug:adapter>/<rev:rev>/prefetch-form",
        residency_views.revision_prefetch_form,
        name="revision_prefetch_form",
    ),
    path("adapters/", views.adapters, name="adapters"),
    path("revisions/", views.revisions, name="revisions"),
    path("jobs/", views.jobs, name="jobs"),
    path("jobs/<int:job_id>/", views.job, name="job"),
    path("jobs/<int:job_id>/cancel", views.job_cancel, name="job_cancel"),
    path("jobs/<int:job_id>/retry", views.job_retry, name="job_retry"),
    path("studies/", study_views.study_list, name="studies"),
    path("studies/new", study_views.study_new, name="study_new"),
    path("studies/<int:study_id>/", study_views.study, name="study"),
    path("studies/<int:study_id>/cancel", study_views.study_cancel, name="study_cancel"),
    path("studies/<int:study_id>/resume", study_views.study_resume, name="study_resume"),
    path("studies/<int:study_id>/results.csv", study_views.study_results_csv, name="study_results_csv"),
    path("studies/<int:study_id>/results.json", study_views.study_results_json, name="study_results_json"),
    path("audit/", views.audit, name="audit"),
    path("audit/export.csv", views.audit_export, name="audit_export"),
    path("bases/", base_views.base_list, name="bases"),
    path("bases/import", base_views.base_import, name="base_import"),
    path("bases/<slug:name>/", base_views.base_detail, name="base"),
    path("keys/", key_views.key_list, name="keys"),
    path("keys/issue", key_views.key_issue, name="key_issue"),
    path("keys/<str:prefix>/revoke", key_views.key_revoke, name="key_revoke"),
    path("keys/<str:prefix>/expiry", key_views.key_expiry, name="key_expiry"),
    path("workers/", worker_views.workers, name="workers"),
    path("workers/<str:name>/", worker_views.worker, name="worker"),
    path("workers/<str:name>/residency", residency_views.worker_residency, name="worker_residency"),
]
