"""C-FIND and C-GET/C-MOVE identifiers, read and written (PS3.4 C.2-C.6). Pure: no database, no network.

`query_parse` turns a request identifier into a `Query`: its information model and level, one `Match` per key
that carries a value we match on (single value, list of UIDs, `*`/`?` wildcard, date range), and the keys the
caller asked to have returned. `response_identifier` builds one response identifier from a match's values.

Matching (what the SCP in studies.net.qr does with a `Query`):
- an empty value, or `*` alone, matches everything (universal matching) and only asks for the key back;
- a value with `*` or `?` is a wildcard over the whole value (`*` any run, `?` one character);
- person names match case-insensitively (PS3.4 C.2.2.2.1 leaves case to the SCP); other text exactly;
- dates match `YYYYMMDD`, `YYYYMMDD-`, `-YYYYMMDD` or `YYYYMMDD-YYYYMMDD`, inclusive;
- a UID key with several values (a list, VM > 1) matches any of them;
- ModalitiesInStudy matches a study having a series of any of the listed modalities.
Keys of a level below the query level are not matching keys (PS3.4 C.2.2.1.3) and are ignored; so are keys we
keep no index for: they are returned empty. The hierarchical unique keys above the level are honoured when given
but not required (an extended, "relational" reading that standard SCUs never notice).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

__all__ = [
    "ATTRIBUTES",
    "DateRange",
    "Exact",
    "Level",
    "Match",
    "Model",
    "Query",
    "QueryError",
    "Wildcard",
    "query_parse",
    "response_identifier",
    "wildcard_regex",
]

# Query/Retrieve Information Model SOP classes (PS3.4 C.6), by service.
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"


class QueryError(ValueError):
    """The identifier cannot be served: a missing or wrong level, a malformed date. The message is for the SCU's
    Error Comment (at most 64 characters) and carries no value from the request."""


class Model(StrEnum):
    PATIENT_ROOT = "patient_root"
    STUDY_ROOT = "study_root"


MODEL_OF_SOP_CLASS = {
    PATIENT_ROOT_FIND: Model.PATIENT_ROOT,
    PATIENT_ROOT_MOVE: Model.PATIENT_ROOT,
    PATIENT_ROOT_GET: Model.PATIENT_ROOT,
    STUDY_ROOT_FIND: Model.STUDY_ROOT,
    STUDY_ROOT_MOVE: Model.STUDY_ROOT,
    STUDY_ROOT_GET: Model.STUDY_ROOT,
}


class Level(StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        return list(Level).index(self)


# The unique key of each level (PS3.4 C.2.2.1).
UNIQUE_KEY = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}


@dataclass(frozen=True)
class Attribute:
    """A key we keep an index for: the level it belongs to and how its value matches."""

    level: Level
    kind: str  # "text", "pn" (person name), "uid", "date", "int", "modalities", "return" (returned, never matched)


ATTRIBUTES: dict[str, Attribute] = {
    "PatientID": Attribute(Level.PATIENT, "text"),
    "IssuerOfPatientID": Attribute(Level.PATIENT, "text"),
    "PatientName": Attribute(Level.PATIENT, "pn"),
    "PatientBirthDate": Attribute(Level.PATIENT, "date"),
    "PatientSex": Attribute(Level.PATIENT, "text"),
    "NumberOfPatientRelatedStudies": Attribute(Level.PATIENT, "return"),
    "NumberOfPatientRelatedSeries": Attribute(Level.PATIENT, "return"),
    "NumberOfPatientRelatedInstances": Attribute(Level.PATIENT, "return"),
    "StudyInstanceUID": Attribute(Level.STUDY, "uid"),
    "StudyDate": Attribute(Level.STUDY, "date"),
    "StudyTime": Attribute(Level.STUDY, "return"),
    "AccessionNumber": Attribute(Level.STUDY, "text"),
    "StudyDescription": Attribute(Level.STUDY, "text"),
    "ReferringPhysicianName": Attribute(Level.STUDY, "pn"),
    "ModalitiesInStudy": Attribute(Level.STUDY, "modalities"),
    "NumberOfStudyRelatedSeries": Attribute(Level.STUDY, "return"),
    "NumberOfStudyRelatedInstances": Attribute(Level.STUDY, "return"),
    "SeriesInstanceUID": Attribute(Level.SERIES, "uid"),
    "Modality": Attribute(Level.SERIES, "text"),
    "SeriesNumber": Attribute(Level.SERIES, "int"),
    "SeriesDescription": Attribute(Level.SERIES, "text"),
    "NumberOfSeriesRelatedInstances": Attribute(Level.SERIES, "return"),
    "SOPInstanceUID": Attribute(Level.IMAGE, "uid"),
    "SOPClassUID": Attribute(Level.IMAGE, "uid"),
    "InstanceNumber": Attribute(Level.IMAGE, "int"),
    "Rows": Attribute(Level.IMAGE, "return"),
    "Columns": Attribute(Level.IMAGE, "return"),
    "NumberOfFrames": Attribute(Level.IMAGE, "return"),
}

# Keys that are about the request itself, never matched nor echoed as data.
_CONTROL_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "TimezoneOffsetFromUTC"}


@dataclass(frozen=True)
class Exact:
    """Any of these values (one for a single value match, several for a UID list or a multi-valued key)."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class Wildcard:
    pattern: str

    @property
    def regex(self) -> str:
        return wildcard_regex(self.pattern)


@dataclass(frozen=True)
class DateRange:
    start: date | None
    end: date | None


Match = Exact | Wildcard | DateRange


@dataclass(frozen=True)
class Query:
    model: Model
    level: Level
    matches: Mapping[str, Match] = field(default_factory=dict)
    requested: Sequence[str] = ()  # every data key of the identifier, in tag order

    def summary(self) -> dict[str, str]:
        """The keys with values as sent, for the audit record."""
        out: dict[str, str] = {"level": self.level.value, "model": self.model.value}
        for keyword, match in self.matches.items():
            if isinstance(match, Exact):
                out[keyword] = "\\".join(str(v) for v in match.values)
            elif isinstance(match, Wildcard):
                out[keyword] = match.pattern
            else:
                start = match.start.strftime("%Y%m%d") if match.start else ""
                end = match.end.strftime("%Y%m%d") if match.end else ""
                out[keyword] = start if start == end else f"{start}-{end}"
        return out


def wildcard_regex(pattern: str) -> str:
    """A whole-value regular expression (PostgreSQL and Python agree on this subset) for a DICOM wildcard."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        elif char.isalnum():
            parts.append(char)
        else:
            parts.append("\\" + char if not char.isspace() else char)
    return "^" + "".join(parts) + "$"


def _values(element_value: Any) -> list[str]:
    if element_value is None:
        return []
    if isinstance(element_value, (list, tuple, MultiValue)):
        return [str(v).strip() for v in element_value if str(v).strip()]
    text = str(element_value).strip()
    return [v.strip() for v in text.split("\\") if v.strip()] if text else []


def _date(text: str) -> date:
    try:
        return datetime.strptime(text.strip(), "%Y%m%d").date()  # noqa: DTZ007 -- a calendar date, no time
    except ValueError as exc:
        raise QueryError("A date key is not YYYYMMDD or a YYYYMMDD range.") from exc


def _date_range(text: str) -> DateRange:
    text = text.strip()
    if "-" not in text:
        day = _date(text)
        return DateRange(day, day)
    start, _, end = text.partition("-")
    if not start.strip() and not end.strip():
        raise QueryError("A date range needs at least one end.")
    return DateRange(_date(start) if start.strip() else None, _date(end) if end.strip() else None)


def _match(keyword: str, attribute: Attribute, raw: Any) -> Match | None:
    if attribute.kind == "return":
        return None
    if attribute.kind == "date":
        text = str(raw or "").strip()
        return _date_range(text) if text and text != "*" else None
    values = _values(raw)
    if not values or values == ["*"]:
        return None
    if attribute.kind == "int":
        try:
            return Exact(tuple(int(v) for v in values))
        except ValueError as exc:
            raise QueryError(f"{keyword} must be a number."[:64]) from exc
    if attribute.kind in ("uid", "modalities"):
        return Exact(tuple(values))
    if len(values) == 1 and ("*" in values[0] or "?" in values[0]):
        return Wildcard(values[0])
    return Exact(tuple(values))


def query_parse(identifier: Dataset, *, sop_class_uid: str, retrieve: bool = False) -> Query:
    """The `Query` of a C-FIND (or, with `retrieve`, C-GET/C-MOVE) identifier under its SOP class.

    Raises QueryError for an unknown model, a missing or unsupported level (PATIENT only in Patient Root), a
    malformed value, or, for a retrieval, a missing unique key of the level (PS3.4 C.4.2.2.1).
    """
    model = MODEL_OF_SOP_CLASS.get(str(sop_class_uid))
    if model is None:
        raise QueryError("Not a Patient or Study Root information model.")
    raw_level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    try:
        level = Level(raw_level)
    except ValueError as exc:
        raise QueryError("QueryRetrieveLevel must be PATIENT, STUDY, SERIES or IMAGE.") from exc
    if level is Level.PATIENT and model is Model.STUDY_ROOT:
        raise QueryError("The Study Root model has no PATIENT level.")

    matches: dict[str, Match] = {}
    requested: list[str] = []
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in _CONTROL_KEYS or element.VR == "SQ":
            continue
        requested.append(keyword)
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None or attribute.level.depth > level.depth:
            continue
        match = _match(keyword, attribute, element.value)
        if match is not None:
            matches[keyword] = match
    if retrieve:
        unique = UNIQUE_KEY[level]
        if unique not in matches or not isinstance(matches[unique], Exact):
            raise QueryError(f"A {level.value} retrieval needs {unique}."[:64])
    return Query(model=model, level=level, matches=matches, requested=requested)


def _is_ascii(value: Any) -> bool:
    return not isinstance(value, str) or value.isascii()


def response_identifier(query: Query, values: Mapping[str, Any], *, retrieve_ae_title: str = "") -> Dataset:
    """One C-FIND response identifier: the level, the level's unique key and every key the request carried,
    with our value for each (zero length where we keep none). Dates are `date` objects, numbers ints."""
    ds = Dataset()
    keys = list(dict.fromkeys([UNIQUE_KEY[query.level], *query.requested]))
    texts = [v for v in values.values() if isinstance(v, str)]
    if not all(_is_ascii(v) for v in texts):
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = query.level.value
    if retrieve_ae_title:
        ds.RetrieveAETitle = retrieve_ae_title
    for keyword in keys:
        value = values.get(keyword)
        if isinstance(value, date):
            value = value.strftime("%Y%m%d")
        elif keyword == "StudyTime" and value is not None and hasattr(value, "strftime"):
            value = value.strftime("%H%M%S")
        elif keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") and value:
            value = UID(str(value))
        elif isinstance(value, str) and "\\" in value:
            value = value.split("\\")
        setattr(ds, keyword, None if value in (None, "") else value)
    return ds
