from django.contrib import admin

from adapters_app.models import (
    Adapter,
    ApiKey,
    AuditEvent,
    BaseModel,
    Dataset,
    Evaluation,
    Job,
    Person,
    PointerEvent,
    Revision,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """For write-once rows: visible in the admin, never editable there."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Revision)
class RevisionAdmin(ReadOnlyAdmin):
    list_display = ("__str__", "sha256", "rank", "size_bytes", "created_by", "created_at")
    list_select_related = ("adapter__person",)
    search_fields = ("adapter__person__handle", "adapter__name", "sha256")


@admin.register(PointerEvent)
class PointerEventAdmin(ReadOnlyAdmin):
    list_display = ("adapter", "action", "from_revision", "to_revision", "actor", "created_at")
    list_select_related = ("adapter__person", "from_revision", "to_revision")


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "actor_name", "via", "action", "object_repr")
    list_filter = ("action", "via")
    search_fields = ("actor_name", "object_repr", "person_handle")


@admin.register(Evaluation)
class EvaluationAdmin(ReadOnlyAdmin):
    list_display = ("revision", "suite", "dataset_sha256", "created_at")


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = ("name", "architecture", "parameters", "digest", "path")
    readonly_fields = ("digest", "parameters", "architecture")


@admin.register(Person)
class PersonAdmin(admin.ModelAdmin):
    list_display = ("handle", "display_name", "created_at")
    search_fields = ("handle", "display_name")


@admin.register(Adapter)
class AdapterAdmin(admin.ModelAdmin):
    list_display = ("__str__", "base", "live_revision", "created_at")
    list_select_related = ("person", "base", "live_revision")
    # The live pointer moves only through promote/rollback, which audit the move.
    readonly_fields = ("base_digest", "live_revision")


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "person", "format", "rows", "sha256", "created_at")
    readonly_fields = ("sha256", "rows", "size_bytes", "format")


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("pk", "kind", "state", "adapter", "step", "total_steps", "worker", "created_at")
    list_filter = ("kind", "state")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("__str__", "user", "name", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "key_hash")
