"""C-FIND and C-GET/C-MOVE identifiers, read and written (PS3.4 C.2-C.6). Pure: no database, no network.

`query_parse` turns a request identifier into a `Query`: its information model and level, every data key with
its value as sent (several values joined by `\\`), and the keys the caller asked to have returned.
`response_identifier` builds one response identifier from a result's values.

What a value means (single value, wildcard, UID list, range, universal matching) is not decided here: the door
(studies.net.qr) hands the keys to the one DICOM matcher, `studies.selectors.matching`, which QIDO-RS and the
study list use too. Keys of a level below the query level are not matching keys (PS3.4 C.2.2.1.3); the
hierarchical unique keys above the level are honoured when given but not required (an extended, "relational"
reading that standard SCUs never notice).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

__all__ = [
    "UNIQUE_KEY",
    "Level",
    "Model",
    "Query",
    "QueryError",
    "query_parse",
    "response_identifier",
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


# Keys that are about the request itself, never matched nor echoed as data.
_CONTROL_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "TimezoneOffsetFromUTC"}


@dataclass(frozen=True)
class Query:
    model: Model
    level: Level
    keys: Mapping[str, str] = field(default_factory=dict)  # keyword -> value as sent; "" for a return key
    requested: Sequence[str] = ()  # every data key of the identifier, in tag order

    def summary(self) -> dict[str, str]:
        """The keys that carry a value, as sent, with the level and model: for the audit record."""
        out: dict[str, str] = {"level": self.level.value, "model": self.model.value}
        out.update({keyword: value for keyword, value in self.keys.items() if value})
        return out


def _text(element_value: Any) -> str:
    if element_value is None:
        return ""
    if isinstance(element_value, (list, tuple, MultiValue)):
        return "\\".join(str(v).strip() for v in element_value if str(v).strip())
    return str(element_value).strip()


def query_parse(identifier: Dataset, *, sop_class_uid: str, retrieve: bool = False) -> Query:
    """The `Query` of a C-FIND (or, with `retrieve`, C-GET/C-MOVE) identifier under its SOP class.

    Raises QueryError for an unknown model, a missing or unsupported level (PATIENT only in Patient Root), or,
    for a retrieval, a missing unique key of the level (PS3.4 C.4.2.2.1).
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

    keys: dict[str, str] = {}
    requested: list[str] = []
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in _CONTROL_KEYS or element.VR == "SQ":
            continue
        requested.append(keyword)
        keys[keyword] = _text(element.value)
    if retrieve:
        unique = UNIQUE_KEY[level]
        value = keys.get(unique, "")
        if not value or "*" in value or "?" in value:
            raise QueryError(f"A {level.value} retrieval needs {unique}."[:64])
    return Query(model=model, level=level, keys=keys, requested=requested)


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
