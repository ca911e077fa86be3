"""The one catalogue of the DICOM attributes this archive keeps an index for, shared by every door that searches.

Each attribute names its tag and keyword, its VR, the level it belongs to (patient, study, series, instance), the
column that keeps it (relative to that level's model) and how a value matches it:

- TEXT: a single value, case-sensitive, or a `*`/`?` wildcard over the whole value (PS3.4 C.2.2.2.1, C.2.2.2.4);
- PERSON_NAME: the same, case-insensitive (PS3.4 C.2.2.2.1 leaves case to the SCP; no fuzzy matching);
- NUMBER: a single whole number (IS);
- UID_LIST: one UID or a list of them, any of which matches (PS3.4 C.2.2.2.2);
- DATE / TIME: a single value or a range `from-to`, open at either end (PS3.4 C.2.2.2.5);
- MODALITIES: ModalitiesInStudy, a list of codes; a study having a series of any of them matches (C.6.2.1.2);
- SEQUENCE: sequence matching (C.2.2.2.6); none is kept, so a sequence key is answered empty, never matched;
- UNIVERSAL: returned only (counts, sizes); any value is taken as universal matching (C.2.2.2.3).

QIDO-RS (studies.dicomweb.qido), C-FIND (studies.net.qr) and the study list read this table; the matcher that
turns a value into SQL is `studies.selectors.matching`. `attribute_value` reads an attribute back off a result
row of any level, so the doors build their answers from the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from studies.dicom.query import Level

PATIENT, STUDY, SERIES, INSTANCE = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE
LEVELS: tuple[Level, ...] = (PATIENT, STUDY, SERIES, INSTANCE)


class Matching(StrEnum):
    TEXT = "text"
    PERSON_NAME = "person_name"
    NUMBER = "number"
    UID_LIST = "uid_list"
    DATE = "date"
    TIME = "time"
    MODALITIES = "modalities"
    SEQUENCE = "sequence"
    UNIVERSAL = "universal"


@dataclass(frozen=True)
class Attribute:
    tag: str  # 8 hex digits, as in the DICOM JSON model
    keyword: str
    vr: str
    level: Level
    field: str  # the column, relative to the model of `level`; "" when not kept (returned empty)
    matching: Matching
    folded: str = ""  # a column holding upper(field), kept by the database, that the matcher compares instead

    @property
    def matchable(self) -> bool:
        return bool(self.field) and self.matching not in (Matching.UNIVERSAL, Matching.SEQUENCE)


_T, _PN, _N, _U = Matching.TEXT, Matching.PERSON_NAME, Matching.NUMBER, Matching.UID_LIST
_DA, _TM, _ALL = Matching.DATE, Matching.TIME, Matching.UNIVERSAL

ATTRIBUTES: tuple[Attribute, ...] = (
    # Patient (returned with each study by QIDO-RS, PS3.18 Table 10.6.3-3; the PATIENT level of C-FIND).
    Attribute("00100010", "PatientName", "PN", PATIENT, "name", _PN, folded="name_folded"),
    Attribute("00100020", "PatientID", "LO", PATIENT, "patient_id", _T),
    Attribute("00100021", "IssuerOfPatientID", "LO", PATIENT, "issuer", _T),
    Attribute("00100030", "PatientBirthDate", "DA", PATIENT, "birth_date", _DA),
    Attribute("00100040", "PatientSex", "CS", PATIENT, "sex", _T),
    Attribute("00201200", "NumberOfPatientRelatedStudies", "IS", PATIENT, "n_studies", _ALL),
    Attribute("00201202", "NumberOfPatientRelatedSeries", "IS", PATIENT, "n_series", _ALL),
    Attribute("00201204", "NumberOfPatientRelatedInstances", "IS", PATIENT, "n_instances", _ALL),
    # Study, PS3.18 Table 10.6.3-3.
    Attribute("00080020", "StudyDate", "DA", STUDY, "study_date", _DA),
    Attribute("00080030", "StudyTime", "TM", STUDY, "study_time", _TM),
    Attribute("00080050", "AccessionNumber", "SH", STUDY, "accession_number", _T),
    Attribute("00080061", "ModalitiesInStudy", "CS", STUDY, "modalities", Matching.MODALITIES),
    Attribute("00080090", "ReferringPhysicianName", "PN", STUDY, "referring_physician", _PN),
    Attribute("00081030", "StudyDescription", "LO", STUDY, "description", _T),
    Attribute("00081110", "ReferencedStudySequence", "SQ", STUDY, "", Matching.SEQUENCE),
    Attribute("0020000D", "StudyInstanceUID", "UI", STUDY, "study_instance_uid", _U),
    Attribute("00200010", "StudyID", "SH", STUDY, "", _ALL),
    Attribute("00201206", "NumberOfStudyRelatedSeries", "IS", STUDY, "number_of_series", _ALL),
    Attribute("00201208", "NumberOfStudyRelatedInstances", "IS", STUDY, "number_of_instances", _ALL),
    # Series, Table 10.6.3-4.
    Attribute("00080060", "Modality", "CS", SERIES, "modality", _T),
    Attribute("0008103E", "SeriesDescription", "LO", SERIES, "description", _T),
    Attribute("0020000E", "SeriesInstanceUID", "UI", SERIES, "series_instance_uid", _U),
    Attribute("00200011", "SeriesNumber", "IS", SERIES, "series_number", _N),
    Attribute("00201209", "NumberOfSeriesRelatedInstances", "IS", SERIES, "number_of_instances", _ALL),
    # Instance, Table 10.6.3-5.
    Attribute("00080016", "SOPClassUID", "UI", INSTANCE, "sop_class_uid", _U),
    Attribute("00080018", "SOPInstanceUID", "UI", INSTANCE, "sop_instance_uid", _U),
    Attribute("00200013", "InstanceNumber", "IS", INSTANCE, "instance_number", _N),
    Attribute("00280010", "Rows", "US", INSTANCE, "rows", _ALL),
    Attribute("00280011", "Columns", "US", INSTANCE, "columns", _ALL),
    Attribute("00280008", "NumberOfFrames", "IS", INSTANCE, "frames", _ALL),
    Attribute("00020010", "TransferSyntaxUID", "UI", INSTANCE, "transfer_syntax_uid", _ALL),
)
BY_TAG = {a.tag: a for a in ATTRIBUTES}
BY_KEYWORD = {a.keyword.lower(): a for a in ATTRIBUTES}

# The attributes every QIDO-RS result of a level carries (PS3.18 Tables 10.6.3-3 to -5, those this archive keeps).
DEFAULT_KEYWORDS: dict[Level, tuple[str, ...]] = {
    PATIENT: ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"),
    STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    SERIES: ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances"),
    INSTANCE: ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames"),
}

# The ORM path from the model of a query level to the model of a level at or above it.
PATH: dict[tuple[Level, Level], str] = {
    (PATIENT, PATIENT): "",
    (STUDY, PATIENT): "patient__",
    (STUDY, STUDY): "",
    (SERIES, PATIENT): "study__patient__",
    (SERIES, STUDY): "study__",
    (SERIES, SERIES): "",
    (INSTANCE, PATIENT): "series__study__patient__",
    (INSTANCE, STUDY): "series__study__",
    (INSTANCE, SERIES): "series__",
    (INSTANCE, INSTANCE): "",
}


def attribute_lookup(name: str) -> Attribute | None:
    """An attribute by keyword (any case) or 8-digit tag; None if this archive does not keep it."""
    key = name.strip()
    return BY_TAG.get(key.upper()) or BY_KEYWORD.get(key.lower())


def levels_at_or_above(level: Level | str) -> tuple[Level, ...]:
    """The levels whose attributes a query of `level` may match and return (patient attributes come with
    studies)."""
    return LEVELS[: LEVELS.index(Level(level)) + 1]


def attributes_at_or_above(level: Level | str) -> list[Attribute]:
    allowed = levels_at_or_above(level)
    return [a for a in ATTRIBUTES if a.level in allowed]


_PARENT = {INSTANCE: "series", SERIES: "study", STUDY: "patient"}


def _holder(row: Any, row_level: Level, level: Level) -> Any:
    """The object of `level` that a result row of `row_level` belongs to (the row itself at its own level)."""
    obj, current = row, row_level
    while current is not level and obj is not None:
        obj = getattr(obj, _PARENT[current], None)
        current = LEVELS[LEVELS.index(current) - 1]
    return obj


def attribute_value(row: Any, attribute: Attribute, *, level: Level | str) -> Any:
    """The value of `attribute` for a result row of `level` (a Patient, Study, Series or Instance, as the matcher
    returns them), or None when not kept. Dates and times are `date`/`time` objects, numbers ints."""
    if not attribute.field:
        return None
    holder = _holder(row, Level(level), attribute.level)
    if holder is None:
        return None
    value = getattr(holder, attribute.field, None)
    if attribute.level is PATIENT and attribute.matching is Matching.UNIVERSAL and value is None:
        return 0
    return value
