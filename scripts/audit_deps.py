"""`make audit-deps` (SECURITY.md G14): pip-audit against the pinned requirements.txt, with a verdict that does not
lie about what it could check.

    audit_deps.py --pip-audit PATH [--strict] REQUIREMENTS

pip-audit runs from its own virtual environment (the Makefile makes it), so the project's environment does not
carry it. Each pin is looked up as pinned (`--no-deps --disable-pip`: requirements.txt is pip-compile's complete
list, nothing to resolve). The verdict:

- a known vulnerability in any pin: its package, version, advisory id and fixed versions, and exit 1;
- packages the vulnerability service could not look up (its JSON API or OSV unreachable, as on a machine whose
  package access serves only the simple index): pip-audit then says "No known vulnerabilities found" and exits 0,
  which is no assurance at all. Said here as "NOT AUDITED" with the count; exit 0 (nothing found) unless
  `--strict` (or AUDIT_DEPS_STRICT=1), for CI that does reach the service and must fail when it cannot;
- every package looked up and none vulnerable: exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TIMEOUT_SECONDS = 300


@dataclass
class Verdict:
    audited: int = 0
    not_audited: list[str] = field(default_factory=list)
    vulnerable: list[str] = field(default_factory=list)
    error: str = ""

    def exit_code(self, *, strict: bool) -> int:
        if self.vulnerable:
            return 1
        if strict and (self.not_audited or self.error):
            return 1
        return 0

    def lines(self) -> list[str]:
        out = [f"audit-deps: VULNERABLE {line}" for line in self.vulnerable]
        if self.error:
            out.append(f"audit-deps: NOT AUDITED: the vulnerability service could not be reached ({self.error})")
        if self.not_audited:
            total = self.audited + len(self.not_audited)
            out.append(
                f"audit-deps: NOT AUDITED: {len(self.not_audited)} of {total} pinned packages could not be looked up "
                f"(first: {', '.join(self.not_audited[:3])}); 'no known vulnerabilities' means nothing for them"
            )
        if not self.vulnerable:
            out.append(f"audit-deps: {self.audited} packages audited, no known vulnerability among them")
        return out


def verdict_of(report: dict[str, Any]) -> Verdict:
    """The verdict of one pip-audit JSON report (`--format json`: {"dependencies": [{"name", "version", "vulns"}
    or {"name", "skip_reason"}], "fixes": [...]})."""
    verdict = Verdict()
    for dep in report.get("dependencies", []):
        if "skip_reason" in dep:
            verdict.not_audited.append(str(dep.get("name", "?")))
            continue
        verdict.audited += 1
        for vuln in dep.get("vulns", []):
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed version"
            verdict.vulnerable.append(
                f"{dep['name']} {dep.get('version', '?')}: {vuln.get('id', '?')} (fixed in {fixed})"
            )
    return verdict


def run_pip_audit(pip_audit: str, requirements: Path) -> Verdict:
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "report.json"
        command = [pip_audit, "-r", str(requirements), "--no-deps", "--disable-pip", "--progress-spinner", "off",
                   "--format", "json", "--output", str(output)]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            return Verdict(error=f"pip-audit did not finish in {TIMEOUT_SECONDS} s")
        if output.is_file() and output.stat().st_size:
            return verdict_of(json.loads(output.read_text()))
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return Verdict(error=last[:300])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pip-audit", required=True, help="the pip-audit executable")
    parser.add_argument("--strict", action="store_true", default=os.environ.get("AUDIT_DEPS_STRICT") == "1")
    parser.add_argument("requirements", type=Path)
    args = parser.parse_args(argv)
    verdict = run_pip_audit(args.pip_audit, args.requirements)
    for line in verdict.lines():
        print(line, file=sys.stderr if line.startswith("audit-deps: NOT") else sys.stdout)
    return verdict.exit_code(strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
