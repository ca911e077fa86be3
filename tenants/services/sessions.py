"""Browser sessions: which ones a person holds, so that deactivation can end them at once."""

from __future__ import annotations

from django.contrib.sessions.backends.db import SessionStore

from tenants.models import User, UserSession


def session_register(*, user: User, session_key: str) -> None:
    """Remember that `session_key` belongs to `user` (called at sign-in)."""
    UserSession.objects.update_or_create(session_key=session_key, defaults={"user": user})


def sessions_end_for_user(*, user: User) -> int:
    """Delete every browser session of `user` from the session store. Returns how many were ended.

    Only for the end of the whole account (deactivation). Ending one membership does not call this: a session
    is not bound to a tenant (the tenant comes from the URL and the membership is checked on every request), so
    access to that tenant ends with the membership while the person's other tenants keep working."""
    ended = 0
    for record in UserSession.objects.filter(user=user):
        store = SessionStore(session_key=record.session_key)
        if store.exists(record.session_key):
            ended += 1
        store.delete(record.session_key)
        record.delete()
    return ended
