"""The audit of the portal's pages that show patient data (HIPAA 164.312(b)): the study list, a study's access
history, the pages that name a study's patient (share, export, break-glass, review queue), and the ingest
activity page (uploaded file names may hold patient names).

Pages call these before they render; each writes its event in its own transaction and raises if it cannot, so
a page whose read cannot be recorded shows nothing (a 500 without the data). Views never call the audit writer
themselves (issue 7: read events are recorded only by services). Frames, thumbnails and the study page are
recorded by `studies.services.reads`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.db import transaction

from audit.events import EventType
from audit.services import audit_event_record
from studies.models import IngestItem, Patient, Study
from studies.services.reads import read_participants, study_participants
from tenants.models import Tenant


def _participants(studies: Iterable[Study]) -> list[dict[str, Any]]:
    return read_participants(studies=studies)


@transaction.atomic
def study_list_shown_record(
    *,
    actor: Any,
    tenant: Tenant,
    resource: str,
    filters: Mapping[str, Any],
    results: int,
    page: int,
    studies: Iterable[Study],
) -> None:
    """One STUDIES_QUERIED event for one page of the study list: the filters as recorded by the search form
    (they may hold patient names: the trail may keep them, logs may not), the number of results, the page, and
    the patients and studies shown on it."""
    studies = list(studies)
    audit_event_record(
        event=EventType.STUDIES_QUERIED,
        actor=actor,
        tenant=tenant,
        target={"type": "query", "id": resource, "name": f"Study list of {tenant.slug}"},
        participants=_participants(studies),
        extra={
            "filters": dict(filters),
            "results": results,
            "page": page,
            "shown": [str(study.public_id) for study in studies],
        },
    )


@transaction.atomic
def study_pages_read_record(
    *,
    actor: Any,
    studies: Iterable[Study],
    kind: str,
    resource: str,
    source_address: str | None = None,
    patients: Iterable[Patient] = (),
) -> None:
    """One INSTANCES_ACCESSED event for a page (or an API answer) that shows the patient and study of each of
    `studies`, and each of `patients`, without showing their images (`kind` names the page: "share page", "export
    page", "break-glass page", "review queue", "retention queue", "legal holds"). A page that shows no study and no
    patient records nothing."""
    studies, patients = list(studies), list(patients)
    if not studies and not patients:
        return
    audit_event_record(
        event=EventType.INSTANCES_ACCESSED,
        actor=actor,
        participants=read_participants(patients=patients, studies=studies),
        source_address=source_address,
        extra={"resource": resource[:300], "kind": kind, "studies": len({study.pk for study in studies})},
    )


@transaction.atomic
def study_history_read_record(*, actor: Any, tenant: Tenant, study: Study, resource: str, results: int) -> None:
    """One AUDIT_LOG_USED event for a view of a study's access history, naming its patient and study."""
    audit_event_record(
        event=EventType.AUDIT_LOG_USED,
        actor=actor,
        tenant=tenant,
        target={"type": "audit_log", "id": resource, "name": f"Access history of study {study.public_id}"},
        participants=study_participants(study),
        extra={"study": study.study_instance_uid, "results": results},
    )


@transaction.atomic
def ingest_items_shown_record(
    *, actor: Any, tenant: Tenant, items: Iterable[IngestItem], resource: str, source_address: str | None = None
) -> None:
    """One INSTANCES_ACCESSED event for a page of the ingest activity: its rows show what came in (file names,
    reasons, which may name a patient), so the items shown and the patients and studies they were stored under
    are recorded. A page that shows no item records nothing."""
    items = list(items)
    if not items:
        return
    instance_ids = [item.instance_id for item in items if item.instance_id is not None]
    studies = Study.objects.filter(series__instances__pk__in=instance_ids).select_related("patient").distinct()
    audit_event_record(
        event=EventType.INSTANCES_ACCESSED,
        actor=actor,
        tenant=tenant,
        participants=_participants(studies),
        source_address=source_address,
        extra={
            "resource": resource[:300],
            "kind": "ingest activity",
            "items": [str(item.public_id) for item in items],
        },
    )
