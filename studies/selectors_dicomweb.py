"""Reads of the archive for DICOMweb (QIDO-RS, WADO-RS, WADO-URI): what a caller may find and retrieve.

Everything starts from `studies.selectors.study_list(actor=)`, so the permission decision (tenants.access) and the
tenant scope apply to every level: a series or instance is found only through a study the caller may see. A UID
the caller may not see is `NotVisible`, the same as one that does not exist (another tenant's too).

QIDO-RS matching (PS3.18 8.3.4, PS3.4 C.2.2.2) is described by `ATTRIBUTES`: which attribute lives in which
column at which level, and how it matches (single value, `*`/`?` wildcards, UID lists, date ranges).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any, TypedDict

from django.db import models
from django.db.models import Q

from studies.models import Instance, Series, Study
from studies.selectors import study_list
from tenants import access

STUDY, SERIES, INSTANCE = "STUDY", "SERIES", "IMAGE"
LEVELS = (STUDY, SERIES, INSTANCE)


class InvalidQuery(ValueError):
    """A matching key whose value cannot be used (a malformed date or range)."""


@dataclass(frozen=True)
class Attribute:
    tag: str  # 8 hex digits, as in the DICOM JSON model
    keyword: str
    vr: str
    level: str
    field: str  # the column, relative to the model of `level`; "" when not stored (returned empty)
    match: str  # "uid" (list), "text" (wildcards), "pn" (wildcards, case-insensitive), "date", "exact", "" (none)


ATTRIBUTES: tuple[Attribute, ...] = (
    # Study level, PS3.18 Table 10.6.3-3 (patient attributes are returned with the study).
    Attribute("00080020", "StudyDate", "DA", STUDY, "study_date", "date"),
    Attribute("00080030", "StudyTime", "TM", STUDY, "study_time", ""),
    Attribute("00080050", "AccessionNumber", "SH", STUDY, "accession_number", "text"),
    Attribute("00080061", "ModalitiesInStudy", "CS", STUDY, "modalities", "modalities"),
    Attribute("00080090", "ReferringPhysicianName", "PN", STUDY, "referring_physician", "pn"),
    Attribute("00081030", "StudyDescription", "LO", STUDY, "description", "text"),
    Attribute("00100010", "PatientName", "PN", STUDY, "patient__name", "pn"),
    Attribute("00100020", "PatientID", "LO", STUDY, "patient__patient_id", "text"),
    Attribute("00100021", "IssuerOfPatientID", "LO", STUDY, "patient__issuer", "text"),
    Attribute("00100030", "PatientBirthDate", "DA", STUDY, "patient__birth_date", "date"),
    Attribute("00100040", "PatientSex", "CS", STUDY, "patient__sex", "exact"),
    Attribute("0020000D", "StudyInstanceUID", "UI", STUDY, "study_instance_uid", "uid"),
    Attribute("00200010", "StudyID", "SH", STUDY, "", ""),
    Attribute("00201206", "NumberOfStudyRelatedSeries", "IS", STUDY, "number_of_series", ""),
    Attribute("00201208", "NumberOfStudyRelatedInstances", "IS", STUDY, "number_of_instances", ""),
    # Series level, Table 10.6.3-4.
    Attribute("00080060", "Modality", "CS", SERIES, "modality", "exact"),
    Attribute("0008103E", "SeriesDescription", "LO", SERIES, "description", "text"),
    Attribute("0020000E", "SeriesInstanceUID", "UI", SERIES, "series_instance_uid", "uid"),
    Attribute("00200011", "SeriesNumber", "IS", SERIES, "series_number", "exact"),
    Attribute("00201209", "NumberOfSeriesRelatedInstances", "IS", SERIES, "number_of_instances", ""),
    # Instance level, Table 10.6.3-5.
    Attribute("00080016", "SOPClassUID", "UI", INSTANCE, "sop_class_uid", "uid"),
    Attribute("00080018", "SOPInstanceUID", "UI", INSTANCE, "sop_instance_uid", "uid"),
    Attribute("00200013", "InstanceNumber", "IS", INSTANCE, "instance_number", "exact"),
    Attribute("00280010", "Rows", "US", INSTANCE, "rows", ""),
    Attribute("00280011", "Columns", "US", INSTANCE, "columns", ""),
    Attribute("00280008", "NumberOfFrames", "IS", INSTANCE, "frames", ""),
    Attribute("00020010", "TransferSyntaxUID", "UI", INSTANCE, "transfer_syntax_uid", ""),
)
BY_TAG = {a.tag: a for a in ATTRIBUTES}
BY_KEYWORD = {a.keyword.lower(): a for a in ATTRIBUTES}
# The attributes every result of a level carries (PS3.18 Tables 10.6.3-3 to -5, those this archive keeps).
DEFAULT_KEYWORDS = {
    STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    SERIES: ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances"),
    INSTANCE: ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames"),
}
# Path from each queried model to the model holding an attribute of a level at or above it.
_PREFIX = {
    (STUDY, STUDY): "",
    (SERIES, SERIES): "",
    (SERIES, STUDY): "study__",
    (INSTANCE, INSTANCE): "",
    (INSTANCE, SERIES): "series__",
    (INSTANCE, STUDY): "series__study__",
}
_DATE = re.compile(r"\d{8}")


def attribute_lookup(name: str) -> Attribute | None:
    """An attribute by keyword (any case) or 8-digit tag; None if this archive does not keep it."""
    key = name.strip()
    return BY_TAG.get(key.upper()) or BY_KEYWORD.get(key.lower())


def levels_at_or_above(level: str) -> tuple[str, ...]:
    return LEVELS[: LEVELS.index(level) + 1]


def _wildcard_regex(value: str) -> str:
    return "^" + "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value) + "$"


def _text_q(path: str, value: str, *, fold_case: bool) -> Q:
    if "*" in value or "?" in value:
        return Q(**{f"{path}__{'iregex' if fold_case else 'regex'}": _wildcard_regex(value)})
    return Q(**{f"{path}__{'iexact' if fold_case else 'exact'}": value})


def _date(value: str) -> date:
    if not _DATE.fullmatch(value):
        raise InvalidQuery(f"'{value}' is not a date of the form YYYYMMDD.")
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError as exc:
        raise InvalidQuery(f"'{value}' is not a valid date.") from exc


def _date_q(path: str, value: str) -> Q:
    """A single date, or a range `from-to` with either end open (PS3.4 C.2.2.2.5)."""
    if "-" not in value:
        return Q(**{path: _date(value)})
    start, _, end = value.partition("-")
    if not start and not end:
        raise InvalidQuery("A date range needs at least one end: YYYYMMDD-, -YYYYMMDD or YYYYMMDD-YYYYMMDD.")
    condition = Q()
    if start:
        condition &= Q(**{f"{path}__gte": _date(start)})
    if end:
        condition &= Q(**{f"{path}__lte": _date(end)})
    if start and end and _date(start) > _date(end):
        raise InvalidQuery(f"The date range '{value}' ends before it starts.")
    return condition


def match_q(attribute: Attribute, value: str, *, level: str) -> Q:
    """The condition for one matching key on a query of `level`. An empty value matches everything (universal
    matching, PS3.4 C.2.2.2.3): the attribute is only returned."""
    if value == "" or attribute.match == "":
        return Q()
    path = _PREFIX[(level, attribute.level)] + attribute.field
    kind = attribute.match
    if kind == "uid":
        uids = [u.strip() for u in re.split(r"[,\\]", value) if u.strip()]
        return Q(**{f"{path}__in": uids})
    if kind == "date":
        return _date_q(path, value)
    if kind == "pn":
        return _text_q(path, value, fold_case=True)
    if kind == "modalities":
        # Stored as "CT\MR"; any of the asked modalities in the study matches (PS3.4 C.6.2.1.2).
        wanted = [m.strip().upper() for m in re.split(r"[,\\]", value) if m.strip()]
        condition = Q()
        for modality in wanted:
            condition |= Q(**{f"{path}__regex": rf"(^|\\){re.escape(modality)}(\\|$)"})
        return condition
    if kind == "exact" and attribute.vr == "IS":
        try:
            return Q(**{path: int(value)})
        except ValueError as exc:
            raise InvalidQuery(f"{attribute.keyword} must be a whole number.") from exc
    return _text_q(path, value, fold_case=False)


# Querysets
# ------------------------------------------------------------------------------


class _PkRow(TypedDict):
    pk: int


def _visible_study_ids(actor: Any) -> models.QuerySet[Study, _PkRow]:
    return study_list(actor=actor).order_by().values("pk")


def qido_search(
    *,
    actor: Any,
    level: str,
    matches: list[tuple[Attribute, str]],
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> models.QuerySet[Any]:
    """The studies, series or instances (by `level`) that match every key, among those `actor` may see
    (`studies.view_study`), in a stable order for paging. `study_uid`/`series_uid` are the resource's parents
    (`/studies/{study}/series`): a parent the caller may not see gives an empty result, like a missing one.
    Raises InvalidQuery for a malformed value."""
    condition = Q()
    for attribute, value in matches:
        condition &= match_q(attribute, value, level=level)
    if level == STUDY:
        # Study-level results never read the series study_list prefetches (measured by bench/query.py: the
        # prefetched rows cost time and, through reference cycles, garbage-collector pauses at p95).
        return (
            study_list(actor=actor)
            .prefetch_related(None)
            .filter(condition)
            .order_by("-study_date", "-created_at", "pk")
        )
    visible = _visible_study_ids(actor)
    if level == SERIES:
        series = Series.objects.filter(study__in=visible).select_related("study__patient")
        if study_uid is not None:
            series = series.filter(study__study_instance_uid=study_uid)
        return series.filter(condition).order_by("study_id", "series_number", "pk")
    instances = Instance.objects.filter(series__study__in=visible).select_related("series__study__patient")
    if study_uid is not None:
        instances = instances.filter(series__study__study_instance_uid=study_uid)
    if series_uid is not None:
        instances = instances.filter(series__series_instance_uid=series_uid)
    return instances.filter(condition).order_by(
        "series__study_id", "series__series_number", "series_id", "instance_number", "pk"
    )


def dicomweb_study_get(*, actor: Any, study_uid: str) -> Study:
    """One study by its Study Instance UID, if `actor` may see it; else NotVisible (a 404 like a missing one)."""
    try:
        return study_list(actor=actor).prefetch_related(None).get(study_instance_uid=study_uid)
    except (Study.DoesNotExist, Study.MultipleObjectsReturned) as exc:
        raise access.NotVisible() from exc


def dicomweb_instance_list(
    *, actor: Any, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> tuple[Study, list[Instance]]:
    """The study and the instances of a WADO resource (a study, a series of it, or one instance), in series and
    instance order, with blobs loaded. NotVisible if the study is not visible to `actor` or the resource names
    nothing in it."""
    study = dicomweb_study_get(actor=actor, study_uid=study_uid)
    qs = Instance.objects.filter(series__study=study).select_related("blob", "series")
    if series_uid is not None:
        qs = qs.filter(series__series_instance_uid=series_uid)
    if sop_uid is not None:
        qs = qs.filter(sop_instance_uid=sop_uid)
    instances = list(qs.order_by("series__series_number", "series_id", "instance_number", "pk"))
    if not instances:
        raise access.NotVisible()
    return study, instances
