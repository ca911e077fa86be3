"""The archive in the operators' admin at /ops/: the restore drills (read-only platform records) and tenant
offboarding (issue 13): one operator requests it (add), another
approves it (an action), which exports the tenant, destroys its keys and stores the certificate of destruction.
Everything goes through `studies.services.offboarding`, so each step is audited. Rows show no patient data.
Allow-listed for `unscoped_objects`: operators look across tenants."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.http import Http404, HttpRequest, StreamingHttpResponse
from django.urls import path, reverse
from django.utils.html import format_html

from audit.admin import ReadOnlyAdmin
from studies.models import RestoreDrill, TenantOffboarding
from studies.services.offboarding import (
    tenant_offboarding_approve,
    tenant_offboarding_export_stream,
    tenant_offboarding_reject,
    tenant_offboarding_request,
)
from tenants.models import Tenant
from tenants.scoping import tenant_scope

SHOWN = ("tenant", "status", "reason", "requested_by", "created_at", "approved_by", "decided_at", "export_name",
         "export_sha256", "export_size", "certificate_sha256", "certificate")  # fmt: skip


@admin.register(RestoreDrill)
class RestoreDrillAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "status", "backup_name", "recovery_seconds", "bytes_restored", "finished_at")
    fields = (*list_display, "backup_created_at", "checks", "problems")
    readonly_fields = fields
    list_filter = ["status"]
    ordering = ["-started_at"]


class OffboardingRequestForm(forms.ModelForm):
    for_tenant = forms.ModelChoiceField(
        label="Tenant", queryset=Tenant.objects.filter(status=Tenant.Status.ACTIVE).order_by("slug")
    )

    class Meta:
        model = TenantOffboarding
        fields = ["reason"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        tenant = data.get("for_tenant")
        if tenant is not None:
            with tenant_scope(tenant):
                if TenantOffboarding.objects.filter(status=TenantOffboarding.Status.REQUESTED).exists():
                    raise ValidationError("An offboarding of this tenant is already waiting for approval.")
        return data

    def _post_clean(self) -> None:
        """The model is checked by the service, inside the tenant's scope (the instance has no tenant yet)."""


@admin.register(TenantOffboarding)
class TenantOffboardingAdmin(admin.ModelAdmin):
    list_display = ("tenant", "status", "requested_by", "created_at", "approved_by", "decided_at")
    list_filter = ["status"]
    list_select_related = ["tenant", "requested_by", "approved_by"]
    actions = ["approve", "reject"]

    def get_queryset(self, request: HttpRequest) -> models.QuerySet[TenantOffboarding]:
        return TenantOffboarding.unscoped_objects.select_related("tenant", "requested_by", "approved_by")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ("for_tenant", "reason") if obj is None else (*SHOWN, "export_download")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else (*SHOWN, "export_download")

    @admin.display(description="Export")
    def export_download(self, obj: TenantOffboarding) -> str:
        if obj.status != TenantOffboarding.Status.DONE:
            return "-"
        url = reverse("admin:studies_tenantoffboarding_export", args=[obj.pk])
        return format_html('<a href="{}">Download the export ({} bytes; the download is recorded)</a>', url,
                           obj.export_size)  # fmt: skip

    def get_urls(self) -> list[Any]:
        download = path(
            "<int:object_id>/export/",
            self.admin_site.admin_view(self.export_download_view),
            name="studies_tenantoffboarding_export",
        )
        return [download, *super().get_urls()]

    def export_download_view(self, request: HttpRequest, object_id: int) -> StreamingHttpResponse:
        """GET /ops/studies/tenantoffboarding/<id>/export/ : the decrypted export zip, streamed, to a platform
        operator (the admin site lets only verified staff in; the service checks again) who may view
        offboardings. TENANT_EXPORT_READ is recorded before the first byte leaves. An offboarding without an
        export, or one whose export no longer reads: a 404 (nothing to give)."""
        offboarding = TenantOffboarding.unscoped_objects.select_related("tenant").filter(pk=object_id).first()
        if offboarding is None:
            raise Http404()
        if not self.has_view_permission(request, offboarding):
            raise PermissionDenied()
        try:
            stream = tenant_offboarding_export_stream(operator=request.user, offboarding=offboarding)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise Http404(" ".join(exc.messages)) from exc
        response = StreamingHttpResponse(stream, content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="offboarding-{offboarding.public_id}.zip"'
        response["Content-Length"] = str(offboarding.export_size)
        response["Cache-Control"] = "no-store"
        return response

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = OffboardingRequestForm
            kwargs["fields"] = ["reason"]
        return super().get_form(request, obj, change, **kwargs)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: TenantOffboarding, form: Any, change: bool) -> None:
        done = tenant_offboarding_request(
            operator=request.user,  # type: ignore[arg-type]
            tenant=form.cleaned_data["for_tenant"],
            reason=form.cleaned_data["reason"],
        )
        obj.pk, obj.tenant, obj.created_at = done.pk, done.tenant, done.created_at
        obj._state.adding, obj._state.db = False, done._state.db

    @admin.action(description="Approve as the second operator: export, destroy the keys, certify")
    def approve(self, request: HttpRequest, queryset: models.QuerySet[TenantOffboarding]) -> None:
        for offboarding in queryset:
            try:
                tenant_offboarding_approve(operator=request.user, offboarding=offboarding)  # type: ignore[arg-type]
            except ValidationError as exc:
                self.message_user(request, f"{offboarding.tenant.slug}: {' '.join(exc.messages)}", messages.ERROR)
            else:
                self.message_user(request, f"{offboarding.tenant.slug}: exported and shredded.", messages.SUCCESS)

    @admin.action(description="Reject")
    def reject(self, request: HttpRequest, queryset: models.QuerySet[TenantOffboarding]) -> None:
        for offboarding in queryset:
            try:
                tenant_offboarding_reject(
                    operator=request.user,  # type: ignore[arg-type]
                    offboarding=offboarding,
                    reason=f"rejected in /ops/ by {request.user.get_username()}",
                )
            except ValidationError as exc:
                self.message_user(request, f"{offboarding.tenant.slug}: {' '.join(exc.messages)}", messages.ERROR)
