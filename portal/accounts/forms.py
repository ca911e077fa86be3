from __future__ import annotations

from django import forms
from django.contrib.auth.forms import UsernameField


class LoginForm(forms.Form):
    username = UsernameField(
        max_length=150,
        widget=forms.TextInput(attrs={"autocomplete": "username", "autofocus": True, "autocapitalize": "none"}),
    )
    password = forms.CharField(strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))


class EnrolForm(forms.Form):
    otp_token = forms.CharField(
        label="6-digit code from the app",
        max_length=12,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True, "size": 8}
        ),
    )


class MfaForm(forms.Form):
    otp_token = forms.CharField(
        label="Code",
        max_length=24,
        help_text="The 6-digit code your authenticator app shows now, or one of your backup codes.",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "autofocus": True, "size": 12}),
    )
