"""Forms of the members and API-token pages. They parse input; the services decide what is allowed."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from tenants.models import Role


class DateInput(forms.DateInput):
    input_type = "date"


def start_of_day(day: date | None) -> datetime | None:
    """An end date chosen on a page: access ends when that day begins (UTC, the portal's time zone)."""
    return datetime.combine(day, time.min, tzinfo=UTC) if day is not None else None


def end_date_field(**kwargs: Any) -> forms.DateField:
    return forms.DateField(
        required=False,
        widget=DateInput(),
        label="Access ends on",
        help_text="Access stops when this day begins (UTC). Required for auditors.",
        **kwargs,
    )


def errors_apply(form: forms.Form, exc: ValidationError) -> None:
    """Show a service's ValidationError on the form: on the field it names, else above the form."""
    if hasattr(exc, "error_dict"):
        for field, messages in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, messages)
    else:
        form.add_error(None, exc.messages)


def role_choice_field(**kwargs: Any) -> forms.ChoiceField:
    """A role the administrator must choose: nothing is preselected, so no one joins in a role by accident."""
    return forms.ChoiceField(choices=[("", "Choose a role…"), *Role.choices], **kwargs)


class InvitationForm(forms.Form):
    email = forms.EmailField(help_text="The invitation is sent there; the person joins only by accepting it.")
    first_name = forms.CharField(max_length=150, required=False)
    last_name = forms.CharField(max_length=150, required=False)
    role = role_choice_field()
    ends_at = end_date_field()

    def service_arguments(self) -> dict[str, Any]:
        data = dict(self.cleaned_data)
        data["ends_at"] = start_of_day(data["ends_at"])
        return data


class InvitationNewAccountForm(forms.Form):
    """A person without an Enclave account accepts an invitation: their user name and password."""

    username = forms.CharField(max_length=150, label="User name", help_text="What you will sign in with.")
    password1 = forms.CharField(label="Password", strip=False, widget=forms.PasswordInput)
    password2 = forms.CharField(label="Password again", strip=False, widget=forms.PasswordInput)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("password1") and data.get("password1") != data.get("password2"):
            self.add_error("password2", "The two passwords differ.")
        return data


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class MemberEndDateForm(forms.Form):
    ends_at = end_date_field()

    def ends_at_value(self) -> datetime | None:
        return start_of_day(self.cleaned_data["ends_at"])


class MemberEndForm(forms.Form):
    reason = forms.CharField(max_length=200, help_text="Kept on the audit trail.")


class ApiTokenCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What will use it, such as “nightly export script”.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Built here, not at import, so that the limits follow the settings of the running process.
        self.fields["days"] = forms.IntegerField(
            min_value=1,
            max_value=settings.API_TOKEN_MAX_DAYS,
            initial=settings.API_TOKEN_DEFAULT_DAYS,
            label="Expires after (days)",
            help_text=f"1 to {settings.API_TOKEN_MAX_DAYS}.",
        )


class TrustedNetworkForm(forms.Form):
    network = forms.CharField(max_length=60, label="Address range", help_text="CIDR: 10.20.0.0/16, 2001:db8:5::/48")
    label = forms.CharField(max_length=100, required=False, label="What it is", help_text="A site, a VPN, a PACS.")
