"""Helpers for the share and break-glass tests: a study row of a tenant (no pixels needed), a TOTP code."""

from __future__ import annotations

import itertools

from studies.models import Patient, Study
from tenants.models import Role, Tenant, User
from tenants.scoping import tenant_scope
from tests.tenants.factories import totp_device_for, totp_now

_numbers = itertools.count(1)


def study_make(tenant: Tenant, *, accession: str = "", referring_key: str = "ROE^RICHARD") -> Study:
    n = next(_numbers)
    with tenant_scope(tenant):
        patient = Patient.objects.create(tenant=tenant, patient_id=f"MRN{n:04d}", name=f"DOE^JANE{n}")
        return Study.objects.create(
            tenant=tenant,
            patient=patient,
            study_instance_uid=f"1.2.826.0.1.3680043.10.999.{n}",
            accession_number=accession or f"ACC{n:04d}",
            description="Chest CT",
            modalities="CT",
            referring_physician_key=referring_key,
        )


def fresh_code(user: User, *, step: int = 0) -> str:
    """A code the person's authenticator app shows now; `step` picks a later one (django-otp refuses reuse)."""
    return totp_now(totp_device_for(user), offset_steps=step)


def referrer_make(make_member, tenant: Tenant, username: str = "north-referrer") -> User:
    """A referring physician "John Doe" with an authenticator app (studies naming DOE^JOHN are theirs)."""
    user = make_member(tenant, Role.REFERRING_PHYSICIAN, username)
    user.first_name, user.last_name = "John", "Doe"
    user.save(update_fields=["first_name", "last_name"])
    totp_device_for(user)
    return user
