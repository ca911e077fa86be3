"""The error pages (403, 404, 500) in the site's look, with its navigation, when DEBUG is off.

Django's own handlers render 403 and 404 with the request; its 500 handler renders without one, so the page would
lose the signed-in navigation. Ours renders with the request and, when that fails too (the database is what broke,
say), without it: a 500 page must never raise.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse, HttpResponseServerError
from django.template import loader
from django.views.decorators.csrf import requires_csrf_token

logger = logging.getLogger(__name__)


@requires_csrf_token
def server_error(request: HttpRequest) -> HttpResponse:
    template = loader.get_template("500.html")
    try:
        return HttpResponseServerError(template.render({}, request))
    except Exception as exc:  # the request's own context (session, user) may be what failed
        logger.warning("500 page rendered without the request's context (%s)", type(exc).__name__)
        return HttpResponseServerError(template.render({}))
