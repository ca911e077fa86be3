"""Emergency mode (SECURITY.md B10): with Redis (the cache of rate limits, and the Celery broker) and the audit
collector (the hospital's syslog receiver) stopped for real, a clinician still starts break-glass and reads the
study; authentication and auditing never switch off: every event is in the database, and once the collector is
back the store-and-forward run delivers each exactly once (by its chain sequence and hash), none lost."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from celery import current_app as celery_app
from django.core import mail
from django.core.cache import cache
from django.test import override_settings
from django.utils import timezone

from audit.events import EventType
from audit.models import AuditEvent, SecurityAlert, SyslogCursor
from audit.services import audit_syslog_forward
from portal.web import cache as cache_module
from studies.models import BreakGlassGrant
from tenants.models import OutboundMail
from tenants.scoping import tenant_scope
from tenants.services import mail_outbox_sweep
from tests.audit.test_digests_and_syslog import Receiver, _wait
from tests.chains import chain_of, platform_read
from tests.studies.access_fixtures import fresh_code, referrer_make
from tests.studies.dicomweb.reading import JSON, ingest

pytestmark = pytest.mark.django_db(transaction=True)

STARTUP_SECONDS = 20


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


class RedisServer:
    """A redis-server of the test's own on a free loopback port (the shared one is never stopped)."""

    def __init__(self, port: int = 0) -> None:
        self.port = port or _free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + STARTUP_SECONDS
        while _refused(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


def _broker_use(url: str, *, eager: bool) -> None:
    """Point the Celery app's producers at `url` (its connection and producer pools are made again from it)."""
    celery_app.conf.broker_url, celery_app.conf.task_always_eager = url, eager
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


def _forwarded(receiver: Receiver, slug: str) -> list[tuple[int, str]]:
    found = []
    for message in receiver.messages:
        match = re.search(rb'tenant="([^"]+)" seq="(\d+)" outcome="\d+" hash="([0-9a-f]{64})"', message)
        assert match, message
        if match.group(1).decode() == slug:
            found.append((int(match.group(2)), match.group(3).decode()))
    return found


def test_break_glass_and_reading_work_with_redis_and_the_collector_down(
    tenant_a, make_member, compliance_a, api_client_for, own_redis, settings, monkeypatch, caplog
):
    referrer = referrer_make(make_member, tenant_a)
    study = ingest(tenant_a, patient_id="P-EMERGENCY", frames=1, rows=16, columns=16)
    metadata = f"/dicomweb/{tenant_a.slug}/studies/{study.study_instance_uid}/metadata"
    receiver = Receiver()
    settings.AUDIT_SYSLOG_HOST, settings.AUDIT_SYSLOG_PORT, settings.AUDIT_SYSLOG_PROTOCOL = (
        "127.0.0.1", receiver.port, "tcp",
    )  # fmt: skip
    caches = {"default": {**settings.CACHES["default"], "LOCATION": own_redis.url}}
    previous_broker = celery_app.conf.broker_url, celery_app.conf.task_always_eager
    with override_settings(CACHES=caches):
        cache.close()
        client = api_client_for(referrer, tenant_a)
        assert client.get(metadata, HTTP_ACCEPT=JSON).status_code == 404  # no grant yet
        while audit_syslog_forward():
            pass
        assert _wait(lambda: _forwarded(receiver, tenant_a.slug))
        chain = chain_of(tenant_a)  # the chains are read in a platform scope (tests.chains)
        before = chain.last_sequence
        already = _forwarded(receiver, tenant_a.slug)
        port = receiver.port

        # The outage: Redis (cache and broker) and the collector are stopped; nothing answers on their ports.
        own_redis.stop()
        receiver.stop()
        assert _refused(own_redis.port)
        assert _refused(port)
        _broker_use(own_redis.url, eager=False)
        monkeypatch.setitem(cache_module._state, "alerted_at", -cache_module.ALERT_SECONDS)
        try:
            started = client.post(
                f"/api/v1/t/{tenant_a.slug}/break-glass/",
                {"study": study.accession_number, "reason": "Trauma bay", "otp_token": fresh_code(referrer)},
                format="json",
            )  # fmt: skip
            assert started.status_code == 201, started.content
            read = client.get(metadata, HTTP_ACCEPT=JSON)
            assert read.status_code == 200
            assert read.json()[0]["00100020"]["Value"] == ["P-EMERGENCY"]
        finally:
            _broker_use(previous_broker[0], eager=previous_broker[1])
        assert audit_syslog_forward() == 0  # the collector is down: kept, not lost
        assert platform_read(lambda: SyslogCursor.objects.get(chain=chain)).last_sequence == already[-1][0]

        # Every event of the outage is in the database, in the tenant's chain.
        with tenant_scope(tenant_a):
            assert BreakGlassGrant.objects.filter(user=referrer, study=study).count() == 1
            assert SecurityAlert.objects.filter(kind="break_glass").count() == 1
            during = list(AuditEvent.objects.filter(sequence__gt=before).order_by("sequence"))
        kinds = {event.event_type for event in during}
        assert {EventType.BREAK_GLASS_STARTED, EventType.INSTANCES_ACCESSED} <= kinds, kinds
        # Rate limits were not counted, and the operators are told so once (not once per cache call).
        assert SecurityAlert.unscoped_objects.filter(kind="cache_unavailable").count() == 1
        assert AuditEvent.unscoped_objects.filter(event_type=EventType.CACHE_UNAVAILABLE).count() == 1
        # The compliance officers' e-mail could not be queued (the broker is down): logged, the request went on,
        # and the outbox keeps it; once the broker is back, the outbox sweep delivers it (once).
        unqueued = [r.getMessage() for r in caplog.records if "mail_send_after_commit" in r.getMessage()]
        assert len(unqueued) == 1
        assert "Connection refused" in unqueued[0]
        assert mail.outbox == []
        notice = OutboundMail.objects.get(subject__startswith="Break-glass access started")
        assert notice.sent_at is None
        OutboundMail.objects.filter(pk=notice.pk).update(created_at=timezone.now() - timedelta(minutes=11))
        assert mail_outbox_sweep() == 1
        assert [m.subject for m in mail.outbox] == [notice.subject]
        assert notice.recipients
        assert set(mail.outbox[0].to) == set(notice.recipients)
        assert mail_outbox_sweep() == 0

        # The collector is back: the outbox drains, each event once, none lost.
        restarted = Receiver(port)
        try:
            sent = 0
            while batch := audit_syslog_forward():
                sent += batch
            assert _wait(lambda: len(_forwarded(restarted, tenant_a.slug)) == len(during))
            delivered = _forwarded(restarted, tenant_a.slug)
            assert delivered == [(event.sequence, event.hash) for event in during]
            assert len({digest for _, digest in delivered}) == len(during)  # no duplicate
            assert audit_syslog_forward() == 0
        finally:
            restarted.stop()

        # Redis is back: the rate limits count again.
        back = RedisServer(own_redis.port)
        try:
            cache.close()
            assert cache.add("enclave:emergency-probe", 1, 30)
        finally:
            back.stop()
