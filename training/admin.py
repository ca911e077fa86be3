"""The training catalogue in the operators' admin. Operators maintain the platform catalogue that tenants adopt;
tenants' own courses, requirements and completions are managed on their pages, through the services."""

from __future__ import annotations

from django.contrib import admin

from training.models import CatalogueCourse


@admin.register(CatalogueCourse)
class CatalogueCourseAdmin(admin.ModelAdmin):
    list_display = ("title", "code", "provider", "validity_months", "evidence_required")
    search_fields = ("title", "code")
    ordering = ("title",)
