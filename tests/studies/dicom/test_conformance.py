"""The de-identification conformance table (SECURITY.md F8): docs/DEIDENTIFICATION.md is what the code generates,
and what it says is what the de-identifier does to a data set holding every attribute of the table."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataset import Dataset

from studies.dicom.conformance import COLUMNS, conformance_markdown
from studies.dicom.deidentify import Deidentifier

DOC = Path(settings.BASE_DIR) / "docs" / "DEIDENTIFICATION.md"
VALUES = {
    "DA": "20200102", "TM": "101010", "DT": "20200102101010", "PN": "DOE^JANE", "LO": "St Elsewhere 42",
    "SH": "ROOM 7", "CS": "SECRET", "LT": "Seen by Dr House", "ST": "Seen by Dr House", "UT": "Seen by Dr House",
    "AE": "MODALITY7", "AS": "030Y", "DS": "1.5", "IS": "3", "UC": "Seen by Dr House", "UR": "http://x.example/7",
}  # fmt: skip


def _table() -> dict[str, tuple[str, ...]]:
    """The documented actions by tag, one per column, as read from the Markdown file."""
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"\| (\([0-9A-F]{4},[0-9A-F]{4}\)) \| [^|]+ \| [^|]+ \| (.+) \|", line)
        if match:
            rows[match.group(1)] = tuple(cell.strip() for cell in match.group(2).split("|"))
    return rows


def test_the_document_is_what_the_code_generates():
    assert DOC.read_text(encoding="utf-8") == conformance_markdown()
    call_command("deid_conformance", "--check")


def test_the_check_fails_on_a_stale_document(tmp_path, settings):
    (tmp_path / "docs").mkdir()
    stale = conformance_markdown().replace(
        "| (0010,0010) | Patient's Name | Z | Z |", "| (0010,0010) | Patient's Name | Z | K |"
    )
    (tmp_path / "docs" / "DEIDENTIFICATION.md").write_text(stale, encoding="utf-8")
    settings.BASE_DIR = tmp_path
    with pytest.raises(CommandError, match="does not match"):
        call_command("deid_conformance", "--check")
    call_command("deid_conformance", "--write")
    call_command("deid_conformance", "--check")


@pytest.mark.parametrize("column", range(len(COLUMNS)), ids=[code for code, _ in COLUMNS])
def test_each_documented_action_is_what_the_deidentifier_does(column):
    table = _table()
    assert len(table) > 600
    ds, originals = Dataset(), {}
    for text in table:
        tag = int(text[1:5] + text[6:10], 16)
        if tag >> 16 in (0x0000, 0x0002) or not dictionary_has_tag(tag) or dictionary_VR(tag) not in {*VALUES, "UI"}:
            continue
        vr = dictionary_VR(tag)
        value = f"1.2.826.0.1.3680043.8.498.{tag}" if vr == "UI" else VALUES[vr]
        ds.add_new(tag, vr, value)
        originals[tag] = (text, vr, value)
    ds.PatientID = "P-CONFORMANCE"
    assert len(originals) > 300
    _, options = COLUMNS[column]
    Deidentifier(key=secrets.token_bytes(32), options=options).dataset(ds)
    wrong = []
    for tag, (text, vr, value) in originals.items():
        action = table[text][column]
        present = tag in ds
        now = ds[tag].value if present else None
        ok = {
            "X": not present,
            "Z": present and now in (None, ""),
            "D": present and now not in (None, "") and str(now) != value,
            "U": present and str(now).startswith("2.25.") and str(now) != value,
            "K": present and str(now) == value,
            # Dates move by the patient's offset; a time of day carries no date and stays.
            "C": present and (str(now) == value if vr == "TM" else str(now) != value and len(str(now)) == len(value)),
        }.get(action)
        if not ok:
            wrong.append((text, action, value, now))
    assert wrong == []
