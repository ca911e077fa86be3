"""The WORM store of the audit trail (SECURITY.md D4 and E7): an S3 bucket with Object Lock, where every object is
written in COMPLIANCE mode and retained AUDIT_WORM_RETENTION_DAYS (default 2,192 days: six years and their leap
days) from its write. Nobody, not even the bucket's owner, can delete a locked version or shorten its retention
until that date; an overwrite only adds a newer version above it, and `audit.services.audit_worm_verify` names it.

Set AUDIT_WORM_STORE=s3://bucket/prefix (the bucket made with Object Lock enabled and a COMPLIANCE default
retention; BLOB_S3_* give the endpoint and keys, as for the blob stores):

    aws s3api create-bucket --bucket enclave-audit-worm --object-lock-enabled-for-bucket
    aws s3api put-object-lock-configuration --bucket enclave-audit-worm --object-lock-configuration \
        '{"ObjectLockEnabled":"Enabled","Rule":{"DefaultRetention":{"Mode":"COMPLIANCE","Days":2192}}}'

Unset, nothing is written there (the digests still go to the replica store).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError
from django.utils import timezone
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

STORE = "audit_worm"
COMPLIANCE = "COMPLIANCE"


class ObjectLockS3Storage(S3Storage):
    """django-storages' S3Storage that writes every object locked in COMPLIANCE mode until `retention_days` from
    now, never overwrites a name, and refuses to delete (a delete would only hide the locked version)."""

    def get_default_settings(self) -> dict[str, Any]:
        return {**super().get_default_settings(), "retention_days": 2192}

    def get_object_parameters(self, name: str) -> dict[str, Any]:
        params = dict(super().get_object_parameters(name))
        params["ObjectLockMode"] = COMPLIANCE
        params["ObjectLockRetainUntilDate"] = timezone.now() + timedelta(days=int(self.retention_days))
        return params

    def delete(self, name: str) -> None:
        raise PermissionError("The audit WORM store never deletes: its objects are locked in compliance mode.")

    def key(self, name: str) -> str:
        return str(self._normalize_name(clean_name(name)))


@dataclass(frozen=True)
class LockState:
    version_id: str
    mode: str
    retain_until: datetime | None
    sha256: str


def bucket_problems(store: ObjectLockS3Storage) -> list[str]:
    """What keeps the bucket from being WORM: Object Lock off, or no COMPLIANCE default retention of at least
    the configured days. Empty when it is fit."""
    client = store.connection.meta.client
    try:
        config = client.get_object_lock_configuration(Bucket=store.bucket_name)["ObjectLockConfiguration"]
    except ClientError as exc:
        return [f"bucket {store.bucket_name}: no Object Lock configuration ({exc.response['Error']['Code']})"]
    problems = []
    if config.get("ObjectLockEnabled") != "Enabled":
        problems.append(f"bucket {store.bucket_name}: Object Lock is not enabled")
    retention = config.get("Rule", {}).get("DefaultRetention", {})
    days = int(retention.get("Days") or 0) + 365 * int(retention.get("Years") or 0)
    if retention.get("Mode") != COMPLIANCE or days < int(store.retention_days):
        problems.append(
            f"bucket {store.bucket_name}: default retention is {retention.get('Mode') or 'none'} for {days} days, "
            f"not {COMPLIANCE} for at least {store.retention_days}"
        )
    return problems


def lock_state(store: ObjectLockS3Storage, name: str, *, version_id: str = "") -> LockState | None:
    """The version (the latest, or `version_id`), lock and SHA-256 of an object; None when there is none."""
    client = store.connection.meta.client
    extra = {"VersionId": version_id} if version_id else {}
    try:
        answer = client.get_object(Bucket=store.bucket_name, Key=store.key(name), **extra)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in {"NoSuchKey", "NoSuchVersion", "404", "InvalidArgument"}:
            return None
        raise
    body = answer["Body"].read()
    return LockState(
        version_id=answer.get("VersionId") or "",
        mode=answer.get("ObjectLockMode") or "",
        retain_until=answer.get("ObjectLockRetainUntilDate"),
        sha256=hashlib.sha256(body).hexdigest(),
    )


def put_locked(store: ObjectLockS3Storage, name: str, body: bytes) -> LockState:
    """Write `body` as a new locked object and return its state (version, lock, hash) as the bucket reports it."""
    client = store.connection.meta.client
    params = store.get_object_parameters(name)
    client.put_object(Bucket=store.bucket_name, Key=store.key(name), Body=body, **params)
    state = lock_state(store, name)
    if state is None:
        raise OSError(f"the WORM store lost {name} as soon as it was written")
    return state
