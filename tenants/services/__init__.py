"""Writes about tenants, members, invitations, sessions, API tokens and e-mail, one module each. The public names
are re-exported here, so callers import `tenants.services` (or `from tenants.services import ...`)."""

from tenants.services.invitations import (
    INVITATION_INVALID,
    invitation_accept,
    invitation_accept_new_account,
    invitation_accepted_register,
    invitation_create,
    invitation_create_for_share,
    invitation_revoke,
    invitation_revoke_for_share,
)
from tenants.services.links import invitation_link, set_password_link
from tenants.services.mail import mail_deliver, mail_outbox_sweep, mail_queue
from tenants.services.memberships import (
    account_unlock,
    membership_change_role,
    membership_end,
    membership_end_hook_register,
    membership_grant_by_operator,
    membership_set_end,
    memberships_end_due,
    user_deactivate,
)
from tenants.services.networks import network_require, trusted_network_add, trusted_network_remove
from tenants.services.recertification import (
    recertification_close_due,
    recertification_current,
    recertification_decide,
    recertification_item_get,
    recertification_items,
    recertification_last_closed,
    recertification_open,
    recertification_remind,
)
from tenants.services.sessions import session_register, sessions_end_for_user
from tenants.services.tenants import tenant_create, tenant_export_policy_set, tenant_ingest_quota_set
from tenants.services.tokens import API_TOKEN_PREFIX, api_token_create, api_token_revoke, api_token_touch

__all__ = [
    "API_TOKEN_PREFIX",
    "INVITATION_INVALID",
    "account_unlock",
    "api_token_create",
    "api_token_revoke",
    "api_token_touch",
    "invitation_accept",
    "invitation_accept_new_account",
    "invitation_accepted_register",
    "invitation_create",
    "invitation_create_for_share",
    "invitation_link",
    "invitation_revoke",
    "invitation_revoke_for_share",
    "mail_deliver",
    "mail_outbox_sweep",
    "mail_queue",
    "membership_change_role",
    "membership_end",
    "membership_end_hook_register",
    "membership_grant_by_operator",
    "membership_set_end",
    "memberships_end_due",
    "network_require",
    "recertification_close_due",
    "recertification_current",
    "recertification_decide",
    "recertification_item_get",
    "recertification_items",
    "recertification_last_closed",
    "recertification_open",
    "recertification_remind",
    "session_register",
    "sessions_end_for_user",
    "set_password_link",
    "tenant_create",
    "tenant_export_policy_set",
    "tenant_ingest_quota_set",
    "trusted_network_add",
    "trusted_network_remove",
    "user_deactivate",
]
