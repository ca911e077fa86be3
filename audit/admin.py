"""The audit trail in the operators' admin: read-only, and without participants or details.

Participants and `extra` can name patients (later work records PHI reads), and operators see no patient data, so
the admin shows only which event, in which tenant, where in the chain, when, by whom, and the outcome.
This module is allow-listed for `unscoped_objects`: operators look across tenants.
"""

from __future__ import annotations

from typing import Any

from auditlog.models import LogEntry
from django.contrib import admin, messages
from django.db import models
from django.http import HttpRequest, HttpResponse

from audit.events import EventType
from audit.models import AuditChain, AuditEvent
from audit.selectors import audit_chain_verify
from audit.services import audit_event_record

# django-auditlog's own admin lists field changes, which will hold patient data once studies are tracked.
if admin.site.is_registered(LogEntry):
    admin.site.unregister(LogEntry)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("occurred_at", "tenant", "sequence", "verb", "event_id", "action", "outcome",
                    "actor_username", "system_principal")  # fmt: skip
    fields = list_display
    readonly_fields = list_display
    list_filter = ["tenant", "outcome"]
    search_fields = ["actor_username"]
    list_select_related = ["tenant"]
    date_hierarchy = "occurred_at"
    show_full_result_count = False

    @admin.display(description="event", ordering="event_type")
    def verb(self, event: AuditEvent) -> str:
        return event.verb

    def get_queryset(self, request: HttpRequest) -> models.QuerySet[AuditEvent]:
        return AuditEvent.unscoped_objects.select_related("tenant").order_by("-occurred_at", "-sequence")

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        audit_event_record(
            event=EventType.AUDIT_LOG_USED,
            actor=request.user,
            tenant=None,
            target={"type": "audit_log", "id": request.path, "name": "Audit events in the operators' admin"},
            extra={"where": "ops", "filters": {k: v for k, v in request.GET.items() if k != "p"}},
        )
        return super().changelist_view(request, extra_context)


@admin.register(AuditChain)
class AuditChainAdmin(ReadOnlyAdmin):
    list_display = ("key", "tenant", "last_sequence", "last_hash")
    fields = list_display
    readonly_fields = list_display
    list_select_related = ["tenant"]
    actions = ["verify"]

    @admin.action(description="Verify the selected chains", permissions=["view"])
    def verify(self, request: HttpRequest, queryset: models.QuerySet[AuditChain]) -> None:
        for chain in queryset:
            result = audit_chain_verify(chain=chain)
            if result.ok:
                self.message_user(request, f"{chain}: {result.events} events, OK", messages.SUCCESS)
            else:
                self.message_user(
                    request,
                    f"{chain}: chain broken at sequence {result.first_broken_sequence} ({result.reason})",
                    messages.ERROR,
                )
