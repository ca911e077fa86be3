"""What the studies pages share: how a person's name is shown, the image-role gate of the study pages, and a
service's refusal shown on a form."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from portal.web.pages import TenantPageView
from tenants import access


def person_name(value: str) -> str:
    """A DICOM person name (Family^Given^Middle^Prefix^Suffix, alphabetic group first) as people write it."""
    parts = [part.strip() for part in value.split("=")[0].split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    first = " ".join(p for p in (prefix, given, middle) if p)
    name = f"{family}, {first}" if family and first else family or first
    return f"{name}, {suffix}" if suffix else name


def require_image_access(view: TenantPageView) -> None:
    """403 (and an ACCESS_DENIED event, through TenantPageView) for members whose role sees no images: the
    study list and thumbnails are for radiologists, technologists and referring physicians
    (`access.may_see_images`); which studies each sees is still `study_list`'s answer."""
    if not access.may_see_images(view.request.user, view.tenant):
        raise access.Forbidden()


def form_errors_into(form: forms.Form, exc: ValidationError) -> None:
    """Show a service's refusal on the form: on its field when the form has one, else above the form."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc.messages)
        return
    for field, errors in exc.message_dict.items():
        for error in errors:
            form.add_error(field if field in form.fields else None, error)
