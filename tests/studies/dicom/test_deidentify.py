"""The Annex E Basic Profile against a golden synthetic data set where every Table E.1-1 attribute is populated."""

from __future__ import annotations

import hashlib
import io
import secrets
from datetime import date, timedelta

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from studies.dicom.annex_e import ATTRIBUTES, EDITION
from studies.dicom.deidentify import (
    BASIC_PROFILE,
    MODIFIED_DATES,
    RETAIN_DEVICE_IDENTITY,
    Deidentifier,
    NotDeidentifiable,
    basic_action,
    effective_action,
)
from studies.dicom.synthetic import make_instance, make_study

OPTION_SETS = [
    frozenset(),
    frozenset({MODIFIED_DATES}),
    frozenset({RETAIN_DEVICE_IDENTITY}),
    frozenset({MODIFIED_DATES, RETAIN_DEVICE_IDENTITY}),
]
# Groups that cannot sit in a stored data set (command group, file meta) are covered by the file-level tests.
GOLDEN_TAGS = sorted(t for t in ATTRIBUTES if t >> 16 not in (0x0000, 0x0002))
NESTING_SEQUENCE = 0x00081115  # Referenced Series Sequence: not in Table E.1-1, so kept and walked into
PRIVATE_CREATOR, PRIVATE_VALUE = 0x00090010, 0x00091001


def _vr(tag: int) -> str:
    return dictionary_VR(tag).split(" or ")[0]


def _original(tag: int, vr: str) -> object:
    values = {
        "UI": lambda: generate_uid(),
        "DA": lambda: "20240102",
        "DT": lambda: "20240102093000",
        "TM": lambda: "093000",
        "PN": lambda: "DOE^JANE",
        "AS": lambda: "045Y",
        "DS": lambda: "1.5",
        "IS": lambda: "7",
        "AT": lambda: 0x00100010,
    }
    if vr in values:
        return values[vr]()
    if vr in ("FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"):
        return 7
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN"):
        return b"\x01\x02"
    if vr == "UR":
        return f"http://original.example/{tag:08X}"
    if vr in ("CS", "AE", "SH"):
        return "ORIGINAL"
    return f"ORIGINAL {tag:08X}"


def _populate(ds: Dataset, *, nested: bool) -> dict[int, object]:
    originals = {}
    for tag in GOLDEN_TAGS:
        vr = _vr(tag)
        if vr == "SQ":
            if nested:
                continue
            item = Dataset()
            item.CodeMeaning = "ORIGINAL ITEM"
            item.PatientName = "DOE^IN^SEQUENCE"
            ds.add_new(tag, vr, Sequence([item]))
            originals[tag] = "SQ"
            continue
        value = _original(tag, vr)
        ds.add_new(tag, vr, value)
        originals[tag] = value
    ds.add_new(PRIVATE_CREATOR, "LO", "ACME 1.0")
    ds.add_new(PRIVATE_VALUE, "LO", "SECRET^NAME")
    return originals


def golden() -> tuple[Dataset, dict[int, object], dict[int, object]]:
    ds = Dataset()
    originals = _populate(ds, nested=False)
    item = Dataset()
    nested = _populate(item, nested=True)
    ds.add_new(NESTING_SEQUENCE, "SQ", Sequence([item]))
    ds.PatientID = "GOLDEN01"
    originals[0x00100020] = "GOLDEN01"
    return ds, originals, nested


def _is_empty(value: object) -> bool:
    return value is None or value == "" or value == [] or (isinstance(value, Sequence) and len(value) == 0)


def _violations(out: Dataset, originals: dict[int, object], deid: Deidentifier) -> list[str]:
    shift = timedelta(days=deid.date_offset_days("GOLDEN01"))
    problems = []
    for tag, original in originals.items():
        action = effective_action(tag, deid.options)
        name = ATTRIBUTES[tag].keyword
        present = Tag(tag) in out
        value = out[tag].value if present else None
        if action == "X":
            if present:
                problems.append(f"{name}: X but present")
        elif action == "Z":
            if not present or not _is_empty(value):
                problems.append(f"{name}: Z but {value!r}")
        elif action == "D":
            if original == "SQ":
                if not present:
                    problems.append(f"{name}: D sequence removed")
            elif not present or _is_empty(value) or value == original:
                problems.append(f"{name}: D but {value!r}")
        elif action == "U":
            if not present or value == original or not str(value).startswith("2.25."):
                problems.append(f"{name}: U but {value!r}")
        elif action == "U*":
            if not present:
                problems.append(f"{name}: U* sequence removed")
        elif action == "K":
            if not present or (original != "SQ" and value != original):
                problems.append(f"{name}: K but {value!r}")
        elif action == "C":
            vr = _vr(tag)
            expected = original
            if vr in ("DA", "DT"):
                expected = (date(2024, 1, 2) + shift).strftime("%Y%m%d") + str(original)[8:]
            if value != expected:
                problems.append(f"{name}: C expected {expected!r} got {value!r}")
        else:
            problems.append(f"{name}: unexpected action {action}")
    return problems


def test_table_is_pinned_and_complete():
    assert EDITION == "PS3.15 2024b"
    assert len(ATTRIBUTES) > 600
    codes = {row.basic for row in ATTRIBUTES.values()}
    assert codes == {"D", "Z", "X", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
    assert ATTRIBUTES[0x00100010].basic == "Z"  # Patient's Name
    assert ATTRIBUTES[0x00081010].device == "K"  # Station Name
    assert ATTRIBUTES[0x00080020].dates == "C"  # Study Date
    assert ATTRIBUTES[0x00100030].dates == ""  # Patient's Birth Date is never shifted, only emptied


def test_compound_codes_resolve_to_one_action():
    assert [basic_action(c) for c in ("X/Z", "X/D", "X/Z/D", "Z/D", "X/Z/U*", "D")] == ["X", "X", "X", "D", "U*", "D"]


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "+".join(sorted(o)) or "basic")
def test_golden_dataset_has_no_violations_at_top_level_and_nested(options):
    ds, originals, nested = golden()
    deid = Deidentifier(key=secrets.token_bytes(32), options=options)

    deid.dataset(ds)

    assert _violations(ds, originals, deid) == []
    item = ds[NESTING_SEQUENCE].value[0]
    assert _violations(item, nested, deid) == []
    for where in (ds, item):
        assert not any(elem.tag.is_private for elem in where)
    # items of kept sequences are de-identified too
    assert ds.ContentSequence[0].PatientName in (None, "")


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "+".join(sorted(o)) or "basic")
def test_markers_list_exactly_the_applied_options(options):
    ds, _, _ = golden()
    deid = Deidentifier(key=secrets.token_bytes(32), options=options)

    deid.dataset(ds)

    assert ds.PatientIdentityRemoved == "YES"
    codes = [(item.CodeValue, item.CodingSchemeDesignator) for item in ds.DeidentificationMethodCodeSequence]
    assert codes == [(code, "DCM") for code in [BASIC_PROFILE, *sorted(options)]]
    method = ds["DeidentificationMethod"]
    methods = list(method.value) if method.VM > 1 else [method.value]
    assert len(methods) == 1 + len(options)
    assert EDITION in methods[0]
    expected = "MODIFIED" if MODIFIED_DATES in options else "REMOVED"
    assert ds.LongitudinalTemporalInformationModified == expected


def test_retain_device_identity_keeps_device_serial_and_station_name():
    data = _with_device(make_instance())
    kept = pydicom.dcmread(io.BytesIO(Deidentifier(key=b"k" * 32, options={RETAIN_DEVICE_IDENTITY}).file(data).data))
    gone = pydicom.dcmread(io.BytesIO(Deidentifier(key=b"k" * 32).file(data).data))

    assert (kept.DeviceSerialNumber, kept.StationName) == ("SN-12345", "CT-ROOM-3")
    assert "DeviceSerialNumber" not in gone
    assert "StationName" not in gone
    assert [i.CodeValue for i in gone.DeidentificationMethodCodeSequence] == [BASIC_PROFILE]


def _with_device(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.DeviceSerialNumber = "SN-12345"
    ds.StationName = "CT-ROOM-3"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _rt_structure_set_referencing(ct_files: list[bytes], frame_of_reference: str) -> bytes:
    """An RT Structure Set whose contours reference each CT image (the F3 case)."""
    cts = [_read(f) for f in ct_files]
    ds = _read(make_instance(study_uid=cts[0].StudyInstanceUID, modality="RTSTRUCT"))
    del ds.PixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    contour_images = []
    for ct in cts:
        ref = Dataset()
        ref.ReferencedSOPClassUID = ct.SOPClassUID
        ref.ReferencedSOPInstanceUID = ct.SOPInstanceUID
        contour_images.append(ref)
    series = Dataset()
    series.SeriesInstanceUID = cts[0].SeriesInstanceUID
    series.ContourImageSequence = Sequence(contour_images)
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = cts[0].StudyInstanceUID  # RT convention: this one names the study
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_of_reference
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ds.StructureSetLabel = "PATIENT DOE"
    ds.StructureSetDate = "20240102"
    source = Dataset()
    source.ReferencedSOPClassUID = cts[0].SOPClassUID
    source.ReferencedSOPInstanceUID = cts[0].SOPInstanceUID
    ds.ReferencedImageSequence = Sequence([source])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _with_frame_of_reference(data: bytes, frame_of_reference: str) -> bytes:
    ds = _read(data)
    ds.FrameOfReferenceUID = frame_of_reference
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _uids_in(ds: Dataset) -> set[str]:
    found = set()
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value:
            found.update(str(v) for v in (elem.value if elem.VM > 1 else [elem.value]))
    return found


def test_uids_replaced_consistently_and_references_preserved():
    frame_of_reference = generate_uid()
    cts = [_with_frame_of_reference(f, frame_of_reference) for f in make_study(series=1, instances_per_series=3)]
    rtstruct = _rt_structure_set_referencing(cts, frame_of_reference)
    originals = set()
    for data in [*cts, rtstruct]:
        ds = _read(data)
        originals |= {
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            str(ds.SOPInstanceUID),
            frame_of_reference,
        }
    deid = Deidentifier(key=secrets.token_bytes(32))

    outputs = [deid.file(data) for data in [*cts, rtstruct]]

    for original in originals:
        assert all(original.encode() not in out.data for out in outputs)
    new_sops = {out.sop_uid for out in outputs}
    assert len({out.study_uid for out in outputs}) == 1
    rt = _read(outputs[-1].data)
    frame = rt.ReferencedFrameOfReferenceSequence[0]
    referenced = [
        i.ReferencedSOPInstanceUID
        for i in frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].ContourImageSequence
    ]
    assert set(referenced) == new_sops - {outputs[-1].sop_uid}
    assert frame.RTReferencedStudySequence[0].ReferencedSOPInstanceUID == outputs[0].study_uid
    assert frame.FrameOfReferenceUID == _read(outputs[0].data).FrameOfReferenceUID
    assert rt.ReferencedImageSequence[0].ReferencedSOPInstanceUID == outputs[0].sop_uid
    assert rt.file_meta.MediaStorageSOPInstanceUID == outputs[-1].sop_uid
    assert "StructureSetLabel" in rt
    assert rt.StructureSetLabel != "PATIENT DOE"
    for out in outputs:
        assert all(
            uid.startswith(("2.25.", "1.2.840.10008."))
            for uid in _uids_in(_read(out.data)) - {str(_read(out.data).file_meta.ImplementationClassUID)}
        )


def test_same_original_uid_maps_the_same_within_one_export_and_differs_across_exports():
    uid = generate_uid()
    one, two = Deidentifier(key=b"a" * 32), Deidentifier(key=b"b" * 32)
    assert one.uid(uid) == one.uid(uid) == Deidentifier(key=b"a" * 32).uid(uid)
    assert one.uid(uid) != two.uid(uid)
    assert len(one.uid(uid)) <= 64


def test_two_studies_of_one_patient_stay_47_days_apart_with_modified_dates():
    first = make_instance(patient_id="P47", study_date=date(2024, 3, 1))
    second = make_instance(patient_id="P47", study_date=date(2024, 3, 1) + timedelta(days=47))
    other = make_instance(patient_id="OTHER", study_date=date(2024, 3, 1))
    deid = Deidentifier(key=secrets.token_bytes(32), options={MODIFIED_DATES})

    a, b, c = (_read(deid.file(f).data) for f in (first, second, other))

    day = lambda ds: date.fromisoformat(f"{ds.StudyDate[:4]}-{ds.StudyDate[4:6]}-{ds.StudyDate[6:]}")  # noqa: E731
    assert (day(b) - day(a)).days == 47
    assert a.StudyDate != "20240301"
    assert a.PatientID == b.PatientID != c.PatientID
    assert a.PatientBirthDate in (None, "")  # birth date is not shifted, only emptied
    assert a.LongitudinalTemporalInformationModified == "MODIFIED"


def test_without_modified_dates_study_date_is_emptied():
    out = _read(Deidentifier(key=b"k" * 32).file(make_instance(study_date=date(2024, 3, 1))).data)
    assert out.StudyDate in (None, "")
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


def test_patient_pseudonym_is_keyed_not_a_plain_hash():
    deid = Deidentifier(key=secrets.token_bytes(32))
    pseudonym = deid.patient_pseudonym("SYN0001")
    assert hashlib.sha256(b"SYN0001").hexdigest().upper()[:16] not in pseudonym
    assert pseudonym == deid.patient_pseudonym("SYN0001")
    assert "SYN0001" not in pseudonym


def test_private_tags_removed_from_files():
    ds = _read(make_instance())
    block = ds.private_block(0x0011, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "SECRET^NAME")
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)

    result = Deidentifier(key=b"k" * 32).file(out.getvalue())

    assert b"SECRET^NAME" not in result.data
    assert b"ACME 1.0" not in result.data
    assert b"SYNTHETIC^PATIENT" not in result.data


def test_burned_in_annotation_is_refused():
    ds = _read(make_instance())
    ds.BurnedInAnnotation = "YES"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(NotDeidentifiable):
        Deidentifier(key=b"k" * 32).file(out.getvalue())


def test_unknown_options_and_short_keys_are_refused():
    with pytest.raises(ValueError, match="unsupported"):
        Deidentifier(key=b"k" * 32, options={"113110"})
    with pytest.raises(ValueError, match="16 bytes"):
        Deidentifier(key=b"short")
