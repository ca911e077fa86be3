"""Who django-auditlog names as the actor of a change made while a view or a task runs.

django-auditlog's middleware opens a context for every browser request (the session's user, the client address),
but an API token is read inside the view (DRF), so the views name the person again once they know them.
django-auditlog's own `set_actor` does that by connecting one more `pre_save` receiver and disconnecting it at the
end (each a scan of every `pre_save` receiver, some 70, under a lock, and the signal's cache of receivers emptied),
and when it is nested in the middleware's it leaves the context variable pointing at its own (already
disconnected) context: the middleware then disconnected that one again and its own receiver stayed connected for
ever (the fixed cost of a request grew with the requests served).

`actor_set` names the person in the middleware's context when one is open, and puts it back; otherwise it opens a
context of its own for the block, served by the one receiver `receiver_connect` connects when the process starts:
django-auditlog's own receiver function (`_set_extra_data`: the actor unless the entry names one, their e-mail,
the address), bound to this module's dispatch id, so it fills an entry exactly as the receiver `set_actor` would
connect, and ignores every other context. Nothing is connected or disconnected per request or per task.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from auditlog import get_logentry_model
from auditlog.context import _set_extra_data, auditlog_value
from django.db.models.signals import pre_save

NAMED = ("actor", "remote_addr")
# The dispatch id of the one receiver of `actor_set`'s own contexts (django-auditlog's are ("set_actor", time)).
DUID = ("portal.web.actor", 0)


def receiver_connect() -> None:
    """Connect the receiver of `actor_set`'s contexts (PortalConfig.ready; connecting it again changes nothing)."""
    pre_save.connect(
        partial(_set_extra_data, signal_duid=DUID), sender=get_logentry_model(), dispatch_uid=DUID, weak=False
    )


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
    if context is not None and context.get("signal_duid") != DUID and _connected(context):
        saved = {key: context.get(key) for key in NAMED}
        context["actor"], context["remote_addr"] = actor, remote_addr  # a dict, not a row: nothing is written
        try:
            yield
        finally:
            for key, value in saved.items():
                context[key] = value
        return
    # The keys `set_actor` puts in its context, with this module's dispatch id: the receiver connected at start
    # serves it. The variable is put back as it was (an enclosing context, an ended one, or none) whatever the
    # block set in it.
    token = auditlog_value.set({"actor": actor, "remote_addr": remote_addr, "remote_port": None, "signal_duid": DUID})
    try:
        yield
    finally:
        auditlog_value.reset(token)
