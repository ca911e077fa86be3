"""Forms of the training pages. They parse input; the services decide what a valid record is."""

from __future__ import annotations

from django import forms

from tenants.models import Role
from training.catalogue import CATALOGUE


class CompletionForm(forms.Form):
    course = forms.UUIDField(widget=forms.HiddenInput)
    completed_on = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    expires_on = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}),
                                 help_text="Leave empty: the course's validity from the completion date.")  # fmt: skip
    evidence = forms.FileField(required=False, help_text="The certificate: PDF, PNG or JPEG, at most 10 MB.")
    note = forms.CharField(required=False, max_length=300)


class ReviewForm(forms.Form):
    reason = forms.CharField(max_length=300, error_messages={"required": "Give a reason: it is kept with the record."})


class CourseAdoptForm(forms.Form):
    catalogue = forms.ChoiceField(choices=[(code, title) for code, title, *_ in CATALOGUE])


class CourseCreateForm(forms.Form):
    title = forms.CharField(max_length=200)
    provider = forms.CharField(max_length=200, required=False)
    validity_months = forms.IntegerField(min_value=1, max_value=120, initial=12)
    evidence_required = forms.BooleanField(required=False, initial=True)


class RequirementForm(forms.Form):
    course = forms.UUIDField(widget=forms.HiddenInput)
    role = forms.ChoiceField(choices=Role.choices)
    blocking = forms.BooleanField(required=False, initial=True, help_text="Unticked: a lapse only warns.")
    grace_days = forms.IntegerField(min_value=0, max_value=365, initial=0)


class ImportForm(forms.Form):
    file = forms.FileField(help_text="CSV, UTF-8, with the columns username, course, completed_on, expires_on.")


class MatrixFilterForm(forms.Form):
    role = forms.ChoiceField(choices=[("", "All roles"), *Role.choices], required=False)
    course = forms.UUIDField(required=False)
