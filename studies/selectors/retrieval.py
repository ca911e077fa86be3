"""The rows of a retrieval of DICOM objects (WADO-RS), their statement compiled once per shape (issue 10).

`studies.selectors.storage.retrieval_rows` builds its queryset and has Django compile it at every request: a
one-instance retrieval spent about 45% of its web worker's Python there (py-spy `--gil`, docs/BENCHMARKS.md, "h1
branch, session 10"), a fifth of it in Django hashing the four ORDER BY expressions (`Expression.identity`, through
`inspect.signature`), the same SQL every time with other UIDs. Here, as QIDO-RS's searches do
(`studies.selectors.matching`, "compiled once per shape"), the statement of a caller who may see every study of
the scope is compiled once per shape, which is the tenant (its id is a parameter of the scoped managers) and which
of the series and instance UIDs the resource names, then only sent with the new UIDs. The permission decision is
still taken at every request (`access.visible`, the gates included): a caller who sees less than every study
(shares, referrals, break-glass) takes Django's path, so one user's statement never serves another's rights.
Which parameter is which UID is not guessed: the statement is compiled from marked copies of the UIDs, and each
parameter must be one of them or the tenant's id, with no conversion of Django's on reading the rows; else the
shape is remembered as not cached and built by Django every time.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from django.core.exceptions import EmptyResultSet, FullResultSet
from django.db import connection, models

from studies.models import Instance, Study
from studies.selectors.storage import RetrievalRow
from studies.storage.blobs import BLOB_COLUMNS, BlobRef
from tenants import access
from tenants.db.base import prepared_if_fixed, prepared_statements
from tenants.scoping import current_tenant_or_none

# The study of a retrieval as the audit names it (studies.services.reads.StudyRow): patient pk, patient ID,
# patient name, study pk, study UID, accession number; then the instance's columns (RetrievalRow).
_STUDY_COLUMNS = (
    "series__study__patient_id", "series__study__patient__patient_id", "series__study__patient__name",
    "series__study_id", "series__study__study_instance_uid", "series__study__accession_number",
)  # fmt: skip
_ROW_COLUMNS = (*_STUDY_COLUMNS, "sop_instance_uid", "transfer_syntax_uid", *(f"blob__{c}" for c in BLOB_COLUMNS))
_STUDY = len(_STUDY_COLUMNS)


class _SlotStr(str):
    """A UID marked with its place among the shape's values (0: study, 1: series, 2: instance)."""

    slot: int


def _marked(value: str, slot: int) -> _SlotStr:
    marked = _SlotStr(value)
    marked.slot = slot
    return marked


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


class _Statement:
    __slots__ = ("prepared", "slots", "sql")

    def __init__(self, sql: str, slots: tuple[int, ...], prepared: bool) -> None:
        self.sql = sql
        self.slots = slots  # per parameter: the UID at that place (0 study, 1 series, 2 instance), -1 the tenant's id
        self.prepared = prepared  # every condition an equality (`prepared_if_fixed`): sent as a prepared statement


_STATEMENTS: dict[tuple[int, bool, bool], _Statement | None] = {}
_STATEMENTS_MAX = 256  # shapes kept per process (three per tenant); past it the cache starts again empty


def _statement_compiled(
    everything: models.QuerySet[Study], uids: tuple[str, str | None, str | None], tenant_pk: int
) -> _Statement | None:
    """The statement of this shape, compiled from marked copies of `uids`; None when its parameters are not
    exactly those UIDs and the tenant's id, or Django would convert a column read."""
    study, series, sop = (None if uid is None else _marked(uid, slot) for slot, uid in enumerate(uids))
    assert study is not None
    qs = _rows_queryset(everything, study, series, sop)
    compiler = qs.query.get_compiler(using=qs.db)
    try:
        sql, params = compiler.as_sql()
    except (EmptyResultSet, FullResultSet):
        return None
    select = [selected[0] for selected in compiler.select]
    if compiler.has_extra_select or compiler.col_count != len(_ROW_COLUMNS) or compiler.get_converters(select):
        return None
    slots: list[int] = []
    for param in params:
        if isinstance(param, _SlotStr):
            slots.append(param.slot)
        elif type(param) is int and param == tenant_pk:
            slots.append(-1)
        else:
            return None
    named = {slot for slot, uid in enumerate(uids) if uid is not None}
    if {s for s in slots if s >= 0} != named or len([s for s in slots if s >= 0]) != len(named):
        return None
    return _Statement(sql, tuple(slots), prepared=not isinstance(prepared_if_fixed(qs.query), nullcontext))


def retrieval_rows_compiled(
    *, actor: Any, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> tuple[tuple[int, str, str, int, str, str], list[RetrievalRow]]:
    """`studies.selectors.storage.retrieval_rows`: the same contract, rows and order (the study as the audit's
    StudyRow, the instances in series and instance order; NotVisible when `actor` may not see the study, by the
    one permission decision, or the resource names nothing in it), its statement compiled once per shape for a
    caller who may see every study of the scope (see the module's docstring)."""
    everything = Study.objects.all()
    visible = access.visible(actor, "studies.view_study", everything)
    tenant = current_tenant_or_none()
    uids = (study_uid, series_uid, sop_uid)
    statement = None
    if visible is everything and tenant is not None and all(uid is None or type(uid) is str for uid in uids):
        key = (tenant.pk, series_uid is not None, sop_uid is not None)
        try:
            statement = _STATEMENTS[key]
        except KeyError:
            statement = _statement_compiled(everything, uids, tenant.pk)
            if len(_STATEMENTS) >= _STATEMENTS_MAX:
                _STATEMENTS.clear()
            _STATEMENTS[key] = statement
    if statement is not None:
        params = [tenant.pk if slot < 0 else uids[slot] for slot in statement.slots]  # type: ignore[union-attr]
        with prepared_statements() if statement.prepared else nullcontext(), connection.cursor() as cursor:
            cursor.execute(statement.sql, params)
            values = cursor.fetchall()
    else:
        columns = _rows_queryset(visible, study_uid, series_uid, sop_uid)
        with prepared_if_fixed(columns.query):
            values = list(columns)
    if not values:
        raise access.NotVisible()
    rows = [RetrievalRow(row[_STUDY], row[_STUDY + 1], BlobRef(*row[_STUDY + 2 :])) for row in values]
    return values[0][:_STUDY], rows
