"""QIDO-RS: the Search transaction of the Studies service (PS3.18 10.6), answered in application/dicom+json.

Resources: `/studies`, `/studies/{study}/series`, `/series`, `/studies/{study}/series/{series}/instances`,
`/studies/{study}/instances`, `/instances`.

- Matching keys by keyword or tag (`PatientName=DOE*`, `00100020=123`), on the attributes
  the catalogue `studies.selectors.ATTRIBUTES` keeps at the resource's level or above: single values, `*` and `?`
  wildcards (person names case-insensitively), UID lists (`,` or `\\`), date ranges (`20240101-20240131`,
  open at either end), universal matching (an empty value returns the attribute).
- The one matcher (studies.selectors.matching) decides: a value over its bounds (wildcards, length, list size)
  is a 400 with the reason; a search stopped by the statement timeout a 503 with the reason.
- `limit` / `offset` (whole numbers: `offset` at most settings.DICOMWEB_QIDO_MAX_OFFSET, `limit` 1 or more; at
  most settings.DICOMWEB_QIDO_MAX_RESULTS results per request; a Warning header says when more
  results exist than were returned), `includefield` (keywords or tags, comma-separated or repeated, or `all`).
- `fuzzymatching=true` is not supported: literal matching is done and a `Warning: 299` header says so (PS3.18
  8.3.4.1). An unknown parameter, or a matching key on an attribute this archive does not keep, is a 400.
- No match: 204 No Content. Results come only from studies the caller may see (tenants.access).
- Every search writes one Query audit event with the raw query string and the number of results
  (studies.services.reads). The query string holds patient names; portal.log_filters keeps it out of logs.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Iterable
from typing import Any

import pydicom.datadict
from django.conf import settings
from django.urls import get_script_prefix, get_urlconf, reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from portal.web.addresses import FORWARDED_KEY
from portal.web.errors import problem_responses
from studies.dicom.query import Level
from studies.dicomweb.base import DICOM_JSON, DicomJsonRenderer
from studies.dicomweb.negotiation import DicomWebReadApi, accept_list, matches, not_acceptable
from studies.selectors import (
    BY_KEYWORD,
    DEFAULT_KEYWORDS,
    INSTANCE,
    PATIENT,
    SERIES,
    STUDY,
    Attribute,
    InvalidQuery,
    Key,
    Matching,
    SearchTimeout,
    attribute_lookup,
    dicom_search_values,
    levels_at_or_above,
)
from studies.selectors.catalogue import PATH
from studies.services.reads import StudyRow, studies_query_record

RESERVED = {"limit", "offset", "includefield", "fuzzymatching"}
FUZZY_WARNING = "The fuzzymatching parameter is not supported. Only literal matching has been performed."


# Building results
# ------------------------------------------------------------------------------


# A JSON string as json.dumps writes one with ensure_ascii off (DRF's JSONRenderer under UNICODE_JSON), quotes
# included: the C encoder's own function.
_string = json.encoder.encode_basestring  # type: ignore[attr-defined]


def _elements(attribute: Attribute, values: Iterable[Any]) -> list[str]:
    """The DICOM JSON element (PS3.18 F.2) of each value of `attribute` with its tag, as JSON text exactly as DRF's
    JSONRenderer writes the same member of a result (`"tag":{"vr":..,"Value":[..]}`, compact separators, UTF-8 left
    as it is): a whole column of results at once (one comprehension per VR instead of a call per value); an empty
    value (None, "") is the VR alone. Written here rather than built as dicts and serialised: at 1,000 results the
    dicts and their serialisation were two thirds of the request's CPU (docs/BENCHMARKS.md, "h4 branch, session 3").
    """
    vr = attribute.vr
    empty = f'"{attribute.tag}":{{"vr":"{vr}"}}'
    head = f'"{attribute.tag}":{{"vr":"{vr}","Value":['
    if vr == "PN":
        head += '{"Alphabetic":'
        return [head + _string(str(v)) + "}]}" if v is not None and v != "" else empty for v in values]
    # YYYYMMDD and HHMMSS from the ISO forms: a third of strftime's CPU (2.4 ms for a year's 2,000 dates).
    if vr == "DA":
        return [
            head + '"' + v.isoformat().replace("-", "") + '"]}' if v is not None and v != "" else empty for v in values
        ]
    if vr == "TM":
        return [
            head + '"' + v.isoformat(timespec="seconds").replace(":", "") + '"]}'
            if v is not None and v != ""
            else empty
            for v in values
        ]
    if vr in ("IS", "US"):
        return [head + str(int(v)) + "]}" if v is not None and v != "" else empty for v in values]
    if attribute.keyword == "ModalitiesInStudy":
        return [
            head + ",".join(_string(m) for m in str(v).split("\\") if m) + "]}" if v is not None and v != "" else empty
            for v in values
        ]
    return [head + _string(str(v)) + "]}" if v is not None and v != "" else empty for v in values]


class WrittenJson(str):
    """A response body already written as JSON text (`ResultWriter.text`), which `WrittenJsonRenderer` sends as
    it is."""


class WrittenJsonRenderer(JSONRenderer):
    """DRF's JSONRenderer, which sends a `WrittenJson` body as it is, with the one change DRF makes to every JSON
    text (U+2028 and U+2029 escaped): the same bytes DRF would write for the parsed body, without parsing it and
    writing it again. A body asked for indented (`Accept: ...; indent=4`), or settings that change DRF's JSON
    (ASCII only, spaced separators), get DRF's own rendering of the parsed text."""

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        if isinstance(data, WrittenJson):
            indent = self.get_indent(accepted_media_type or "", renderer_context or {})
            if indent is None and self.compact and not self.ensure_ascii:
                return data.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode()
            data = json.loads(data)
        return super().render(data, accepted_media_type, renderer_context)  # type: ignore[no-any-return]


class WrittenDicomJsonRenderer(WrittenJsonRenderer, DicomJsonRenderer):
    """`WrittenJsonRenderer` under the DICOM JSON media type (`DicomJsonRenderer`)."""


def retrieve_url(
    request: Request, tenant: str, study: str, series: str | None = None, instance: str | None = None
) -> str:
    """The WADO-RS address of a study, series or instance at the address the caller reached the portal by, so a
    viewer is sent to the port the portal really serves rather than a configured one (see `origin`)."""
    path = reverse("dicomweb:study", kwargs={"tenant": tenant, "study": study})
    if series:
        path += f"/series/{series}"
    if instance:
        path += f"/instances/{instance}"
    return f"{origin(request)}{path}"


_DEFAULT_PORTS = {"http": "80", "https": "443"}
_PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", FORWARDED_KEY)


def origin(request: Request) -> str:
    """Scheme, host and port the caller reached: the Host header (checked by Django against ALLOWED_HOSTS; the
    scheme follows SECURE_PROXY_SSL_HEADER). A Host without a port names the scheme's default port, except from a
    client that drops the port it connected to (dicomweb-client does): when no proxy stands between (no
    forwarding header), the port the server really listens on is added."""
    scheme, host = request.scheme or "http", request.get_host()
    port = str(request.META.get("SERVER_PORT", ""))
    if (
        ":" not in host.rsplit("]", 1)[-1]
        and port.isdigit()
        and port != _DEFAULT_PORTS.get(scheme)
        and not any(h in request.META for h in _PROXY_HEADERS)
    ):
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


class RetrieveUrls:
    """The WADO-RS addresses of one request's results: the origin and the path up to the study UID are made
    once (one `reverse` and one Host check per request instead of per result: a year of studies is hundreds)."""

    def __init__(self, request: Request, tenant: str) -> None:
        path = _study_path_prefix(tenant, get_urlconf(settings.ROOT_URLCONF), get_script_prefix())
        self.prefix = origin(request) + path

    def url(self, study: str, series: str | None = None, instance: str | None = None) -> str:
        url = self.prefix + study
        if series:
            url += f"/series/{series}"
        if instance:
            url += f"/instances/{instance}"
        return url


@functools.lru_cache(maxsize=1024)
def _study_path_prefix(tenant: str, urlconf: Any, script_prefix: str) -> str:
    """The path of a study's WADO-RS resource up to its UID, for one tenant: `reverse` once per tenant (and URL
    configuration and script prefix, the two things besides its arguments that `reverse` reads), not once per
    search (0.1-0.2 ms of CPU each time, the URL resolver walked for the namespace: docs/BENCHMARKS.md, "h1 branch,
    session 9")."""
    placeholder = "1"  # a UID is digits and dots, which the URL pattern takes as they are
    path = reverse("dicomweb:study", kwargs={"tenant": tenant, "study": placeholder}, urlconf=urlconf)
    return path[: -len(placeholder)]


# The elements every result carries, as JSON text with their tags (see `_elements`).
_CONSTANT = {
    "00080005": '"00080005":{"vr":"CS","Value":["ISO_IR 192"]}',
    "00080056": '"00080056":{"vr":"CS","Value":["ONLINE"]}',
}
_URL_TAG = "00081190"
# The UIDs in a result's WADO-RS URL, by the result's level (ORM paths from its model to its study, series,
# instance UID).
_URL_FIELDS = {
    STUDY: ("study_instance_uid",),
    SERIES: ("study__study_instance_uid", "series_instance_uid"),
    INSTANCE: ("series__study__study_instance_uid", "series__series_instance_uid", "sop_instance_uid"),
}
# What the Query event names of each result (studies.services.reads.StudyRow), by the ORM path's end from the
# result's patient (the first three) and study (the last three).
_AUDIT_PATIENT, _AUDIT_STUDY = ("pk", "patient_id", "name"), ("pk", "study_instance_uid", "accession_number")


def _is_patient_count(attribute: Attribute) -> bool:
    return attribute.level is PATIENT and attribute.matching is Matching.UNIVERSAL


class ResultWriter:
    """The DICOM JSON objects of one request's results, written as JSON text column by column from the search's
    columns (`dicom_search_values`): what is the same for every row is worked out once (the columns to read, the
    tags in order, the URL prefix), each attribute's elements written for all rows at once (`_elements`), and each
    result joined from them. What each attribute holds is what the catalogue's `attribute_value` reads off a model row
    (C-FIND's answer): its column, None for an attribute not kept (a bare VR), and 0 for the patient counts, which
    only a patient-level row carries (QIDO-RS searches studies, series and instances). A year of studies is 1,000
    results of 16 attributes (docs/BENCHMARKS.md, "h5 branch" and "h4 branch, session 3")."""

    def __init__(self, *, level: str, attributes: list[Attribute], urls: RetrieveUrls) -> None:
        self.level = Level(level)
        self.urls = urls
        self.attributes = attributes
        index: dict[str, int] = {}

        def column(path: str) -> int:
            return index.setdefault(path, len(index))

        self.columns = {
            a: column(PATH[(self.level, a.level)] + a.field) for a in attributes if a.field and not _is_patient_count(a)
        }
        self.url_columns = [column(path) for path in _URL_FIELDS[self.level]]
        patient, study = PATH[(self.level, PATIENT)], PATH[(self.level, STUDY)]
        self.audit_columns = [column(patient + name) for name in _AUDIT_PATIENT] + [
            column(study + name) for name in _AUDIT_STUDY
        ]
        self.fields = list(index)  # what the search reads: `dicom_search_values(fields=...)`

    def study_rows(self, rows: list[tuple[Any, ...]]) -> list[StudyRow]:
        """Each result's study as the Query event names it (studies.services.reads.StudyRow)."""
        pick = operator.itemgetter(*self.audit_columns)
        return [pick(row) for row in rows]

    def text(self, rows: list[tuple[Any, ...]]) -> WrittenJson:
        """The answer: a JSON array of the results' DICOM JSON objects, the tags of each in ascending order, as
        DRF's JSONRenderer would write the same objects (`_elements`)."""
        if not rows:
            return WrittenJson("[]")
        count = len(rows)
        read = list(zip(*rows, strict=True))
        columns: dict[str, list[str]] = {tag: [element] * count for tag, element in _CONSTANT.items()}
        for attribute in self.attributes:
            at = self.columns.get(attribute)
            if at is not None:
                values: Iterable[Any] = read[at]
            else:
                values = [0 if _is_patient_count(attribute) else None] * count
            columns[attribute.tag] = _elements(attribute, values)
        prefix, url = self.urls.prefix, self.urls.url
        if self.level is STUDY:
            urls = [prefix + uid for uid in read[self.url_columns[0]]]
        else:
            urls = [url(*uids) for uids in zip(*(read[at] for at in self.url_columns), strict=True)]
        columns[_URL_TAG] = [f'"{_URL_TAG}":{{"vr":"UR","Value":[' + _string(u) + "]}" for u in urls]
        # Each result: its elements joined in tag order.
        ordered = [columns[tag] for tag in sorted(columns)]
        return WrittenJson("[{" + "},{".join(map(",".join, zip(*ordered, strict=True))) + "}]")


# The search
# ------------------------------------------------------------------------------


def _whole_number(request: Request, name: str, *, minimum: int, maximum: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or not minimum <= int(raw) <= maximum:
        raise exceptions.ValidationError({name: [f"{name} must be a whole number from {minimum} to {maximum}."]})
    return int(raw)


class SearchUnavailable(exceptions.APIException):
    status_code = 503
    default_detail = SearchTimeout.reason
    default_code = "search_timeout"


def _includefields(request: Request) -> tuple[bool, list[str]]:
    names = [n.strip() for raw in request.query_params.getlist("includefield") for n in raw.split(",") if n.strip()]
    return any(n.lower() == "all" for n in names), [n for n in names if n.lower() != "all"]


def _is_dicom_attribute(name: str) -> bool:
    if len(name) == 8:
        try:
            return pydicom.datadict.dictionary_has_tag(int(name, 16))
        except ValueError:
            pass
    return pydicom.datadict.tag_for_keyword(name) is not None


class _SearchApi(DicomWebReadApi):
    rate_limit = "search"
    # The search's permission decision reads the gates and the tenant permissions of the token's user: sent with the
    # bearer token's statement (portal.web.authentication, tenants.selectors), one round trip fewer.
    DECISION_AHEAD = True
    # The handler parses the query and builds its statement before anything else: the rate limit's answer is read
    # before that statement, the parsing done meanwhile (TenantApi).
    RATE_LIMIT_READ_AT_STATEMENT = True
    renderer_classes = [WrittenDicomJsonRenderer, WrittenJsonRenderer]  # DicomWebApi's, sending a written answer
    level: Level = STUDY

    def search(self, request: Request, tenant: str, study: str | None = None, series: str | None = None) -> Response:
        if not any(matches(r.type, DICOM_JSON) or matches(r.type, "application/json") for r in accept_list(request)):
            raise not_acceptable("search results are application/dicom+json")
        level = self.level
        allowed = levels_at_or_above(level)
        errors: dict[str, list[str]] = {}
        matching: list[Key] = []
        for name in request.query_params:
            if name.lower() in RESERVED:
                continue
            attribute = attribute_lookup(name)
            if attribute is None:
                errors[name] = [
                    f"Matching on {name} is not supported here."
                    if _is_dicom_attribute(name)
                    else f"Unknown query parameter {name}: not a DICOM keyword or tag, nor limit, offset, "
                    "includefield or fuzzymatching."
                ]
            elif attribute.level not in allowed:
                errors[name] = [
                    f"{attribute.keyword} is a {attribute.level.lower()}-level attribute; it cannot "
                    f"be matched in a {level.lower()}-level search."
                ]
            else:
                values = request.query_params.getlist(name)
                lists = attribute.matching in (Matching.UID_LIST, Matching.MODALITIES)
                matching.append(Key(attribute, "\\".join(values) if lists else values[-1]))
        fuzzy = request.query_params.get("fuzzymatching", "false").lower()
        if fuzzy not in ("true", "false"):
            errors["fuzzymatching"] = ["fuzzymatching must be true or false."]
        limit = _whole_number(request, "limit", minimum=1, maximum=2**31 - 1)
        offset = _whole_number(request, "offset", minimum=0, maximum=settings.DICOMWEB_QIDO_MAX_OFFSET) or 0
        if errors:
            raise exceptions.ValidationError(errors)

        want_all, includes = _includefields(request)
        keywords = list(DEFAULT_KEYWORDS[level])
        for parent in allowed[:-1]:
            if (parent in (PATIENT, STUDY) and study is None) or (parent == SERIES and series is None):
                keywords.extend(DEFAULT_KEYWORDS[parent])
        keywords += ["StudyInstanceUID"] + (["SeriesInstanceUID"] if level == INSTANCE else [])
        keywords += [key.attribute.keyword for key in matching]
        if want_all:
            keywords += [a.keyword for a in BY_KEYWORD.values() if a.level in allowed]
        for name in includes:
            found = attribute_lookup(name)
            if found is not None and found.level in allowed:
                keywords.append(found.keyword)  # others: not kept here, or of a lower level (ignored per 10.6.3.3)
        attributes = [BY_KEYWORD[k.lower()] for k in dict.fromkeys(keywords)]

        maximum = settings.DICOMWEB_QIDO_MAX_RESULTS
        page = min(limit, maximum) if limit is not None else maximum
        try:
            writer = ResultWriter(level=level, attributes=attributes, urls=RetrieveUrls(request, tenant))
            rows = dicom_search_values(
                actor=request.user,
                level=level,
                fields=writer.fields,
                keys=matching,
                study_uid=study,
                series_uid=series,
                offset=offset,
                limit=page + 1,
            )
        except InvalidQuery as exc:
            raise exceptions.ValidationError({"query": [str(exc)]}) from exc
        except SearchTimeout as exc:
            raise SearchUnavailable() from exc
        more = len(rows) > page
        rows = rows[:page]

        studies_query_record(
            actor=request.user,
            resource=request.path,
            query_string=request.META.get("QUERY_STRING", ""),
            study_rows=writer.study_rows(rows),
            results=len(rows),
            source_address=self.source_address(),
            actor_role=self.membership.role,
        )
        warnings = []
        if fuzzy == "true":
            warnings.append(f'299 {request.get_host()} "{FUZZY_WARNING}"')
        if more and (limit is None or limit > maximum):
            warnings.append(
                f'299 {request.get_host()} "There are more results than the {maximum} returned: ask again with '
                f'offset={offset + page}."'
            )
        response = Response(writer.text(rows)) if rows else Response(status=204)
        for warning in warnings:
            response["Warning"] = warning if "Warning" not in response else f"{response['Warning']}, {warning}"
        return response


_MATCHES = OpenApiResponse(
    {"type": "array", "items": {"type": "object"}}, description="Matching results: one DICOM JSON object each."
)


def _doc(operation_id: str, summary: str) -> Any:
    return extend_schema(
        operation_id=operation_id,
        tags=["dicomweb"],
        summary=summary,
        responses={
            (200, DICOM_JSON): _MATCHES,
            (200, "application/json"): _MATCHES,
            204: OpenApiResponse(description="No match."),
            **problem_responses(400, 401, 404),
            503: OpenApiResponse(description="The search took too long and was stopped: narrow it."),
        },
    )


class StudiesSearchApi(_SearchApi):
    level = STUDY

    @_doc("dicomweb_studies_search", "QIDO-RS: search for studies")
    def get(self, request: Request, tenant: str) -> Response:
        return self.search(request, tenant)


class StudySeriesSearchApi(_SearchApi):
    level = SERIES

    @_doc("dicomweb_study_series_search", "QIDO-RS: search for series of a study")
    def get(self, request: Request, tenant: str, study: str) -> Response:
        return self.search(request, tenant, study=study)


class SeriesSearchApi(_SearchApi):
    level = SERIES

    @_doc("dicomweb_series_search", "QIDO-RS: search for series")
    def get(self, request: Request, tenant: str) -> Response:
        return self.search(request, tenant)


class StudyInstancesSearchApi(_SearchApi):
    level = INSTANCE

    @_doc("dicomweb_study_instances_search", "QIDO-RS: search for instances of a study")
    def get(self, request: Request, tenant: str, study: str) -> Response:
        return self.search(request, tenant, study=study)


class SeriesInstancesSearchApi(_SearchApi):
    level = INSTANCE

    @_doc("dicomweb_series_instances_search", "QIDO-RS: search for instances of a series")
    def get(self, request: Request, tenant: str, study: str, series: str) -> Response:
        return self.search(request, tenant, study=study, series=series)


class InstancesSearchApi(_SearchApi):
    level = INSTANCE

    @_doc("dicomweb_instances_search", "QIDO-RS: search for instances")
    def get(self, request: Request, tenant: str) -> Response:
        return self.search(request, tenant)


__all__ = [
    "InstancesSearchApi",
    "SeriesInstancesSearchApi",
    "SeriesSearchApi",
    "StudiesSearchApi",
    "StudyInstancesSearchApi",
    "StudySeriesSearchApi",
]
