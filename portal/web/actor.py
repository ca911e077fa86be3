"""Who django-auditlog names as the actor of a change made while a view runs.

django-auditlog's middleware opens a context for every request (the session's user, the client address), but an
API token is read inside the view (DRF), so the views name the person again once they know them. django-auditlog's
own `set_actor` does that by connecting one more `pre_save` receiver, and when it is nested in the middleware's it
leaves the context variable pointing at its own (already disconnected) context: the middleware then disconnects
that one again and its own receiver stays connected for ever. Each request so added one receiver to every web
process, and every later connect and disconnect scanned them all (the fixed cost of a request grew with the
requests served). `actor_set` names the person in the context that is already open instead, and puts it back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from auditlog.context import auditlog_value, set_actor
from django.db.models.signals import pre_save

NAMED = ("actor", "remote_addr")


def _connected(context: dict[str, Any]) -> bool:
    """Whether the receiver of this django-auditlog context is still connected (a context whose `set_actor` has
    ended stays in the context variable: django-auditlog never resets it)."""
    duid = context.get("signal_duid")
    return duid is not None and any(key[0] == duid for key, *_ in pre_save.receivers)


@contextmanager
def actor_set(actor: Any, *, remote_addr: str | None) -> Iterator[None]:
    """`actor` and `remote_addr` on the django-auditlog entries written inside the block."""
    try:
        context: dict[str, Any] | None = auditlog_value.get()
    except LookupError:
        context = None
    if context is not None and _connected(context):
        saved = {key: context.get(key) for key in NAMED}
        context["actor"], context["remote_addr"] = actor, remote_addr  # a dict, not a row: nothing is written
        try:
            yield
        finally:
            for key, value in saved.items():
                context[key] = value
        return
    try:
        with set_actor(actor, remote_addr=remote_addr):
            yield
    finally:
        if context is not None:  # the enclosing context is current again, so that it disconnects its own receiver
            auditlog_value.set(context)
