"""bench/smallfiles.py writes the files make_instance writes, without pydicom's encoder for each one."""

from datetime import date
from io import BytesIO

import pydicom
import pytest

from bench.smallfiles import SmallFiles
from studies.dicom.synthetic import make_instance

VALUES = [
    {"patient_id": "P0001", "patient_name": "MARTIN^ANNE", "patient_birth_date": date(1950, 3, 4),
     "patient_sex": "F", "study_uid": "1.2.3.4", "series_uid": "1.2.3.4.5", "sop_uid": "1.2.3.4.5.6",
     "modality": "CT", "instance_number": 7, "series_number": 2, "accession": "ACC1",
     "referring": "DR^WHO", "study_description": "Chest", "series_description": "Axial",
     "study_date": date(2021, 5, 6)},
    # odd lengths everywhere, no dates, another modality (another SOP class)
    {"patient_id": "P12", "patient_name": "DURAND^JEAN^X", "patient_birth_date": None, "patient_sex": "M",
     "study_uid": "1.2.33", "series_uid": "1.2.333", "sop_uid": "1.2.3333", "modality": "MR",
     "instance_number": 12, "series_number": 101, "accession": "A", "referring": "",
     "study_description": "Head", "series_description": "T1w", "study_date": None},
]  # fmt: skip


@pytest.mark.parametrize("values", VALUES)
def test_a_small_file_reads_back_as_make_instance_writes_it(values):
    fast = pydicom.dcmread(BytesIO(SmallFiles().build(**values)))
    slow = pydicom.dcmread(BytesIO(make_instance(rows=64, columns=64, pixel_seed=0, **values)))

    assert fast.file_meta == slow.file_meta
    assert [e.tag for e in fast] == [e.tag for e in slow]
    for elem in slow:
        assert fast[elem.tag].VR == elem.VR
        assert fast[elem.tag].value == elem.value, elem.keyword
    assert fast.pixel_array.shape == (64, 64)


def test_one_writer_keeps_each_modality_apart():
    writer = SmallFiles()
    ct, mr = (pydicom.dcmread(BytesIO(writer.build(**values))) for values in VALUES)

    assert (ct.Modality, mr.Modality) == ("CT", "MR")
    assert ct.SOPClassUID != mr.SOPClassUID
    assert (ct.SOPInstanceUID, mr.SOPInstanceUID) == ("1.2.3.4.5.6", "1.2.3333")
