"""Writes of the device registry (shared/STYLE.md §4), by feature:
- registry: registration and requests, approval by a second person, life cycle, custody, grants, policy;
- tokens: enrolment codes, device-bound tokens, attestation, the check of each request made with them;
- wipes: lost devices, wipe orders, sanitization records, retirement;
- media: studies written to portable media (a disclosure).
"""

from devices.services.media import media_export_record
from devices.services.registry import (
    device_approve,
    device_certificate_pin,
    device_custodian_change,
    device_grants_set,
    device_policy_get,
    device_policy_update,
    device_register,
    device_register_approved_by_operator,
    device_request,
    device_revoke,
    device_suspend,
    tokens_revoke,
)
from devices.services.tokens import (
    AttestationRefused,
    device_credential_authenticate,
    device_enrol,
    device_gate,
    device_token_refresh,
    enrolment_code_issue,
)
from devices.services.wipes import (
    device_report_lost,
    device_retire,
    device_sanitization_record,
    device_wipe_confirm,
    device_wipe_order,
    devices_of_departed_custodian,
    wipe_orders_overdue_alert,
)

__all__ = [
    "AttestationRefused",
    "device_approve",
    "device_certificate_pin",
    "device_credential_authenticate",
    "device_custodian_change",
    "device_enrol",
    "device_gate",
    "device_grants_set",
    "device_policy_get",
    "device_policy_update",
    "device_register",
    "device_register_approved_by_operator",
    "device_report_lost",
    "device_request",
    "device_retire",
    "device_revoke",
    "device_sanitization_record",
    "device_suspend",
    "device_token_refresh",
    "device_wipe_confirm",
    "device_wipe_order",
    "devices_of_departed_custodian",
    "enrolment_code_issue",
    "media_export_record",
    "tokens_revoke",
    "wipe_orders_overdue_alert",
]
