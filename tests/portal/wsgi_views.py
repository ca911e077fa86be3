"""A WSGI application for tests/portal/test_gunicorn_views.py, served by a real gunicorn with
portal/gunicorn_conf.py: its bodies are memoryviews of one buffer it overwrites before each next item, as a WADO-RS
retrieval's parts are (studies.dicomweb.wado.BODY_VIEWS), so any item the server did not write before taking the
next one shows up as wrong bytes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

PIECES = [bytes([n]) * size for n, size in enumerate((1, 70_000, 3, 524_288, 17), start=65)]


def application(environ: dict[str, Any], start_response: Any) -> Iterator[Any]:
    path = environ["PATH_INFO"]
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("X-Body-Views", str(bool(environ.get("enclave.body_views")))),
    ]
    if path == "/sized":
        headers.append(("Content-Length", str(sum(map(len, PIECES)))))
    elif path == "/short":  # a Content-Length shorter than the body: gunicorn sends no byte past it
        headers.append(("Content-Length", str(sum(map(len, PIECES[:3])) + 10)))
    start_response("200 OK", headers)
    buffer = bytearray(max(map(len, PIECES)))
    view = memoryview(buffer)

    def body() -> Iterator[Any]:
        for n, piece in enumerate(PIECES):
            view[: len(piece)] = piece  # the previous item's bytes overwritten
            yield view[: len(piece)] if n % 2 else piece  # views and bytes, mixed
        buffer[:] = b"\0" * len(buffer)

    return body()
