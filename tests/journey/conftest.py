"""The journey runs against `make run` itself (scripts/run.sh), started as a user starts it: embedded PostgreSQL and
Valkey, gunicorn, Celery worker and beat, the DICOM listener, on free ports, with a var folder of its own."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from django_otp.oath import TOTP

ROOT = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 240
STOP_SECONDS = 90
# What the test process has that a user's shell would not: its own database, broker, settings and test switches.
NOT_A_USERS_ENVIRONMENT = (
    "DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "ENCLAVE_TEST_STORE_ROOT", "CELERY_TASK_ALWAYS_EAGER",
    "CELERY_TASK_DEFAULT_QUEUE", "CELERY_SINGLE_QUEUE", "CELERY_TEST_TRANSPORT_OPTIONS", "DJANGO_ALLOW_ASYNC_UNSAFE",
    "PYTEST_XDIST_WORKER", "PYTEST_XDIST_TESTRUNUID", "PYTEST_CURRENT_TEST",
)  # fmt: skip


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Enclave:
    """One `make run` and what it printed: ports, the demo password and each demo user's TOTP secret."""

    process: subprocess.Popen[bytes]
    log: Path
    var: Path
    env: dict[str, str]
    web_port: int
    dicom_port: int
    ohif_port: int  # where the OHIF viewer is served beside it: its origin is in DICOMWEB_CORS_ORIGINS
    password: str = ""
    secrets: dict[str, str] = field(default_factory=dict)
    last_step: dict[str, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def totp(self, username: str) -> str:
        """A code the server has not seen yet for this person (django-otp refuses a code used before), within the
        tolerance of one step; waits for the next step when both are spent."""
        key = __import__("base64").b32decode(self.secrets[username] + "=" * (-len(self.secrets[username]) % 8))
        while True:
            now = int(time.time()) // 30
            with self.lock:
                last = self.last_step.get(username, -1)
                for step in (now, now + 1):
                    if step > last:
                        self.last_step[username] = step
                        totp = TOTP(key, step=30, digits=6)
                        totp.time = step * 30
                        return f"{totp.token():06d}"
            time.sleep(max(0.2, (now + 1) * 30 - time.time()))

    def manage(self, *args: str) -> str:
        """`manage.py` against this instance (its var folder finds the embedded stack), as an operator runs it."""
        done = subprocess.run(
            [str(ROOT / ".venv/bin/python"), "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def http(self) -> requests.Session:
        """A requests session that records every 5xx it meets."""
        session = requests.Session()

        def check(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            if response.status_code >= 500:
                self.server_errors.append(f"{response.status_code} {response.request.method} {response.url}")

        session.hooks["response"].append(check)
        return session

    def stop(self) -> int:
        """Ctrl-C, as in a terminal: SIGINT to the whole process group."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
                subprocess.run([str(ROOT / ".venv/bin/python"), "scripts/stack.py", "--dir", str(self.var), "stop"],
                               cwd=ROOT, check=False)  # fmt: skip
                raise
        return self.process.returncode


def _parse_banner(enclave: Enclave, text: str) -> None:
    enclave.password = re.search(r"Every demo user's password: (\S+)", text).group(1)
    for username, secret in re.findall(r"^\s+((?:north|south)-[a-z]+|ops)\s+([A-Z2-7]{16,})\s*$", text, re.M):
        enclave.secrets[username] = secret


@pytest.fixture(scope="session")
def enclave() -> Iterator[Enclave]:
    # A short path of its own: PostgreSQL's socket lives in var/pg (a socket path has at most 107 bytes), and the
    # embedded server's system user must be able to traverse every parent folder.
    folder = Path(tempfile.mkdtemp(prefix="enclave-journey-"))
    var = folder / "var"
    env = {k: v for k, v in os.environ.items() if k not in NOT_A_USERS_ENVIRONMENT}
    web_port, dicom_port, ohif_port = free_port(), free_port(), free_port()
    env.update({
        "ENCLAVE_VAR_DIR": str(var), "WEB_PORT": str(web_port), "DICOM_PORT": str(dicom_port),
        # As the README has it: the OHIF viewer's origin allowed for DICOMweb (CORS) when `make run` starts.
        "DICOMWEB_CORS_ORIGINS": f"http://127.0.0.1:{ohif_port}",
    })  # fmt: skip
    log = folder / "make-run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", "scripts/run.sh"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    instance = Enclave(
        process=process, log=log, var=var, env=env, web_port=web_port, dicom_port=dicom_port, ohif_port=ohif_port
    )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while "Ctrl-C stops everything" not in instance.output():
            if process.poll() is not None:
                pytest.fail(f"make run exited with {process.returncode}:\n{instance.output()[-6000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"make run did not serve within {STARTUP_SECONDS} s:\n{instance.output()[-6000:]}")
            time.sleep(0.25)
        _parse_banner(instance, instance.output())
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class People:
    """One signed-in browser context per demo user, made on first use and kept for the session."""

    enclave: Enclave
    browser: Any
    pages: dict[str, Any] = field(default_factory=dict)

    def page(self, username: str) -> Any:
        if username not in self.pages:
            self.pages[username] = self.sign_in(username)
        return self.pages[username]

    def new_page(self) -> Any:
        context = self.browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(20_000)

        def check(response: Any) -> None:
            if response.status >= 500:
                self.enclave.server_errors.append(f"{response.status} {response.request.method} {response.url}")

        page.on("response", check)
        return page

    def sign_in(self, username: str) -> Any:
        page = self.new_page()
        main = page.locator("main")
        page.goto(f"{self.enclave.url}/accounts/login/")
        main.locator("input[name=username]").fill(username)
        main.locator("input[name=password]").fill(self.enclave.password)
        main.locator("button[type=submit]").click()
        page.wait_for_url(re.compile(r"/accounts/mfa/"))
        main.locator("input[name=otp_token]").fill(self.enclave.totp(username))
        main.locator("button[type=submit]").click()
        page.wait_for_url(lambda url: "/accounts/" not in url)
        return page

    def http(self, username: str) -> requests.Session:
        """A requests session with this person's browser cookies (a verified session)."""
        session = self.enclave.http()
        for cookie in self.page(username).context.cookies():
            session.cookies.set(cookie["name"], cookie["value"], domain=cookie["domain"], path=cookie["path"])
        return session


@pytest.fixture(scope="session")
def people(enclave: Enclave, chromium_browser: Any) -> Iterator[People]:
    crowd = People(enclave=enclave, browser=chromium_browser)
    yield crowd
    for page in crowd.pages.values():
        page.context.close()
