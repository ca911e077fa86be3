"""The study list's search goes through the one matcher: its free text, modality and dates are matcher keys."""

from __future__ import annotations

from datetime import date

import pytest

from studies.selectors import study_list
from tenants.scoping import tenant_scope
from tests.studies.dicomweb.reading import some_studies

pytestmark = pytest.mark.django_db(transaction=True)  # the pipeline runs on commit


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"text": "sm"}, {"P-SMITH", "P-SMYTH"}),  # a name anywhere, case-insensitive
        ({"text": "p-smith"}, {"P-SMITH"}),  # a patient id exactly, case-insensitive
        ({"text": "a300"}, {"P-JONES"}),  # an accession number exactly, case-insensitive
        ({"text": "S?ITH"}, {"P-SMITH"}),  # the matcher's wildcards
        ({"text": "%"}, set()),  # SQL's wildcards are literal
        ({"text": "_"}, set()),
        ({"modality": "MR"}, {"P-SMYTH"}),
        ({"date_from": date(1, 1, 1), "date_to": date(2024, 1, 10)}, {"P-SMITH"}),
        ({"date_from": date(2024, 1, 10), "date_to": date(9999, 12, 31)}, {"P-SMYTH", "P-JONES"}),
    ],
)
def test_study_list_search(tenant_a, radiologist_a, filters, expected):
    some_studies(tenant_a)

    with tenant_scope(tenant_a):
        found = {study.patient.patient_id for study in study_list(actor=radiologist_a, **filters)}

    assert found == expected
