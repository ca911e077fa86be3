"""Tenants and users in the operators' admin. Writes go through the services, so they are audited as anywhere."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db import models
from django.forms import ModelForm
from django.http import HttpRequest
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from tenants import services
from tenants.models import Membership, Tenant, User


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    """Create tenants (with their role groups and audit chain); existing tenants are shown read-only."""

    list_display = ["slug", "name", "status", "created_at"]
    list_filter = ["status"]
    search_fields = ["slug", "name"]
    fields = ("slug", "name")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("slug", "name", "status", "created_at") if obj is not None else ()

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("slug", "name", "status", "created_at") if obj is not None else ("slug", "name")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Tenant, form: ModelForm, change: bool) -> None:
        tenant = services.tenant_create(slug=obj.slug, name=obj.name)
        obj.pk, obj.created_at, obj.status = tenant.pk, tenant.created_at, tenant.status
        obj._state.adding, obj._state.db = False, tenant._state.db


@admin.register(User)
class UserAdmin(admin.ModelAdmin):
    """People and service principals: find, look at, deactivate. Nobody sets another person's password here;
    people choose their own through the invitation and reset links."""

    list_display = ["username", "email", "first_name", "last_name", "is_active", "is_staff", "last_login"]
    list_filter = ["is_active", "is_staff", "is_superuser"]
    search_fields = ["username", "email", "first_name", "last_name"]
    fields = ("username", "email", "first_name", "last_name", "subject_uuid", "is_active", "is_staff",
              "is_superuser", "last_login", "date_joined", "memberships")  # fmt: skip
    readonly_fields = fields
    ordering = ["username"]
    actions = ["deactivate"]

    @admin.display(description="Memberships")
    def memberships(self, user: User) -> str:
        """Where the person is a member, in which role, until when. Across tenants (allow-listed for
        `unscoped_objects`: operators look across tenants, and memberships hold no patient data)."""
        rows = Membership.unscoped_objects.filter(user=user).select_related("tenant").order_by("tenant__slug")
        return (
            format_html_join(
                # A constant tag; every value is escaped by format_html_join.
                mark_safe("<br>"),  # nosec B308
                "{} · {} · {}{}",
                (
                    (
                        m.tenant.slug,
                        m.get_role_display(),
                        m.get_status_display(),
                        f" · ends {m.ends_at:%Y-%m-%d}" if m.ends_at else "",
                    )
                    for m in rows
                ),
            )
            or "—"
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_deactivate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("tenants.change_user")

    @admin.action(description="Deactivate (end memberships, sessions and tokens)", permissions=["deactivate"])
    def deactivate(self, request: HttpRequest, queryset: models.QuerySet[User]) -> None:
        done = 0
        for user in queryset:
            if user.pk == request.user.pk:
                self.message_user(request, "You cannot deactivate your own account.", messages.ERROR)
                continue
            services.user_deactivate(user=user, reason="deactivated by a platform operator", operator=request.user)
            done += 1
        if done:
            self.message_user(request, f"Deactivated {done} account(s).", messages.SUCCESS)
