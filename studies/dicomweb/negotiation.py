"""What the read side of DICOMweb shares: Accept parsing (PS3.18 8.7), multipart/related writing, and the base
class of the read resources.

DRF's own content negotiation knows only the renderers; DICOMweb responses are multipart bodies and images that
no renderer makes, so each resource negotiates itself (406 when nothing acceptable can be made) and DRF's
negotiation never refuses (`LenientNegotiation`); errors stay RFC 7807 problem documents.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.http import StreamingHttpResponse
from django.utils.http import parse_header_parameters
from rest_framework import exceptions
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

from studies.dicomweb.base import DicomWebApi
from tenants import access
from tenants.models import Tenant
from tenants.scoping import tenant_scope


@dataclass(frozen=True)
class MediaRange:
    type: str  # "multipart/related", "image/jpeg", "*/*", ...
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def part_type(self) -> str:
        """For multipart/related: the type of its parts ("" when not given)."""
        return self.params.get("type", "").strip().strip('"').lower()

    @property
    def transfer_syntax(self) -> str:
        return self.params.get("transfer-syntax", "").strip().strip('"')


def accept_list(request: Request) -> list[MediaRange]:
    """The caller's Accept header as media ranges, most preferred first; `*/*` when there is none. The `accept`
    query parameter (PS3.18 8.3.3.1), when given, takes the header's place: a browser's <img> cannot set it."""
    header = (request.query_params.get("accept") or request.META.get("HTTP_ACCEPT", "")).strip()
    if not header:
        return [MediaRange("*/*")]
    if "," not in header and ";" not in header:  # one media range without parameters: what most clients send
        return [MediaRange(header.lower())]
    ranges = []
    for raw in header.split(","):
        if not raw.strip():
            continue
        main, params = parse_header_parameters(raw)
        params = {k.lower(): v for k, v in params.items()}
        try:
            q = float(params.pop("q", "1") or 1)
        except ValueError:
            q = 1.0
        if q > 0:
            ranges.append(MediaRange(main.strip().lower(), params, q))
    ranges.sort(key=lambda r: -r.q)  # stable: equal weights keep the caller's order
    return ranges


def matches(media_range: str, media_type: str) -> bool:
    """True when `media_type` (such as image/png) falls in `media_range` (such as image/*)."""
    if media_range in ("*/*", "*", media_type):
        return True
    major, _, minor = media_range.partition("/")
    return minor in ("*", "") and media_type.split("/")[0] == major


def not_acceptable(what: str) -> exceptions.NotAcceptable:
    return exceptions.NotAcceptable(f"None of the media types in the Accept header can be returned here; {what}.")


class LenientNegotiation(DefaultContentNegotiation):
    """Picks a renderer for DRF (used for error documents and JSON) and never refuses: resources decide."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> Any:
        renderers = list(renderers)  # DRF passes a list; indexed below
        exact = self._exact(request, renderers, format_suffix)
        if exact is not None:
            return exact
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except exceptions.NotAcceptable:
            return renderers[0], renderers[0].media_type

    def _exact(
        self, request: Request, renderers: list[BaseRenderer], format_suffix: str | None
    ) -> tuple[BaseRenderer, str] | None:
        """What DRF's negotiation answers, in the two cases a DICOMweb read sends, found without DRF's parsing of
        the header and of every renderer's type; None for anything else (DRF decides):

        - the header is one media type, without parameters or wildcards, that a renderer's is exactly
          (`Accept: application/dicom+json`, a search's): DRF picks the first renderer whose type matches it, and
          a renderer's type (none has a wildcard) matches no other type;
        - no media range of the header names a renderer's type or a wildcard (`multipart/related; type=...`,
          `image/jpeg`: a retrieval's): DRF finds no renderer and refuses, and this class then picks the first.

        Never with a format override (`?format=`, a suffix), which DRF applies first."""
        header = request.META.get("HTTP_ACCEPT", "")
        if format_suffix or not header.strip() or self.settings.URL_FORMAT_OVERRIDE in request.query_params:
            return None
        types = {renderer.media_type.lower() for renderer in renderers}
        if any("*" in media_type or ";" in media_type for media_type in types):
            return None
        if not any(mark in header for mark in ",;* \t"):
            for renderer in renderers:
                if renderer.media_type.lower() == header.lower():  # the first that DRF would find matching
                    return (renderer, header) if renderer.media_type == header else None
        for token in header.split(","):
            media_type = token.partition(";")[0].strip().lower()
            if "*" in media_type or media_type in types or any(space in media_type for space in " \t"):
                return None  # a renderer may match it: DRF decides
        return renderers[0], renderers[0].media_type


class DicomWebReadApi(DicomWebApi):
    """Base of QIDO-RS, WADO-RS and WADO-URI resources."""

    content_negotiation_class = LenientNegotiation

    def source_address(self) -> str | None:
        return self.request.META.get("REMOTE_ADDR")

    def visible_instances(
        self, *, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> tuple[Any, list[Any]]:
        """The study and instances of a read, or NotVisible (a 404 like a missing one) recorded as a failure."""
        from studies.selectors import dicomweb_instance_list
        from studies.services.reads import read_unavailable_record

        try:
            return dicomweb_instance_list(
                actor=self.request.user, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid
            )  # fmt: skip
        except access.NotVisible:
            read_unavailable_record(
                actor=self.request.user, study_uid=study_uid, resource=self.request.path,
                source_address=self.source_address(),
            )  # fmt: skip
            raise


# multipart/related (RFC 2387), written as a stream
# ------------------------------------------------------------------------------


def new_boundary() -> str:
    return f"enclave-{uuid.uuid4().hex}"


def multipart_stream(parts: Iterable[tuple[str, bytes]], boundary: str) -> Iterator[bytes]:
    """Each (content type, bytes) as one body part; the parts are produced (and read) one at a time.

    One chunk per part (the previous part's CRLF, the part's headers and its bytes): the server writes each chunk
    to the socket as it comes, and small writes between large ones wait on the client's delayed ACK."""
    before = b""
    for content_type, data in parts:
        yield b"".join((before, f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii"), data))
        before = b"\r\n"
    yield before + f"--{boundary}--\r\n".encode("ascii")


def _in_scope(tenant: Tenant, parts: Iterable[tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
    """Each part made in the tenant's scope: the body is sent after the view has returned and closed its scope,
    and the database's row-level security (tenants.db) holds every query to the scope it runs in. No query runs
    inside a `yield`."""
    iterator = iter(parts)
    while True:
        with tenant_scope(tenant):
            part = next(iterator, None)
        if part is None:
            return
        yield part


def multipart_response(
    parts: Iterable[tuple[str, bytes]], *, part_type: str, status: int = 200, tenant: Tenant | None = None
) -> StreamingHttpResponse:
    """`tenant`: the scope the parts are made in, when making them reads the database."""
    boundary = new_boundary()
    if tenant is not None:
        parts = _in_scope(tenant, parts)
    response = StreamingHttpResponse(multipart_stream(parts, boundary), status=status)
    response["Content-Type"] = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return response
