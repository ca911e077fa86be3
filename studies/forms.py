"""Forms of the archive's pages. Searches name patients, so they travel in POST bodies, never in our URLs."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.core.validators import RegexValidator

from studies.models import IngestItem


class StudySearchForm(forms.Form):
    """The study list's filters. Sent by POST: a patient's name must never sit in a URL of our own pages, where
    browser history, proxies and server logs would keep it."""

    text = forms.CharField(
        required=False,
        max_length=100,
        label="Patient, accession or description",
        widget=forms.TextInput(attrs={"type": "search", "autocomplete": "off"}),
    )
    modality = forms.CharField(
        required=False,
        max_length=16,
        label="Modality",
        validators=[RegexValidator(r"^[A-Za-z0-9]*$", "A modality is letters and digits only, such as CT or MR.")],
        widget=forms.TextInput(attrs={"size": 6, "autocomplete": "off"}),
    )
    date_from = forms.DateField(required=False, label="Study date from", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="to", widget=forms.DateInput(attrs={"type": "date"}))
    page = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def clean_text(self) -> str:
        text: str = self.cleaned_data["text"].strip()
        # The list searches `*text*` (studies.selectors.study_list), under the matcher's bound on wildcards.
        if text.count("*") + text.count("?") > settings.SEARCH_MAX_WILDCARDS - 2:
            raise forms.ValidationError(f"Use at most {settings.SEARCH_MAX_WILDCARDS - 2} wildcards (* or ?).")
        return text

    def clean_modality(self) -> str:
        return self.cleaned_data["modality"].strip().upper()

    def clean(self) -> dict[str, Any]:
        super().clean()
        start, end = self.cleaned_data.get("date_from"), self.cleaned_data.get("date_to")
        if start and end and start > end:
            raise forms.ValidationError("The first date is after the second.")
        return self.cleaned_data

    def selector_filters(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "text": data.get("text", ""),
            "modality": data.get("modality", ""),
            "date_from": data.get("date_from"),
            "date_to": data.get("date_to"),
        }

    def recorded_filters(self) -> dict[str, str]:
        """The filters given, as the STUDIES_QUERIED event records them (our own trail: patient data allowed)."""
        values = {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in self.selector_filters().items()}
        return {key: value for key, value in values.items() if value}


class UploadFileForm(forms.Form):
    """One file of an upload batch, as static/js/upload.js sends it."""

    batch = forms.UUIDField()
    file = forms.FileField(allow_empty_file=True)
    # The path inside a chosen folder (webkitRelativePath): Django keeps only the base name of an uploaded file.
    path = forms.CharField(required=False, max_length=1024)

    def filename(self) -> str:
        path = self.cleaned_data.get("path") or ""
        return (path or self.cleaned_data["file"].name or "upload")[:255]


class IngestFilterForm(forms.Form):
    """The ingest activity page's filter: a state name and a page number, never patient data, so a query string."""

    state = forms.ChoiceField(required=False, choices=[("", "All states"), *IngestItem.State.choices])
    page = forms.IntegerField(required=False, min_value=1)
