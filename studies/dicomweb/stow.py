"""STOW-RS: the Studies Store transaction (PS3.18 10.5), one of the three doors of the ingest pipeline.

`POST /dicomweb/<tenant>/studies` and `POST /dicomweb/<tenant>/studies/{StudyInstanceUID}` take a
`multipart/related; type="application/dicom"` body. Each part is sealed into quarantine as it is read
(`studies.services.ingest_quarantine`: the body is never held whole) and the parts are recorded together, their
Blob rows and IngestItems in one transaction (`ingest_receive_many`), so that the worker takes them as one batch; the
request then waits, a bounded time, for the pipeline to reach a verdict on each, and answers with the Store
Instances Response Module (PS3.18 Annex I) in application/dicom+json:

- Referenced SOP Sequence (0008,1199): instances stored, or already stored with the same bytes; a Warning Reason
  (0008,1196) of B000 (coercion) when a non-zero preamble was zeroed, and of B00F when the instance was not
  processed within the wait (it will be: the sweeper sees to it).
- Failed SOP Sequence (0008,1198) with a Failure Reason (0008,1197): A700 out of resources (too large), A900 the
  data set is not a valid instance of its SOP class (truncated, damaged, attributes missing), A901 the instance
  belongs to another study than the one in the URL, C000 cannot understand (not DICOM), C122 transfer syntax not
  supported, 0111 different bytes under a SOP Instance UID already stored (kept apart for review), 0110 any other
  processing failure, malware included.
- For people, each warning or failure also carries its reason in words, as Error Comment (0000,0902) in an item of
  Failed Attributes Sequence (0074,1048), the shape Microsoft's DICOM server uses.

HTTP status (PS3.18 Table 10.5.3-1): 200 when every instance was stored without warning, 202 when some were
stored and others failed or have warnings, 409 when none was stored. B00F and A901 are implementation-specific
codes, which PS3.18 I.2 allows.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from io import BytesIO
from typing import Any, NamedTuple

import pydicom
from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from pydicom.uid import RE_VALID_UID
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response

from portal.web.errors import PROBLEM_CONTENT_TYPE, ProblemSerializer, problem_responses
from studies.dicom import parse as dicom_parse
from studies.dicomweb.base import DICOM_JSON, DicomWebApi
from studies.dicomweb.parsers import (
    DICOM_MEDIA_TYPE,
    BodyError,
    MultipartRelated,
    MultipartRelatedParser,
    Part,
    body_without_length,
)
from studies.dicomweb.qido import retrieve_url
from studies.models import Blob, IngestItem, StudyKey
from studies.selectors import ingest_item_list
from studies.services import (
    Rejected,
    ingest_quarantine,
    ingest_receive_many,
    ingest_refusal_record,
    ingest_verdicts_wait,
)
from studies.storage import durable
from tenants import access

FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_DOES_NOT_MATCH_SOP_CLASS = 0xA900
FAILURE_STUDY_MISMATCH = 0xA901
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_TRANSFER_SYNTAX = 0xC122
FAILURE_PROCESSING = 0x0110
FAILURE_DUPLICATE_SOP_INSTANCE = 0x0111
WARNING_COERCION = 0xB000
WARNING_STILL_PROCESSING = 0xB00F

logger = logging.getLogger(__name__)

# The longest a request waits between two reads of its items when no wake-up comes (`StudiesStoreApi._verdicts`).
POLL_FALLBACK_SECONDS = 0.5
_IDENTITY_TAGS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_IDENTITY_TAG_NUMBERS = (0x00080016, 0x00080018, 0x0020000D, 0x0020000E)  # the same, in the same order


# What each part was and what became of it
# ------------------------------------------------------------------------------


@dataclass
class Identity:
    """The UIDs a part says it has, read from its header at the door. Empty where unreadable."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""


@dataclass
class PartResult:
    part: int
    identity: Identity
    item_id: int | None = None
    failure: int | None = None
    warning: int | None = None
    comment: str = ""


def identify(data: bytes) -> Identity:
    """The SOP Class, SOP Instance, Study and Series UIDs in the header of a Part-10 file, for the response and the
    study check. Never a verdict on the file: that is the pipeline's.

    Read off the element headers (`header_values_peek`: 0.03 ms for a CT) when the four are there and are UIDs; by
    pydicom as before (0.24-0.45 ms) otherwise (a deflated or big endian data set, a damaged header, a UID missing
    or malformed), so the answer is pydicom's in every case (tests/studies/dicomweb/test_stow_identify.py compares
    the two over mutated headers)."""
    peeked = dicom_parse.header_values_peek(data, _IDENTITY_TAG_NUMBERS) or {}
    values = [peeked.get(tag, "").strip() for tag in _IDENTITY_TAG_NUMBERS]
    if all(is_uid(value) for value in values):
        return Identity(*values)
    return _identify_by_pydicom(data)  # whatever pydicom makes of a file that is not plain, as always


def _identify_by_pydicom(data: bytes) -> Identity:
    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=list(_IDENTITY_TAGS))
    except Exception:  # any file pydicom cannot read is simply not identified here
        return Identity()

    def uid(keyword: str) -> str:
        try:
            value = str(ds.get(keyword) or "").strip()
        except Exception:  # unreadable here (a wrong VR, a bad length...): the pipeline gives the reason
            return ""
        return value if is_uid(value) else ""

    return Identity(*(uid(keyword) for keyword in _IDENTITY_TAGS))


def is_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and RE_VALID_UID.match(value) is not None


# The Failure Reason code (PS3.18 Table I.2-2) for each class of refusal the pipeline records.
# The failure class (for machines) of a refusal at the door, by its STOW-RS failure reason.
_REFUSAL_CLASS = {
    FAILURE_CANNOT_UNDERSTAND: IngestItem.Failure.INVALID,
    FAILURE_OUT_OF_RESOURCES: IngestItem.Failure.TOO_LARGE,
    FAILURE_STUDY_MISMATCH: "study_mismatch",
}

FAILURE_CODES: dict[str, int] = {
    IngestItem.Failure.TOO_LARGE: FAILURE_OUT_OF_RESOURCES,
    IngestItem.Failure.NOT_DICOM: FAILURE_CANNOT_UNDERSTAND,
    IngestItem.Failure.UNREADABLE: FAILURE_CANNOT_UNDERSTAND,
    IngestItem.Failure.UNSUPPORTED_SYNTAX: FAILURE_TRANSFER_SYNTAX,
    IngestItem.Failure.INVALID: FAILURE_DOES_NOT_MATCH_SOP_CLASS,
    IngestItem.Failure.CONFLICT: FAILURE_DUPLICATE_SOP_INSTANCE,
    IngestItem.Failure.MALWARE: FAILURE_PROCESSING,
    IngestItem.Failure.LOST: FAILURE_PROCESSING,
    IngestItem.Failure.INTERNAL: FAILURE_PROCESSING,
}


def failure_reason(failure: str) -> int:
    return FAILURE_CODES.get(failure, FAILURE_PROCESSING)


# Response
# ------------------------------------------------------------------------------


# The answer is written in the DICOM JSON model directly (PS3.18 F.2), as pydicom's `Dataset.to_json_dict` wrote
# it from a Dataset built for it (the same keys, in the same order, the same values: tests/studies/dicomweb/
# test_stow_response.py compares the two): building Datasets element by element was about 1 ms of CPU per request
# of 10, a tenth of what is left of the request beside its seal.
_TAG_RETRIEVE_URL = "00081190"
_TAG_FAILED_SOP_SEQUENCE = "00081198"
_TAG_REFERENCED_SOP_SEQUENCE = "00081199"
_TAG_REFERENCED_SOP_CLASS_UID = "00081150"
_TAG_REFERENCED_SOP_INSTANCE_UID = "00081155"
_TAG_WARNING_REASON = "00081196"
_TAG_FAILURE_REASON = "00081197"
_TAG_FAILED_ATTRIBUTES_SEQUENCE = "00741048"
_TAG_ERROR_COMMENT = "00000902"


def _text(vr: str, value: str | None) -> dict[str, Any]:
    """A text element: no Value when empty; UI and LO hold several values split at backslashes (their VM is 1-n
    in pydicom's reading of a str), UR one."""
    if not value:
        return {"vr": vr}
    return {"vr": vr, "Value": [value] if vr == "UR" else value.split("\\")}


def _sop_item(result: PartResult, retrieve_url: str | None) -> dict[str, Any]:
    item = {
        _TAG_REFERENCED_SOP_CLASS_UID: _text("UI", result.identity.sop_class_uid),
        _TAG_REFERENCED_SOP_INSTANCE_UID: _text("UI", result.identity.sop_instance_uid),
    }
    if result.failure is not None:
        item[_TAG_FAILURE_REASON] = {"vr": "US", "Value": [result.failure]}
    if retrieve_url is not None:
        item[_TAG_RETRIEVE_URL] = _text("UR", retrieve_url)
    if result.warning is not None:
        item[_TAG_WARNING_REASON] = {"vr": "US", "Value": [result.warning]}
    if result.comment:
        # Error Comment is LO (64 characters) in the dictionary; reasons for people are longer, and JSON has no limit.
        comment = {_TAG_ERROR_COMMENT: _text("LO", result.comment)}
        item[_TAG_FAILED_ATTRIBUTES_SEQUENCE] = {"vr": "SQ", "Value": [comment]}
    return item


class ItemVerdict(NamedTuple):
    """What the answer needs of an item: its state and reasons, and the UIDs of the instance it became (None while
    it is none). Read as one row per item (`_VERDICT_COLUMNS`), not as the item, instance, series and study
    objects."""

    pk: int
    state: str
    reason: str = ""
    failure: str = ""
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    series_instance_uid: str | None = None
    study_instance_uid: str | None = None


_VERDICT_COLUMNS = (
    "pk",
    "state",
    "reason",
    "failure",
    "instance__sop_class_uid",
    "instance__sop_instance_uid",
    "instance__series__series_instance_uid",
    "instance__series__study__study_instance_uid",
)


def _settle(result: PartResult, item: ItemVerdict | None) -> None:
    """Turn the pipeline's verdict on an item into a referenced, warned or failed instance."""
    if item is None:
        result.failure, result.comment = FAILURE_PROCESSING, "The instance was received but its record is gone."
        return
    if item.sop_instance_uid is not None:  # the instance it became (all four UIDs are required columns)
        result.identity = Identity(
            sop_class_uid=item.sop_class_uid or "",
            sop_instance_uid=item.sop_instance_uid,
            study_instance_uid=item.study_instance_uid or "",
            series_instance_uid=item.series_instance_uid or "",
        )
    state = item.state
    if state == IngestItem.State.STORED:
        if item.reason:  # stored, but not byte for byte as sent
            result.warning = WARNING_COERCION
            result.comment = (
                "Stored with its 128-byte preamble set to zero: the preamble held non-zero bytes."
                if "preamble" in item.reason
                else item.reason
            )
    elif state == IngestItem.State.DUPLICATE:
        pass  # the same bytes were stored before: sending again is a success, not a warning
    elif state == IngestItem.State.CONFLICT:
        result.failure, result.comment = FAILURE_DUPLICATE_SOP_INSTANCE, item.reason
    elif state == IngestItem.State.REJECTED:
        result.failure, result.comment = failure_reason(item.failure), item.reason
    else:
        result.warning = WARNING_STILL_PROCESSING
        result.comment = "Received, still being processed: its outcome will be on the ingest activity page."


def store_response(results: list[PartResult], *, study_url: Any, url_study: str | None) -> tuple[dict[str, Any], int]:
    """The Store Instances Response Module, in the DICOM JSON model, and the HTTP status for the parts' results."""
    referenced, failed = [], []
    for result in results:
        ident = result.identity
        instance_url = ""
        if ident.study_instance_uid and ident.series_instance_uid and ident.sop_instance_uid:
            instance_url = (
                f"{study_url(ident.study_instance_uid)}/series/{ident.series_instance_uid}"
                f"/instances/{ident.sop_instance_uid}"
            )
        if result.failure is None:
            referenced.append((result, instance_url))
        else:
            failed.append(result)

    studies = {r.identity.study_instance_uid for r, _ in referenced}
    if url_study:
        retrieve = study_url(url_study)
    elif len(studies) == 1 and "" not in studies:
        retrieve = study_url(studies.pop())
    else:
        retrieve = None  # Type 2: instances of several studies, or none stored
    response: dict[str, Any] = {_TAG_RETRIEVE_URL: _text("UR", retrieve)}
    if failed:
        response[_TAG_FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [_sop_item(result, None) for result in failed]}
    if referenced:
        response[_TAG_REFERENCED_SOP_SEQUENCE] = {
            "vr": "SQ",
            "Value": [_sop_item(result, url) for result, url in referenced],
        }

    warned = any(result.warning is not None for result, _ in referenced)
    if not referenced:
        status = 409
    elif failed or warned:
        status = 202
    else:
        status = 200
    return response, status


# API
# ------------------------------------------------------------------------------

_DICOM_RESPONSE = OpenApiResponse(
    OpenApiTypes.OBJECT,
    description="The Store Instances Response Module (PS3.18 Annex I) in the DICOM JSON model: Referenced SOP "
    "Sequence (0008,1199) for stored instances, Failed SOP Sequence (0008,1198) with Failure Reason (0008,1197) "
    "for the others, and the reason in words as Error Comment (0000,0902) in Failed Attributes Sequence (0074,1048).",
)
JSON = "application/json"  # asked for with Accept or ?format=json: the same body
_RESPONSES = {
    **{(code, media_type): _DICOM_RESPONSE for code in (200, 202, 409) for media_type in (DICOM_JSON, JSON)},
    **problem_responses(400, 401, 403, 404),
    (411, PROBLEM_CONTENT_TYPE): OpenApiResponse(
        ProblemSerializer, description="A chunked body where the server cannot read one: send a Content-Length."
    ),
    (413, PROBLEM_CONTENT_TYPE): OpenApiResponse(
        ProblemSerializer, description="The body is larger than DICOMWEB_STOW_MAX_REQUEST_BYTES."
    ),
    (415, PROBLEM_CONTENT_TYPE): OpenApiResponse(
        ProblemSerializer, description='Not multipart/related; type="application/dicom".'
    ),
}
_REQUEST = {'multipart/related; type="application/dicom"': OpenApiTypes.BINARY}
_DESCRIPTION = (
    "Store DICOM Part-10 instances, one per part of a multipart/related body (PS3.18 10.5). Each is quarantined, "
    "checked (limits, malware, preamble, DICOM validity), encrypted and indexed; the request waits up to "
    "DICOMWEB_STOW_WAIT_SECONDS for the verdicts. 200: all stored; 202: some failed, have warnings or are still "
    "processing; 409: none stored. Needs tenants.upload_studies."
)


class StudiesStoreApi(DicomWebApi):
    """STOW-RS, `POST /dicomweb/<tenant>/studies` (and, through `StudyStoreApi`, `.../studies/{study}`)."""

    parser_classes = [MultipartRelatedParser]
    max_request_bytes_setting = "DICOMWEB_STOW_MAX_REQUEST_BYTES"  # a declared length over it: 413 before auth

    @extend_schema(
        operation_id="dicomweb_studies_store",
        tags=["dicomweb"],
        summary="STOW-RS: store instances (tenants.upload_studies)",
        description=_DESCRIPTION,
        request=_REQUEST,
        responses=_RESPONSES,
    )
    def post(self, request: Request, tenant: str, study: str | None = None) -> Response:
        access.require(request.user, "tenants.upload_studies", self.tenant)
        if study is not None and not is_uid(study):
            raise exceptions.ValidationError({"study": ["Not a valid Study Instance UID."]})
        data = request.data
        body = data if isinstance(data, MultipartRelated) else body_without_length(request)

        batch = uuid.uuid4()
        results: list[PartResult] = []
        receipt = _Receipt(request, batch)
        study_keys: dict[str, tuple[StudyKey, bytes]] = {}
        try:
            for part in body:
                result, blob = self._receive(
                    request, part, batch=batch, study=study, study_keys=study_keys, behind=receipt.behind
                )
                results.append(result)
                if blob is not None:
                    receipt.add(result, blob, f"STOW-RS part {part.index}")
        except BodyError as exc:
            receipt.flush()  # the parts read whole before the error are recorded, and processed
            if not exc.parts_before:
                raise
            raise type(exc)(
                f"{exc.detail} The {exc.parts_before} part(s) before the error were received and are being "
                "processed; sending them again is safe (the same instance is stored once).",
                parts_before=exc.parts_before,
            ) from exc
        except BaseException:
            receipt.abandon()  # any other failure: no copy goes on being written behind the request
            raise
        receipt.flush()
        if not results:
            raise BodyError("The body holds no part: send one application/dicom part per instance.")

        items = self._verdicts(request, batch, [r.item_id for r in results if r.item_id is not None])
        for result in results:
            if result.item_id is not None:
                _settle(result, items.get(result.item_id))

        urls: dict[str, str] = {}

        def study_url(uid: str) -> str:
            # Where the caller reached the portal, its real port; once per study, not once per part (a reverse()).
            if (url := urls.get(uid)) is None:
                url = urls[uid] = retrieve_url(request, tenant, uid)
            return url

        answer, status = store_response(results, study_url=study_url, url_study=study)
        return Response(answer, status=status)

    def _receive(
        self,
        request: Request,
        part: Part,
        *,
        batch: uuid.UUID,
        study: str | None,
        study_keys: dict[str, tuple[StudyKey, bytes]],
        behind: durable.Behind,
    ) -> tuple[PartResult, Blob | None]:
        """The part sealed into quarantine (its rows are written by `_Receipt`), or refused at the door."""
        result = PartResult(part=part.index, identity=identify(part.data))
        refusal: tuple[int, str] | None = None
        if part.content_type != DICOM_MEDIA_TYPE:
            refusal = (FAILURE_CANNOT_UNDERSTAND, f"Part {part.index} is {part.content_type}, not {DICOM_MEDIA_TYPE}.")
        elif part.oversized:
            refusal = (
                FAILURE_OUT_OF_RESOURCES,
                f"Part {part.index} is {part.size} bytes, larger than the limit of {settings.INGEST_MAX_BYTES} "
                "bytes for one object.",
            )
        elif study is not None and result.identity.study_instance_uid != study:
            refusal = (
                (FAILURE_STUDY_MISMATCH, f"Part {part.index} belongs to another study than the one in the URL.")
                if result.identity.study_instance_uid
                else (
                    FAILURE_CANNOT_UNDERSTAND,
                    f"Part {part.index} cannot be read as DICOM to check it against the study in the URL.",
                )
            )
        if refusal is None:
            try:
                # The header was read once, by identify(): its Study Instance UID picks the key that seals the copy.
                blob = ingest_quarantine(
                    data=part.data,
                    study_instance_uid=result.identity.study_instance_uid,
                    study_keys=study_keys,
                    behind=behind,
                )
            except Rejected as exc:
                refusal = (FAILURE_OUT_OF_RESOURCES, exc.reason)
            else:
                return result, blob
        result.failure, result.comment = refusal
        # Refused at the door, so no IngestItem: the refusal is on the audit trail all the same (one shape for
        # the three doors, studies.services.ingest_refusal_record).
        ingest_refusal_record(
            source=IngestItem.Source.STOWRS,
            reason=result.comment,
            failure=_REFUSAL_CLASS.get(result.failure or 0, IngestItem.Failure.INVALID),
            actor=request.user,
            batch=batch,
            source_address=request.META.get("REMOTE_ADDR"),
            detail={
                "part": part.index,
                "size": part.size,
                "sop_instance_uid": result.identity.sop_instance_uid,
                "study_instance_uid": result.identity.study_instance_uid,
            },
        )
        return result, None

    def _verdicts(self, request: Request, batch: uuid.UUID, ids: list[int]) -> dict[int, ItemVerdict]:
        """Wait, up to DICOMWEB_STOW_WAIT_SECONDS, until the pipeline has decided on every item; then the items.

        The database is the record of the work (tasks may run on any worker), so it is what is read: the request's
        items (one query) each time the worker signals that verdicts of this request committed
        (`ingest_verdicts_wait`, a Redis list the request blocks on), and at least every POLL_FALLBACK_SECONDS in
        case a signal is lost (Redis flushed or down, a worker killed between its commit and the push): a lost
        signal costs that wait, never a wrong answer. Polling alone (0.05 s, then steps up to
        0.2 s) made a request wait 60-100 ms past its verdicts."""
        if not ids:
            return {}
        deadline = time.monotonic() + settings.DICOMWEB_STOW_WAIT_SECONDS
        # The columns the answer names, of the item and the instance, series and study it became (not the sender
        # and device the activity list joins, not whole rows made into objects), in no order (a dict by id).
        rows = (
            ingest_item_list(actor=request.user, batch=batch)
            .filter(pk__in=ids)
            .select_related(None)
            .order_by()
            .values_list(*_VERDICT_COLUMNS)
        )
        while True:
            # Waited for first: the items were just recorded `received`, and a read before the worker's first
            # wake-up found them so (one query and its rows per request, for nothing); a wake-up pushed before this
            # wait began is in the list, and the wait returns at once.
            remaining = deadline - time.monotonic()
            if remaining > 0:
                ingest_verdicts_wait(batch=batch, timeout=min(POLL_FALLBACK_SECONDS, remaining))
            # The items themselves each time (a few rows), not an EXISTS and then the rows: one query a wake-up.
            items = {row[0]: ItemVerdict(*row) for row in rows.all()}  # .all(): a fresh read, not the cached one
            if deadline <= time.monotonic() or all(item.state in IngestItem.FINAL_STATES for item in items.values()):
                # A wake-up left in the list (one per batch of the worker) expires on its own: no round trip here.
                return items


class _Receipt:
    """The parts of one request sealed into quarantine and not yet recorded. They are recorded together
    (`ingest_receive_many`: one statement, the processing message after it) at the end of the body, after a body
    error (the parts before it were received whole), and every INGEST_BATCH_SIZE parts or INGEST_BATCH_BYTES, so
    that the worker meets them as one batch and a long request is processed as it arrives. (Recording them in
    smaller groups as they are read, so that the worker starts sooner, measured worse: each group is a worker batch
    of its own, whose fixed cost outweighed the overlap; docs/BENCHMARKS.md "STOW-RS pipelined within a request".)

    `behind`: the parts' quarantined copies are written on threads while the request reads the next parts
    (`durable.Behind`), and every write has ended before their receipt is recorded."""

    def __init__(self, request: Request, batch: uuid.UUID) -> None:
        self.request = request
        self.batch = batch
        self.pending: list[tuple[PartResult, Blob, str]] = []
        self.pending_bytes = 0
        self.behind = durable.Behind()

    def add(self, result: PartResult, blob: Blob, filename: str) -> None:
        self.pending.append((result, blob, filename))
        self.pending_bytes += blob.size
        if len(self.pending) >= settings.INGEST_BATCH_SIZE or self.pending_bytes >= settings.INGEST_BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        self.behind.wait()  # the copies written (a failed write raised) before anything records them
        if not self.pending:
            return
        items = ingest_receive_many(
            source=IngestItem.Source.STOWRS,
            batch=self.batch,
            quarantined=[(blob, filename) for _, blob, filename in self.pending],
            actor=self.request.user,
            source_address=self.request.META.get("REMOTE_ADDR"),
        )
        for (result, _, _), item in zip(self.pending, items, strict=True):
            result.item_id = item.pk
        self.pending, self.pending_bytes = [], 0

    def abandon(self) -> None:
        """The request failed: its copies' writes ended (their files, never recorded, are the orphan job's); a
        write that failed too is logged, not raised over the request's own failure."""
        try:
            self.behind.wait()
        except Exception as exc:
            logger.warning("a STOW-RS part's quarantined copy was not written (%s)", type(exc).__name__)


class StudyStoreApi(StudiesStoreApi):
    """STOW-RS into one study, `POST /dicomweb/<tenant>/studies/{study}`: an instance of another study fails."""

    @extend_schema(
        operation_id="dicomweb_study_store",
        tags=["dicomweb"],
        summary="STOW-RS: store instances of one study (tenants.upload_studies)",
        description=_DESCRIPTION + " An instance of another study than the one in the URL fails with A901.",
        request=_REQUEST,
        responses=_RESPONSES,
    )
    def post(self, request: Request, tenant: str, study: str | None = None) -> Response:
        return super().post(request, tenant, study)
