"""docs/SECURITY_TESTS.md maps every row of shared/SECURITY.md to the tests that prove it (issue 14). This keeps the
map honest: every row ID is there once, every test it names exists, a covered or partial row names a test, a
missing or n/a row says why. The missing and partial rows are printed on every run (shown with -s)."""

from __future__ import annotations

import ast
import os
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAP = ROOT / "docs" / "SECURITY_TESTS.md"
# The rows of shared/SECURITY.md (sections A to H). When the shared file is at hand (SECURITY_MD, or
# /work/shared/SECURITY.md), its IDs are read from it too, so a new row there fails this test until mapped.
ROWS = {
    **{f"A{n}": "" for n in range(1, 10)},
    **{f"B{n}": "" for n in range(1, 12)},
    **{f"C{n}": "" for n in range(1, 6)},
    **{f"D{n}": "" for n in range(1, 6)},
    **{f"E{n}": "" for n in range(1, 11)},
    **{f"F{n}": "" for n in range(1, 9)},
    **{f"G{n}": "" for n in range(1, 15)},
    **{f"H{n}": "" for n in range(1, 6)},
}
STATUSES = {"covered", "partial", "missing", "n/a"}
SHARED = [Path(os.environ["SECURITY_MD"])] if os.environ.get("SECURITY_MD") else []


def _row_ids_of_security_md() -> set[str]:
    for path in [*SHARED, Path("/work/shared/SECURITY.md")]:
        if path.is_file():
            return set(re.findall(r"^\| ([A-H]\d{1,2}) \|", path.read_text(), flags=re.MULTILINE))
    return set(ROWS)


def _table() -> list[tuple[str, str, list[str], str]]:
    rows = []
    for line in MAP.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"[A-H]\d{1,2}", cells[0]):
            tests = [t.strip() for t in cells[2].split(",") if t.strip()]
            rows.append((cells[0], cells[1], tests, cells[3]))
    return rows


@cache
def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    }


def test_every_row_of_security_md_is_in_the_map_once() -> None:
    ids = [row[0] for row in _table()]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"rows listed twice: {duplicates}"
    expected = _row_ids_of_security_md() | set(ROWS)
    unmapped, unknown = sorted(expected - set(ids)), sorted(set(ids) - expected)
    assert set(ids) == expected, f"not in the map: {unmapped}; unknown: {unknown}"


def test_every_listed_test_exists_and_every_status_is_justified() -> None:
    problems = []
    for row, status, tests, note in _table():
        if status not in STATUSES:
            problems.append(f"{row}: unknown status {status!r}")
        if status in ("covered", "partial") and not tests:
            problems.append(f"{row}: {status} without a test")
        if status in ("missing", "n/a", "partial") and not note:
            problems.append(f"{row}: {status} without a note saying why")
        for node in tests:
            file, _, name = node.partition("::")
            path = ROOT / file
            if not path.is_file():
                problems.append(f"{row}: no file {file}")
            elif name.split("[")[0] not in _test_functions(path):
                problems.append(f"{row}: no test {name} in {file}")
    assert not problems, "\n".join(problems)
    # The rows still open, printed so that every run shows them.
    open_rows = [f"{row} {status}: {note}" for row, status, _, note in _table() if status in ("missing", "partial")]
    print("SECURITY.md rows not yet fully proven:\n  " + "\n  ".join(open_rows))
