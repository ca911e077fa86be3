"""The device registry in the operators' admin: read-only, across tenants.

Operators see which devices each tenant lets in (name, kind, AE title, host, status, approval), to help a hospital
connect its modalities; registering, approving and revoking are the tenant administrators' work, on their pages,
through the services. Devices hold no patient data. This module is allow-listed for `unscoped_objects`: operators
look across tenants.
"""

from __future__ import annotations

from django.contrib import admin
from django.db import models
from django.http import HttpRequest

from audit.admin import ReadOnlyAdmin
from devices.models import Device


@admin.register(Device)
class DeviceAdmin(ReadOnlyAdmin):
    list_display = ("name", "tenant", "kind", "calling_ae_title", "host", "status", "requested_by", "approved_by",
                    "approved_at", "created_at")  # fmt: skip
    fields = list_display
    readonly_fields = list_display
    list_filter = ["tenant", "status", "kind"]
    search_fields = ["name", "ae_title", "host"]
    list_select_related = ["tenant", "requested_by", "approved_by"]
    ordering = ["tenant__slug", "name"]
    show_full_result_count = False

    @admin.display(description="AE title", ordering="ae_title")
    def calling_ae_title(self, device: Device) -> str:
        return device.ae_title

    def get_queryset(self, request: HttpRequest) -> models.QuerySet[Device]:
        return Device.unscoped_objects.select_related("tenant", "requested_by", "approved_by")
