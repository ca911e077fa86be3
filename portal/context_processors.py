from typing import Any

from django.conf import settings
from django.http import HttpRequest


def portal(request: HttpRequest) -> dict[str, Any]:
    return {
        "ENCLAVE_ENV": settings.ENCLAVE_ENV,
        "SESSION_IDLE_SECONDS": int(settings.SESSION_IDLE_TIMEOUT.total_seconds()),
    }
