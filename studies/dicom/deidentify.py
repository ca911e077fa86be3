"""De-identification per DICOM PS3.15 Annex E: the Basic Application Level Confidentiality Profile (113100).

Pure code: no ORM, no settings. Driven by the machine-readable Table E.1-1 in `studies.dicom.annex_e`.

One `Deidentifier` is one pseudonymization context: build it once per export, with a fresh random secret key, and
pass every file of the export through it, so that

- a UID (U) becomes `2.25.<int>`, the integer being an HMAC-SHA256 of the original UID under the key: the same
  original UID gives the same new UID in every file (references between files survive), and without the key nobody
  can link the new UID back to the original (a plain hash of a UID would be open to a dictionary attack);
- Patient ID becomes a keyed pseudonym, so the files of one patient stay grouped;
- with Retain Longitudinal Temporal Information with Modified Dates (113107), every date of a patient moves by the
  same whole number of days (derived from the key and the patient id), so intervals survive and absolute dates don't.

Options offered: 113107 (Modified Dates) and 113109 (Retain Device Identity). Everything else in CID 7050 is off.
Compound actions are resolved towards removal (see `basic_action`); private attributes are always removed.
Burned-in annotation is not cleaned here (no Clean Pixel Data option), so an instance that declares
Burned In Annotation = YES is refused rather than exported.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from io import BytesIO

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from studies.dicom.annex_e import ATTRIBUTES, EDITION, MASKED

__all__ = [
    "BASIC_PROFILE",
    "MODIFIED_DATES",
    "OPTION_MEANINGS",
    "RETAIN_DEVICE_IDENTITY",
    "DeidentifiedFile",
    "Deidentifier",
    "NotDeidentifiable",
    "basic_action",
    "effective_action",
]

BASIC_PROFILE = "113100"
MODIFIED_DATES = "113107"
RETAIN_DEVICE_IDENTITY = "113109"

# CID 7050 code meanings (PS3.16), in the order they are written to (0012,0064).
OPTION_MEANINGS = {
    BASIC_PROFILE: "Basic Application Confidentiality Profile",
    MODIFIED_DATES: "Retain Longitudinal Temporal Information Modified Dates Option",
    RETAIN_DEVICE_IDENTITY: "Retain Device Identity Option",
}
_METHOD_TEXT = {
    BASIC_PROFILE: f"Enclave {EDITION} Annex E Basic Profile",
    MODIFIED_DATES: "Retain Longitudinal Temporal Info Modified Dates",
    RETAIN_DEVICE_IDENTITY: "Retain Device Identity",
}
SUPPORTED_OPTIONS = frozenset({MODIFIED_DATES, RETAIN_DEVICE_IDENTITY})

_PATIENT_ID = 0x00100020
_BURNED_IN_ANNOTATION = 0x00280301
_DUMMY_TEXT = "ANONYMIZED"
_DUMMY_BY_VR: dict[str, object] = {
    "AE": "ANONYMIZED",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "PN": "ANONYMIZED",
}
_NUMERIC_VRS = {"FL", "FD", "SL", "SS", "UL", "US", "SV", "UV", "AT"}
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
# Date offsets for 113107: between one and ten years into the past, never zero.
_MIN_SHIFT_DAYS = 365
_SHIFT_SPAN_DAYS = 3650


class NotDeidentifiable(Exception):
    """The instance cannot be de-identified by this profile (for example burned-in annotation)."""


@dataclass(frozen=True)
class DeidentifiedFile:
    data: bytes
    study_uid: str
    series_uid: str
    sop_uid: str


def basic_action(code: str) -> str:
    """Resolve a Table E.1-1 Basic Profile code to the one action applied.

    Where the table lets the de-identifier choose (X/Z, X/D, X/Z/D) we remove: it discloses least, and the
    exported files are for research and teaching, not re-import as clinical objects. Z/D gives a dummy (D) so that
    Patient ID can carry the keyed pseudonym. X/Z/U* (Referenced/Source Image Sequence) keeps the sequence and lets
    each UID inside it be replaced by its own row (U), so references to other exported instances survive.
    """
    if code in ("X/Z", "X/D", "X/Z/D"):
        return "X"
    if code == "Z/D":
        return "D"
    if code == "X/Z/U*":
        return "U*"
    return code


def _masked_action(tag: int) -> str | None:
    for row in MASKED:
        if tag & row.mask == row.value:
            return row.basic
    return None


def effective_action(tag: int, options: Iterable[str]) -> str | None:
    """The action for `tag` under the active options; None when Table E.1-1 does not list the attribute."""
    options = set(options)
    row = ATTRIBUTES.get(tag)
    if row is None:
        masked = _masked_action(tag)
        return basic_action(masked) if masked else None
    if RETAIN_DEVICE_IDENTITY in options and row.device:
        return row.device
    if MODIFIED_DATES in options and row.dates:
        return row.dates
    return basic_action(row.basic)


def _uid_from_digest(digest: bytes) -> str:
    # A 2.25 UID is the integer form of a UUID (PS3.5 B.2): mark it as a version 8 (custom) RFC 9562 UUID.
    n = int.from_bytes(digest[:16], "big")
    n = (n & ~(0xF << 76)) | (0x8 << 76)
    n = (n & ~(0x3 << 62)) | (0x2 << 62)
    return f"2.25.{n}"


@dataclass
class Deidentifier:
    """One pseudonymization context (one export). `key` is the export's secret; never store it with the output."""

    key: bytes
    options: frozenset[str] = frozenset()
    _uids: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        unknown = set(self.options) - SUPPORTED_OPTIONS
        if unknown:
            raise ValueError(f"unsupported de-identification options: {sorted(unknown)}")
        if len(self.key) < 16:
            raise ValueError("the de-identification key must be at least 16 bytes")
        self.options = frozenset(self.options)

    # -- keyed mappings -------------------------------------------------------------------------------------------

    def _mac(self, purpose: str, value: str) -> bytes:
        return hmac.new(self.key, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        original = str(original).strip().rstrip("\0")
        if not original:
            return original
        mapped = self._uids.get(original)
        if mapped is None:
            mapped = self._uids[original] = _uid_from_digest(self._mac("uid", original))
        return mapped

    def patient_pseudonym(self, patient_id: str) -> str:
        return "ANON" + self._mac("patient", patient_id.strip()).hex()[:16].upper()

    def date_offset_days(self, patient_id: str) -> int:
        n = int.from_bytes(self._mac("date-offset", patient_id.strip())[:4], "big")
        return -(_MIN_SHIFT_DAYS + n % _SHIFT_SPAN_DAYS)

    @property
    def codes(self) -> list[str]:
        """CID 7050 codes written to (0012,0064): 113100 plus each applied option, in code order."""
        return [BASIC_PROFILE, *sorted(self.options)]

    # -- the profile ----------------------------------------------------------------------------------------------

    def file(self, data: bytes) -> DeidentifiedFile:
        """De-identify one Part-10 file. Raises NotDeidentifiable or pydicom's errors for unreadable input."""
        ds = pydicom.dcmread(BytesIO(data), force=False)
        self.dataset(ds)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return DeidentifiedFile(
            data=out.getvalue(),
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            sop_uid=str(ds.SOPInstanceUID),
        )

    def dataset(self, ds: Dataset) -> Dataset:
        """De-identify `ds` in place (the top-level data set of one instance) and write the Annex E markers."""
        burned_in = ds.get(_BURNED_IN_ANNOTATION)
        if burned_in is not None and str(burned_in.value).strip().upper() == "YES":
            raise NotDeidentifiable("Burned In Annotation is YES and Clean Pixel Data is not offered")
        patient_id = str(ds.get("PatientID", "") or "")
        shift = timedelta(days=self.date_offset_days(patient_id))
        self._walk(ds, patient_id=patient_id, shift=shift)
        self._mark(ds)
        return ds

    def _walk(self, ds: Dataset, *, patient_id: str, shift: timedelta) -> None:
        for tag in list(ds.keys()):
            elem = ds[tag]
            if tag.is_private:
                del ds[tag]
                continue
            action = effective_action(int(tag), self.options)
            if action == "X":
                del ds[tag]
                continue
            if elem.VR == "SQ":
                if action == "Z":
                    elem.value = Sequence()
                    continue
                # K, C, D, U* and unlisted sequences: keep the structure, de-identify every item.
                for item in elem.value:
                    self._walk(item, patient_id=patient_id, shift=shift)
                continue
            if action is None or action == "K":
                continue
            if action == "Z":
                elem.value = None
            elif action == "U":
                self._replace_uids(elem)
            elif action == "C":
                self._clean_temporal(elem, shift)
            elif action == "D":
                elem.value = self._dummy(elem, patient_id=patient_id)
            else:  # a code this module does not know: fail closed
                del ds[tag]

    def _replace_uids(self, elem: DataElement) -> None:
        if elem.value in (None, ""):
            return
        if elem.VM > 1:
            elem.value = [self.uid(v) for v in elem.value]
        else:
            elem.value = self.uid(elem.value)

    def _clean_temporal(self, elem: DataElement, shift: timedelta) -> None:
        """113107: shift DA and the date part of DT by the patient's offset; times of day carry no date."""
        if elem.VR == "TM" or elem.value in (None, ""):
            return
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        shifted = [_shift(str(v), shift) for v in values]
        if any(v is None for v in shifted):
            elem.value = None  # unparseable: cannot shift it safely, so it goes
        else:
            elem.value = shifted if len(shifted) > 1 else shifted[0]

    def _dummy(self, elem: DataElement, *, patient_id: str) -> object:
        if int(elem.tag) == _PATIENT_ID:
            return self.patient_pseudonym(patient_id)
        if elem.VR == "UI":
            return self.uid(str(elem.value)) if elem.value else self.uid(f"dummy:{int(elem.tag):08X}")
        if elem.VR in _NUMERIC_VRS:
            return 0
        if elem.VR in _BINARY_VRS:
            return b"\0\0"
        return _DUMMY_BY_VR.get(elem.VR, _DUMMY_TEXT)

    def _mark(self, ds: Dataset) -> None:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = [_METHOD_TEXT[code] for code in self.codes]
        items = []
        for code in self.codes:
            item = Dataset()
            item.CodeValue = code
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = OPTION_MEANINGS[code]
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if MODIFIED_DATES in self.options else "REMOVED"


def _shift(value: str, shift: timedelta) -> str | None:
    value = value.strip()
    if len(value) < 8 or not value[:8].isdigit():
        return None
    try:
        day = date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None
    return (day + shift).strftime("%Y%m%d") + value[8:]
