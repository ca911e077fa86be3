"""The portal's URLs plus one view that fails, for the 500 page test."""

from django.http import HttpRequest, HttpResponse
from django.urls import path

from portal.urls import handler500
from portal.urls import urlpatterns as portal_urlpatterns


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the secret detail")


urlpatterns = [path("boom/", boom), *portal_urlpatterns]
__all__ = ["handler500", "urlpatterns"]
