"""gunicorn as portal/gunicorn_conf.py configures it writes a memoryview item of a body as it is, before taking the
next item (a WADO-RS part goes straight from the buffer its instance was decrypted into: studies.dicomweb.wado,
BODY_VIEWS), with gunicorn's own bookkeeping: the Content-Length's cut-off, chunked framing, a body-less HEAD, and
the connection kept alive after it. Served for real on a loopback port, by a WSGI application whose views share one
buffer that it overwrites before each next item (tests/portal/wsgi_views.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import requests
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader

from tests.portal.test_web_server import gunicorn_serving
from tests.portal.wsgi_views import PIECES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def views_server() -> Iterator[str]:
    with gunicorn_serving("tests.portal.wsgi_views:application", "/sized") as (base, _):
        yield base


def test_the_configuration_and_the_retrieval_name_the_same_environ_key():
    from portal import gunicorn_conf
    from studies.dicomweb import wado

    assert gunicorn_conf.BODY_VIEWS == wado.BODY_VIEWS


def test_views_are_written_as_they_come_sized_chunked_and_cut_at_the_length(views_server):
    whole = b"".join(PIECES)
    with requests.Session() as session:
        for _ in range(2):  # on one kept-alive connection, each answer whole
            sized = session.get(f"{views_server}/sized", timeout=30)
            assert sized.headers["X-Body-Views"] == "True"
            assert sized.headers["Content-Length"] == str(len(whole))
            assert sized.content == whole
            chunked = session.get(f"{views_server}/chunked", timeout=30)
            assert chunked.headers.get("Transfer-Encoding") == "chunked"
            assert chunked.content == whole
            short = session.get(f"{views_server}/short", timeout=30)
            assert short.content == whole[: int(short.headers["Content-Length"])]
            head = session.head(f"{views_server}/sized", timeout=30)
            assert head.status_code == 200
            assert head.content == b""
        assert session.get(f"{views_server}/sized", timeout=30).content == whole


def test_tuples_of_pieces_are_written_whole_sized_chunked_and_cut_at_the_length(views_server):
    whole = b"".join(PIECES)
    with requests.Session() as session:
        for _ in range(2):  # on one kept-alive connection, each answer whole
            sized = session.get(f"{views_server}/gathered/sized", timeout=30)
            assert sized.headers["Content-Length"] == str(len(whole))
            assert sized.content == whole
            chunked = session.get(f"{views_server}/gathered/chunked", timeout=30)
            assert chunked.headers.get("Transfer-Encoding") == "chunked"
            assert chunked.content == whole
            short = session.get(f"{views_server}/gathered/short", timeout=30)
            assert short.content == whole[: int(short.headers["Content-Length"])]
            head = session.head(f"{views_server}/gathered/sized", timeout=30)
            assert head.status_code == 200
            assert head.content == b""


def _response_on_records() -> tuple[wsgi.Response, socket.socket]:
    """A gunicorn response (as portal/gunicorn_conf.py configures gunicorn) to a parsed GET, writing to a socket
    that keeps each write a record of its own (SOCK_SEQPACKET), and the socket that reads those records."""
    from portal import gunicorn_conf  # noqa: F401  (gunicorn configured as the server is)

    config = Config()
    request = Request(config, IterUnreader([b"GET /x HTTP/1.1\r\nHost: archive\r\n\r\n"]), ("127.0.0.1", 1), 1)
    server, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    response, _ = wsgi.create(request, server, ("127.0.0.1", 1), "127.0.0.1:80", config)
    return response, reader


def _records(reader: socket.socket) -> list[bytes]:
    records = []
    while record := reader.recv(1 << 20):
        records.append(record)
    return records


@pytest.mark.parametrize("first", [b"abc", memoryview(bytearray(b"abc"))], ids=["bytes", "view"])
def test_the_header_block_leaves_in_the_write_of_the_first_item_and_a_tuple_in_one_write(first):
    """gunicorn wrote the header block in a send of its own, then each item: here the header block and the first
    item are one write, and a tuple of pieces one write more, cut at the Content-Length; the header block the bytes
    gunicorn's own send_headers writes."""
    response, reader = _response_on_records()
    response.start_response("200 OK", [("Content-Type", "application/dicom"), ("Content-Length", "9")])
    response.write(first)
    response.write((b"de", memoryview(bytearray(b"fgh")), b"ijk", b"l"))
    response.write(b"more")  # past the length: nothing
    response.close()
    response.sock.close()
    header, *body = _records(reader)
    assert body == [b"defghi"]
    assert header.endswith(b"\r\n\r\nabc")

    own, own_reader = _response_on_records()
    own.start_response("200 OK", [("Content-Type", "application/dicom"), ("Content-Length", "9")])
    own.send_headers()  # gunicorn's own
    own.sock.close()
    (expected,) = _records(own_reader)

    def undated(block: bytes) -> list[bytes]:
        return [line for line in block.split(b"\r\n") if not line.startswith(b"Date: ")]

    assert undated(header[: -len(b"abc")]) == undated(expected)
    assert b"Server:" not in header
