"""The locust users of `bench/load.py`: people on the browser pages and viewers on the API paths.

Run by bench/load.py (`locust -f bench/locust_portal.py --headless ...`), never on its own: the plan it reads
(LOAD_PLAN, a JSON file) holds the tenant, one signed-in session and one API token per user, and the studies and
series to ask for, all made by bench/load.py through the real services. This file imports nothing of Django.

Each simulated person waits 0.5-1.5 s between requests (a person reading a page, a viewer between requests).
Requests are grouped by path template (`name=`), so the figures are per path, not per study.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
from typing import Any

from locust import HttpUser, between, task

with open(os.environ["LOAD_PLAN"], encoding="utf-8") as _plan_file:
    PLAN: dict[str, Any] = json.load(_plan_file)

_next_person = itertools.count()


def _get(user: HttpUser, path: str, *, name: str, **kwargs: Any) -> None:
    """GET that counts anything but a 200 as an error, a redirect too (to the sign-in page: the session did not
    hold), so that no error passes as a fast answer."""
    with user.client.get(path, name=name, allow_redirects=False, catch_response=True, **kwargs) as response:
        if response.status_code == 0:  # no answer: the connection failed (refused, reset, closed under us)
            response.failure(f"no answer: {response.error!r}")
        elif response.status_code != 200:
            response.failure(f"{response.status_code} {response.headers.get('Location', '')}")


_lock = threading.Lock()


def _person() -> dict[str, str]:
    """Each simulated user is a person of their own (their own session and token), as 50 people are."""
    with _lock:
        index = next(_next_person)
    return PLAN["people"][index % len(PLAN["people"])]


class BrowserUser(HttpUser):
    """A member on the portal's pages, signed in (password and TOTP done: a verified session)."""

    weight = 1
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        person = _person()
        self.client.cookies.set(PLAN["session_cookie"], person["session"])
        self.slug = PLAN["slug"]

    @task(2)
    def home(self) -> None:
        _get(self, f"/t/{self.slug}/", name="page: tenant home")

    @task(4)
    def study_list(self) -> None:
        _get(self, f"/t/{self.slug}/studies/", name="page: study list")

    @task(2)
    def study_search(self) -> None:
        patient = random.choice(PLAN["patient_ids"])
        _get(self, f"/t/{self.slug}/studies/", params={"text": patient}, name="page: study search (patient id)")

    @task(4)
    def study_page(self) -> None:
        study = random.choice(PLAN["study_public_ids"])
        _get(self, f"/t/{self.slug}/studies/{study}/", name="page: study")


class ApiUser(HttpUser):
    """A viewer (OHIF, dicomweb-client) on DICOMweb with a bearer token, over one kept-alive connection."""

    weight = 1
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        person = _person()
        self.client.headers["Authorization"] = f"Bearer {person['token']}"
        self.base = f"/dicomweb/{PLAN['slug']}"

    @task(3)
    def studies_recent(self) -> None:
        _get(self, f"{self.base}/studies", params={"limit": "25"}, name="api: QIDO studies, limit 25")

    @task(3)
    def studies_by_patient(self) -> None:
        patient = random.choice(PLAN["patient_ids"])
        _get(self, f"{self.base}/studies", params={"PatientID": patient}, name="api: QIDO studies by PatientID")

    @task(3)
    def series_of_study(self) -> None:
        study = random.choice(PLAN["study_uids"])
        _get(self, f"{self.base}/studies/{study}/series", name="api: QIDO series of a study")

    @task(2)
    def instances_of_series(self) -> None:
        study, series = random.choice(PLAN["series"])
        _get(self, f"{self.base}/studies/{study}/series/{series}/instances", name="api: QIDO instances of a series")

    @task(1)
    def instance_retrieve(self) -> None:
        study, series, instance = random.choice(PLAN["real_instances"])
        _get(
            self,
            f"{self.base}/studies/{study}/series/{series}/instances/{instance}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
            name="api: WADO-RS one instance",
        )
