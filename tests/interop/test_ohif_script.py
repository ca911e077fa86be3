"""scripts/ohif.py without a browser: the cache is used once filled (no npm needed), the generated app-config.js
carries the token through OHIF's auth service and the portal's real address, and the static server answers OHIF's
client-side routes with index.html without serving anything outside the build."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.interop.ohif_script import ohif


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ENCLAVE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ohif"


def test_a_filled_cache_is_used_without_npm(cache, monkeypatch):
    dist = cache / "9.9.9" / "dist"
    dist.mkdir(parents=True)
    (dist / "index.html").write_text("<html>OHIF</html>")
    (dist / ".complete").write_text("9.9.9")
    monkeypatch.setenv("PATH", "/nonexistent")

    assert ohif.fetch("9.9.9") == dist
    assert ohif.fetch("9.9.9") == dist


def test_without_npm_and_an_empty_cache_the_fetch_says_why(cache, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    half = cache / "9.9.8" / "dist"  # an interrupted earlier fetch: no .complete marker
    half.mkdir(parents=True)
    (half / "index.html").write_text("partial")

    assert ohif.cached_dist("9.9.8") is None
    with pytest.raises(ohif.FetchError, match="npm is not installed"):
        ohif.fetch("9.9.8")


def test_the_config_names_the_real_portal_and_sends_the_token_through_the_auth_service():
    config = ohif.app_config(portal="http://127.0.0.1:43117/", tenant="north", token="tok'en\"</script>")

    assert "'http://127.0.0.1:43117/dicomweb/north'" not in config  # JSON strings, double-quoted
    assert '"qidoRoot": "http://127.0.0.1:43117/dicomweb/north"' in config
    assert '"wadoRoot": "http://127.0.0.1:43117/dicomweb/north"' in config
    assert "8000" not in config
    assert "userAuthenticationService.setServiceImplementation" in config
    assert "getAuthorizationHeader: () => ({ Authorization: 'Bearer ' + ENCLAVE_TOKEN })" in config
    assert 'const ENCLAVE_TOKEN = "tok\'en\\"</script>";' in config
    assert "requestOptions:" not in config
    assert '"requestOptions"' not in config
    with pytest.raises(ValueError, match="--portal"):
        ohif.app_config(portal="127.0.0.1:8000", tenant="north", token="t")


def test_the_server_answers_routes_with_index_and_serves_only_the_build(tmp_path):
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<html>OHIF index</html>")
    (dist / "app.bundle.js").write_text("console.log('bundle')")
    (dist / "app-config.js").write_text("window.config = {name: 'published default'};")
    (tmp_path / "secret.txt").write_text("outside the build")
    httpd = ohif.server(dist=dist, config="window.config = {name: 'enclave'};")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"

    def get(path: str) -> tuple[int, str, str]:
        try:
            with urllib.request.urlopen(base + path, timeout=10) as answer:  # noqa: S310
                return answer.status, answer.headers.get("Content-Type", ""), answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, "", ""

    try:
        assert get("/app-config.js") == (200, "text/javascript; charset=utf-8", "window.config = {name: 'enclave'};")
        status, content_type, body = get("/app.bundle.js")
        assert (status, content_type.split(";")[0], body) == (200, "text/javascript", "console.log('bundle')")
        assert get("/viewer?StudyInstanceUIDs=1.2.3")[2] == "<html>OHIF index</html>"
        assert get("/")[2] == "<html>OHIF index</html>"
        assert "outside the build" not in get("/../secret.txt")[2]
        assert "outside the build" not in get("/%2e%2e/secret.txt")[2]
    finally:
        httpd.shutdown()
        httpd.server_close()
