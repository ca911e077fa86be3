"""The one table of audit events: each business verb, with its DICOM PS3.15 A.5 codes.

Verbs are grouped by app in numbered ranges (as Zulip groups its realm audit log types); nothing else invents
codes. DICOM codes come from CID 400 (Audit Event ID) and CID 401-403 (Event Type Codes).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


@dataclass(frozen=True)
class Code:
    value: str
    display: str


# CID 400 Audit Event IDs
APPLICATION_ACTIVITY = Code("110100", "Application Activity")
AUDIT_LOG_USED = Code("110101", "Audit Log Used")
INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
STUDY_DELETED_ID = Code("110105", "DICOM Study Deleted")
EXPORT = Code("110106", "Export")
QUERY = Code("110112", "Query")
SECURITY_ALERT = Code("110113", "Security Alert")
USER_AUTHENTICATION = Code("110114", "User Authentication")

# CID 401-403 Event Type Codes
LOGIN = Code("110122", "Login")
LOGOUT = Code("110123", "Logout")
NODE_AUTHENTICATION = Code("110126", "Node Authentication")
EMERGENCY_OVERRIDE_STARTED = Code("110127", "Emergency Override Started")
NETWORK_CONFIGURATION = Code("110128", "Network Configuration")
SECURITY_CONFIGURATION = Code("110129", "Security Configuration")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "Use of Restricted Function")
OBJECT_SECURITY_ATTRIBUTES_CHANGED = Code("110135", "Object Security Attributes Changed")
SECURITY_ROLES_CHANGED = Code("110136", "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = Code("110137", "User Security Attributes Changed")
EMERGENCY_OVERRIDE_STOPPED = Code("110138", "Emergency Override Stopped")


class Action:
    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome:
    """EventOutcomeIndicator."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12

    LABELS = {0: "Success", 4: "Minor failure", 8: "Serious failure", 12: "Major failure"}


@dataclass(frozen=True)
class EventSpec:
    event_id: Code
    event_type: Code | None
    action: str
    description: str


class EventType(IntEnum):
    # 100-199: accounts and sessions
    LOGIN_SUCCEEDED = 101
    LOGIN_FAILED = 102
    LOGOUT = 103
    SESSION_EXPIRED = 104
    MFA_ENROLLED = 105
    MFA_FAILED = 106
    LOCKED_OUT = 107
    # 200-299: tenants, members, tokens
    TENANT_CREATED = 201
    MEMBER_ADDED = 202
    MEMBER_ROLE_CHANGED = 203
    MEMBER_END_DATE_SET = 204
    MEMBERSHIP_ENDED = 205
    USER_DEACTIVATED = 206
    API_TOKEN_CREATED = 207
    API_TOKEN_REVOKED = 208
    ACCESS_DENIED = 209
    INVITATION_SENT = 210
    INVITATION_ACCEPTED = 211
    INVITATION_REVOKED = 212
    ACCOUNT_UNLOCKED = 213
    TRUSTED_NETWORK_ADDED = 214
    TRUSTED_NETWORK_REMOVED = 215
    NETWORK_REFUSED = 216
    RATE_LIMITED = 217
    TENANT_QUOTA_SET = 218
    OBJECT_NOT_FOUND = 219
    CLOCK_OFFSET_EXCEEDED = 225
    DEVICE_CERTIFICATE_PINNED = 226
    # 300-399: the audit trail itself
    AUDIT_LOG_USED = 301
    SECURITY_ALERT_HANDLED = 302
    SECURITY_RULE_MATCHED = 303
    AUDIT_VERIFIED = 304
    INCIDENT_OPENED = 310
    INCIDENT_SCOPED = 311
    INCIDENT_DECISION_RECORDED = 312
    INCIDENT_UPDATED = 313
    INCIDENT_CLOSED = 314
    INCIDENT_REMINDER_SENT = 315
    AUDIT_WORM_WRITTEN = 320
    AUDIT_WORM_VERIFIED = 321
    CACHE_UNAVAILABLE = 322
    RECERTIFICATION_OPENED = 323
    RECERTIFICATION_DECIDED = 324
    RECERTIFICATION_CLOSED = 325
    RECERTIFICATION_REMINDER_SENT = 326
    # 400-499: devices
    DEVICE_REGISTERED = 401
    DEVICE_APPROVED = 402
    ASSOCIATION_REJECTED = 403
    DEVICE_REVOKED = 404
    DEVICE_SUSPENDED = 405
    DEVICE_REINSTATED = 406
    DEVICE_REPORTED_LOST = 407
    DEVICE_WIPE_ORDERED = 408
    DEVICE_WIPE_CONFIRMED = 409
    DEVICE_SANITIZED = 410
    DEVICE_RETIRED = 411
    DEVICE_CUSTODY_CHANGED = 412
    DEVICE_GRANTS_CHANGED = 413
    DEVICE_POLICY_CHANGED = 414
    DEVICE_ENROLMENT_CODE_ISSUED = 415
    DEVICE_ENROLLED = 416
    DEVICE_ATTESTED = 417
    DEVICE_TOKEN_REFUSED = 418
    DEVICE_TOKENS_REVOKED = 419
    DEVICE_MEDIA_EXPORTED = 420
    # 500-599: studies
    INSTANCES_STORED = 501
    INGEST_REJECTED = 502
    MALWARE_DETECTED = 503
    INGEST_CONFLICT = 504
    STUDIES_QUERIED = 505
    INSTANCES_ACCESSED = 506
    INSTANCES_RETRIEVED = 507
    INSTANCES_MOVED = 508
    STUDY_SHARED = 509
    SHARE_REVOKED = 510
    BREAK_GLASS_STARTED = 511
    BREAK_GLASS_ENDED = 512
    BREAK_GLASS_REVIEWED = 513
    STUDY_EXPORTED = 514
    DISCLOSURE_EXPORTED = 515
    RETENTION_POLICY_SET = 516
    RETENTION_PROPOSED = 517
    RETENTION_APPROVED = 518
    RETENTION_REJECTED = 519
    STUDY_DELETED = 520
    LEGAL_HOLD_PLACED = 521
    LEGAL_HOLD_LIFTED = 522
    # 585-589: accounting of disclosures (HIPAA 164.528(a)(2)): a disclosure withheld at an agency's request
    DISCLOSURE_ACCOUNTING_SUSPENDED = 585
    TENANT_EXPORT_POLICY_SET = 586
    # 540-549: blob fixity, replication and restore (studies.services.fixity)
    BLOB_FIXITY_FAILED = 540
    BLOB_REPAIRED = 541
    BLOB_UNAVAILABLE = 542
    BLOBS_REPLICATED = 543
    BLOB_ORPHANS_REMOVED = 544
    BLOBS_RESTORED = 545
    # 530-539: database backups, restores and restore drills (platform work; the drill is also told to each tenant)
    DATABASE_BACKED_UP = 530
    DATABASE_BACKUPS_DELETED = 531
    DATABASE_RESTORED = 532
    RESTORE_DRILL_RUN = 533

    # 550-559: keys (issue 13): rotation, adoption of study keys, tenant offboarding
    TENANT_KEY_ROTATION_STARTED = 550
    TENANT_KEY_ROTATED = 551
    MASTER_KEY_ROTATED = 552
    STUDY_KEYS_ADOPTED = 553
    TENANT_OFFBOARDING_REQUESTED = 554
    TENANT_OFFBOARDING_REJECTED = 555
    TENANT_SHREDDED = 556
    TENANT_EXPORT_READ = 557
    ROTATED_KEY_FILES_REMOVED = 558
    # 600-699: training and certification
    TRAINING_COURSE_ADOPTED = 601
    TRAINING_COURSE_CREATED = 602
    TRAINING_REQUIREMENT_SET = 603
    TRAINING_REQUIREMENT_REMOVED = 604
    TRAINING_COMPLETION_RECORDED = 605
    TRAINING_COMPLETION_SUPERSEDED = 606
    TRAINING_COMPLETION_APPROVED = 607
    TRAINING_COMPLETION_REJECTED = 608
    TRAINING_COMPLETIONS_IMPORTED = 609
    TRAINING_MATRIX_EXPORTED = 610
    TRAINING_REMINDER_SENT = 611
    TRAINING_EVIDENCE_VIEWED = 612

    @property
    def spec(self) -> EventSpec:
        return EVENTS[self]

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").capitalize()


EVENTS: dict[EventType, EventSpec] = {
    EventType.LOGIN_SUCCEEDED: EventSpec(USER_AUTHENTICATION, LOGIN, Action.EXECUTE, "Signed in with password and MFA"),
    EventType.LOGIN_FAILED: EventSpec(USER_AUTHENTICATION, LOGIN, Action.EXECUTE, "Sign-in refused"),
    EventType.LOGOUT: EventSpec(USER_AUTHENTICATION, LOGOUT, Action.EXECUTE, "Signed out"),
    EventType.SESSION_EXPIRED: EventSpec(USER_AUTHENTICATION, LOGOUT, Action.EXECUTE, "Signed out automatically"),
    EventType.MFA_ENROLLED: EventSpec(
        SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, Action.UPDATE, "Enrolled an authenticator"
    ),
    EventType.MFA_FAILED: EventSpec(USER_AUTHENTICATION, LOGIN, Action.EXECUTE, "Wrong or reused MFA code"),
    EventType.LOCKED_OUT: EventSpec(
        SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, Action.EXECUTE, "Locked out after repeated failures"
    ),
    EventType.TENANT_CREATED: EventSpec(SECURITY_ALERT, SECURITY_CONFIGURATION, Action.CREATE, "Tenant created"),
    EventType.MEMBER_ADDED: EventSpec(SECURITY_ALERT, SECURITY_ROLES_CHANGED, Action.CREATE, "Member added"),
    EventType.MEMBER_ROLE_CHANGED: EventSpec(SECURITY_ALERT, SECURITY_ROLES_CHANGED, Action.UPDATE, "Role changed"),
    EventType.MEMBER_END_DATE_SET: EventSpec(
        SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, Action.UPDATE, "Membership end date set"
    ),
    EventType.MEMBERSHIP_ENDED: EventSpec(SECURITY_ALERT, SECURITY_ROLES_CHANGED, Action.DELETE, "Membership ended"),
    EventType.USER_DEACTIVATED: EventSpec(
        SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, Action.UPDATE, "User deactivated"
    ),
    EventType.API_TOKEN_CREATED: EventSpec(
        SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, Action.CREATE, "API token created"
    ),
    EventType.API_TOKEN_REVOKED: EventSpec(
        SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, Action.DELETE, "API token revoked"
    ),
    EventType.ACCESS_DENIED: EventSpec(
        SECURITY_ALERT, USE_OF_RESTRICTED_FUNCTION, Action.EXECUTE, "A request was refused"
    ),
    EventType.OBJECT_NOT_FOUND: EventSpec(
        SECURITY_ALERT, USE_OF_RESTRICTED_FUNCTION, Action.EXECUTE, "An object asked for is not there (404)"
    ),
    EventType.INVITATION_SENT: EventSpec(
        SECURITY_ALERT, SECURITY_ROLES_CHANGED, Action.CREATE, "Invitation to join sent"
    ),
    EventType.INVITATION_ACCEPTED: EventSpec(
        SECURITY_ALERT, SECURITY_ROLES_CHANGED, Action.CREATE, "Invitation accepted: member joined"
    ),
    EventType.INVITATION_REVOKED: EventSpec(
        SECURITY_ALERT, SECURITY_ROLES_CHANGED, Action.DELETE, "Invitation withdrawn"
    ),
    EventType.ACCOUNT_UNLOCKED: EventSpec(
        SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, Action.UPDATE, "Sign-in lockout lifted"
    ),
    EventType.TRUSTED_NETWORK_ADDED: EventSpec(
        SECURITY_ALERT, NETWORK_CONFIGURATION, Action.CREATE, "Trusted network added"
    ),
    EventType.TRUSTED_NETWORK_REMOVED: EventSpec(
        SECURITY_ALERT, NETWORK_CONFIGURATION, Action.DELETE, "Trusted network removed"
    ),
    EventType.NETWORK_REFUSED: EventSpec(
        SECURITY_ALERT, NODE_AUTHENTICATION, Action.EXECUTE, "A request from outside the trusted networks was refused"
    ),
    EventType.RATE_LIMITED: EventSpec(
        SECURITY_ALERT, USE_OF_RESTRICTED_FUNCTION, Action.EXECUTE, "A rate limit was reached: requests refused"
    ),
    EventType.CLOCK_OFFSET_EXCEEDED: EventSpec(
        SECURITY_ALERT, None, Action.EXECUTE, "The application's clock is off PostgreSQL's beyond the limit"
    ),
    EventType.DEVICE_CERTIFICATE_PINNED: EventSpec(
        SECURITY_ALERT, SECURITY_CONFIGURATION, Action.UPDATE, "A DICOM device's certificate fingerprint registered"
    ),
    EventType.TENANT_QUOTA_SET: EventSpec(SECURITY_ALERT, SECURITY_CONFIGURATION, Action.UPDATE, "Ingestion quota set"),
    EventType.AUDIT_LOG_USED: EventSpec(AUDIT_LOG_USED, None, Action.READ, "Audit trail read"),
    EventType.SECURITY_ALERT_HANDLED: EventSpec(
        SECURITY_ALERT, None, Action.UPDATE, "Security alert acknowledged, escalated or closed"
    ),
    EventType.AUDIT_VERIFIED: EventSpec(SECURITY_ALERT, None, Action.EXECUTE, "Audit trail verified"),
    EventType.SECURITY_RULE_MATCHED: EventSpec(
        SECURITY_ALERT, None, Action.EXECUTE, "A security rule matched the event stream"
    ),
    EventType.INCIDENT_OPENED: EventSpec(SECURITY_ALERT, None, Action.CREATE, "Security incident opened"),
    EventType.INCIDENT_SCOPED: EventSpec(AUDIT_LOG_USED, None, Action.READ, "Incident scope taken from the trail"),
    EventType.INCIDENT_DECISION_RECORDED: EventSpec(SECURITY_ALERT, None, Action.UPDATE, "Incident decision recorded"),
    EventType.INCIDENT_UPDATED: EventSpec(SECURITY_ALERT, None, Action.UPDATE, "Incident updated"),
    EventType.INCIDENT_CLOSED: EventSpec(SECURITY_ALERT, None, Action.UPDATE, "Incident closed"),
    EventType.INCIDENT_REMINDER_SENT: EventSpec(
        SECURITY_ALERT, None, Action.EXECUTE, "Incident notification deadline reminder sent"
    ),
    EventType.AUDIT_WORM_WRITTEN: EventSpec(
        SECURITY_ALERT, None, Action.CREATE, "Audit records written to the WORM store"
    ),
    EventType.AUDIT_WORM_VERIFIED: EventSpec(SECURITY_ALERT, None, Action.EXECUTE, "Audit WORM store verified"),
    EventType.CACHE_UNAVAILABLE: EventSpec(
        SECURITY_ALERT, None, Action.EXECUTE, "Rate-limit counters unreachable: limits not enforced"
    ),
    EventType.RECERTIFICATION_OPENED: EventSpec(
        SECURITY_ALERT, SECURITY_ROLES_CHANGED, Action.CREATE, "Access recertification opened"
    ),
    EventType.RECERTIFICATION_DECIDED: EventSpec(
        SECURITY_ALERT, SECURITY_ROLES_CHANGED, Action.UPDATE, "Access confirmed or revoked in a recertification"
    ),
    EventType.RECERTIFICATION_CLOSED: EventSpec(
        SECURITY_ALERT, SECURITY_ROLES_CHANGED, Action.EXECUTE, "Access recertification closed at its deadline"
    ),
    EventType.RECERTIFICATION_REMINDER_SENT: EventSpec(
        SECURITY_ALERT, None, Action.EXECUTE, "Access recertification reminder sent"
    ),
    EventType.DEVICE_REGISTERED: EventSpec(SECURITY_ALERT, NETWORK_CONFIGURATION, Action.CREATE, "Device registered"),
    EventType.DEVICE_APPROVED: EventSpec(SECURITY_ALERT, NETWORK_CONFIGURATION, Action.UPDATE, "Device approved"),
    EventType.ASSOCIATION_REJECTED: EventSpec(
        SECURITY_ALERT, NODE_AUTHENTICATION, Action.EXECUTE, "DICOM association from an unknown device refused"
    ),
    EventType.DEVICE_REVOKED: EventSpec(SECURITY_ALERT, NETWORK_CONFIGURATION, Action.UPDATE, "Device revoked"),
    EventType.DEVICE_SUSPENDED: EventSpec(SECURITY_ALERT, NETWORK_CONFIGURATION, Action.UPDATE, "Device suspended"),
    EventType.DEVICE_REINSTATED: EventSpec(SECURITY_ALERT, NETWORK_CONFIGURATION, Action.UPDATE, "Device reinstated"),
    EventType.DEVICE_REPORTED_LOST: EventSpec(
        SECURITY_ALERT, NETWORK_CONFIGURATION, Action.UPDATE, "Device reported lost"
    ),
    EventType.DEVICE_WIPE_ORDERED: EventSpec(
        SECURITY_ALERT, NETWORK_CONFIGURATION, Action.CREATE, "Device wipe ordered"
    ),
    EventType.DEVICE_WIPE_CONFIRMED: EventSpec(
        SECURITY_ALERT, NETWORK_CONFIGURATION, Action.UPDATE, "Device confirmed its wipe"
    ),
    EventType.DEVICE_SANITIZED: EventSpec(
        SECURITY_ALERT, NETWORK_CONFIGURATION, Action.UPDATE, "Device sanitization recorded"
    ),
    EventType.DEVICE_RETIRED: EventSpec(SECURITY_ALERT, NETWORK_CONFIGURATION, Action.UPDATE, "Device retired"),
    EventType.DEVICE_CUSTODY_CHANGED: EventSpec(
        SECURITY_ALERT, NETWORK_CONFIGURATION, Action.UPDATE, "Device custodian changed"
    ),
    EventType.DEVICE_GRANTS_CHANGED: EventSpec(
        SECURITY_ALERT, SECURITY_CONFIGURATION, Action.UPDATE, "Device grants changed"
    ),
    EventType.DEVICE_POLICY_CHANGED: EventSpec(
        SECURITY_ALERT, SECURITY_CONFIGURATION, Action.UPDATE, "Device policy changed"
    ),
    EventType.DEVICE_ENROLMENT_CODE_ISSUED: EventSpec(
        SECURITY_ALERT, NODE_AUTHENTICATION, Action.CREATE, "Device enrolment code issued"
    ),
    EventType.DEVICE_ENROLLED: EventSpec(SECURITY_ALERT, NODE_AUTHENTICATION, Action.EXECUTE, "Device token issued"),
    EventType.DEVICE_ATTESTED: EventSpec(
        SECURITY_ALERT, NODE_AUTHENTICATION, Action.EXECUTE, "Device attestation reported"
    ),
    EventType.DEVICE_TOKEN_REFUSED: EventSpec(
        SECURITY_ALERT, NODE_AUTHENTICATION, Action.EXECUTE, "Device token refused"
    ),
    EventType.DEVICE_TOKENS_REVOKED: EventSpec(
        SECURITY_ALERT, NODE_AUTHENTICATION, Action.UPDATE, "Device tokens revoked"
    ),
    EventType.DEVICE_MEDIA_EXPORTED: EventSpec(
        INSTANCES_TRANSFERRED, None, Action.READ, "Studies written to portable media (disclosure)"
    ),
    EventType.INSTANCES_STORED: EventSpec(INSTANCES_TRANSFERRED, None, Action.CREATE, "Instances stored"),
    EventType.INGEST_REJECTED: EventSpec(INSTANCES_TRANSFERRED, None, Action.CREATE, "Incoming object rejected"),
    EventType.MALWARE_DETECTED: EventSpec(
        SECURITY_ALERT, USE_OF_RESTRICTED_FUNCTION, Action.EXECUTE, "Malware or an executable preamble refused"
    ),
    EventType.INGEST_CONFLICT: EventSpec(
        INSTANCES_TRANSFERRED, None, Action.UPDATE, "Different bytes under a stored SOP Instance UID kept apart"
    ),
    EventType.STUDIES_QUERIED: EventSpec(QUERY, None, Action.EXECUTE, "Studies searched"),
    EventType.INSTANCES_ACCESSED: EventSpec(INSTANCES_ACCESSED, None, Action.READ, "Images or metadata viewed"),
    EventType.INSTANCES_RETRIEVED: EventSpec(INSTANCES_TRANSFERRED, None, Action.READ, "Instances retrieved"),
    EventType.INSTANCES_MOVED: EventSpec(INSTANCES_TRANSFERRED, None, Action.READ, "Instances sent to a device"),
    EventType.STUDY_SHARED: EventSpec(
        SECURITY_ALERT, OBJECT_SECURITY_ATTRIBUTES_CHANGED, Action.CREATE, "Study shared"
    ),
    EventType.SHARE_REVOKED: EventSpec(
        SECURITY_ALERT, OBJECT_SECURITY_ATTRIBUTES_CHANGED, Action.DELETE, "Share revoked"
    ),
    EventType.BREAK_GLASS_STARTED: EventSpec(
        SECURITY_ALERT, EMERGENCY_OVERRIDE_STARTED, Action.EXECUTE, "Emergency access started"
    ),
    EventType.BREAK_GLASS_ENDED: EventSpec(
        SECURITY_ALERT, EMERGENCY_OVERRIDE_STOPPED, Action.EXECUTE, "Emergency access ended"
    ),
    EventType.BREAK_GLASS_REVIEWED: EventSpec(
        SECURITY_ALERT, OBJECT_SECURITY_ATTRIBUTES_CHANGED, Action.UPDATE, "Emergency access reviewed"
    ),
    EventType.STUDY_EXPORTED: EventSpec(EXPORT, None, Action.READ, "De-identified export"),
    EventType.DISCLOSURE_EXPORTED: EventSpec(EXPORT, None, Action.READ, "Identified export (a disclosure)"),
    EventType.RETENTION_POLICY_SET: EventSpec(
        APPLICATION_ACTIVITY, SECURITY_CONFIGURATION, Action.UPDATE, "Retention policy set"
    ),
    EventType.RETENTION_PROPOSED: EventSpec(
        APPLICATION_ACTIVITY, None, Action.CREATE, "Study proposed for deletion (retention ended)"
    ),
    EventType.RETENTION_APPROVED: EventSpec(
        APPLICATION_ACTIVITY, None, Action.UPDATE, "Deletion approved by a first person"
    ),
    EventType.RETENTION_REJECTED: EventSpec(APPLICATION_ACTIVITY, None, Action.UPDATE, "Deletion rejected"),
    EventType.STUDY_DELETED: EventSpec(
        STUDY_DELETED_ID, None, Action.DELETE, "Study deleted and its keys destroyed (retention ended)"
    ),
    EventType.LEGAL_HOLD_PLACED: EventSpec(
        APPLICATION_ACTIVITY, OBJECT_SECURITY_ATTRIBUTES_CHANGED, Action.CREATE, "Legal hold placed"
    ),
    EventType.DISCLOSURE_ACCOUNTING_SUSPENDED: EventSpec(
        APPLICATION_ACTIVITY,
        OBJECT_SECURITY_ATTRIBUTES_CHANGED,
        Action.CREATE,
        "Disclosure withheld from the accounting (oversight or law enforcement)",
    ),
    EventType.TENANT_EXPORT_POLICY_SET: EventSpec(
        APPLICATION_ACTIVITY, SECURITY_CONFIGURATION, Action.UPDATE, "Tenant export policy set"
    ),
    EventType.LEGAL_HOLD_LIFTED: EventSpec(
        APPLICATION_ACTIVITY, OBJECT_SECURITY_ATTRIBUTES_CHANGED, Action.DELETE, "Legal hold lifted"
    ),
    EventType.BLOB_FIXITY_FAILED: EventSpec(
        SECURITY_ALERT, None, Action.EXECUTE, "A stored copy failed its fixity check (repaired from the good copy)"
    ),
    EventType.BLOB_REPAIRED: EventSpec(
        APPLICATION_ACTIVITY, None, Action.UPDATE, "A damaged or missing copy rewritten from the good copy"
    ),
    EventType.BLOB_UNAVAILABLE: EventSpec(
        SECURITY_ALERT, None, Action.EXECUTE, "Both copies of a stored object failed their fixity check"
    ),
    EventType.BLOBS_REPLICATED: EventSpec(
        APPLICATION_ACTIVITY, None, Action.CREATE, "Missing replica copies written (catch-up)"
    ),
    EventType.BLOB_ORPHANS_REMOVED: EventSpec(
        APPLICATION_ACTIVITY, None, Action.DELETE, "Unreferenced ciphertext removed from a store"
    ),
    EventType.BLOBS_RESTORED: EventSpec(
        APPLICATION_ACTIVITY, None, Action.CREATE, "Primary store rebuilt from the replica"
    ),
    EventType.DATABASE_BACKED_UP: EventSpec(APPLICATION_ACTIVITY, None, Action.EXECUTE, "Database backed up"),
    EventType.DATABASE_BACKUPS_DELETED: EventSpec(
        APPLICATION_ACTIVITY, None, Action.DELETE, "Old database backups deleted"
    ),
    EventType.DATABASE_RESTORED: EventSpec(
        APPLICATION_ACTIVITY, None, Action.EXECUTE, "Database restored from a backup"
    ),
    EventType.RESTORE_DRILL_RUN: EventSpec(APPLICATION_ACTIVITY, None, Action.EXECUTE, "Restore drill run"),
    EventType.TENANT_KEY_ROTATION_STARTED: EventSpec(
        SECURITY_ALERT, SECURITY_CONFIGURATION, Action.CREATE, "Tenant key rotation started: a new key version"
    ),
    EventType.TENANT_KEY_ROTATED: EventSpec(
        SECURITY_ALERT, SECURITY_CONFIGURATION, Action.UPDATE, "Tenant key rotated: keys rewrapped, old version retired"
    ),
    EventType.MASTER_KEY_ROTATED: EventSpec(
        SECURITY_ALERT, SECURITY_CONFIGURATION, Action.UPDATE, "Tenant keys rewrapped under a new master key"
    ),
    EventType.STUDY_KEYS_ADOPTED: EventSpec(
        SECURITY_ALERT, SECURITY_CONFIGURATION, Action.UPDATE, "Existing blobs rewrapped under their study keys"
    ),
    EventType.TENANT_OFFBOARDING_REQUESTED: EventSpec(
        SECURITY_ALERT, SECURITY_CONFIGURATION, Action.CREATE, "Tenant offboarding requested"
    ),
    EventType.TENANT_OFFBOARDING_REJECTED: EventSpec(
        SECURITY_ALERT, SECURITY_CONFIGURATION, Action.UPDATE, "Tenant offboarding rejected"
    ),
    EventType.TENANT_SHREDDED: EventSpec(
        EXPORT, SECURITY_CONFIGURATION, Action.DELETE, "Tenant exported, its keys destroyed, certificate issued"
    ),
    EventType.TENANT_EXPORT_READ: EventSpec(EXPORT, None, Action.READ, "Tenant offboarding export read"),
    EventType.ROTATED_KEY_FILES_REMOVED: EventSpec(
        SECURITY_ALERT,
        SECURITY_CONFIGURATION,
        Action.DELETE,
        "Study key files of a retired tenant key version removed (no backup needs them any more)",
    ),
    EventType.TRAINING_COURSE_ADOPTED: EventSpec(
        APPLICATION_ACTIVITY, SECURITY_CONFIGURATION, Action.CREATE, "Catalogue course adopted"
    ),
    EventType.TRAINING_COURSE_CREATED: EventSpec(
        APPLICATION_ACTIVITY, SECURITY_CONFIGURATION, Action.CREATE, "Training course created"
    ),
    EventType.TRAINING_REQUIREMENT_SET: EventSpec(
        SECURITY_ALERT, SECURITY_CONFIGURATION, Action.UPDATE, "Training requirement set"
    ),
    EventType.TRAINING_REQUIREMENT_REMOVED: EventSpec(
        SECURITY_ALERT, SECURITY_CONFIGURATION, Action.DELETE, "Training requirement removed"
    ),
    EventType.TRAINING_COMPLETION_RECORDED: EventSpec(
        SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, Action.CREATE, "Training completion recorded"
    ),
    EventType.TRAINING_COMPLETION_SUPERSEDED: EventSpec(
        SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, Action.UPDATE, "Training completion corrected"
    ),
    EventType.TRAINING_COMPLETION_APPROVED: EventSpec(
        SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, Action.UPDATE, "Self-reported training approved"
    ),
    EventType.TRAINING_COMPLETION_REJECTED: EventSpec(
        SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, Action.UPDATE, "Self-reported training rejected"
    ),
    EventType.TRAINING_COMPLETIONS_IMPORTED: EventSpec(
        SECURITY_ALERT, USER_SECURITY_ATTRIBUTES_CHANGED, Action.CREATE, "Training completions imported"
    ),
    EventType.TRAINING_MATRIX_EXPORTED: EventSpec(EXPORT, None, Action.READ, "Training matrix exported"),
    EventType.TRAINING_REMINDER_SENT: EventSpec(APPLICATION_ACTIVITY, None, Action.EXECUTE, "Training reminder sent"),
    EventType.TRAINING_EVIDENCE_VIEWED: EventSpec(APPLICATION_ACTIVITY, None, Action.READ, "Training certificate read"),
}
