"""Interoperability with outside viewers: the portal served on a real port, the viewer's build served beside it,
and Debian's Chromium (the e2e fixtures) driving the viewer."""

from __future__ import annotations

from tests.e2e.conftest import browser, page, pytest_runtest_makereport  # noqa: F401
