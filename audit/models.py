from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models.functions import Upper
from django.utils import timezone

from audit.events import EventType, Outcome
from tenants.models import Tenant, TenantOwnedModel
from tenants.scoping import PlatformManager, TenantScopedManager

GENESIS_HASH = "0" * 64


def canonical_json(value: Any) -> str:
    """The JSON an audit event's hash is computed over: keys sorted at every level, no spaces, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def _canonical_around_sequence(data: dict[str, Any], participants_json: str) -> tuple[str, str]:
    """`canonical_json(data)` with the participants' value written as `participants_json` (their
    `canonical_json`, already written), split around the value of `sequence`: the text before that value and the
    text after it. The same bytes as json.dumps writes the whole object with sort_keys (its members in key order,
    `,` between them, `:` after each key): the members below "participants", between it and "sequence", and above
    "sequence" are each written by one json.dumps of their own, three calls instead of one per field."""

    def members(lower: str, upper: str | None) -> str:
        part = {name: value for name, value in data.items() if lower < name and (upper is None or name < upper)}
        return canonical_json(part)[1:-1]

    below = {name: value for name, value in data.items() if name < "participants"}
    head = [canonical_json(below)[1:-1], f'"participants":{participants_json}', members("participants", "sequence")]
    before = "{" + ",".join(part for part in head if part) + ',"sequence":'
    above = members("sequence", None)
    return before, ("," + above if above else "") + "}"


class AuditChain(models.Model):
    """The head of one hash chain: one per tenant, and one for the platform (sign-in attempts that name no
    tenant). `audit_event_record` locks this row to append, so concurrent writers keep the chain whole."""

    PLATFORM_KEY = "platform"

    key = models.CharField(max_length=64, unique=True)
    tenant = models.OneToOneField(Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    last_sequence = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default=GENESIS_HASH)

    def __str__(self) -> str:
        return self.key

    @staticmethod
    def key_for(tenant: Tenant | None) -> str:
        return f"tenant:{tenant.pk}" if tenant is not None else AuditChain.PLATFORM_KEY


class AuditEvent(models.Model):
    """What happened, shaped after a DICOM PS3.15 A.5 audit message. Append-only and hash-chained.

    The database refuses UPDATE and DELETE (a trigger, see migration 0003); `save()` refuses to change a
    stored row. `hash` is SHA-256 over the canonical form of the row and `prev_hash`, so an edited or missing
    row is found by `manage.py audit_verify`.

    On PostgreSQL the table is partitioned by month on `occurred_at` (migration 0009: one partition per month,
    made ahead by `audit_partitions_ensure`, and a default partition for anything else). PostgreSQL wants the
    partition key in every unique constraint: the primary key is (id, occurred_at) in the database (Django
    knows `id`, unique in practice: one sequence feeds it), and so are the unique constraints below. Nothing
    points at an event with a database foreign key (SecurityAlert.event has no constraint; events are never
    deleted anyway).
    """

    # Identification
    public_id = models.UUIDField(default=uuid.uuid4, editable=False)
    chain = models.ForeignKey(AuditChain, on_delete=models.PROTECT, related_name="+", editable=False)
    tenant = models.ForeignKey(Tenant, null=True, on_delete=models.PROTECT, related_name="+", editable=False)
    sequence = models.BigIntegerField(editable=False)
    occurred_at = models.DateTimeField(default=timezone.now, editable=False)
    # EventIdentification
    # Our verb (audit.events.EventType). No `choices`: a new verb must not need a migration of this table.
    event_type = models.PositiveIntegerField()
    event_id = models.CharField(max_length=16)
    event_id_display = models.CharField(max_length=64)
    event_type_code = models.CharField(max_length=16, blank=True)
    event_type_display = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=1)
    outcome = models.PositiveSmallIntegerField(default=Outcome.SUCCESS)
    outcome_description = models.CharField(max_length=300, blank=True)
    # ActiveParticipant (the requestor)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor_username = models.CharField(max_length=150, blank=True)
    actor_role = models.CharField(max_length=32, blank=True)
    system_principal = models.CharField(max_length=100, blank=True)
    source_address = models.GenericIPAddressField(null=True, blank=True)
    # ParticipantObjectIdentification: a list of entries with type, id, name, role and detail
    target_type = models.CharField(max_length=40, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    participants = models.JSONField(default=list, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    extra = models.JSONField(default=dict, blank=True)
    # Tamper evidence
    prev_hash = models.CharField(max_length=64, editable=False)
    hash = models.CharField(max_length=64, editable=False)

    objects = TenantScopedManager()
    unscoped_objects = PlatformManager()

    class Meta:
        ordering = ["-occurred_at", "-sequence"]
        constraints = [
            # With the partition key (see the class's notes); the chain lock gives each (chain, sequence) once.
            models.UniqueConstraint(
                fields=["chain", "sequence", "occurred_at"], name="audit_auditevent_chain_sequence_unique"
            ),
            models.UniqueConstraint(fields=["public_id", "occurred_at"], name="audit_auditevent_public_id_unique"),
        ]
        indexes = [
            models.Index(fields=["tenant", "-occurred_at"], name="audit_event_tenant_time"),
            models.Index(fields=["tenant", "event_type", "-occurred_at"], name="audit_event_tenant_type_time"),
            models.Index(fields=["tenant", "actor_user", "-occurred_at"], name="audit_event_tenant_user_time"),
            # The browser's keyset order, and its filters that are not in a participant (audit.selectors).
            models.Index(fields=["tenant", "-occurred_at", "-id"], name="audit_event_tenant_keyset"),
            models.Index(fields=["tenant", "outcome", "-occurred_at"], name="audit_event_tenant_outcome"),
            models.Index(fields=["tenant", "source_address", "-occurred_at"], name="audit_event_tenant_address"),
            models.Index(fields=["tenant", "system_principal", "-occurred_at"], name="audit_event_tenant_principal"),
            # The browser's user filter compares names case-insensitively (actor_username__iexact: UPPER = UPPER).
            models.Index(
                models.F("tenant"),
                Upper("actor_username"),
                models.F("occurred_at").desc(),
                models.F("id").desc(),
                name="audit_event_tenant_username",
            ),
            # Patient, study and device filters (participants @> ...) use a GIN index made on PostgreSQL by
            # migration 0005, with the index of django-auditlog's table by tenant.
        ]

    def __str__(self) -> str:
        return f"{self.chain_id}#{self.sequence} {self.verb}"

    # Fields that the hash covers, in a fixed order. Adding a field here changes every hash: only append.
    HASHED_FIELDS = (
        "public_id", "tenant_id", "sequence", "occurred_at", "event_type", "event_id", "event_type_code",
        "action", "outcome", "outcome_description", "actor_user_id", "actor_username", "actor_role",
        "system_principal", "source_address", "target_type", "target_id", "participants", "request_id", "extra",
    )  # fmt: skip

    def canonical(self, participants_json: str | None = None) -> bytes:
        """The hashed fields as one JSON object: keys sorted, no spaces, ASCII only (`canonical_json`).
        `participants_json`, when given, is `canonical_json(self.participants)` already written: the writer writes
        the participants once, for the hash and for the column (some 2,000 entries for a search of 1,000 studies).
        The bytes are the same either way; the object is then put together in three parts (see
        `_canonical_around_sequence`)."""
        data = self._hashed_values()
        if participants_json is None:
            return canonical_json(data).encode()
        before, after = _canonical_around_sequence(data, participants_json)
        return (before + canonical_json(data["sequence"]) + after).encode()

    def canonical_around_sequence(self, participants_json: str) -> tuple[str, str]:
        """`canonical(participants_json)` as the text before the value of `sequence` and the text after it:
        `canonical(pj) == (before + str(sequence) + after).encode()` whatever the sequence, for the writer that lets
        PostgreSQL take the sequence (and so the hash) under the chain's lock (audit.services). ASCII only."""
        return _canonical_around_sequence(self._hashed_values(), participants_json)

    def _hashed_values(self) -> dict[str, Any]:
        """The hashed fields' values as the canonical form writes them (times in UTC to the microsecond, UUIDs as
        text)."""
        data: dict[str, Any] = {}
        for name in self.HASHED_FIELDS:
            value = getattr(self, name)
            if name == "occurred_at":
                value = value.astimezone(UTC).isoformat(timespec="microseconds")
            elif name == "public_id":
                value = str(value)
            data[name] = value
        return data

    def compute_hash(self, prev_hash: str, participants_json: str | None = None) -> str:
        return hashlib.sha256(prev_hash.encode() + b"\n" + self.canonical(participants_json)).hexdigest()

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise PermissionError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError("Audit events are append-only.")

    @property
    def verb(self) -> str:
        """Our business verb in words, such as "Member added"."""
        try:
            return EventType(self.event_type).spec.description
        except ValueError:
            return str(self.event_type)

    @property
    def outcome_label(self) -> str:
        return Outcome.LABELS.get(self.outcome, str(self.outcome))


class SecurityAlert(models.Model):
    """Something a person must look at: malware sent in, a device that is not approved, a refused tenant escape.

    Raised by `audit.services.security_alert_raise`, always together with the audit event that records it.
    """

    class Severity(models.TextChoices):
        WARNING = "warning", "Warning"
        HIGH = "high", "High"
        CRITICAL = "critical", "Critical"

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        ACKNOWLEDGED = "acknowledged", "Acknowledged"
        ESCALATED = "escalated", "Escalated"
        CLOSED = "closed", "Closed"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey(Tenant, null=True, on_delete=models.PROTECT, related_name="+", editable=False)
    raised_at = models.DateTimeField(default=timezone.now, editable=False)
    kind = models.CharField(max_length=40)
    severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.HIGH)
    summary = models.CharField(max_length=300)
    # No database constraint: the events' table is partitioned (its primary key includes the time). Events are
    # append-only, so the row this names stays.
    event = models.ForeignKey(AuditEvent, on_delete=models.PROTECT, related_name="+", db_constraint=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    # The last handling's note (every handling, with its note, is an audit event of the alert).
    note = models.TextField(blank=True, max_length=2000)
    # What a rule found it about (a user name, an event) and the events that made it match, by public id.
    subject = models.CharField(max_length=150, blank=True)
    evidence = models.JSONField(default=list, blank=True)

    objects = TenantScopedManager()
    unscoped_objects = PlatformManager()

    class Meta:
        ordering = ["-raised_at"]
        indexes = [models.Index(fields=["tenant", "kind", "subject", "-raised_at"], name="audit_alert_rule_subject")]

    def __str__(self) -> str:
        return f"{self.kind} ({self.severity})"


class Incident(TenantOwnedModel):
    """A security incident (HIPAA 164.308(a)(6)), opened from one or more alerts by a compliance officer: its
    scope (the breach-scope query and its result, frozen and hash-referenced when taken), its decisions, and the
    HITECH notification clocks computed from the discovery date (`audit.incidents.incident_deadlines`).

    Changes are in django-auditlog (the scope snapshot masked there: it names patients); opening, scoping,
    deciding and closing are audit events of their own."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        ASSESSING = "assessing", "Risk assessment"
        NOTIFYING = "notifying", "Notifying"
        CLOSED = "closed", "Closed"

    class Role(models.TextChoices):
        COVERED_ENTITY = "covered_entity", "Covered entity"
        BUSINESS_ASSOCIATE = "business_associate", "Business associate"

    class Determination(models.TextChoices):
        UNDETERMINED = "undetermined", "Not yet determined"
        BREACH = "breach", "Breach (notification required)"
        LOW_PROBABILITY = "low_probability", "Low probability of compromise (4-factor assessment)"

    title = models.CharField(max_length=200)
    opened_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    discovered_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    role = models.CharField(max_length=24, choices=Role.choices, default=Role.COVERED_ENTITY)
    determination = models.CharField(max_length=24, choices=Determination.choices, default=Determination.UNDETERMINED)
    alerts = models.ManyToManyField(SecurityAlert, related_name="incidents", blank=True)
    # The breach-scope query (who, which window) and its frozen result.
    scope_username = models.CharField(max_length=150, blank=True)
    scope_device = models.CharField(max_length=150, blank=True)
    scope_address = models.CharField(max_length=64, blank=True)
    scope_since = models.DateTimeField(null=True, blank=True)
    scope_until = models.DateTimeField(null=True, blank=True)
    scope_snapshot = models.JSONField(default=list, blank=True)
    scope_sha256 = models.CharField(max_length=64, blank=True)
    scope_taken_at = models.DateTimeField(null=True, blank=True)
    # Individuals affected: the scope's count unless the officer records otherwise, and residents per state.
    affected_count = models.PositiveIntegerField(default=0)
    affected_by_state = models.JSONField(default=dict, blank=True)
    reminders_sent = models.JSONField(default=list, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-discovered_at"]

    def __str__(self) -> str:
        return f"incident {self.public_id}"


class IncidentDecision(TenantOwnedModel):
    """One decision or step recorded on an incident, by whom and when. Never edited."""

    incident = models.ForeignKey(Incident, on_delete=models.PROTECT, related_name="decisions")
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    text = models.TextField(max_length=2000)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"decision on {self.incident_id}"


def logentry_canonical(entry: Any) -> bytes:
    """The canonical form of a django-auditlog LogEntry row as read from the database: what its seal covers."""
    data = {name: getattr(entry, name) for name in ChangeSeal.SEALED_LOGENTRY_FIELDS}
    data["timestamp"] = entry.timestamp.astimezone(UTC).isoformat(timespec="microseconds")
    data["pk"] = entry.pk
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode()


class ChangeSeal(models.Model):
    """The hash chain over django-auditlog's LogEntry rows, which that table cannot hold itself: one seal per
    entry, chained per tenant (chain key `changes:tenant:<id>`, or `changes:platform`). Written by
    `audit.services.audit_changes_seal` after the entry's transaction commits (never inside it: a second chain
    lock taken in whatever order a request writes would deadlock with the events' chain). Append-only like
    AuditEvent; `audit_verify` finds an edited, deleted or unsealed entry and a truncated tail."""

    SEALED_LOGENTRY_FIELDS = (
        "content_type_id", "object_pk", "object_id", "object_repr", "serialized_data", "action", "changes_text",
        "changes", "actor_id", "cid", "remote_addr", "remote_port", "timestamp", "additional_data", "actor_email",
    )  # fmt: skip

    chain = models.ForeignKey(AuditChain, on_delete=models.PROTECT, related_name="+")
    sequence = models.BigIntegerField()
    # The LogEntry's id, not a foreign key: a deleted entry must leave its seal behind as evidence.
    entry_id = models.BigIntegerField(unique=True)
    sealed_at = models.DateTimeField(default=timezone.now)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chain", "sequence"], name="audit_changeseal_chain_sequence_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.chain_id}#{self.sequence} entry {self.entry_id}"

    @staticmethod
    def compute_hash(prev_hash: str, entry: Any) -> str:
        return hashlib.sha256(prev_hash.encode() + b"\n" + logentry_canonical(entry)).hexdigest()

    @staticmethod
    def chain_key(tenant_id: int | None) -> str:
        return f"changes:tenant:{tenant_id}" if tenant_id is not None else "changes:platform"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise PermissionError("Change seals are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError("Change seals are append-only.")


class AuditDigest(models.Model):
    """A chain's head signed once a day with an Ed25519 key the database never holds (AUDIT_SIGNING_KEY, from the
    environment; see audit.signing), after CloudTrail's digest files: each digest signs the chain's last sequence
    and hash, when it was signed, and the previous digest's signature, so the digests form a chain of their own.
    Each is also written as a JSON file to the replica store (`path`). Someone who rewrites the trail and its
    chain heads cannot make a matching digest: a truncated tail, or a chain rebuilt from scratch, no longer
    reaches the signed head. Append-only (a trigger, migration 0008). Rows of algorithm `hmac-sha256` were
    signed with the former HMAC key, which is gone: they are kept and linked, not checked."""

    ED25519 = "ed25519"
    LEGACY_HMAC = "hmac-sha256"

    chain = models.ForeignKey(AuditChain, on_delete=models.PROTECT, related_name="+")
    day = models.DateField()
    last_sequence = models.BigIntegerField()
    last_hash = models.CharField(max_length=64)
    signature = models.CharField(max_length=128)
    signed_at = models.DateTimeField(default=timezone.now)
    algorithm = models.CharField(max_length=16, default=ED25519)
    key_id = models.CharField(max_length=16, blank=True)  # audit.signing.key_id of the signing key's public half
    prev_signature = models.CharField(max_length=128, blank=True)  # the chain's previous digest's ("": first)
    path = models.CharField(max_length=200, blank=True)  # the digest file in storages["replica"]

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain", "day"], name="audit_auditdigest_chain_day_unique")]

    def __str__(self) -> str:
        return f"{self.chain_id} {self.day}"

    def document(self, chain: AuditChain) -> dict[str, Any]:
        """What the signature covers, as a dict (the digest file holds it, with the signature and public key)."""
        return {
            "algorithm": self.algorithm, "chain": chain.key, "tenant_id": chain.tenant_id, "day": self.day.isoformat(),
            "last_sequence": self.last_sequence, "last_hash": self.last_hash,
            "signed_at": self.signed_at.astimezone(UTC).isoformat(timespec="microseconds"),
            "previous_signature": self.prev_signature, "key_id": self.key_id,
        }  # fmt: skip

    @staticmethod
    def message_of(document: dict[str, Any]) -> bytes:
        """The bytes signed: the document as canonical JSON (sorted keys, no spaces, ASCII)."""
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    def message(self, chain: AuditChain) -> bytes:
        return self.message_of(self.document(chain))

    @staticmethod
    def path_for(chain: AuditChain, day: Any) -> str:
        """`audit-digests/t<tenant id>/<events|changes>/<day>.json` (`platform` for the chains of no tenant)."""
        kind = "changes" if chain.key.startswith("changes:") else "events"
        owner = f"t{chain.tenant_id}" if chain.tenant_id is not None else _platform_owner(chain.key)
        return f"audit-digests/{owner}/{kind}/{day.isoformat()}.json"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise PermissionError("Audit digests are append-only.")
        super().save(*args, **kwargs)


def _platform_owner(key: str) -> str:
    """The folder of a chain that has no tenant row: the platform's, or the change chain of tenant <id>."""
    if key.startswith("changes:tenant:"):
        return f"t{key.removeprefix('changes:tenant:')}"
    return "platform"


class SyslogCursor(models.Model):
    """How far each audit chain has been forwarded to the hospital's audit repository (store and forward: the
    events themselves are the outbox, read in sequence order after `last_sequence`)."""

    chain = models.OneToOneField(AuditChain, on_delete=models.PROTECT, related_name="+")
    last_sequence = models.BigIntegerField(default=0)
    last_sent_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.chain_id} sent to #{self.last_sequence}"


class WormCopy(models.Model):
    """One object written to the audit WORM store (audit.worm): a signed digest's file, or a closed month of a
    chain's events (a sealed segment). Records the version the bucket gave it, its lock and its SHA-256, so that
    `audit_worm_verify` can fetch exactly that version and find a newer one written above it. Append-only."""

    DIGEST = "digest"
    SEGMENT = "segment"
    KINDS = [(DIGEST, "Signed digest"), (SEGMENT, "Sealed month of events")]

    chain = models.ForeignKey(AuditChain, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=8, choices=KINDS)
    path = models.CharField(max_length=200, unique=True)
    sha256 = models.CharField(max_length=64)
    size = models.BigIntegerField()
    version_id = models.CharField(max_length=200, blank=True)
    lock_mode = models.CharField(max_length=16)
    retain_until = models.DateTimeField()
    written_at = models.DateTimeField(default=timezone.now)
    month = models.DateField(null=True, blank=True)  # a segment's first day of the month (UTC)
    first_sequence = models.BigIntegerField(null=True, blank=True)
    last_sequence = models.BigIntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return self.path

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise PermissionError("WORM copies are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError("WORM copies are append-only.")

    @staticmethod
    def segment_path(chain: AuditChain, month: Any) -> str:
        """`audit-segments/t<tenant id>/<yyyy-mm>.jsonl` (`platform` for the platform chain)."""
        owner = f"t{chain.tenant_id}" if chain.tenant_id is not None else _platform_owner(chain.key)
        return f"audit-segments/{owner}/{month.year:04d}-{month.month:02d}.jsonl"
