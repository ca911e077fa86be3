"""`make audit-deps` (SECURITY.md G14): scripts/audit_deps.py's verdict on pip-audit's report. A known vulnerability
fails; packages the vulnerability service could not look up are said to be NOT AUDITED (pip-audit itself calls that
"No known vulnerabilities found"), and fail only when strict. The vulnerability service cannot be reached from this
machine (shared/DEPENDENCIES.md §6.6), so the end-to-end test stands a small executable in for pip-audit that writes
the report pip-audit writes (its JSON format), and the real pip-audit is run when `make audit-deps` made it."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from scripts import audit_deps

ROOT = Path(__file__).resolve().parents[2]
VULNERABLE = {
    "dependencies": [
        {"name": "django", "version": "5.2.0", "vulns": [
            {"id": "PYSEC-2025-13", "fix_versions": ["5.2.1"], "aliases": ["CVE-2025-32873"], "description": "..."}]},
        {"name": "celery", "version": "5.7.0", "vulns": []},
    ],
    "fixes": [],
}  # fmt: skip
NOT_REACHED = {
    "dependencies": [
        {"name": "amqp", "skip_reason": "Dependency not found on PyPI and could not be audited: amqp (5.4.2)"},
        {"name": "celery", "skip_reason": "Dependency not found on PyPI and could not be audited: celery (5.7.0)"},
    ],
    "fixes": [],
}
CLEAN = {"dependencies": [{"name": "celery", "version": "5.7.0", "vulns": []}], "fixes": []}


def test_a_known_vulnerability_fails_strict_or_not():
    verdict = audit_deps.verdict_of(VULNERABLE)
    assert verdict.vulnerable == ["django 5.2.0: PYSEC-2025-13 (fixed in 5.2.1)"]
    assert verdict.audited == 2
    assert verdict.exit_code(strict=False) == verdict.exit_code(strict=True) == 1
    assert any("VULNERABLE django 5.2.0" in line for line in verdict.lines())


def test_packages_not_looked_up_are_said_and_fail_only_when_strict():
    verdict = audit_deps.verdict_of(NOT_REACHED)
    assert (verdict.audited, verdict.not_audited, verdict.vulnerable) == (0, ["amqp", "celery"], [])
    assert verdict.exit_code(strict=False) == 0
    assert verdict.exit_code(strict=True) == 1
    assert any("NOT AUDITED: 2 of 2" in line for line in verdict.lines())


def test_a_clean_report_passes_even_when_strict():
    verdict = audit_deps.verdict_of(CLEAN)
    assert verdict.exit_code(strict=True) == 0
    assert verdict.lines() == ["audit-deps: 1 packages audited, no known vulnerability among them"]


def _stand_in(tmp_path: Path, report: dict | None, stderr: str = "") -> str:
    """An executable taking pip-audit's arguments that writes `report` where --output says, or fails."""
    path = tmp_path / "pip-audit"
    path.write_text(
        f"#!{sys.executable}\n"
        "import sys, json\n"
        "args = sys.argv[1:]\n"
        "assert args[args.index('-r') + 1].endswith('requirements.txt')\n"
        "assert '--no-deps' in args and '--disable-pip' in args\n"
        f"report = {json.dumps(report)!r}\n"
        "if report == 'null':\n"
        f"    sys.stderr.write({stderr!r}); sys.exit(1)\n"
        "open(args[args.index('--output') + 1], 'w').write(report)\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.parametrize(
    ("report", "strict", "code"),
    [(VULNERABLE, False, 1), (NOT_REACHED, False, 0), (NOT_REACHED, True, 1), (CLEAN, True, 0), (None, False, 0),
     (None, True, 1)],
)  # fmt: skip
def test_main_runs_the_tool_on_requirements_and_exits_with_its_verdict(tmp_path, capsys, report, strict, code):
    tool = _stand_in(tmp_path, report, stderr="ConnectionError: Failed to resolve 'api.osv.dev'\n")
    argv = ["--pip-audit", tool, str(ROOT / "requirements.txt")] + (["--strict"] if strict else [])
    assert audit_deps.main(argv) == code
    out = capsys.readouterr()
    if report is None:
        assert "could not be reached (ConnectionError: Failed to resolve 'api.osv.dev')" in out.err
