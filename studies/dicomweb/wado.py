"""WADO-RS: the Retrieve transaction of the Studies service (PS3.18 10.4).

- `/studies/{study}`, `.../series/{series}`, `.../instances/{instance}`: `multipart/related;
  type="application/dicom"`, one part per instance, streamed: each blob is read (decrypted, hash checked) when
  its part is sent, so a study is never in memory whole. Transfer syntax (PS3.18 8.7.3.5.2): none asked means
  the default, Explicit VR Little Endian (an object stored otherwise is rewritten, decompressed if need be);
  `transfer-syntax=*` sends each object as stored; another syntax is sent only if every object is stored in it.
- `/metadata` at each level: application/dicom+json, one data set per instance, without Pixel Data (its frames
  are at `/frames`).
- `/frames/{n[,m...]}`: `multipart/related`, one part per frame: native frames as application/octet-stream,
  compressed frames as stored with their media type (image/jpeg, image/jp2, image/dicom-rle...), or decoded to
  application/octet-stream when that is what is asked.
- `/rendered` at study, series, instance and frame level (image/jpeg by default, image/png), with `window=
  center,width[,function]`, `viewport=vw,vh` and `quality` (PS3.18 8.3.5.1); a study or series, and several
  frames, as multipart/related. `/thumbnail` at study, series and instance level (image/png by default).
- 406 when nothing in the Accept header can be made; 404, the same body, for a study the caller may not see,
  another tenant's and a made-up UID alike. Every read is audited (studies.services.reads).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from pydicom.uid import ExplicitVRLittleEndian
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response

from portal.web.errors import problem_responses
from studies.dicom import frames as frame_tools
from studies.dicom.render import RenderError
from studies.dicomweb.base import DICOM_JSON
from studies.dicomweb.negotiation import (
    DicomWebReadApi,
    MediaRange,
    accept_list,
    matches,
    multipart_response,
    new_boundary,
    not_acceptable,
)
from studies.models import Instance, Study
from studies.selectors.storage import RetrievalRow, RowsReadAhead, retrieval_rows, retrieval_statement_ahead
from studies.services.reads import (
    StudyRow,
    instances_accessed_record,
    instances_retrieved_record,
    read_unavailable_record,
)
from studies.storage.blobs import (
    READ_AHEAD,
    BlobReadAhead,
    BlobUnreadable,
    PreparedRead,
    blob_read,
    blob_read_chunks,
    blob_read_prepared,
    blob_reads_prepare,
)
from tenants import access
from tenants.models import Tenant
from tenants.scoping import tenant_scope

DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
RENDERED_TYPES = ("image/jpeg", "image/png")
EXPLICIT = str(ExplicitVRLittleEndian)
_NUMBER_LIST = re.compile(r"\d+(,\d+)*")

# An instance as a read of its bytes takes it: a model object, or the columns a retrieval reads
# (studies.selectors.storage.retrieval_rows).
Readable = Instance | RetrievalRow


class InstanceUnavailable(exceptions.APIException):
    """A stored object whose copies all fail their hash check (the fixity job marks it; SECURITY.md A7): a 503
    with the reason, never the damaged bytes."""

    status_code = 503
    default_code = "instance_unavailable"
    default_detail = "A stored instance of this request is damaged in every copy and is unavailable; it was reported."


def read_instance(tenant: Tenant, instance: Readable, tenant_keys: dict[tuple[int, int], bytes] | None = None) -> bytes:
    """The plaintext of one instance (authenticated), inside the tenant's scope: streamed parts are produced
    after the view has returned and closed its scope. `tenant_keys`: see `blob_read`."""
    with tenant_scope(tenant):
        return blob_read(blob=instance.blob, tenant_keys=tenant_keys)


def read_instance_chunks(
    tenant: Tenant, instance: Readable, tenant_keys: dict[tuple[int, int], bytes] | None = None, lead: bytes = b""
) -> list[bytes]:
    """`read_instance` as the envelope's chunks (up to 1 MiB each, all authenticated), for a part written out
    chunk by chunk without joining them; `lead` (the part's header) before them, in the first where that costs
    no copy (`blob_read_chunks`)."""
    with tenant_scope(tenant):
        return blob_read_chunks(blob=instance.blob, tenant_keys=tenant_keys, lead=lead)


# How many instances of a retrieval are prepared for reading at a time (`blob_reads_prepare`): their data keys
# unwrapped one after the other, not each between two instances' megabytes. A few kB of keys and paths, so a
# study of any size still holds one instance at a time.
PREPARED_READS = 32

# Set in the WSGI environ by gunicorn's workers as portal/gunicorn_conf.py configures them (`_body_views`): the
# server takes a memoryview as an item of the body and writes each item to the socket before it asks for the next,
# so a part can go straight from the buffer its instance was decrypted into (`blob_read_prepared`'s `views`).
BODY_VIEWS = "enclave.body_views"


class _ViewsResponse(StreamingHttpResponse):
    """A StreamingHttpResponse that hands a memoryview to the server as it is, where Django's would copy it into
    bytes; only for a server that writes each item before taking the next (BODY_VIEWS): the view's buffer is
    reused for the next part."""

    def make_bytes(self, value: Any) -> Any:
        return value if type(value) is memoryview else super().make_bytes(value)


def dicom_multipart_response(
    instances: list[RetrievalRow],
    *,
    content_type: Callable[[RetrievalRow], str],
    payload: Callable[[RetrievalRow, bytes, PreparedRead | None], Sequence[bytes | memoryview]],
    sized: bool,
    recorded: Callable[[], None],
    prepare: Callable[[list[RetrievalRow]], list[PreparedRead | None]] | None = None,
    views: bool = False,
    read_ahead: bool = False,
) -> StreamingHttpResponse:
    """multipart/related; type="application/dicom", one part per instance, the body byte for byte as
    `negotiation.multipart_stream` frames it, written as it is made: each instance is read (and authenticated)
    just before its part, so one instance at most is in memory, never the study.

    `recorded()` writes the read's audit event. It runs before the response exists, so nothing of the answer, not
    even its header block, can leave before the event has committed, and if it raises nothing is sent.

    `payload(row, head, read)`: the part, its header `head` then the instance, as pieces to write one after the
    other, every byte of it read and authenticated before the first piece is written; `read` is what
    `prepare(rows)` made for the row (None without `prepare`), called for PREPARED_READS rows at a time just
    before their parts.

    Made for speed (issue 10), since this is the archive's bulk path: each part leaves as the instance's
    decrypted chunks, never joined into one buffer, the part's header in the first of them where copying the
    chunk out of the read's buffer puts it there at no cost (`blob_read_chunks`' lead: one write per part of a CT
    series instead of a small one then the instance, each its own trip through loopback TCP); and with
    `sized` (every instance sent as stored, so its length is the row's size) the answer has a Content-Length,
    so gunicorn writes the chunks to the socket as they are instead of copying each into an HTTP chunk. (The
    connection has TCP_NODELAY, portal/gunicorn_conf.py, so a small header write does not wait on a delayed
    ACK.) A part whose instance turns out unreadable part-way ends the body short, as a chunked answer would be
    cut off: the client sees an incomplete answer, never wrong bytes.

    `views`: the server writes memoryviews as they are, each before taking the next item (BODY_VIEWS), so
    `payload` may return a view of a buffer it reuses for the next part; without it Django's response copies
    each view into bytes as the server takes it.

    `read_ahead`: the rows `prepare` prepared a read for are read (`blob_read_prepared`, which is what `payload`
    does with such a row) by a `BlobReadAhead`, READ_AHEAD instances ahead of the part being written, on a thread
    of its own: reading and decrypting the next instances (which release the GIL) use the second core while this
    thread writes to the socket. Memory stays bounded (READ_AHEAD + 1 plaintext buffers), a failed read still
    ends the body before its part, and the thread is stopped when the body is closed. The first reads start before
    `recorded()` (the first PREPARED_READS prepared, the thread started, READ_AHEAD reads submitted), so that reading
    and decrypting the first instances overlap the event's round trip and commit, the longest wait before the
    first byte (docs/BENCHMARKS.md, "h2 branch, session 12"); if `recorded()` raises, the read-ahead is closed (its
    thread joined, what it read dropped) before the exception goes on."""
    boundary = new_boundary()
    heads = [
        (b"\r\n" if n else b"") + f"--{boundary}\r\nContent-Type: {content_type(row)}\r\n\r\n".encode("ascii")
        for n, row in enumerate(instances)
    ]
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")

    def parts() -> Iterator[tuple[bytes, RetrievalRow, PreparedRead | None]]:
        for start in range(0, len(instances), PREPARED_READS):
            rows = instances[start : start + PREPARED_READS]
            reads = prepare(rows) if prepare is not None else [None] * len(rows)
            yield from zip(heads[start : start + PREPARED_READS], rows, reads, strict=True)

    def body() -> Generator[bytes | memoryview, None, None]:
        for head, row, read in parts():
            # Read whole before its header goes: an unreadable instance sends nothing of its part.
            for chunk in payload(row, head, read):
                if chunk:  # an empty write would end a chunked answer
                    yield chunk
        yield tail

    def body_read_ahead() -> Generator[bytes | memoryview, None, None]:
        # The prepared reads made READ_AHEAD instances ahead on a thread of the read's own while this one writes
        # (BlobReadAhead); the rest (an instance rewritten in another syntax) here in its turn. The same order,
        # and the same rule: an instance is taken whole (or its BlobUnreadable raised) before its header goes.
        ahead = BlobReadAhead(views=views)
        queue: deque[tuple[bytes, RetrievalRow, PreparedRead | None]] = deque()
        items = parts()

        def fill() -> None:
            while ahead.pending < READ_AHEAD and len(queue) <= READ_AHEAD:
                item = next(items, None)
                if item is None:
                    return
                queue.append(item)
                if item[2] is not None:
                    ahead.submit(item[2], lead=item[0])

        try:
            fill()
            # Started: the first reads are under way. The caller takes this empty item (it is never sent) and
            # writes the audit event meanwhile; as the generator has started, closing it (the event failed, or the
            # server closes an answer it never iterated) runs the `finally` below and stops the thread.
            yield b""
            while queue:
                head, row, read = queue.popleft()
                chunks = ahead.result() if read is not None else payload(row, head, None)
                fill()  # the next read starts before this part is written (its buffer is not the next's)
                for chunk in chunks:
                    if chunk:
                        yield chunk
            yield tail
        finally:
            ahead.close()  # also when the client has gone: the server closes the body, no thread outlives it

    ahead = read_ahead and prepare is not None and len(instances) > 1
    stream = body_read_ahead() if ahead else body()
    if ahead:
        next(stream)  # the first reads started (see body_read_ahead)
    try:
        recorded()
    except BaseException:
        stream.close()
        raise
    response = (_ViewsResponse if views else StreamingHttpResponse)(stream)
    response["Content-Type"] = f'multipart/related; type="{DICOM}"; boundary={boundary}'
    if sized:
        response["Content-Length"] = str(sum(map(len, heads)) + sum(row.blob.size for row in instances) + len(tail))
    return response


# Negotiation
# ------------------------------------------------------------------------------


def dicom_syntax(ranges: list[MediaRange], instances: list[RetrievalRow]) -> str | None:
    """The transfer syntax to send DICOM objects in (None: each as stored), or NotAcceptable."""
    stored = {i.transfer_syntax_uid for i in instances}
    for r in ranges:
        if r.type == "multipart/related" and r.part_type in ("", DICOM):
            wanted = r.transfer_syntax
        elif r.type == DICOM or r.type in ("*/*", "multipart/*"):
            wanted = r.transfer_syntax if r.type == DICOM else ""
        else:
            continue
        if wanted in ("", EXPLICIT):
            return EXPLICIT
        if wanted == "*":
            return None
        if stored == {wanted}:
            return wanted
    raise not_acceptable(
        'DICOM objects are sent as multipart/related; type="application/dicom", in Explicit VR '
        "Little Endian, as stored (transfer-syntax=*), or in the syntax they are stored in"
    )


def frame_choice(ranges: list[MediaRange], stored_type: str) -> bool:
    """Whether frames must be decoded (True) or can go as stored (False); NotAcceptable if neither is asked."""
    native = stored_type == OCTET_STREAM
    for r in ranges:
        if r.type == "multipart/related":
            part = r.part_type or "*/*"
        elif r.type in ("*/*", OCTET_STREAM) or r.type.startswith("image/"):
            part = r.type
        else:
            continue
        if part in ("*/*", "*"):
            return False
        if part == OCTET_STREAM and r.transfer_syntax in ("", "*", EXPLICIT):
            return not native
        if not native and matches(part, stored_type):
            return False
    raise not_acceptable(
        f'frames of this instance are sent as multipart/related; type="{stored_type}"'
        + ("" if native else ' or type="application/octet-stream" (decoded)')
    )


def rendered_type(ranges: list[MediaRange], *, default: str) -> str:
    for r in ranges:
        candidates = [r.part_type or "*/*"] if r.type == "multipart/related" else [r.type]
        for candidate in candidates:
            if candidate in ("*/*", "*", "image/*", "image/"):
                return default
            if candidate in RENDERED_TYPES:
                return candidate
    raise not_acceptable("rendered images are image/jpeg or image/png")


def json_acceptable(ranges: list[MediaRange]) -> None:
    if not any(matches(r.type, DICOM_JSON) or matches(r.type, "application/json") for r in ranges):
        raise not_acceptable("metadata is application/dicom+json")


def render_params(request: Request) -> dict[str, Any]:
    """window=center,width[,function], viewport=vw,vh, quality=1..100 (PS3.18 8.3.5.1)."""
    params: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    window = request.query_params.get("window")
    if window:
        parts = [p.strip() for p in window.split(",")]
        try:
            center, width = float(parts[0]), float(parts[1])
            function = (parts[2] if len(parts) > 2 else "LINEAR").upper()
            if len(parts) > 3 or width <= 0 or function not in frame_tools.WINDOW_FUNCTIONS:
                raise ValueError
            params["window"] = frame_tools.Window(center, width, function)
        except (ValueError, IndexError):
            errors["window"] = [
                "window is center,width[,function]: width above 0, function LINEAR, LINEAR_EXACT or SIGMOID."
            ]
    viewport = request.query_params.get("viewport")
    if viewport:
        try:
            vw, vh = (int(p) for p in viewport.split(","))
            if not (0 < vw <= 4096 and 0 < vh <= 4096):
                raise ValueError
            params["viewport"] = (vw, vh)
        except ValueError:
            errors["viewport"] = ["viewport is vw,vh: two whole numbers from 1 to 4096 (cropping is not supported)."]
    quality = request.query_params.get("quality")
    if quality:
        try:
            params["quality"] = int(quality)
            if not 1 <= params["quality"] <= 100:
                raise ValueError
        except ValueError:
            errors["quality"] = ["quality is a whole number from 1 to 100."]
    if errors:
        raise exceptions.ValidationError(errors)
    return params


def frame_numbers(raw: str) -> list[int]:
    """The frame numbers of a URL, each once, in the caller's order; at most DICOMWEB_MAX_FRAMES_PER_REQUEST of
    them, so one request cannot ask for gigabytes (a list of 4,000 frames once built a 2 GB answer)."""
    if not _NUMBER_LIST.fullmatch(raw or "") or any(int(n) < 1 for n in raw.split(",")):
        raise exceptions.ValidationError({"frames": ["Frames are a comma-separated list of numbers from 1."]})
    numbers = list(dict.fromkeys(int(n) for n in raw.split(",")))
    limit = settings.DICOMWEB_MAX_FRAMES_PER_REQUEST
    if len(numbers) > limit:
        raise exceptions.ValidationError(
            {"frames": [f"At most {limit} frames per request: ask for the other frames in further requests."]}
        )
    return numbers


# What each kind of read answers with, so that the schema names the media types a client really receives:
# instances and frames in multipart/related (PS3.18 8.7.3), images as negotiated (several frames: multipart).
MULTIPART = "multipart/related"
RETRIEVED = (MULTIPART,)
RENDERED = (*RENDERED_TYPES, MULTIPART)
THUMBNAIL = RENDERED_TYPES
JSON = "application/json"
DICOM_JSON_ARRAY = {"type": "array", "items": {"type": "object"}}


def _binary_doc(operation_id: str, summary: str, media_types: tuple[str, ...] = RETRIEVED) -> Any:
    binary = {(200, media_type): OpenApiResponse(OpenApiTypes.BINARY) for media_type in media_types}
    return extend_schema(
        operation_id=operation_id,
        tags=["dicomweb"],
        summary=summary,
        responses={**binary, **problem_responses(400, 401, 404)},
    )


def _metadata_doc(operation_id: str, summary: str) -> Any:
    """Metadata: a JSON array of data sets in the DICOM JSON model, under either JSON media type."""
    metadata = OpenApiResponse(DICOM_JSON_ARRAY, description="One DICOM JSON object per instance.")
    return extend_schema(
        operation_id=operation_id,
        tags=["dicomweb"],
        summary=summary,
        responses={(200, DICOM_JSON): metadata, (200, JSON): metadata, **problem_responses(400, 401, 404)},
    )


# Retrieve
# ------------------------------------------------------------------------------


class _ReadApi(DicomWebReadApi):
    rate_limit = "retrieve"
    # Every read here takes its first permission decision on patient data (`visible` of the study), as a search
    # does: its gates' and tenant permissions' statements are sent with the bearer token's (portal.web.authentication,
    # tenants.selectors), one round trip fewer before the first byte (docs/BENCHMARKS.md, the lead, session 11).
    DECISION_AHEAD = True

    def instances(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> tuple[Study, list[Instance]]:
        return self.visible_instances(study_uid=study, series_uid=series, sop_uid=instance)

    def accessed(self, study: Study, kind: str, count: int) -> None:
        instances_accessed_record(
            actor=self.request.user,
            study=study,
            kind=kind,
            count=count,
            resource=self.request.path,
            source_address=self.source_address(),
        )


class _RetrieveApi(_ReadApi):
    def statement_ahead(self, tenant: Tenant) -> tuple[str, list[Any]] | None:
        """The rows statement of this retrieval, sent with the bearer token's and the decision's in their round trip
        (portal.web.authentication; docs/BENCHMARKS.md, "h2 branch, session 12"): None for another tenant's URL (the
        request is a 404) or a shape this process has not compiled yet."""
        if self.kwargs.get("tenant") != tenant.slug:
            return None
        return retrieval_statement_ahead(
            tenant_id=tenant.pk,
            study_uid=self.kwargs.get("study"),
            series_uid=self.kwargs.get("series"),
            sop_uid=self.kwargs.get("instance"),
        )

    def retrieval(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> tuple[StudyRow, list[RetrievalRow]]:
        """The study and instances to send, read as columns in one statement (issue 10: a series is one row per
        instance), compiled once per shape (studies.selectors.storage.retrieval_rows), or taken from its rows read
        with the bearer token (`statement_ahead`) when the decision allows; NotVisible recorded as a failed read, as
        `visible_instances` records it."""
        read_ahead = getattr(self.request.auth, "read_ahead", None)
        try:
            return retrieval_rows(
                actor=self.request.user,
                study_uid=study,
                series_uid=series,
                sop_uid=instance,
                ahead=RowsReadAhead(*read_ahead) if read_ahead is not None else None,
            )
        except access.NotVisible:
            read_unavailable_record(
                actor=self.request.user, study_uid=study, resource=self.request.path,
                source_address=self.source_address(),
            )  # fmt: skip
            raise

    def retrieve(self, request: Request, study: str, series: str | None = None, instance: str | None = None) -> Any:
        # The DICOM files themselves: with a device-bound token, the device needs its download grant.
        access.credential_use_require(request.user, access.USE_DOWNLOAD)
        study_row, instances = self.retrieval(study, series, instance)
        syntax = dicom_syntax(accept_list(request), instances)
        if any(row.blob.damaged_at is not None for row in instances):
            raise InstanceUnavailable()
        tenant = self.tenant
        tenant_keys: dict[tuple[int, int], bytes] = {}  # for this request only

        def as_stored(row: RetrievalRow) -> bool:
            return syntax is None or row.transfer_syntax_uid == syntax

        # Parts written by gunicorn straight from the buffer each instance was decrypted into (BODY_VIEWS).
        views = bool(request.META.get(BODY_VIEWS))

        def transcoded(
            row: RetrievalRow, head: bytes = b"", read: PreparedRead | None = None
        ) -> Sequence[bytes | memoryview]:
            if not as_stored(row):
                return [head, frame_tools.as_explicit_little_endian(read_instance(tenant, row, tenant_keys))]
            if read is not None:
                return blob_read_prepared(read, lead=head, views=views)
            return read_instance_chunks(tenant, row, tenant_keys, lead=head)

        def prepare(rows: list[RetrievalRow]) -> list[PreparedRead | None]:
            """The reads of the rows sent as stored, prepared in the tenant's scope (their keys, their paths)."""
            stored = [row for row in rows if as_stored(row)]
            with tenant_scope(tenant):
                reads = iter(blob_reads_prepare([row.blob for row in stored], tenant_keys=tenant_keys))
            return [next(reads) if as_stored(row) else None for row in rows]

        first = None
        if len(instances) == 1:
            # One instance is made before answering, so one that cannot be decompressed is a 400 with the reason.
            try:
                first = transcoded(instances[0])
            except BlobUnreadable as exc:  # damaged in both stores, not yet found by the fixity job
                raise InstanceUnavailable() from exc
            except RenderError as exc:
                raise exceptions.ValidationError(
                    {"instance": [f"This instance cannot be decompressed: {exc}; ask for transfer-syntax=*."]}
                ) from exc

        def recorded() -> None:
            instances_retrieved_record(
                actor=request.user,
                study=study_row,
                count=len(instances),
                resource=request.path,
                transfer_syntax=syntax or "*",
                source_address=self.source_address(),
                actor_role=self.membership.role,
            )

        return dicom_multipart_response(
            instances,
            content_type=lambda row: f"{DICOM}; transfer-syntax={syntax or row.transfer_syntax_uid}",
            payload=lambda row, head, read: [head, *first] if first is not None else transcoded(row, head, read),
            sized=all(as_stored(row) for row in instances),
            recorded=recorded,
            prepare=prepare if first is None else None,
            views=views,
            read_ahead=True,
        )


class StudyRetrieveApi(_RetrieveApi):
    @_binary_doc("dicomweb_study_retrieve", "WADO-RS: retrieve a study")
    def get(self, request: Request, tenant: str, study: str) -> Any:
        return self.retrieve(request, study)


class SeriesRetrieveApi(_RetrieveApi):
    @_binary_doc("dicomweb_series_retrieve", "WADO-RS: retrieve a series")
    def get(self, request: Request, tenant: str, study: str, series: str) -> Any:
        return self.retrieve(request, study, series)


class InstanceRetrieveApi(_RetrieveApi):
    @_binary_doc("dicomweb_instance_retrieve", "WADO-RS: retrieve an instance")
    def get(self, request: Request, tenant: str, study: str, series: str, instance: str) -> Any:
        return self.retrieve(request, study, series, instance)


# Metadata
# ------------------------------------------------------------------------------


def metadata_json(data: bytes) -> dict[str, Any]:
    ds = frame_tools.read(data, pixels=False)
    return ds.to_json_dict(bulk_data_threshold=2**31, suppress_invalid_tags=True)


class _MetadataApi(_ReadApi):
    def metadata(self, request: Request, study: str, series: str | None = None, instance: str | None = None) -> Any:
        json_acceptable(accept_list(request))
        study_row, instances = self.instances(study, series, instance)
        body = [metadata_json(read_instance(self.tenant, row)) for row in instances]
        self.accessed(study_row, "metadata", len(instances))
        return Response(body, content_type=DICOM_JSON)


class StudyMetadataApi(_MetadataApi):
    @_metadata_doc("dicomweb_study_metadata", "WADO-RS: metadata of a study")
    def get(self, request: Request, tenant: str, study: str) -> Any:
        return self.metadata(request, study)


class SeriesMetadataApi(_MetadataApi):
    @_metadata_doc("dicomweb_series_metadata", "WADO-RS: metadata of a series")
    def get(self, request: Request, tenant: str, study: str, series: str) -> Any:
        return self.metadata(request, study, series)


class InstanceMetadataApi(_MetadataApi):
    @_metadata_doc("dicomweb_instance_metadata", "WADO-RS: metadata of an instance")
    def get(self, request: Request, tenant: str, study: str, series: str, instance: str) -> Any:
        return self.metadata(request, study, series, instance)


# Frames
# ------------------------------------------------------------------------------


class FramesRetrieveApi(_ReadApi):
    @_binary_doc("dicomweb_frames_retrieve", "WADO-RS: retrieve frames of an instance")
    def get(self, request: Request, tenant: str, study: str, series: str, instance: str, frames: str) -> Any:
        access.credential_use_require(request.user, access.USE_DOWNLOAD)  # raw pixel data, as for the files
        numbers = frame_numbers(frames)
        study_row, (row,) = self.instances(study, series, instance)
        ds = frame_tools.read(read_instance(self.tenant, row))
        decoded = frame_choice(accept_list(request), frame_tools.frame_media_type(ds))
        try:
            found = frame_tools.frame_iter(ds, numbers, decoded=decoded)
            first = next(found)
        except frame_tools.FrameError as exc:
            raise exceptions.ValidationError({"frames": [str(exc)]}) from exc
        self.accessed(study_row, "frames", 1)

        def parts() -> Iterator[tuple[str, bytes]]:
            # One frame at a time: the answer is never held whole (decoded frames are made as they are sent).
            yield f"{first.media_type}; transfer-syntax={first.transfer_syntax}", first.data
            for f in found:
                yield f"{f.media_type}; transfer-syntax={f.transfer_syntax}", f.data

        return multipart_response(parts(), part_type=first.media_type, tenant=self.tenant)


# Rendered and thumbnails
# ------------------------------------------------------------------------------


def cannot_be_rendered(why: str) -> exceptions.ValidationError:
    """The 400 for an instance that cannot be drawn (no pixels, or pixel data that cannot be decoded)."""
    return exceptions.ValidationError({"instance": [f"This instance cannot be rendered: {why}."]})


def _image(data: bytes, media_type: str) -> HttpResponse:
    return HttpResponse(data, content_type=media_type)


class _RenderedApi(_ReadApi):
    kind = "rendered"
    default_type = "image/jpeg"

    def rendered(
        self,
        request: Request,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        frames: str | None = None,
    ) -> Any:
        params = render_params(request)
        numbers = frame_numbers(frames) if frames is not None else [1]
        study_row, instances = self.instances(study, series, instance)
        media_type = rendered_type(accept_list(request), default=self.default_type)
        tenant = self.tenant

        def one(row: Instance, number: int) -> bytes:
            return frame_tools.render(
                frame_tools.read(read_instance(tenant, row)), frame=number, media_type=media_type, **params
            )

        if instance is not None:
            # One instance: its first frame is rendered before answering, so an instance that cannot be rendered
            # is a 400 that says so, never a 500 or an empty answer.
            ds = frame_tools.read(read_instance(tenant, instances[0]))
            try:
                first = frame_tools.render(ds, frame=numbers[0], media_type=media_type, **params)
                if len(numbers) > 1:
                    frame_tools.check_frames(ds, numbers)
            except (RenderError, frame_tools.FrameError) as exc:
                raise cannot_be_rendered(str(exc)) from exc
            self.accessed(study_row, self.kind, 1)
            if len(numbers) == 1:
                return _image(first, media_type)

            def frame_parts() -> Iterator[tuple[str, bytes]]:
                yield media_type, first
                for number in numbers[1:]:
                    try:
                        yield media_type, frame_tools.render(ds, frame=number, media_type=media_type, **params)
                    except (RenderError, frame_tools.FrameError):
                        continue  # a later frame that cannot be decoded is left out; the others still go

            return multipart_response(frame_parts(), part_type=media_type, tenant=self.tenant)
        self.accessed(study_row, self.kind, len(instances))

        def parts() -> Iterator[tuple[str, bytes]]:
            for row in instances:
                ds = frame_tools.read(read_instance(tenant, row))
                for number in numbers:
                    try:
                        yield media_type, frame_tools.render(ds, frame=number, media_type=media_type, **params)
                    except (RenderError, frame_tools.FrameError):
                        # An object without pixels (a report, a key object), or whose pixels cannot be decoded,
                        # has nothing to show; the rest of the study or series still does.
                        continue

        return multipart_response(parts(), part_type=media_type, tenant=self.tenant)


class StudyRenderedApi(_RenderedApi):
    @_binary_doc("dicomweb_study_rendered", "WADO-RS: rendered images of a study", RENDERED)
    def get(self, request: Request, tenant: str, study: str) -> Any:
        return self.rendered(request, study)


class SeriesRenderedApi(_RenderedApi):
    @_binary_doc("dicomweb_series_rendered", "WADO-RS: rendered images of a series", RENDERED)
    def get(self, request: Request, tenant: str, study: str, series: str) -> Any:
        return self.rendered(request, study, series)


class InstanceRenderedApi(_RenderedApi):
    @_binary_doc("dicomweb_instance_rendered", "WADO-RS: a rendered instance", RENDERED)
    def get(self, request: Request, tenant: str, study: str, series: str, instance: str) -> Any:
        return self.rendered(request, study, series, instance)


class FramesRenderedApi(_RenderedApi):
    @_binary_doc("dicomweb_frames_rendered", "WADO-RS: rendered frames", RENDERED)
    def get(self, request: Request, tenant: str, study: str, series: str, instance: str, frames: str) -> Any:
        return self.rendered(request, study, series, instance, frames)


THUMBNAIL_SIZE = (128, 128)


class _ThumbnailApi(_ReadApi):
    def thumbnail(self, request: Request, study: str, series: str | None = None, instance: str | None = None) -> Any:
        params = render_params(request)
        params.setdefault("viewport", THUMBNAIL_SIZE)
        study_row, instances = self.instances(study, series, instance)
        media_type = rendered_type(accept_list(request), default="image/png")
        problem = None
        # The first instance that can be drawn represents the study or series: one that has no pixels, or whose
        # pixels cannot be decoded, is passed over, never the end of the thumbnail.
        for row in instances:
            try:
                ds = frame_tools.read(read_instance(self.tenant, row))
                data = frame_tools.render(ds, frame=1, media_type=media_type, **params)
            except (RenderError, frame_tools.FrameError) as exc:
                problem = problem or exc
                continue
            self.accessed(study_row, "thumbnail", 1)
            return _image(data, media_type)
        if instance is not None and problem is not None:
            raise cannot_be_rendered(str(problem))
        raise exceptions.NotFound("Nothing in this resource has pixels to show.")


class StudyThumbnailApi(_ThumbnailApi):
    @_binary_doc("dicomweb_study_thumbnail", "WADO-RS: thumbnail of a study", THUMBNAIL)
    def get(self, request: Request, tenant: str, study: str) -> Any:
        return self.thumbnail(request, study)


class SeriesThumbnailApi(_ThumbnailApi):
    @_binary_doc("dicomweb_series_thumbnail", "WADO-RS: thumbnail of a series", THUMBNAIL)
    def get(self, request: Request, tenant: str, study: str, series: str) -> Any:
        return self.thumbnail(request, study, series)


class InstanceThumbnailApi(_ThumbnailApi):
    @_binary_doc("dicomweb_instance_thumbnail", "WADO-RS: thumbnail of an instance", THUMBNAIL)
    def get(self, request: Request, tenant: str, study: str, series: str, instance: str) -> Any:
        return self.thumbnail(request, study, series, instance)
