"""Paging for every list API (limit/offset), and how the OpenAPI schema describes a page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class Pagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500


PAGE_PARAMETERS = [
    OpenApiParameter("limit", OpenApiTypes.INT, description=f"Rows per page (at most {Pagination.max_limit})."),
    OpenApiParameter("offset", OpenApiTypes.INT, description="Rows to skip."),
]


def page_of(serializer: type[serializers.Serializer], name: str) -> serializers.Serializer:
    """The schema of one page of a list (what `Pagination.get_paginated_response` returns)."""
    return inline_serializer(
        name=name,
        fields={
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer(many=True),
        },
    )


def paginated(
    api: APIView,
    request: Request,
    rows: Any,
    serializer: type[serializers.Serializer],
    shown: Callable[[list[Any]], None] | None = None,
) -> Response:
    """One page of `rows`, serialized, in the paginated response shape. `shown`, when given, is called with the
    page's rows before anything of them is serialized (a read of patient data is recorded before it leaves; if
    it raises, nothing of the page is answered)."""
    paginator = Pagination()
    page: list[Any] | None = paginator.paginate_queryset(rows, request, view=api)
    if shown is not None:
        shown(list(page or []))
    return paginator.get_paginated_response(serializer(page, many=True).data)
