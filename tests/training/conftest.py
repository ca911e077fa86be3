"""Fixtures of the training tests: tenant A has adopted HIPAA Security Awareness and requires it of radiologists
(blocking, no grace)."""

from __future__ import annotations

import pytest

from tests.training.helpers import adopt, require


@pytest.fixture
def hipaa(tenant_a, compliance_a):
    return adopt(tenant_a, compliance_a)


@pytest.fixture
def hipaa_required(tenant_a, compliance_a, hipaa):
    return require(tenant_a, compliance_a, hipaa)
