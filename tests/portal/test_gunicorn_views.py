"""gunicorn as portal/gunicorn_conf.py configures it writes a memoryview item of a body as it is, before taking the
next item (a WADO-RS part goes straight from the buffer its instance was decrypted into: studies.dicomweb.wado,
BODY_VIEWS), with gunicorn's own bookkeeping: the Content-Length's cut-off, chunked framing, a body-less HEAD, and
the connection kept alive after it. Served for real on a loopback port, by a WSGI application whose views share one
buffer that it overwrites before each next item (tests/portal/wsgi_views.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

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
