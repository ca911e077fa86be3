from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from studies.dicom.parse import Limits, parse
from studies.dicom.synthetic import make_instance, make_study, synthetic_pixels

LIMITS = Limits(max_bytes=10**8)


def test_study_has_consistent_uids_and_numbers():
    files = make_study(series=3, instances_per_series=4, patient_id="SYN0042")
    parsed = [parse(data, limits=LIMITS)[0] for data in files]

    assert len(parsed) == 12
    assert len({p.study_instance_uid for p in parsed}) == 1
    assert len({p.sop_instance_uid for p in parsed}) == 12
    assert {p.patient_id for p in parsed} == {"SYN0042"}
    by_series: dict[str, list] = {}
    for p in parsed:
        by_series.setdefault(p.series_instance_uid, []).append(p)
    assert len(by_series) == 3
    assert sorted(group[0].series_number for group in by_series.values()) == [1, 2, 3]
    for group in by_series.values():
        assert len({p.series_number for p in group}) == 1
        assert len({p.series_description for p in group}) == 1
        assert [p.instance_number for p in group] == [1, 2, 3, 4]


def test_study_uid_can_be_given():
    files = make_study(series=1, instances_per_series=2, study_uid="1.2.3.4")
    assert {pydicom.dcmread(io.BytesIO(f)).StudyInstanceUID for f in files} == {"1.2.3.4"}


def test_pixels_are_deterministic_and_seeded():
    a = pydicom.dcmread(io.BytesIO(make_instance(pixel_seed=5))).pixel_array
    b = pydicom.dcmread(io.BytesIO(make_instance(pixel_seed=5))).pixel_array
    c = pydicom.dcmread(io.BytesIO(make_instance(pixel_seed=6))).pixel_array
    assert (a == b).all()
    assert not (a == c).all()
    assert np.ptp(a) > 1000


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_lossless_syntaxes_round_trip(syntax: str):
    ds = pydicom.dcmread(io.BytesIO(make_instance(transfer_syntax=syntax, frames=2, sop_uid="1.2.3.9")))
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.SOPInstanceUID == "1.2.3.9"  # compressing must not mint a new instance UID
    assert (ds.pixel_array == synthetic_pixels(rows=64, columns=64, frames=2)).all()


def test_jpeg_baseline_needs_8_bits():
    with pytest.raises(ValueError, match="8-bit"):
        make_instance(transfer_syntax=JPEGBaseline8Bit, bits=16)


def test_starts_with_a_zero_preamble_and_dicm():
    data = make_instance()
    assert data[:128] == bytes(128)
    assert data[128:132] == b"DICM"
