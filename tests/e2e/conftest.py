"""Debian's Chromium, driven by Playwright against the live test server. Never a downloaded browser."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

_RUNNING: dict[str, Any] = {}


def _chromium() -> Any:
    """One Playwright and one Chromium per test process, whichever directory's tests ask first: Playwright's sync
    API cannot be started twice in one thread, and tests/interop/ uses these fixtures too."""
    if "browser" not in _RUNNING:
        from playwright.sync_api import sync_playwright

        if not Path(CHROMIUM).exists():
            pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/system-deps.sh does).")
        playwright = sync_playwright().start()
        _RUNNING["playwright"] = playwright
        _RUNNING["browser"] = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
            ],
        )  # fmt: skip
    return _RUNNING["browser"]


def _chromium_stop() -> None:
    browser, playwright = _RUNNING.pop("browser", None), _RUNNING.pop("playwright", None)
    if browser is not None:
        browser.close()
    if playwright is not None:
        playwright.stop()


@pytest.fixture(scope="session")
def browser(django_db_setup) -> Iterator[object]:
    """One Chromium for the session. Playwright's sync API keeps an event loop running in the test thread from
    here on, so Django's guard against ORM calls from async code must be off for the rest of this process
    (shared/DEPENDENCIES.md §6.5): the calls the tests make are synchronous and safe. Subprocesses the tests start
    get an environment without the flag."""
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield _chromium()
    _chromium_stop()


@pytest.fixture
def page(browser, request) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
