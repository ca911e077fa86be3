"""The Celery queues (issue 10, "Past one machine"): every task of the ingest path goes to `ingest`, every periodic
job and its per-tenant fan-out to `maintenance`, what a person asked for and the thumbnails to `default`. Asked of
Celery's own router, with the routes the settings build (portal.settings.base.celery_task_routes)."""

from __future__ import annotations

from celery import Celery
from django.conf import settings

from portal.celery import app
from portal.celery_schedule import BEAT_SCHEDULE
from portal.settings.base import celery_task_routes


def _router(prefix: str = "") -> Celery:
    routed = Celery("routes-under-test", set_as_current=False)
    routed.conf.task_routes = celery_task_routes(prefix)
    routed.conf.task_default_queue = f"{prefix}default"
    return routed


def queue_of(name: str, prefix: str = "") -> str:
    return str(_router(prefix).amqp.router.route({}, name, (), {})["queue"].name)


def registered_tasks() -> list[str]:
    app.loader.import_default_modules()
    return sorted(name for name in app.tasks if not name.startswith("celery."))


def test_every_ingest_path_task_goes_to_the_ingest_queue():
    ingest_path = [
        n for n in registered_tasks() if n.startswith("studies.tasks.ingest_") and n != "studies.tasks.ingest_sweep"
    ]
    assert "studies.tasks.ingest_process" in ingest_path
    for name in ingest_path:
        assert queue_of(name) == "ingest", name
    # The thumbnails are not on the ingest path: a series' thumbnail task never waits ahead of an ingest message.
    assert queue_of("studies.tasks.series_thumbnail") == "default"
    # A task of the ingest path not written yet (a batch per association) lands there by its name alone.
    assert queue_of("studies.tasks.ingest_batch_process") == "ingest"


def test_every_periodic_job_and_its_per_tenant_fan_out_go_to_maintenance():
    periodic = {entry["task"] for entry in BEAT_SCHEDULE.values()}
    assert "studies.tasks.ingest_sweep" in periodic
    assert "studies.tasks.blob_fixity_check_all" in periodic
    for name in periodic:
        assert queue_of(name) == "maintenance", name
        # The beat entry names the same queue the router would choose.
        beat_queue = next(e["options"]["queue"] for e in BEAT_SCHEDULE.values() if e["task"] == name)
        assert beat_queue == "maintenance", name
    # Their fan-outs: one task per tenant, queued by the periodic one.
    fan_outs = [n for n in registered_tasks() if ".tenant_" in n]
    assert "studies.tasks.tenant_ingest_requeue" in fan_outs
    assert "audit.tasks.audit_verify_tenant" not in fan_outs
    for name in [*fan_outs, "audit.tasks.audit_verify_tenant", "audit.tasks.security_rules_evaluate",
                 "audit.tasks.incident_reminders", "training.tasks.training_reminders_send"]:  # fmt: skip
        assert queue_of(name) == "maintenance", name


def test_what_a_person_asked_for_goes_to_default_and_every_task_has_one_of_the_three_queues():
    assert queue_of("tenants.tasks.mail_send") == "default"
    assert queue_of("studies.tasks.export_run") == "default"
    queues = {name: queue_of(name) for name in registered_tasks()}
    assert set(queues.values()) == {"ingest", "maintenance", "default"}
    # Nothing of the ingest path waits behind maintenance, nothing periodic behind the images.
    assert [n for n, q in queues.items() if q == "ingest"] == sorted(
        n for n in queues if n.startswith("studies.tasks.ingest_") and n != "studies.tasks.ingest_sweep"
    )


def test_a_prefix_names_every_queue_apart():
    assert queue_of("studies.tasks.ingest_process", "t1-") == "t1-ingest"
    assert queue_of("studies.tasks.ingest_sweep", "t1-") == "t1-maintenance"
    assert queue_of("tenants.tasks.mail_send", "t1-") == "t1-default"


def test_the_settings_route_with_these_routes():
    """The app every process runs is configured with them (a test worker asks for a single queue explicitly)."""
    assert celery_task_routes(settings.CELERY_QUEUE_PREFIX) == settings.CELERY_TASK_ROUTES
    assert app.conf.task_routes == settings.CELERY_TASK_ROUTES
