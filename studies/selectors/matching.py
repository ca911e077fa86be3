"""The one DICOM matcher: a list of (attribute, value) keys in, the matching patients, studies, series or
instances that the caller may see out. QIDO-RS, C-FIND (and C-GET/C-MOVE) and the study list only translate their
wire format into `Key`s; the rules of the catalogue (studies.selectors.catalogue) decide what a value means.

Wildcards `*` and `?` become SQL `LIKE` patterns with `%`, `_` and `\\` escaped, never a regular expression: a
`LIKE` cannot backtrack exponentially.

Under PostgreSQL row-level security only a condition whose operators are LEAKPROOF can be an index condition;
`LIKE`, `ILIKE` and `upper(column)` are not (docs/BENCHMARKS.md, "Searches under row-level security"). So a value
with a literal start (`MARTIN*`, `MAR?IN*`) also gets the range `column ~>=~ start AND column ~<~
enclave_prefix_end(start)` (text_pattern_ge / text_pattern_lt, leakproof; exactly "starts with", migration 0018)
that a (tenant, column text_pattern_ops) index serves, and the `LIKE` checks the rest. Person names match
case-insensitively by `upper()` on both sides (PS3.4 C.2.2.2.1 leaves case to the SCP): against a column the
database keeps folded (Patient.name_folded) with `=` and the range, else `upper(column)`, which reads every row of
the tenant. A value that starts with a wildcard (`*ARTIN*`) reads every patient (or study) of the tenant's
scope: bounded by the tenant and the statement timeout. tests/studies/selectors/test_matching_sql.py checks that
the operators on the indexed side stay leakproof.
Hostile input is bounded before it reaches the database (settings.SEARCH_MAX_WILDCARDS per value,
SEARCH_MAX_VALUE_LENGTH characters, SEARCH_MAX_LIST_VALUES values in a list), and every search runs under a
PostgreSQL statement timeout (settings.SEARCH_STATEMENT_TIMEOUT_MS): `SearchTimeout`, never a worker held.

Who may see what: a person through `studies.selectors.study_list` (tenants.access), a DICOM device through the
device policy registered with tenants.access (`access.device_may(device, DEVICE_READ)`), always inside the
current tenant's scope.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import date, time
from typing import Any

import psycopg
from django.conf import settings
from django.core.exceptions import EmptyResultSet, FullResultSet
from django.db import OperationalError, connection, models, transaction
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Upper

from studies.dicom.query import Level
from studies.models import Instance, Patient, Series, Study
from studies.selectors.catalogue import INSTANCE, PATH, PATIENT, SERIES, STUDY, Attribute, Matching
from tenants import access
from tenants.db.base import prepared_if_fixed, prepared_statements, where_all
from tenants.scoping import current_tenant_or_none

__all__ = [
    "InvalidQuery",
    "Key",
    "SearchTimeout",
    "dicom_search",
    "dicom_search_values",
    "keys_condition",
    "like_pattern",
]


class InvalidQuery(ValueError):
    """A key whose value cannot be used: malformed, or over a bound. The message is for a person (a 400 body, a
    C-FIND Error Comment of at most 64 characters) and never repeats the value, which may name a patient."""


class SearchTimeout(Exception):
    """The search ran past settings.SEARCH_STATEMENT_TIMEOUT_MS and was cancelled by the database."""

    reason = "The search took too long and was stopped: narrow it."


@dataclass(frozen=True)
class Key:
    """One matching key: an attribute of the catalogue and its value as sent (several values joined by `\\`)."""

    attribute: Attribute
    value: str
    fold_case: bool = False  # match text case-insensitively (person names always are)


# Wildcards
# ------------------------------------------------------------------------------


class _DicomLike(models.Lookup):  # type: ignore[type-arg]
    """`column LIKE pattern ESCAPE '\\'`, the pattern made by `like_pattern`."""

    lookup_name = "dicom_like"
    operator = "LIKE"

    def as_sql(self, compiler: Any, conn: Any) -> Any:
        lhs, lhs_params = self.process_lhs(compiler, conn)
        rhs, rhs_params = self.process_rhs(compiler, conn)
        return f"{lhs} {self.operator} {rhs} ESCAPE '\\'", (*lhs_params, *rhs_params)


class _DicomILike(_DicomLike):
    """The same, case-insensitive (`ILIKE`; a gin_trgm_ops index serves it)."""

    lookup_name = "dicom_ilike"
    operator = "ILIKE"


class _FoldedLike(_DicomLike):
    """`column LIKE upper(pattern)`: the column already folded (a kept upper() column, or `__upper`)."""

    lookup_name = "dicom_folded_like"

    def as_sql(self, compiler: Any, conn: Any) -> Any:
        lhs, lhs_params = self.process_lhs(compiler, conn)
        rhs, rhs_params = self.process_rhs(compiler, conn)
        return f"{lhs} LIKE UPPER({rhs}) ESCAPE '\\'", (*lhs_params, *rhs_params)


class _FoldedExact(models.Lookup):  # type: ignore[type-arg]
    """`column = upper(value)` (texteq: leakproof, unlike Django's iexact, which folds the column)."""

    lookup_name = "dicom_folded_exact"

    def as_sql(self, compiler: Any, conn: Any) -> Any:
        lhs, lhs_params = self.process_lhs(compiler, conn)
        rhs, rhs_params = self.process_rhs(compiler, conn)
        return f"{lhs} = UPPER({rhs})", (*lhs_params, *rhs_params)


class _StartsAtLeast(models.Lookup):  # type: ignore[type-arg]
    """`column ~>=~ start`: the low end of "starts with start", in byte order (text_pattern_ge, leakproof)."""

    lookup_name = "dicom_starts_ge"
    fold = False

    def as_sql(self, compiler: Any, conn: Any) -> Any:
        lhs, lhs_params = self.process_lhs(compiler, conn)
        rhs, rhs_params = self.process_rhs(compiler, conn)
        value = f"UPPER({rhs})" if self.fold else rhs
        return f"{lhs} ~>=~ {value}", (*lhs_params, *rhs_params)


class _StartsBefore(_StartsAtLeast):
    """`column ~<~ enclave_prefix_end(start)`: the high end (text_pattern_lt, leakproof; the function is applied
    to the constant only, and evaluated once by the planner)."""

    lookup_name = "dicom_starts_lt"

    def as_sql(self, compiler: Any, conn: Any) -> Any:
        lhs, lhs_params = self.process_lhs(compiler, conn)
        rhs, rhs_params = self.process_rhs(compiler, conn)
        value = f"UPPER({rhs})" if self.fold else rhs
        return f"{lhs} ~<~ enclave_prefix_end({value})", (*lhs_params, *rhs_params)


class _FoldedStartsAtLeast(_StartsAtLeast):
    lookup_name = "dicom_folded_starts_ge"
    fold = True


class _FoldedStartsBefore(_StartsBefore):
    lookup_name = "dicom_folded_starts_lt"
    fold = True


for _lookup in (
    _DicomLike,
    _DicomILike,
    _FoldedLike,
    _FoldedExact,
    _StartsAtLeast,
    _StartsBefore,
    _FoldedStartsAtLeast,
    _FoldedStartsBefore,
):
    models.CharField.register_lookup(_lookup)


def like_pattern(value: str) -> str:
    """The SQL LIKE pattern (escape character `\\`) for a DICOM wildcard value: `*` any run, `?` one character,
    and `%`, `_`, `\\` taken literally."""
    out = []
    for char in re.sub(r"\*+", "*", value):
        if char in "\\%_":
            out.append("\\" + char)
        elif char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        else:
            out.append(char)
    return "".join(out)


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


_MAX_CHARACTER = "\U0010ffff"


def literal_start(value: str) -> str:
    """The characters of a wildcard value before its first `*` or `?` (every match starts with them)."""
    return re.split(r"[*?]", value, maxsplit=1)[0]


# Values
# ------------------------------------------------------------------------------


def _list(value: str, keyword: str) -> list[str]:
    values = [v.strip() for v in re.split(r"[,\\]", value) if v.strip()]
    if len(values) > settings.SEARCH_MAX_LIST_VALUES:
        raise InvalidQuery(f"{keyword}: at most {settings.SEARCH_MAX_LIST_VALUES} values in a list.")
    if any(len(v) > settings.SEARCH_MAX_VALUE_LENGTH for v in values):
        raise InvalidQuery(f"{keyword} is longer than {settings.SEARCH_MAX_VALUE_LENGTH} characters.")
    return values


_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?")


def _date(text: str, keyword: str) -> date:
    if not _DATE.fullmatch(text):
        raise InvalidQuery(f"{keyword} must be YYYYMMDD or a YYYYMMDD range.")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError as exc:
        raise InvalidQuery(f"{keyword} is not a valid date.") from exc


def _time(text: str, keyword: str, *, end: bool) -> time:
    """A TM value; a partial one (HH, HHMM) stands for its whole hour or minute: its start, or with `end` its
    last moment."""
    found = _TIME.fullmatch(text)
    if not found:
        raise InvalidQuery(f"{keyword} must be HHMMSS or an HHMMSS range.")
    hour, minute, second, fraction = found.groups()
    top = 59 if end else 0
    try:
        return time(
            int(hour),
            int(minute) if minute else top,
            int(second) if second else top,
            int(fraction.ljust(6, "0")) if fraction else (999_999 if end else 0),
        )
    except ValueError as exc:
        raise InvalidQuery(f"{keyword} is not a valid time.") from exc


def _range_q(path: str, value: str, keyword: str, *, parse: Any, single_is_range: bool) -> Q:
    """A single value or a range `from-to` with either end open (PS3.4 C.2.2.2.5), inclusive."""
    if "-" not in value:
        if single_is_range:
            return Q(**{f"{path}__gte": parse(value, end=False), f"{path}__lte": parse(value, end=True)})
        return Q(**{path: parse(value, end=False)})
    start, _, finish = (part.strip() for part in value.partition("-"))
    if not start and not finish:
        raise InvalidQuery(f"{keyword}: a range needs at least one end.")
    low = parse(start, end=False) if start else None
    high = parse(finish, end=True) if finish else None
    if low is not None and high is not None and low > high:
        raise InvalidQuery(f"{keyword}: the range ends before it starts.")
    condition = Q()
    if low is not None:
        condition &= Q(**{f"{path}__gte": low})
    if high is not None:
        condition &= Q(**{f"{path}__lte": high})
    return condition


def _starts_with_q(path: str, start: str, *, fold: bool) -> Q:
    """The index-usable range for "starts with `start`" (empty: everything)."""
    if not start:
        return Q()
    folded = "folded_" if fold else ""
    condition = Q(**{f"{path}__dicom_{folded}starts_ge": start})
    if start.strip(_MAX_CHARACTER):  # otherwise nothing comes after it: the low end alone is exact
        condition &= Q(**{f"{path}__dicom_{folded}starts_lt": start})
    return condition


def _text_q(path: str, value: str, *, fold_case: bool) -> Q:
    """A case-sensitive text value (or, with `fold_case`, ILIKE / iexact: not an index condition under the
    policy; the study list's free text uses it, person names do not)."""
    if _has_wildcard(value):
        if fold_case:
            return Q(**{f"{path}__dicom_ilike": like_pattern(value)})
        starts = _starts_with_q(path, literal_start(value), fold=False)
        return starts & Q(**{f"{path}__dicom_like": like_pattern(value)})
    return Q(**{f"{path}__{'iexact' if fold_case else 'exact'}": value})


def _person_name_q(path: str, folded_path: str | None, value: str) -> Q:
    """A person name, case-insensitive: upper() on both sides. With a folded column, `=` / the range / LIKE on it
    (an index serves the first two); without one, upper(column), which reads every row in scope."""
    if folded_path is None:
        if _has_wildcard(value):
            return Q(_FoldedLike(Upper(F(path)), like_pattern(value)))
        return Q(_FoldedExact(Upper(F(path)), value))
    if not _has_wildcard(value):
        return Q(**{f"{folded_path}__dicom_folded_exact": value})
    return _starts_with_q(folded_path, literal_start(value), fold=True) & Q(
        **{f"{folded_path}__dicom_folded_like": like_pattern(value)}
    )


def _check_bounds(keyword: str, value: str) -> None:
    if len(value) > settings.SEARCH_MAX_VALUE_LENGTH:
        raise InvalidQuery(f"{keyword} is longer than {settings.SEARCH_MAX_VALUE_LENGTH} characters.")
    if value.count("*") + value.count("?") > settings.SEARCH_MAX_WILDCARDS:
        raise InvalidQuery(f"{keyword} has more than {settings.SEARCH_MAX_WILDCARDS} wildcards.")


def key_condition(key: Key, *, level: Level | str) -> Q:
    """The condition for one key on a query of `level`. An empty value, or `*` alone, matches everything
    (universal matching, PS3.4 C.2.2.2.3): the attribute is only returned."""
    attribute = key.attribute
    value = key.value.strip()
    if value in ("", "*") or not attribute.matchable:
        return Q()
    parent = PATH[(Level(level), attribute.level)]
    path = parent + attribute.field
    keyword = attribute.keyword
    match attribute.matching:
        case Matching.UID_LIST:
            return Q(**{f"{path}__in": _list(value, keyword)})
        case Matching.DATE | Matching.TIME if len(value) > 64:
            raise InvalidQuery(f"{keyword} is not a valid value or range.")
        case Matching.DATE:
            return _range_q(path, value, keyword, parse=lambda t, end: _date(t, keyword), single_is_range=False)
        case Matching.TIME:
            return _range_q(path, value, keyword, parse=lambda t, end: _time(t, keyword, end=end), single_is_range=True)
        case Matching.MODALITIES:
            # Any of the listed modalities among the study's series (PS3.4 C.6.2.1.2), by the series' own column.
            wanted = [m.upper() for m in _list(value, keyword)]
            study_path = PATH[(Level(level), STUDY)]
            return Q(**{f"{study_path}pk__in": _studies_with_modalities(wanted)})
        case Matching.NUMBER:
            try:
                numbers = [int(v) for v in _list(value, keyword)]
            except ValueError as exc:
                raise InvalidQuery(f"{keyword} must be a whole number.") from exc
            if any(not -(2**31) <= n < 2**31 for n in numbers):  # IS: a 32-bit integer column
                raise InvalidQuery(f"{keyword} is out of range.")
            return Q(**{f"{path}__in": numbers})
        case Matching.PERSON_NAME:
            _check_bounds(keyword, value)
            return _person_name_q(path, parent + attribute.folded if attribute.folded else None, value)
        case _:
            if "\\" in value and not _has_wildcard(value):
                return Q(**{f"{path}__in": _list(value, keyword)})  # a list of single values (VM > 1): any of them
            _check_bounds(keyword, value)
            return _text_q(path, value, fold_case=key.fold_case)


def _studies_with_modalities(wanted: list[str]) -> models.QuerySet[Any]:
    """The ids of the studies with a series of one of the `wanted` modalities (a subquery), which keeps the list it
    was made of (`_shape` reads the shape of the search from it)."""
    studies = Series.objects.filter(modality__in=wanted).values("study_id")
    studies.enclave_modalities = wanted  # type: ignore[attr-defined]
    return studies


def keys_condition(keys: Iterable[Key], *, level: Level | str) -> Q:
    """Every key must match (AND). InvalidQuery for a malformed value or one over a bound."""
    condition = Q()
    for key in keys:
        condition &= key_condition(key, level=level)
    return condition


def any_key_condition(keys: Iterable[Key], *, level: Level | str) -> Q:
    """At least one key must match (OR): the study list's free-text box searches several attributes at once."""
    condition = Q()
    for key in keys:
        condition |= key_condition(key, level=level)
    return condition


# The search
# ------------------------------------------------------------------------------


def visible_studies(actor: Any, studies: models.QuerySet[Study] | None = None) -> models.QuerySet[Study]:
    """The current tenant's studies (of `studies`, by default all of the scope) `actor` may search: a person's by
    `access.visible` (what `study_list` shows), a DICOM device's by the device policy (the whole tenant for an
    approved modality or workstation, else none). `studies` itself comes back when `actor` may see all of it."""
    studies = Study.objects.all() if studies is None else studies
    if access.device_may(actor, access.DEVICE_READ):
        return studies
    return access.visible(actor, "studies.view_study", studies)


def _visible_parent(visible: models.QuerySet[Study] | None, path: str) -> Q:
    """The condition that the study at `path` (of a series or an instance) is one of `visible` (`_visibility`):
    none when the caller may see every study of the scope (a radiologist, an approved modality), since the scope's
    own condition on the joined study (`_parents_in_tenant`) and the tenant policy already bound it. The subquery it
    left out was one more relation for the planner of every series and instance search: the search's statement
    took 0.64 -> 0.44 ms of PostgreSQL CPU for the series of a study, 1.70 -> 0.88 ms for the instances of a
    series, at 20,000 instances (docs/BENCHMARKS.md, h1 branch, session 3)."""
    if visible is None:
        return Q()
    return Q(**{f"{path}__in": visible.order_by().values("pk")})


_ORDER: dict[Level, tuple[str, ...]] = {
    PATIENT: ("patient_id", "pk"),
    STUDY: ("-study_date", "-created_at", "pk"),
    SERIES: ("study_id", "series_number", "pk"),
    INSTANCE: ("series__study_id", "series__series_number", "series_id", "instance_number", "pk"),
}


# Columns of a study- or series-level result row (and its joined study and patient) that no answer reads: neither
# the catalogue (`attribute_value`), nor the audit of the search (studies.services.reads), nor a WADO-RS URL. Left
# out of the SELECT: each timestamp costs psycopg and Django about 10 us a row to parse, and a year of studies is
# 1,000 rows of two models (docs/BENCHMARKS.md, "h5 branch"). Instance-level rows are read whole: C-GET and C-MOVE
# retrieve what they find.
_UNREAD = ("public_id", "created_at", "updated_at")
_UNREAD_PATIENT = (*_UNREAD, "name_folded")


def search_queryset(
    *,
    actor: Any,
    level: Level | str,
    keys: Sequence[Key] = (),
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> models.QuerySet[Any]:
    """The rows of `level` that match every key among those `actor` may see, in a stable order for paging, with
    what an answer needs joined. `study_uid` / `series_uid` are the parents of a QIDO-RS resource
    (`/studies/{study}/series`): one the caller may not see gives an empty result, like a missing one."""
    level = Level(level)
    condition = keys_condition(keys, level=level)
    return _search_queryset(level, condition, _visibility(actor), study_uid=study_uid, series_uid=series_uid)


def _visibility(actor: Any) -> models.QuerySet[Study] | None:
    """The studies of the scope `actor` may see (`visible_studies`: the one permission decision), or None when
    that is every study of the scope; the scope's queryset of studies is built only when it is not
    (`access.visible_unless_every`)."""
    if access.device_may(actor, access.DEVICE_READ):
        return None
    return access.visible_unless_every(actor, "studies.view_study", Study.objects.all)


def _search_queryset(
    level: Level,
    condition: Q,
    visible: models.QuerySet[Study] | None,
    *,
    study_uid: str | None,
    series_uid: str | None,
) -> models.QuerySet[Any]:
    """`search_queryset` of a condition already made, under a permission decision already taken (`_visibility`)."""
    studies = Study.objects.all() if visible is None else visible
    qs: models.QuerySet[Any]
    if level is STUDY:
        # Study-level results never read the series study_list prefetches (bench/query.py measured the cost).
        unread = (*_UNREAD, *(f"patient__{name}" for name in _UNREAD_PATIENT))
        qs = studies.select_related("patient").defer(*unread)
    elif level is PATIENT:
        qs = Patient.objects.filter(pk__in=studies.order_by().values("patient_id")).annotate(
            n_studies=Count("studies", distinct=True),
            n_series=Sum("studies__number_of_series"),
            n_instances=Sum("studies__number_of_instances"),
        )
    elif level is SERIES:
        qs = (
            Series.objects.filter(_visible_parent(visible, "study"))
            .select_related("study__patient")
            .defer(
                *_UNREAD, *(f"study__{name}" for name in _UNREAD), *(f"study__patient__{n}" for n in _UNREAD_PATIENT)
            )
        )
    else:
        instances = Instance.objects.filter(_visible_parent(visible, "series__study"))
        if series_uid is not None:
            instances = instances.filter(series__series_instance_uid=series_uid)
        qs = instances.select_related("series__study__patient", "blob")
    if study_uid is not None and level in (SERIES, INSTANCE):
        qs = qs.filter(**{f"{PATH[(level, STUDY)]}study_instance_uid": study_uid})
    return qs.filter(condition, _parents_in_tenant(level, condition)).order_by(*_ORDER[level])


def _lookups(condition: Q) -> Iterable[str]:
    for child in condition.children:
        if isinstance(child, Q):
            yield from _lookups(child)
        elif isinstance(child, tuple):
            yield child[0]


def _parents_in_tenant(level: Level, condition: Q) -> Q:
    """The current tenant named on every joined parent table too. The scope filters the level's own table only;
    a key on a parent (PatientID at study level, the study of `/studies/{uid}/series`) can then be found through
    the parent's (tenant, UID) or (tenant, patient ID) unique index instead of a sequential scan of the parent
    table (EXPLAIN ANALYZE at 20,000 instances; the rows are the same: a parent is always of its child's tenant).
    At study level the patient is named only when a key joins it: the condition alone would add the join."""
    tenant = current_tenant_or_none()
    if tenant is None:
        return Q()
    parents = [PATH[(level, parent)] for parent in (PATIENT, STUDY, SERIES) if (level, parent) in PATH]
    if level is STUDY:
        keyed = list(_lookups(condition))
        parents = [path for path in parents if any(lookup.startswith(path) for lookup in keyed)]
    return Q(**{f"{path}tenant_id": tenant.pk for path in parents if path})


def _is_cancelled(exc: BaseException) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) == "57014"  # query_canceled: statement_timeout fired


# Join by index lookups only (no hash or merge join) for a search below the patient level. The planner counts the
# tenant policy (inlined, so costed as a few operators) as nearly free, yet it takes about 2.5 us a row here, so a
# hash or merge over every patient of the tenant looks cheaper than looking up the patients of 340 studies and is
# not: "CT + one month" at 200,000 instances took 61 ms that way and 29 ms by lookups (docs/BENCHMARKS.md).
# The results of these levels are a page (at most DICOMWEB_QIDO_MAX_RESULTS rows), each row joined to its parents
# by primary key, so lookups are never the worse choice; patient-level searches aggregate and are left alone.
_INDEX_JOINS = {"enable_hashjoin": "off", "enable_mergejoin": "off"}


def search_rows(qs: models.QuerySet[Any], *, offset: int = 0, limit: int, index_joins: bool = False) -> list[Any]:
    """Evaluate one page of a search under the statement timeout, with `index_joins` joining by index lookups only
    (`_INDEX_JOINS`): outside a transaction the settings ride in front of the statement, in its own implicit
    transaction (`_search_rows_batched`: one round trip); inside the caller's, SET LOCAL in a savepoint, put back
    afterwards. A search whose conditions are all single values (a UID, a patient ID) is sent as a prepared
    statement of the connection (`tenants.db.base.prepared_if_fixed`). SearchTimeout when the database cancels it."""
    with prepared_if_fixed(qs.query):
        return _search_rows(lambda: list(qs[offset : offset + limit]), index_joins=index_joins)


def _search_rows(run: Callable[[], list[Any]], *, index_joins: bool, generic_plan: bool = False) -> list[Any]:
    """`run()` (the search's one statement) under the search's settings (see `search_rows`; `generic_plan`: a
    prepared statement run by its generic plan, `_GENERIC_PLAN`)."""
    wanted = {"statement_timeout": f"{int(settings.SEARCH_STATEMENT_TIMEOUT_MS)}ms"}
    if index_joins:
        wanted |= _INDEX_JOINS
    if generic_plan:
        wanted |= _GENERIC_PLAN
    nested = connection.in_atomic_block
    if not nested and _batches():
        return _search_rows_batched(run, wanted=wanted)
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT " + ", ".join("current_setting(%s), set_config(%s, %s, true)" for _ in wanted),
                    [item for name, value in wanted.items() for item in (name, name, value)],
                )
                found = cursor.fetchone()
                previous = dict(zip(wanted, found[::2], strict=True))
            rows = run()
            if nested:  # SET LOCAL outlives a savepoint: the caller's transaction gets its own settings back
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT " + ", ".join("set_config(%s, %s, true)" for _ in previous),
                        [item for pair in previous.items() for item in pair],
                    )
            return rows
    except OperationalError as exc:
        if _is_cancelled(exc):
            raise SearchTimeout(SearchTimeout.reason) from exc
        raise


def _batches() -> bool:
    """Whether this connection's cursors send a statement with the simple query protocol (Django's client-side
    cursors, the default), which runs several statements of one string in order and in one implicit transaction."""
    connection.ensure_connection()
    return issubclass(getattr(connection.connection, "cursor_factory", type), psycopg.ClientCursor)


def _search_rows_batched(run: Callable[[], list[Any]], *, wanted: dict[str, str]) -> list[Any]:
    """`search_rows` outside a transaction, in one round trip: the settings (SET LOCAL, `set_config(..., true)`)
    sent in front of each statement of the search in the same string, so that they hold for that statement's
    implicit transaction and end with it (no BEGIN, settings statement and COMMIT of their own: 4 round trips
    become 1). PostgreSQL plans and times each statement of such a string when it reaches it, so the statement
    after the settings runs under them."""
    prefix = "SELECT " + ", ".join(f"set_config('{name}', '{value}', true)" for name, value in wanted.items()) + "; "
    if "%" in prefix or not all(re.fullmatch(r"[a-z_]+", name) for name in wanted):  # names and values are ours
        raise ValueError(f"Not a search setting: {wanted!r}")

    def settings_in_front(execute: Any, sql: Any, params: Any, many: bool, context: dict[str, Any]) -> Any:
        raw = context["cursor"].cursor
        if many or not isinstance(sql, str) or not isinstance(raw, psycopg.ClientCursor):
            raise TypeError("A search statement must be one statement of a client-side cursor.")
        result = execute(prefix + sql, params, many, context)
        raw.nextset()  # the statement's own result, as if it had been sent alone
        return result

    try:
        with connection.execute_wrapper(settings_in_front):
            return run()
    except OperationalError as exc:
        if _is_cancelled(exc):
            raise SearchTimeout(SearchTimeout.reason) from exc
        raise


# The search's statement compiled once per shape
# ------------------------------------------------------------------------------
#
# A short QIDO-RS search spent about a third of the web worker's CPU in Django building its queryset (the keys'
# lookups, the joins of select_related, the deferred columns) and compiling it to SQL, the same SQL every time for
# the same kind of request with other values (docs/BENCHMARKS.md, "h1 branch, session 5"). `dicom_search_values`
# compiles it once per *shape* and then only sends it with the new values. The shape is everything the SQL's text
# depends on: the tenant (its id is a parameter of the scoped managers and of `_parents_in_tenant`), the level,
# the columns read, each condition's lookup and kind of value (a list's length), whether the resource names a
# study or a series, the page (LIMIT and OFFSET are written into the text), and the permission decision, taken
# for every request (`_visibility`): only a caller who may see every study of the scope is served this way, so
# the statement holds no condition of a user's own (a referring physician's shares, their expiry) and one user's
# statement can never serve another's search with different rights; any other decision takes Django's path.
# Which parameter is which value is not guessed: the shape's statement is compiled once from its first request's
# values, each wrapped in a marked copy (`_slotted`); each parameter of the compiled statement must be exactly one
# of them, each used once, or the tenant's id, and nothing may need Django's conversion on reading the rows.
# Otherwise the shape is remembered as not cached and every search of it is built by Django.


class _SlotStr(str):
    slot: int


class _SlotDate(date):
    slot: int


class _SlotTime(time):
    slot: int


_SLOTTED = (_SlotStr, _SlotDate, _SlotTime)


def slotted(value: Any, slot: int) -> Any:
    """`value` as a marked copy of itself (`slot`: its place among the shape's values), which Django passes into
    the compiled parameters as it is (CharField, DateField and TimeField keep a str, date or time unchanged)."""
    marked: Any
    if type(value) is str:
        marked = _SlotStr(value)
    elif type(value) is date:
        marked = _SlotDate(value.year, value.month, value.day)
    else:
        marked = _SlotTime(value.hour, value.minute, value.second, value.microsecond, value.tzinfo)
    marked.slot = slot
    return marked


def _value_kind(value: Any) -> Any:
    """The kind of one condition's value in a shape, or None when a statement of this shape is not cached (an
    integer, which IntegerField converts; a subquery other than the modalities'; a list with repeated or non-text
    values)."""
    kind = type(value)
    if isinstance(value, models.QuerySet):  # a subquery: only `_studies_with_modalities`'s, by its list
        listed = _value_kind(getattr(value, "enclave_modalities", None))
        return None if listed is None else ("modalities", listed[1])
    if kind is str or kind is date or kind is time:
        return kind.__name__
    if kind is list and all(type(v) is str for v in value) and len(set(value)) == len(value):
        return ("list", len(value))
    return None


def _shape(condition: Q, values: list[Any]) -> tuple[Any, ...] | None:
    """The shape of `condition` (connectors, negations, lookups and kinds of values, in order), with its values
    appended to `values` in the same order (a list's elements one by one); None when it cannot be cached."""
    parts: list[Any] = [condition.connector, condition.negated]
    for child in condition.children:
        if isinstance(child, Q):
            inner = _shape(child, values)
            if inner is None:
                return None
            parts.append(inner)
        elif isinstance(child, tuple) and len(child) == 2 and isinstance(child[0], str):
            kind = _value_kind(child[1])
            if kind is None:
                return None
            parts.append((child[0], kind))
            if kind[0] == "modalities":
                values.extend(child[1].enclave_modalities)
            else:
                values.extend(child[1] if kind[0] == "list" else (child[1],))
        else:  # an expression (a lookup object): not cached
            return None
    return tuple(parts)


def _slotted_condition(condition: Q, counter: list[int]) -> Q:
    """`condition` again with each value replaced by its marked copy, numbered in `_shape`'s order."""

    def mark(value: Any) -> Any:
        counter[0] += 1
        return slotted(value, counter[0] - 1)

    children: list[Any] = []
    for child in condition.children:
        if isinstance(child, Q):
            children.append(_slotted_condition(child, counter))
        else:
            lookup, value = child  # type: ignore[misc]  # a (lookup, value) pair: `_shape` let nothing else by
            if isinstance(value, models.QuerySet):  # `_studies_with_modalities`, the only subquery `_shape` lets by
                listed = value.enclave_modalities  # type: ignore[attr-defined]
                children.append((lookup, _studies_with_modalities([mark(v) for v in listed])))
            else:
                children.append((lookup, [mark(v) for v in value] if type(value) is list else mark(value)))
    return Q(*children, _connector=condition.connector, _negated=condition.negated)


@dataclass(frozen=True)
class CompiledStatement:
    sql: str
    slots: tuple[int, ...]  # per parameter: the shape's value at that place, or -1 for the tenant's id
    prepared: bool  # sent as a prepared statement: every condition an equality (`prepared_if_fixed`)
    generic: bool = False  # sent prepared and run by its generic plan, never planned again (`_generic_plan_serves`)


# Planning a search's statement for its values cost PostgreSQL more than running it for PatientName=MARTIN* (0.68
# against 0.45 ms) and for a month of StudyDate with a modality (0.37 against 0.30 ms; docs/BENCHMARKS.md, "h2
# branch, session 7"). Their conditions are index ranges whose bounds are parameters: a date or time range
# (`column >= $1 AND column <= $2` on a (tenant, column) index), "starts with" a literal start (`column ~>=~ $1 AND
# column ~<~ enclave_prefix_end($1)` on a text_pattern_ops index, its LIKE checking the rest), or a short list of
# values (IN: a UID list, the modalities' subquery). One plan serves every value of such a statement: the index
# range scan, whose bounds are read at execution (measured in the h1 branch, session 8: the generic plan ran
# MARTIN*, A*, M*, *, a month, a year and every date as fast as the plans made for each, and took 0.01-0.02 ms to
# plan instead of 0.3-0.8 ms). So such a statement is prepared once per connection and run by its generic plan
# (plan_cache_mode, in front of the statement with the search's other settings). A pattern with no literal start
# (`*ARTIN*`) or anything else keeps its plan made for its values, as before.
_GENERIC_PLAN = {"plan_cache_mode": "force_generic_plan"}


def _generic_plan_serves(where: Any) -> bool:
    """Whether each condition of `where` (and of the subqueries it holds) is one the generic plan serves as well as
    a plan for its values (see above): an equality (a folded name's too) or IS NULL, an IN list or subquery, a date
    or time bound, a "starts with" bound, or a LIKE beside the "starts with" bound of the same column."""
    return where_all(where, _generic_plan_serves_condition)


def _generic_plan_serves_condition(child: Any, node: Any) -> bool:
    """`_generic_plan_serves` for one condition of `node`, neither a node nor a subquery (tenants.db's where_all)."""
    from django.db.models.lookups import Exact, GreaterThanOrEqual, In, IsNull, LessThanOrEqual

    if isinstance(child, GreaterThanOrEqual | LessThanOrEqual):
        return isinstance(getattr(child.lhs, "output_field", None), models.DateField | models.TimeField)
    if isinstance(child, _DicomLike):
        ranged = (sibling.lhs for sibling in node.children if isinstance(sibling, _StartsAtLeast))
        return not isinstance(child, _DicomILike) and any(child.lhs == lhs for lhs in ranged)
    return isinstance(child, Exact | IsNull | In | _StartsAtLeast | _FoldedExact)


_STATEMENTS: dict[tuple[Any, ...], CompiledStatement | None] = {}
_STATEMENTS_MAX = 512  # shapes kept per process; past it the cache starts again empty


def _statement_compiled(
    *, level: Level, condition: Q, count: int, study_uid: str | None, series_uid: str | None, fields: Sequence[str],
    offset: int, limit: int, tenant_pk: int,
) -> CompiledStatement | None:  # fmt: skip
    """The statement of a shape (see above), compiled from one request's values marked, or None when its
    parameters are not exactly those values and the tenant's id."""
    counter = [0]
    marked = _slotted_condition(condition, counter)
    study = slotted(study_uid, counter[0]) if study_uid is not None else None
    series = slotted(series_uid, counter[0] + (study is not None)) if series_uid is not None else None
    qs = _search_queryset(level, marked, None, study_uid=study, series_uid=series).values_list(*fields)
    query = qs[offset : offset + limit].query
    compiled = statement_slots(query, qs.db, columns=len(fields), tenant_pk=tenant_pk)
    if compiled is None:
        return None
    sql, slots = compiled
    if sorted(s for s in slots if s >= 0) != list(range(count)):
        return None
    prepared = not isinstance(prepared_if_fixed(query), nullcontext)
    return CompiledStatement(sql, slots, prepared, generic=not prepared and _generic_plan_serves(query.where))


def statement_slots(query: Any, using: str, *, columns: int, tenant_pk: int) -> tuple[str, tuple[int, ...]] | None:
    """`query`, built from values marked by `slotted`, compiled: its SQL and, per parameter, the marked value's slot
    (-1: the tenant's id); None when the statement could not be sent again with other values: an empty or full
    result, extra selects, other than `columns` columns, a column Django converts on reading, or a parameter that is
    neither a marked value nor the tenant's id. For every statement compiled once per shape (the searches here,
    WADO-RS's rows: studies.selectors.storage.retrieval_rows)."""
    compiler = query.get_compiler(using=using)
    try:
        sql, params = compiler.as_sql()
    except (EmptyResultSet, FullResultSet):
        return None
    select = [selected[0] for selected in compiler.select]
    if compiler.has_extra_select or compiler.col_count != columns or compiler.get_converters(select):
        return None
    slots: list[int] = []
    for param in params:
        if isinstance(param, _SLOTTED):
            slots.append(param.slot)  # type: ignore[union-attr]
        elif type(param) is int and param == tenant_pk:
            slots.append(-1)
        else:
            return None
    return sql, tuple(slots)


def _search_values_compiled(
    *, level: Level, condition: Q, study_uid: str | None, series_uid: str | None, fields: Sequence[str],
    offset: int, limit: int,
) -> list[tuple[Any, ...]] | None:  # fmt: skip
    """`dicom_search_values` of a caller who may see every study of the scope, by the shape's statement; None when
    the shape is not cached (the caller then builds the queryset)."""
    tenant = current_tenant_or_none()
    values: list[Any] = []
    shape = _shape(condition, values)
    parents = [uid for uid in (study_uid, series_uid) if uid is not None]
    if tenant is None or shape is None or any(type(uid) is not str for uid in parents):
        return None
    values += parents
    key = (tenant.pk, level, tuple(fields), shape, study_uid is not None, series_uid is not None, offset, limit)
    try:
        statement = _STATEMENTS[key]
    except KeyError:
        statement = _statement_compiled(
            level=level, condition=condition, count=len(values), study_uid=study_uid, series_uid=series_uid,
            fields=fields, offset=offset, limit=limit, tenant_pk=tenant.pk,
        )  # fmt: skip
        if len(_STATEMENTS) >= _STATEMENTS_MAX:
            _STATEMENTS.clear()
        _STATEMENTS[key] = statement
    if statement is None:
        return None
    params = [tenant.pk if slot < 0 else values[slot] for slot in statement.slots]

    def run() -> list[Any]:
        with connection.cursor() as cursor:
            cursor.execute(statement.sql, params)
            return cursor.fetchall()  # type: ignore[no-any-return]

    with prepared_statements() if statement.prepared or statement.generic else nullcontext():
        return _search_rows(run, index_joins=True, generic_plan=statement.generic)


def dicom_search(
    *,
    actor: Any,
    level: Level | str,
    keys: Sequence[Key] = (),
    study_uid: str | None = None,
    series_uid: str | None = None,
    offset: int = 0,
    limit: int,
) -> list[Any]:
    """One page (`offset`, at most `limit` rows) of `search_queryset`, evaluated under the statement timeout.

    Contract: runs in the current tenant's scope; `actor` is a person (studies they may see) or a DICOM device
    (the device policy); raises InvalidQuery for a malformed value or one over a bound, SearchTimeout when the
    database stops it. Writes nothing: the door records the search (studies.services.reads) with what it
    returns."""
    qs = search_queryset(actor=actor, level=level, keys=keys, study_uid=study_uid, series_uid=series_uid)
    return search_rows(qs, offset=offset, limit=limit, index_joins=Level(level) is not PATIENT)


def dicom_search_values(
    *,
    actor: Any,
    level: Level | str,
    fields: Sequence[str],
    keys: Sequence[Key] = (),
    study_uid: str | None = None,
    series_uid: str | None = None,
    offset: int = 0,
    limit: int,
) -> list[tuple[Any, ...]]:
    """`dicom_search` read as columns: the same rows in the same order, each a tuple of `fields` (ORM paths from
    the model of `level`: "study_date", "patient__name", "patient__pk"), without a model instance per row and its
    parents: QIDO-RS builds its answer and its audit from columns (a year of studies is 1,000 rows; Django made
    2,000 model instances of them, about half the request's CPU: docs/BENCHMARKS.md, "h4 branch, session 3").
    The same contract as `dicom_search`. The statement of a caller who may see every study of the scope is
    compiled once per shape of search (`_search_values_compiled`)."""
    level = Level(level)
    condition = keys_condition(keys, level=level)
    visible = _visibility(actor)
    if visible is None and level is not PATIENT:
        rows = _search_values_compiled(
            level=level, condition=condition, study_uid=study_uid, series_uid=series_uid, fields=fields,
            offset=offset, limit=limit,
        )  # fmt: skip
        if rows is not None:
            return rows
    qs = _search_queryset(level, condition, visible, study_uid=study_uid, series_uid=series_uid)
    return search_rows(qs.values_list(*fields), offset=offset, limit=limit, index_joins=level is not PATIENT)


def qido_search(
    *,
    actor: Any,
    level: Level | str,
    matches: Sequence[tuple[Attribute, str]],
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> models.QuerySet[Any]:
    """`search_queryset` with keys as (attribute, value) pairs (bench/query.py measures this queryset)."""
    keys = [Key(attribute, value) for attribute, value in matches]
    return search_queryset(actor=actor, level=level, keys=keys, study_uid=study_uid, series_uid=series_uid)
