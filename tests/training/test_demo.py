"""The demo's training: every demo user's required training is current except north-referrer's HIPAA Security
Awareness (lapsed last week, so the gate can be seen at work), and one self-report waits in north's queue."""

from __future__ import annotations

import io

from django.core.management import call_command

from tenants.models import Tenant, User
from tenants.scoping import tenant_scope
from training.models import Completion, Requirement
from training.selectors import person_status


def test_the_demo_locks_out_only_north_referrer(db, api_client_for):
    out = io.StringIO()
    call_command("demo", stdout=out)
    call_command("demo", stdout=io.StringIO())  # idempotent
    assert "north-referrer, whose HIPAA Security Awareness lapsed last week" in out.getvalue()
    north, south = Tenant.objects.get(slug="north"), Tenant.objects.get(slug="south")

    referrer = User.objects.get(username="north-referrer")
    response = api_client_for(referrer, north).get("/dicomweb/north/studies")
    assert response.status_code == 403
    assert response.json()["code"] == "training_expired"
    assert "HIPAA Security Awareness" in response.json()["detail"]

    for username in ("north-radiologist", "north-technologist", "south-radiologist", "south-referrer"):
        user = User.objects.get(username=username)
        tenant = north if username.startswith("north") else south
        response = api_client_for(user, tenant).get(f"/dicomweb/{tenant.slug}/studies")
        assert response.status_code in (200, 204), (username, response.content)  # 204: no studies yet
    with tenant_scope(north):
        assert Requirement.objects.count() > 0
        pending = Completion.objects.get(status=Completion.Status.PENDING)
        assert (pending.user.username, pending.course.title) == ("north-technologist", "Device Handling")
        blocked = [s for s in person_status(user=referrer) if s.blocks]
        assert [s.course.title for s in blocked] == ["HIPAA Security Awareness"]
    with tenant_scope(south):
        assert not Completion.objects.filter(status=Completion.Status.PENDING).exists()
