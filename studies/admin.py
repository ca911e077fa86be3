"""The archive in the operators' admin: only the restore drills (platform records with no patient data). Studies,
series and instances are tenants' patient data and are never shown to operators."""

from __future__ import annotations

from django.contrib import admin

from audit.admin import ReadOnlyAdmin
from studies.models import RestoreDrill


@admin.register(RestoreDrill)
class RestoreDrillAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "status", "backup_name", "recovery_seconds", "bytes_restored", "finished_at")
    fields = (*list_display, "backup_created_at", "checks", "problems")
    readonly_fields = fields
    list_filter = ["status"]
    ordering = ["-started_at"]
