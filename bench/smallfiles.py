"""Many small Part-10 files fast: the QIDO-RS index as files for Orthanc (200,000 of them with `--large`).

`make_instance` (studies/dicom/synthetic.py) builds each file through pydicom, about 3 ms of CPU for a 64 x 64
instance: 10 minutes for 200,000. `SmallFiles` builds one such file per modality through `make_instance`, keeps
every element of it encoded as it is, and encodes only the elements that change from one instance to the next
(UIDs, patient, study and series attributes: all text) itself, in Explicit VR Little Endian, in tag order. The
pixels are the same in every file. tests/bench/test_smallfiles.py checks that pydicom reads each file back with
the same elements as `make_instance` writes for the same values.
"""

from __future__ import annotations

import struct
from datetime import date
from io import BytesIO
from typing import Any

# The elements one instance sets, by tag: (VR, keyword of make_instance's arguments).
VARYING: dict[int, str] = {
    0x00080018: "UI",  # SOPInstanceUID
    0x00080020: "DA",  # StudyDate
    0x00080030: "TM",  # StudyTime
    0x00080050: "SH",  # AccessionNumber
    0x00080060: "CS",  # Modality
    0x00080090: "PN",  # ReferringPhysicianName
    0x00081030: "LO",  # StudyDescription
    0x0008103E: "LO",  # SeriesDescription
    0x00100010: "PN",  # PatientName
    0x00100020: "LO",  # PatientID
    0x00100030: "DA",  # PatientBirthDate
    0x00100040: "CS",  # PatientSex
    0x0020000D: "UI",  # StudyInstanceUID
    0x0020000E: "UI",  # SeriesInstanceUID
    0x00200011: "IS",  # SeriesNumber
    0x00200013: "IS",  # InstanceNumber
}
MEDIA_SOP_INSTANCE = 0x00020003
LONG_LENGTH_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
PREAMBLE = b"\0" * 128 + b"DICM"


def _element(tag: int, vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "UN") else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in LONG_LENGTH_VRS:
        return head + struct.pack("<HI", 0, len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _encoded(elem: Any) -> bytes:
    """One element of a dataset, encoded by pydicom, Explicit VR Little Endian."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_data_element(out, elem)
    return out.getvalue()


class SmallFiles:
    """`build(...)` takes make_instance's arguments (64 x 64, 16-bit, Explicit VR Little Endian) and returns the
    bytes of the file."""

    def __init__(self) -> None:
        self._templates: dict[str, tuple[list[tuple[int, bytes]], list[tuple[int, bytes]], str]] = {}

    def _template(self, modality: str) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]], str]:
        if modality not in self._templates:
            import pydicom

            from studies.dicom.synthetic import make_instance

            ds = pydicom.dcmread(BytesIO(make_instance(modality=modality, rows=64, columns=64, pixel_seed=0)))
            meta = [(int(e.tag), _encoded(e)) for e in ds.file_meta if int(e.tag) & 0xFFFF]  # not the group length
            body = [(int(e.tag), _encoded(e)) for e in ds if int(e.tag) not in VARYING]
            self._templates[modality] = (meta, body, str(ds.SOPClassUID))
        return self._templates[modality]

    def build(
        self,
        *,
        patient_id: str,
        patient_name: str,
        patient_birth_date: date | None,
        patient_sex: str,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        modality: str,
        instance_number: int,
        series_number: int,
        accession: str,
        referring: str,
        study_description: str,
        series_description: str,
        study_date: date | None,
    ) -> bytes:
        meta, body, _ = self._template(modality)
        values = {
            0x00080018: sop_uid,
            0x00080020: study_date.strftime("%Y%m%d") if study_date else "",
            0x00080030: "093000" if study_date else "",
            0x00080050: accession,
            0x00080060: modality,
            0x00080090: referring,
            0x00081030: study_description,
            0x0008103E: series_description,
            0x00100010: patient_name,
            0x00100020: patient_id,
            0x00100030: patient_birth_date.strftime("%Y%m%d") if patient_birth_date else "",
            0x00100040: patient_sex,
            0x0020000D: study_uid,
            0x0020000E: series_uid,
            0x00200011: str(series_number),
            0x00200013: str(instance_number),
        }
        varying = [(tag, _element(tag, VARYING[tag], value.encode("latin-1"))) for tag, value in values.items()]
        meta_items = [
            (tag, _element(tag, "UI", sop_uid.encode()) if tag == MEDIA_SOP_INSTANCE else raw) for tag, raw in meta
        ]
        meta_bytes = b"".join(raw for _, raw in sorted(meta_items))
        group_length = _element(0x00020000, "UL", struct.pack("<I", len(meta_bytes)))
        return b"".join([PREAMBLE, group_length, meta_bytes, *(raw for _, raw in sorted([*body, *varying]))])
