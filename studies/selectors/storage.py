"""What the archive's storage holds: the blobs a retrieval reads (WADO-RS), and, for the compliance report,
encryption at rest and replication."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, NamedTuple

from django.db import connection, models

from audit.selectors import ReportSection
from studies.models import Blob, Instance, Study, TenantKey
from studies.selectors.matching import CompiledStatement, slotted, statement_slots
from studies.storage.blobs import BLOB_COLUMNS, BlobRef
from tenants import access
from tenants.db.base import prepared_if_fixed, prepared_statements
from tenants.scoping import current_tenant_or_none

# The study of a retrieval as the audit names it (studies.services.reads.StudyRow): patient pk, patient ID,
# patient name, study pk, study UID, accession number.
_STUDY_COLUMNS = (
    "series__study__patient_id", "series__study__patient__patient_id", "series__study__patient__name",
    "series__study_id", "series__study__study_instance_uid", "series__study__accession_number",
)  # fmt: skip
_ROW_COLUMNS = (*_STUDY_COLUMNS, "sop_instance_uid", "transfer_syntax_uid", *(f"blob__{c}" for c in BLOB_COLUMNS))
_STUDY = len(_STUDY_COLUMNS)


class RetrievalRow(NamedTuple):
    """One instance of a retrieval of DICOM objects: what WADO-RS's bulk path reads of it, as columns."""

    sop_instance_uid: str
    transfer_syntax_uid: str
    blob: BlobRef


def _rows_queryset(
    visible: models.QuerySet[Study], study_uid: str, series_uid: str | None, sop_uid: str | None
) -> models.QuerySet[Any]:
    """The statement of `storage.retrieval_rows`, over the studies `visible` (a permission decision taken)."""
    studies = visible.filter(study_instance_uid=study_uid).order_by()
    qs = Instance.objects.filter(series__study__in=studies.values("pk"))
    if series_uid is not None:
        qs = qs.filter(series__series_instance_uid=series_uid)
    if sop_uid is not None:
        qs = qs.filter(sop_instance_uid=sop_uid)
    return qs.order_by("series__series_number", "series_id", "instance_number", "pk").values_list(*_ROW_COLUMNS)


_STATEMENTS: dict[tuple[int, bool, bool], CompiledStatement | None] = {}
_STATEMENTS_MAX = 256  # shapes kept per process (three per tenant); past it the cache starts again empty


def _statement_compiled(
    everything: models.QuerySet[Study], uids: tuple[str, str | None, str | None], tenant_pk: int
) -> CompiledStatement | None:
    """The statement of this shape, compiled from marked copies of `uids` (slots 0 study, 1 series, 2 instance);
    None when its parameters are not exactly those UIDs and the tenant's id, or Django would convert a column read
    (studies.selectors.matching.statement_slots, as the searches' statements are made)."""
    study, series, sop = (None if uid is None else slotted(uid, slot) for slot, uid in enumerate(uids))
    assert study is not None
    qs = _rows_queryset(everything, study, series, sop)
    compiled = statement_slots(qs.query, qs.db, columns=len(_ROW_COLUMNS), tenant_pk=tenant_pk)
    if compiled is None:
        return None
    sql, slots = compiled
    named = {slot for slot, uid in enumerate(uids) if uid is not None}
    if {s for s in slots if s >= 0} != named or len([s for s in slots if s >= 0]) != len(named):
        return None
    return CompiledStatement(sql, slots, prepared=not isinstance(prepared_if_fixed(qs.query), nullcontext))


class RowsReadAhead(NamedTuple):
    """A retrieval's rows statement (`retrieval_statement_ahead`) with its values, and its rows as read in `tenant_id`'s
    scope in a round trip the request made anyway (its bearer token's, tenants.selectors `api_token_authenticate`)."""

    tenant_id: int
    statement: tuple[str, list[Any]]
    rows: list[tuple[Any, ...]]


def retrieval_statement_ahead(
    *, tenant_id: int, study_uid: str | None, series_uid: str | None = None, sop_uid: str | None = None
) -> tuple[str, list[Any]] | None:
    """The statement `retrieval_rows` sends for this resource when the caller may see every study of tenant
    `tenant_id`, with its values, for a caller that can send it in a round trip it makes anyway before the decision
    (the bearer token's): None unless this process has compiled that shape already and it is sent prepared (only a
    prepared statement rides in such a round trip, tenants.db `prepared_together`). Its rows serve `retrieval_rows`
    only through `RowsReadAhead`, and only when the decision says every study."""
    uids = (study_uid, series_uid, sop_uid)
    if type(study_uid) is not str or not all(uid is None or type(uid) is str for uid in uids):
        return None
    statement = _STATEMENTS.get((tenant_id, series_uid is not None, sop_uid is not None))
    if statement is None or not statement.prepared:
        return None
    return statement.sql, [tenant_id if slot < 0 else uids[slot] for slot in statement.slots]


def retrieval_rows(
    *,
    actor: Any,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    ahead: RowsReadAhead | None = None,
) -> tuple[tuple[int, str, str, int, str, str], list[RetrievalRow]]:
    """The study (as the audit's StudyRow) and the instances of a retrieval of DICOM objects (a study, a series of
    it, or one instance), in series and instance order, with what reading their blobs needs; NotVisible (a 404
    like a missing one) when `actor` may not see the study (`studies.view_study`: the one permission decision,
    taken at every call, and the tenant scope) or the resource names nothing in it.

    One statement, its rows as tuples (issue 10: a WADO-RS series is one row per instance; the study look-up, its
    own statement, then 60 Instance and 60 Blob objects cost 3.8 ms of CPU where this costs 2.8, docs/BENCHMARKS.md,
    "h4 branch, session 4"). For a caller who may see every study of the scope, the statement is compiled once per
    shape and only sent with the new UIDs: Django built and compiled it at every request, about 45% of a
    one-instance retrieval's Python in its web worker (py-spy `--gil`, docs/BENCHMARKS.md, "h1 branch, session
    10"), a fifth of that hashing the four ORDER BY expressions. A caller who sees less than every study (shares,
    referrals, break-glass) takes Django's path, so one user's statement never serves another's rights. Which
    parameter is which UID is not guessed: the statement is compiled from marked copies of the UIDs, and each
    parameter must be one of them or the tenant's id, with no conversion of Django's on reading the rows; else the
    shape is remembered as not cached and built by Django every time. A statement whose conditions are all
    equalities is prepared once per connection (tenants.db): PostgreSQL planned this join at each retrieval,
    longer than it ran it.

    `ahead`: the statement's rows read with the request's bearer token, in the same snapshot as the answers this
    decision is taken on (`retrieval_statement_ahead`; one round trip fewer before the first byte). They are used
    only when the decision is every study and they are the answer of exactly the statement and values this call
    would send, in this tenant; otherwise they are dropped and the statement sent as before.

    "Every study" is told without building the scoped queryset (`access.visible_unless_every`, as the searches tell
    it): building it only to find it unfiltered cost about 0.2 ms of a retrieval's time before its first byte
    (docs/BENCHMARKS.md, "h2 branch, session 12")."""
    visible = access.visible_unless_every(actor, "studies.view_study", Study.objects.all)
    tenant = current_tenant_or_none()
    uids = (study_uid, series_uid, sop_uid)
    statement = None
    if visible is None and tenant is not None and all(uid is None or type(uid) is str for uid in uids):
        key = (tenant.pk, series_uid is not None, sop_uid is not None)
        try:
            statement = _STATEMENTS[key]
        except KeyError:
            statement = _statement_compiled(Study.objects.all(), uids, tenant.pk)
            if len(_STATEMENTS) >= _STATEMENTS_MAX:
                _STATEMENTS.clear()
            _STATEMENTS[key] = statement
    if statement is not None:
        params = [tenant.pk if slot < 0 else uids[slot] for slot in statement.slots]  # type: ignore[union-attr]
        if ahead is not None and ahead.tenant_id == tenant.pk and ahead.statement == (statement.sql, params):  # type: ignore[union-attr]
            values = ahead.rows
        else:
            with prepared_statements() if statement.prepared else nullcontext(), connection.cursor() as cursor:
                cursor.execute(statement.sql, params)
                values = cursor.fetchall()
    else:
        columns = _rows_queryset(Study.objects.all() if visible is None else visible, study_uid, series_uid, sop_uid)
        with prepared_if_fixed(columns.query):
            values = list(columns)
    if not values:
        raise access.NotVisible()
    rows = [RetrievalRow(row[_STUDY], row[_STUDY + 1], BlobRef(*row[_STUDY + 2 :])) for row in values]
    return values[0][:_STUDY], rows


def encryption_compliance_section(actor: Any) -> ReportSection:
    """Every blob is envelope-encrypted (AES-256-GCM, a data key per blob wrapped by the tenant key, itself wrapped
    by the master key from the environment): the section counts what is stored, under which tenant-key versions,
    and how many blobs still lack their replica copy."""
    blobs = Blob.objects.order_by()
    totals = blobs.aggregate(n=models.Count("pk"), size=models.Sum("size"))
    active = TenantKey.objects.filter(active=True).order_by("-version").first()
    by_version = dict(blobs.values_list("key_version").annotate(n=models.Count("pk")))
    unreplicated = blobs.filter(replicated_at__isnull=True).exclude(kind=Blob.Kind.QUARANTINE).count()
    size_gb = (totals["size"] or 0) / 1e9
    rows = [
        ("Encrypted objects (AES-256-GCM, one data key each)", f"{totals['n']} ({size_gb:.2f} GB of plaintext)"),
        ("Active tenant key version", str(active.version) if active else "none yet (nothing stored)"),
        (
            "Objects by key",
            ", ".join(f"{'study keys' if v == 0 else f'tenant key v{v}'}: {n}" for v, n in sorted(by_version.items()))
            or "none",
        ),
        ("Objects without their replica copy", str(unreplicated)),
    ]
    return ReportSection("Encryption at rest and replication", rows, ok=unreplicated == 0)
