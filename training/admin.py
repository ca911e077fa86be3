"""The training catalogue in the operators' admin. Operators maintain the platform catalogue that tenants adopt;
tenants' own courses, requirements and completions are managed on their pages, through the services."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from training.models import CatalogueCourse, OperatorCompletion


@admin.register(CatalogueCourse)
class CatalogueCourseAdmin(admin.ModelAdmin):
    list_display = ("title", "code", "provider", "validity_months", "evidence_required")
    search_fields = ("title", "code")
    ordering = ("title",)


@admin.register(OperatorCompletion)
class OperatorCompletionAdmin(admin.ModelAdmin):
    """Operators' own training records: added here, never changed (a newer record supersedes by its expiry)."""

    list_display = ("user", "course", "completed_on", "expires_on", "recorded_by", "created_at")
    list_filter = ("course",)
    fields = ("user", "course", "completed_on", "expires_on")

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: OperatorCompletion, form: object, change: bool) -> None:
        obj.recorded_by = request.user  # type: ignore[assignment]
        super().save_model(request, obj, form, change)  # type: ignore[arg-type]
