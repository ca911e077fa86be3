"""CSV import from a learning system, row by row, and the matrix export."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError

from audit.events import EventType
from tenants.models import Role
from tenants.scoping import tenant_scope
from tests.training.helpers import last_event, record, today
from training import services
from training.models import Completion


@pytest.fixture
def staff(tenant_a, make_member):
    return [make_member(tenant_a, Role.TECHNOLOGIST, f"tech-{n:03d}") for n in range(10)]


def csv_of(rows, header=("username", "course", "completed_on", "expires_on")) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def test_a_hundred_rows_with_one_bad_imports_ninety_nine_and_names_the_row(tenant_a, compliance_a, staff, hipaa):
    done = (today() - timedelta(days=30)).isoformat()
    rows = [(staff[n % 10].username, "HIPAA Security Awareness", done, "") for n in range(100)]
    rows[41] = ("nobody-here", "HIPAA Security Awareness", done, "")
    with tenant_scope(tenant_a):
        result = services.completions_import(actor=compliance_a, data=csv_of(rows))
        assert Completion.objects.filter(source="imported", status="approved").count() == 99
    assert result.imported == 99
    assert result.errors == [{"row": 43, "reason": "No current member “nobody-here”."}]
    event = last_event(tenant_a, EventType.TRAINING_COMPLETIONS_IMPORTED)
    assert (event.extra["imported"], event.extra["rejected"]) == (99, 1)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (("tech-000", "No Such Course", "2026-01-01", ""), "No course"),
        (("tech-000", "HIPAA Security Awareness", "01/02/2026", ""), "not a date"),
        (("tech-000", "HIPAA Security Awareness", "2026-01-01", "2025-01-01"), "after the completion"),
        (("tech-000", "HIPAA Security Awareness", "2999-01-01", ""), "future"),
    ],
)
def test_each_bad_row_is_reported_with_its_reason(tenant_a, compliance_a, staff, hipaa, row, reason):
    with tenant_scope(tenant_a):
        result = services.completions_import(actor=compliance_a, data=csv_of([row]))
    assert result.imported == 0
    assert result.errors[0]["row"] == 2
    assert reason in result.errors[0]["reason"]


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.4 not a csv \x00\x01\x02",
        "\u00e9t\u00e9".encode("latin-1") + b",x\n",
        b"name,course,date\nx,y,z\n",
        b"username,course,completed_on,password\nx,y,2026-01-01,z\n",
        b"",
    ],
)
def test_a_file_that_is_not_csv_or_has_other_columns_changes_nothing(tenant_a, compliance_a, staff, hipaa, data):
    with tenant_scope(tenant_a):
        with pytest.raises(ValidationError) as exc:
            services.completions_import(actor=compliance_a, data=data)
        assert "file" in exc.value.message_dict
        assert not Completion.objects.exists()


def test_the_matrix_exports_as_csv(tenant_a, compliance_a, radiologist_a, hipaa_required):
    record(tenant_a, compliance_a, radiologist_a, hipaa_required.course, expires_on=today() + timedelta(days=10))
    with tenant_scope(tenant_a):
        body = services.training_matrix_export(actor=compliance_a)
    rows = list(csv.DictReader(io.StringIO(body)))
    assert rows == [{"username": "north-radiologist", "role": "radiologist", "course": "HIPAA Security Awareness",
                     "state": "expiring", "expires_on": (today() + timedelta(days=10)).isoformat(), "blocking": "yes",
                     "lapses_on": (today() + timedelta(days=10)).isoformat()}]  # fmt: skip
    assert last_event(tenant_a, EventType.TRAINING_MATRIX_EXPORTED).extra["rows"] == 1


def test_a_course_title_that_looks_like_a_formula_is_exported_as_text(tenant_a, compliance_a, radiologist_a):
    with tenant_scope(tenant_a):
        course = services.course_create(actor=compliance_a, title='=HYPERLINK("http://evil")', provider="x",
                                        validity_months=12)  # fmt: skip
        services.requirement_set(actor=compliance_a, course=course, role=Role.RADIOLOGIST)
        body = services.training_matrix_export(actor=compliance_a)
    (row,) = list(csv.DictReader(io.StringIO(body)))
    assert row["course"] == '\'=HYPERLINK("http://evil")'
