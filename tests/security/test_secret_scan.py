"""Secrets and keys (SECURITY.md G13): the secret scanner of `make lint` (detect-secrets, with the plugins and
filters of .secrets.baseline) finds nothing in the tree beyond the baseline's audited false positives, and it does
find a planted key, so the first check can fail."""

from __future__ import annotations

import subprocess
from pathlib import Path

from detect_secrets import SecretsCollection
from detect_secrets.core import baseline
from detect_secrets.settings import transient_settings

ROOT = Path(__file__).resolve().parents[2]


def _scan(files: list[str]) -> tuple[SecretsCollection, SecretsCollection]:
    raw = baseline.load_from_file(str(ROOT / ".secrets.baseline"))
    with transient_settings({"plugins_used": raw["plugins_used"], "filters_used": raw["filters_used"]}):
        known = baseline.load(raw, ".secrets.baseline")
        found = SecretsCollection()
        found.scan_files(*files, num_processors=1)
    return found, known


def test_the_tree_holds_no_secret_beyond_the_audited_baseline(monkeypatch):
    monkeypatch.chdir(ROOT)  # the baseline names files relative to the root, as `make lint` runs
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    assert len(listed) > 100
    found, known = _scan(listed)
    new = sorted(f"{filename}: {secret.type}" for filename, secret in found - known)
    assert new == [], "secrets not in .secrets.baseline (remove them, or audit them into it):\n" + "\n".join(new)
    audited = [secret for _, secret in known]
    assert audited
    assert all(secret.is_secret is False for secret in audited), "every baseline entry is audited"


def test_a_planted_key_is_found(tmp_path):
    planted = tmp_path / "settings_leak.py"
    key_id = "AKIA" + "Z7Q4" + "M2XW" + "9LPT" + "3RVB"  # built here so this file holds no key itself
    planted.write_text(f'AWS_ACCESS_KEY_ID = "{key_id}"\n')
    found, _ = _scan([str(planted)])
    assert [secret.type for _, secret in found] == ["AWS Access Key"]
