"""The audit WORM store (SECURITY.md D4, E7): signed digests and closed months of events written to an S3 bucket
with Object Lock in compliance mode, against moto's S3 server in its own process (the storage built by the
settings' own `worm_store`). A locked version cannot be deleted, even by the owner's keys; an overwrite or a delete
marker only hides it, and the verification names that."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError
from django.core.files.storage import storages
from django.test import override_settings
from django.utils import timezone

from audit import worm
from audit.events import EventType
from audit.models import AuditEvent, SecurityAlert, WormCopy
from audit.services import audit_digests_sign, audit_worm_anchor, audit_worm_verify
from tests.audit.helpers import events_of, record
from tests.chains import chain_of
from tests.studies.storage.s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, s3_server_fixture

pytestmark = pytest.mark.django_db

SIX_YEARS = 2192


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    yield from s3_server_fixture()


def _worm_storages(server: S3Server, monkeypatch: pytest.MonkeyPatch, *, locked: bool = True, days: int = SIX_YEARS):
    from django.conf import settings

    from portal.settings.base import worm_store  # the deployed settings function

    for name, value in {
        "BLOB_S3_ENDPOINT_URL": server.endpoint, "BLOB_S3_REGION": REGION, "BLOB_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "BLOB_S3_SECRET_ACCESS_KEY": SECRET_KEY, "BLOB_S3_SSE": "AES256",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    bucket = f"enclave-audit-worm-{uuid.uuid4().hex[:10]}"
    client = server.client()
    if locked:
        client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
        client.put_object_lock_configuration(
            Bucket=bucket,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": days}},
            },
        )  # fmt: skip
    else:
        client.create_bucket(Bucket=bucket)
    return {**settings.STORAGES, worm.STORE: worm_store(f"s3://{bucket}/audit", SIX_YEARS)}, bucket


@pytest.fixture
def worm_bucket(s3_server, monkeypatch) -> Iterator[str]:
    config, bucket = _worm_storages(s3_server, monkeypatch)
    with override_settings(STORAGES=config):
        yield bucket


def _next_month_start() -> datetime:
    now = timezone.now().astimezone(UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def _seed_and_anchor(tenant_a, tenant_b) -> list[WormCopy]:
    for _ in range(3):
        record(tenant_a, EventType.LOGOUT)
    record(tenant_b, EventType.LOGOUT)
    assert audit_digests_sign() >= 2
    # The run after this month has closed (an hour's grace): this month is a closed month then.
    return audit_worm_anchor(now=_next_month_start() + timedelta(hours=2))


def test_digests_and_closed_months_are_written_locked_for_six_years(s3_server, worm_bucket, tenant_a, tenant_b):
    before = timezone.now()
    written = _seed_and_anchor(tenant_a, tenant_b)
    kinds = {(copy.chain.tenant_id, copy.kind) for copy in written}
    assert {(tenant_a.pk, "digest"), (tenant_a.pk, "segment"), (tenant_b.pk, "segment")} <= kinds
    client = s3_server.client()
    chain = chain_of(tenant_a)  # the chain's row, read in a platform scope (row-level security)
    segment = WormCopy.objects.get(chain=chain, kind=WormCopy.SEGMENT)
    head = client.head_object(Bucket=worm_bucket, Key=f"audit/{segment.path}", VersionId=segment.version_id)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] >= before + timedelta(days=SIX_YEARS) - timedelta(minutes=5)
    assert head["ServerSideEncryption"] == "AES256"
    # The segment holds every event of the month in sequence order, with the hashes anyone can recompute.
    body = client.get_object(Bucket=worm_bucket, Key=f"audit/{segment.path}")["Body"].read().decode()
    header, *lines = [json.loads(line) for line in body.splitlines()]
    month_events = list(
        AuditEvent.unscoped_objects.filter(chain=chain, sequence__lte=segment.last_sequence).order_by("sequence")
    )
    assert [line["sequence"] for line in lines] == [event.sequence for event in month_events]
    assert [line["hash"] for line in lines] == [event.hash for event in month_events]
    assert (header["count"], header["last_hash"]) == (len(month_events), month_events[-1].hash)
    # The digest file is the replica store's, byte for byte.
    digest = WormCopy.objects.get(chain=chain, kind=WormCopy.DIGEST)
    stored = client.get_object(Bucket=worm_bucket, Key=f"audit/{digest.path}")["Body"].read()
    with storages["replica"].open(digest.path, "rb") as handle:
        assert stored == handle.read()
    # Recorded in the tenant's own trail, naming each object, its version and its lock date.
    event = events_of(tenant_a, EventType.AUDIT_WORM_WRITTEN)[-1]
    assert {item["path"] for item in event.extra["objects"]} == {segment.path, digest.path}
    assert {item["version_id"] for item in event.extra["objects"]} == {segment.version_id, digest.version_id}
    assert event.system_principal == "enclave:audit-worm"
    # A second run writes nothing more, and the verification finds everything in place.
    assert audit_worm_anchor(now=_next_month_start() + timedelta(hours=2)) == []
    assert audit_worm_verify() == []
    assert AuditEvent.unscoped_objects.filter(event_type=EventType.AUDIT_WORM_VERIFIED, outcome=0).exists()


def test_a_locked_object_cannot_be_deleted_even_with_the_owners_keys(s3_server, worm_bucket, tenant_a, tenant_b):
    _seed_and_anchor(tenant_a, tenant_b)
    segment = WormCopy.objects.get(chain=chain_of(tenant_a), kind=WormCopy.SEGMENT)
    key = f"audit/{segment.path}"
    client = s3_server.client()  # the same keys that wrote it
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=worm_bucket, Key=key, VersionId=segment.version_id)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=worm_bucket, Key=key, VersionId=segment.version_id, BypassGovernanceRetention=True)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    versions = {"Objects": [{"Key": key, "VersionId": segment.version_id}]}
    answer = client.delete_objects(Bucket=worm_bucket, Delete=versions)
    assert [error["Code"] for error in answer["Errors"]] == ["AccessDenied"]
    # The application's own storage refuses to delete at all.
    with pytest.raises(PermissionError):
        storages[worm.STORE].delete(segment.path)
    # Overwriting and a delete marker only hide the locked version: it is still there, unchanged, and the
    # verification says what happened.
    client.put_object(Bucket=worm_bucket, Key=key, Body=b"rewritten history\n")
    problems = audit_worm_verify()
    assert problems == [f"{segment.path}: a newer version was written above the locked one"]
    client.delete_object(Bucket=worm_bucket, Key=key)
    problems = audit_worm_verify()
    assert problems == [f"{segment.path}: hidden by a delete marker (the locked version is kept)"]
    store = storages[worm.STORE]
    assert isinstance(store, worm.ObjectLockS3Storage)
    kept = worm.lock_state(store, segment.path, version_id=segment.version_id)
    assert kept is not None
    assert (kept.sha256, kept.mode) == (segment.sha256, "COMPLIANCE")
    alert = SecurityAlert.unscoped_objects.filter(kind="audit_worm_verification_failed").latest("pk")
    assert alert.severity == SecurityAlert.Severity.CRITICAL
    assert segment.path in alert.summary


def test_a_bucket_without_object_lock_is_refused_and_alerted(s3_server, monkeypatch, tenant_a, tenant_b):
    record(tenant_a, EventType.LOGOUT)
    assert audit_digests_sign() >= 1
    for locked, days, expected in ((False, 0, "no Object Lock configuration"), (True, 30, "not COMPLIANCE for")):
        config, _ = _worm_storages(s3_server, monkeypatch, locked=locked, days=days)
        with override_settings(STORAGES=config):
            assert audit_worm_anchor(now=_next_month_start() + timedelta(hours=2)) == []
        assert not WormCopy.objects.exists()
        alert = SecurityAlert.unscoped_objects.filter(kind="audit_worm_unfit").latest("pk")
        assert expected in alert.summary
        assert alert.severity == SecurityAlert.Severity.CRITICAL


def test_without_a_worm_store_nothing_is_written(tenant_a, settings):
    assert "audit_worm" not in settings.STORAGES
    record(tenant_a, EventType.LOGOUT)
    assert audit_worm_anchor(now=_next_month_start() + timedelta(hours=2)) == []
    assert audit_worm_verify() == []
    assert not WormCopy.objects.exists()


def test_the_worm_store_must_be_s3():
    from django.core.exceptions import ImproperlyConfigured

    from portal.settings.base import worm_store

    with pytest.raises(ImproperlyConfigured):
        worm_store("file:///var/enclave/worm", SIX_YEARS)
