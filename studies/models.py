"""The archive: patients, studies, series, instances, their encrypted blobs, tenant keys and the ingest log."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Upper
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from tenants.models import TenantOwnedModel


class TenantKey(TenantOwnedModel):
    """A tenant's key-encryption key, wrapped by the master key. Rotating adds a version (`manage.py rotate_keys`);
    the old one is retired (inactive, its material erased) once no wrapped key depends on it. New keys are
    wrapped by the highest active version."""

    version = models.PositiveIntegerField()
    wrapped = models.BinaryField()
    active = models.BooleanField(default=True)
    retired_at = models.DateTimeField(null=True, blank=True)
    # When the study key files of this (retired) version were removed: only once no database backup older than
    # its retirement is kept, since such a backup's rows still name this version (studies.services.keys).
    key_files_removed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "version"], name="studies_tenantkey_tenant_version_unique"),
        ]

    def __str__(self) -> str:
        return f"key v{self.version} of tenant {self.tenant_id}"


class StudyKey(TenantOwnedModel):
    """Where a study's key-encryption key is. The key itself is never in the database (so never in a database
    backup): it is a small file in the primary and the replica blob store, wrapped by tenant key `key_version`
    (studies.storage.keys). Deleting those files, as retention deletion does, shreds every blob of the study,
    whatever copies of the database or of the ciphertext were kept. `key_id` is a hash of the study UID."""

    key_id = models.CharField(max_length=64)
    key_version = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "key_id"], name="studies_studykey_tenant_key_id_unique"),
        ]

    def __str__(self) -> str:
        return f"study key {self.key_id[:12]} of tenant {self.tenant_id}"


class Blob(TenantOwnedModel):
    """One encrypted object in the blob store (and its replica), with its data key wrapped beside it: by its
    study's key when `study_key` is set (instances and thumbnails; `key_version` is then 0), else by tenant key
    `key_version` (quarantine, exports, certificates, and blobs stored before study keys). `sha256` and `size`
    are of the plaintext and are checked on every read."""

    class Kind(models.TextChoices):
        QUARANTINE = "quarantine", "Quarantined upload"
        INSTANCE = "instance", "DICOM instance"
        THUMBNAIL = "thumbnail", "Thumbnail"
        EXPORT = "export", "Export archive"
        CERTIFICATE = "certificate", "Training certificate"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    storage_name = models.CharField(max_length=255, unique=True)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    wrapped_key = models.BinaryField()
    key_version = models.PositiveIntegerField()
    study_key = models.ForeignKey(
        StudyKey, null=True, blank=True, on_delete=models.PROTECT, related_name="blobs", editable=False
    )
    replicated_at = models.DateTimeField(null=True, blank=True)
    # Set by the fixity job when neither copy decrypts to the row's hash (reads refuse it, as they refuse any
    # unreadable blob); cleared when a later check finds a good copy again (studies.services.fixity).
    damaged_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.kind} blob {self.public_id}"


class BlobCursor(TenantOwnedModel):
    """Where a tenant's long walk over its blobs stopped (fixity cycle, restore from the replica): the next run
    starts after `last_blob_id`, so the walk is rate-limited and resumable."""

    class Job(models.TextChoices):
        FIXITY = "fixity", "Fixity check"
        RESTORE = "restore", "Restore from the replica"

    job = models.CharField(max_length=16, choices=Job.choices)
    last_blob_id = models.BigIntegerField(default=0)
    cycle_started_at = models.DateTimeField(default=timezone.now)
    # The last completed cycle (every blob checked once), for the compliance report.
    last_cycle_completed_at = models.DateTimeField(null=True, blank=True)
    checked_in_cycle = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "job"], name="studies_blobcursor_tenant_job_unique")]

    def __str__(self) -> str:
        return f"{self.job} cursor"


class Patient(TenantOwnedModel):
    patient_id = models.CharField(max_length=64)
    issuer = models.CharField(max_length=64, blank=True)
    name = models.CharField(max_length=324, blank=True)
    # The name case-folded by PostgreSQL itself, for the matcher (studies.selectors.matching): under row-level
    # security only leakproof operators can be index conditions, and `upper(name)`, ILIKE and LIKE are not; this
    # column compared with `=`, `~>=~` and `~<~` is (docs/BENCHMARKS.md, "Searches under row-level security").
    # Filled by the database on every write: no code sets it. Excluded from django-auditlog (it repeats `name`).
    name_folded = models.GeneratedField(
        expression=Upper("name"), output_field=models.CharField(max_length=324), db_persist=True
    )
    birth_date = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=16, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "patient_id", "issuer"], name="studies_patient_tenant_id_issuer_unique"
            ),
        ]
        indexes = [
            # Exact and prefix matches of a person name, and prefix matches of a patient ID, within a tenant
            # (text_pattern_ops: byte order, whatever the database's collation, as `~>=~` / `~<~` compare).
            models.Index(
                fields=["tenant", "name_folded"],
                opclasses=["int8_ops", "text_pattern_ops"],
                name="studies_patient_name_folded",
            ),
            models.Index(
                fields=["tenant", "patient_id"],
                opclasses=["int8_ops", "text_pattern_ops"],
                name="studies_patient_id_pattern",
            ),
        ]

    def __str__(self) -> str:
        return f"patient {self.public_id}"  # never the name: str() reaches logs and admin pages


class Study(TenantOwnedModel):
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies")
    study_instance_uid = models.CharField(max_length=64)
    study_date = models.DateField(null=True, blank=True)
    study_time = models.TimeField(null=True, blank=True)
    accession_number = models.CharField(max_length=64, blank=True)
    description = models.CharField(max_length=256, blank=True)
    referring_physician = models.CharField(max_length=324, blank=True)
    # "FAMILY^GIVEN" in capitals: how a referring physician's studies are found (tenants.access, studies.access).
    referring_physician_key = models.CharField(max_length=200, blank=True, db_index=True)
    modalities = models.CharField(max_length=64, blank=True)
    number_of_series = models.PositiveIntegerField(default=0)
    number_of_instances = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-study_date", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "study_instance_uid"], name="studies_study_tenant_uid_unique"),
        ]
        indexes = [
            models.Index(fields=["tenant", "-study_date"], name="studies_study_tenant_date"),
            # Byte order (text_pattern_ops) serves `=` and the matcher's "starts with" range (`A2024*`).
            models.Index(
                fields=["tenant", "accession_number"],
                opclasses=["int8_ops", "text_pattern_ops"],
                name="studies_study_tenant_accession",
            ),
        ]

    def __str__(self) -> str:
        return f"study {self.public_id}"


def person_name_key(value: str) -> str:
    """A DICOM person name reduced to "FAMILY^GIVEN" in capitals (alphabetic group only), for matching."""
    parts = [part.strip().upper() for part in (value or "").split("=")[0].split("^")] + ["", ""]
    family, given = parts[0], parts[1]
    return f"{family}^{given}" if family else ""


class StudyUserObjectPermission(UserObjectPermissionBase):
    """django-guardian grants of one study to one user (shares), with a real foreign key to the study."""

    content_object = models.ForeignKey(Study, on_delete=models.CASCADE)


class StudyGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Study, on_delete=models.CASCADE)


class Series(TenantOwnedModel):
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="series")
    series_instance_uid = models.CharField(max_length=64)
    modality = models.CharField(max_length=16, blank=True)
    description = models.CharField(max_length=256, blank=True)
    series_number = models.IntegerField(null=True, blank=True)
    number_of_instances = models.PositiveIntegerField(default=0)
    thumbnail = models.ForeignKey(Blob, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        verbose_name_plural = "series"
        ordering = ["series_number", "created_at"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "series_instance_uid"], name="studies_series_tenant_uid_unique"),
        ]

    def __str__(self) -> str:
        return f"series {self.public_id}"


class Instance(TenantOwnedModel):
    series = models.ForeignKey(Series, on_delete=models.PROTECT, related_name="instances")
    sop_instance_uid = models.CharField(max_length=64)
    sop_class_uid = models.CharField(max_length=64)
    transfer_syntax_uid = models.CharField(max_length=64)
    instance_number = models.IntegerField(null=True, blank=True)
    rows = models.PositiveIntegerField(null=True, blank=True)
    columns = models.PositiveIntegerField(null=True, blank=True)
    frames = models.PositiveIntegerField(default=1)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    # What makes two objects the same instance: pixel data and identifying attributes (studies.dicom.parse.
    # content_hash), not the file bytes. Empty until first needed (ingest stores it empty: only an object of the
    # same SOP Instance UID needs it, studies.services.ingest._resolve_existing, which fills it then).
    content_sha256 = models.CharField(max_length=64, blank=True, default="")
    blob = models.OneToOneField(Blob, on_delete=models.PROTECT, related_name="instance")

    class Meta:
        ordering = ["instance_number", "created_at"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "sop_instance_uid"], name="studies_instance_tenant_uid_unique"),
        ]

    def __str__(self) -> str:
        return f"instance {self.public_id}"


class IngestItem(TenantOwnedModel):
    """One object that came in through a door, from receipt to its end state. The database, never the broker,
    is the record of work to do: the sweeper queues again any item left `received` or `processing` too long."""

    class State(models.TextChoices):
        RECEIVED = "received", "Received"
        PROCESSING = "processing", "Processing"
        STORED = "stored", "Stored"
        DUPLICATE = "duplicate", "Already stored"
        CONFLICT = "conflict", "Conflict kept for review"
        REJECTED = "rejected", "Rejected"

    class Source(models.TextChoices):
        CSTORE = "cstore", "DICOM C-STORE"
        STOWRS = "stowrs", "DICOMweb STOW-RS"
        UPLOAD = "upload", "Browser upload"

    class Failure(models.TextChoices):
        """Why an item was refused, for machines (STOW-RS failure codes); `reason` says it for people."""

        NONE = "", "None"
        TOO_LARGE = "too_large", "Too large"
        NOT_DICOM = "not_dicom", "Not DICOM"
        UNSUPPORTED_SYNTAX = "unsupported_syntax", "Unsupported transfer syntax"
        UNREADABLE = "unreadable", "Unreadable"
        INVALID = "invalid", "Invalid or truncated"
        MALWARE = "malware", "Malware"
        CONFLICT = "conflict", "Conflicts with a stored instance"
        LOST = "lost", "Quarantined bytes lost or damaged"
        INTERNAL = "internal", "Internal error"
        QUOTA = "quota", "Over the tenant's ingestion quota"

    FINAL_STATES = (State.STORED, State.DUPLICATE, State.CONFLICT, State.REJECTED)

    state = models.CharField(max_length=16, choices=State.choices, default=State.RECEIVED)
    source = models.CharField(max_length=16, choices=Source.choices)
    batch = models.UUIDField(help_text="The association, STOW-RS request or upload the item came with")
    filename = models.CharField(max_length=255, blank=True)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    quarantine = models.ForeignKey(Blob, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    device = models.ForeignKey(
        "devices.Device", null=True, blank=True, on_delete=models.PROTECT, related_name="ingest_items"
    )
    source_address = models.GenericIPAddressField(null=True, blank=True)
    reason = models.CharField(max_length=300, blank=True)
    failure = models.CharField(max_length=24, choices=Failure.choices, blank=True, default="")
    sop_instance_uid = models.CharField(max_length=64, blank=True)
    instance = models.ForeignKey(Instance, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    attempts = models.PositiveIntegerField(default=0)
    claimed_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "state", "-created_at"], name="studies_ingest_tenant_state"),
            # The worker's claim (`_claim_batch`): a tenant's waiting items read oldest id first off this index, a
            # batch's worth, instead of every waiting item read and sorted (docs/BENCHMARKS.md, session 14).
            models.Index(fields=["tenant", "state", "id"], name="studies_ingest_claim"),
            models.Index(fields=["tenant", "batch"], name="studies_ingest_tenant_batch"),
            models.Index(fields=["state", "updated_at"], name="studies_ingest_sweep"),
        ]

    def __str__(self) -> str:
        return f"ingest {self.public_id} ({self.state})"


class StudyShare(TenantOwnedModel):
    """One study shared with one person until a time. The access itself is a django-guardian grant (made and
    removed by tenants.access); this row says who shared, why, until when, and whether it was revoked, and
    the permission decision honours it at every read, so an expired or revoked share stops working at once."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="shares")
    grantee = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    granted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    note = models.CharField(max_length=300, blank=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "grantee", "expires_at"], name="studies_share_grantee")]

    def __str__(self) -> str:
        return f"share {self.public_id}"


class ShareInvitation(TenantOwnedModel):
    """A share waiting for an outside physician to accept their invitation (tenants.Invitation, purpose "share").
    Nothing is granted until then: on acceptance the share is made for the person who accepted, and `share`
    points at it."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="share_invitations")
    invitation = models.OneToOneField("tenants.Invitation", on_delete=models.PROTECT, related_name="+")
    granted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    note = models.CharField(max_length=300, blank=True)
    expires_at = models.DateTimeField(help_text="When the share ends, whenever it is accepted.")
    share = models.OneToOneField(StudyShare, null=True, blank=True, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"share invitation {self.public_id}"


class BreakGlassGrant(TenantOwnedModel):
    """Emergency access to one study by a clinician without a grant (HIPAA 164.312(a)(2)(ii)): a stated reason,
    a second TOTP check, a few hours at most, an alert to the compliance officers and a review they sign off."""

    class Review(models.TextChoices):
        PENDING = "pending", "Waiting for review"
        APPROPRIATE = "appropriate", "Appropriate"
        INAPPROPRIATE = "inappropriate", "Inappropriate"

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="break_glass_grants")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    reason = models.CharField(max_length=500)
    purpose_of_use = models.CharField(max_length=16, default="ETREAT")
    expires_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    review = models.CharField(max_length=16, choices=Review.choices, default=Review.PENDING)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_note = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "user", "expires_at"], name="studies_breakglass_user")]

    def __str__(self) -> str:
        return f"break-glass {self.public_id}"


class ReadTally(TenantOwnedModel):
    """The open folding window of one person's repeated reads of one study (frames, rendered images,
    thumbnails): the reads after the first that were not yet written as an audit event. A row, not a cache
    entry, so a count survives a crash; studies.services.reads explains the design."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="+")
    event_type = models.PositiveIntegerField()
    window_started_at = models.DateTimeField()
    first_sequence = models.PositiveBigIntegerField(help_text="The audit event that opened the window")
    folded = models.PositiveIntegerField(default=0)
    last_read_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "user", "study", "event_type"], name="studies_readtally_tenant_key_unique"
            ),
        ]
        indexes = [models.Index(fields=["window_started_at"], name="studies_readtally_window")]

    def __str__(self) -> str:
        return f"read tally {self.public_id}"


class Export(TenantOwnedModel):
    """One export job: the chosen studies as a zip, de-identified (Annex E) or, with `tenants.export_identified`,
    as stored (a disclosure). The zip is an encrypted blob; its download works once, for its owner only
    (studies.services.exports). No re-identification key is kept: each run uses a fresh secret that dies with it."""

    class Kind(models.TextChoices):
        DEIDENTIFIED = "deidentified", "De-identified (DICOM PS3.15 Annex E)"
        IDENTIFIED = "identified", "Identified (a disclosure)"

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.DEIDENTIFIED)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    studies = models.ManyToManyField(Study, related_name="+")
    options = models.JSONField(default=list, blank=True, help_text="CID 7050 option codes applied")
    purpose = models.CharField(max_length=500, blank=True)
    recipient = models.CharField(max_length=300, blank=True)
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    blob = models.ForeignKey(Blob, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    # A password-encrypted bundle (AES-256 ZIP): the password is shown once to the requester and kept only as an
    # encrypted blob until the job has used it (then shredded).
    encrypted = models.BooleanField(default=False)
    password_blob = models.ForeignKey(Blob, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    downloaded_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "owner", "created_at"], name="studies_export_owner")]

    def __str__(self) -> str:
        return f"export {self.public_id}"

    @property
    def percent(self) -> int:
        if self.state == self.State.DONE:
            return 100
        return int(100 * self.done / self.total) if self.total else 0


# Retention (issue 13): policies, legal holds, deletion proposals and the tombstones deletion leaves.


class RetentionPolicy(TenantOwnedModel):
    """How long a tenant keeps studies: `years_after_last_study` after the patient's most recent study, and never
    before the patient reaches `keep_until_patient_age` (minors). `modality` blank applies to every study; when
    several active policies match a study, the longest keep wins."""

    name = models.CharField(max_length=100)
    modality = models.CharField(max_length=16, blank=True)
    years_after_last_study = models.PositiveIntegerField()
    keep_until_patient_age = models.PositiveIntegerField(null=True, blank=True)
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["modality", "name"]
        verbose_name_plural = "retention policies"

    def __str__(self) -> str:
        return f"retention policy {self.public_id}"


class LegalHold(TenantOwnedModel):
    """A hold on one study or on every study of one patient: while it is not lifted, nothing is proposed for
    deletion and no proposal is carried out, whatever the policies say."""

    patient = models.ForeignKey(Patient, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # SET_NULL: a study deleted after its hold was lifted leaves the (lifted) hold on record, with its UID.
    study = models.ForeignKey(Study, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    study_instance_uid = models.CharField(max_length=64, blank=True)
    reason = models.CharField(max_length=500)
    placed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    lift_reason = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(patient__isnull=False, study__isnull=False),
                name="studies_legalhold_one_target",
            ),
        ]

    def __str__(self) -> str:
        return f"legal hold {self.public_id}"


class RetentionProposal(TenantOwnedModel):
    """A study proposed for deletion by the daily job. Two different people must approve it (four eyes); the
    second approval carries the deletion out. The study link is cleared when the study goes; the tombstone stays."""

    class Status(models.TextChoices):
        PROPOSED = "proposed", "Awaiting approval"
        DELETED = "deleted", "Approved and deleted"
        REJECTED = "rejected", "Rejected"
        CANCELLED = "cancelled", "Cancelled (hold or policy change)"

    study = models.ForeignKey(Study, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    study_instance_uid = models.CharField(max_length=64)
    policy = models.ForeignKey(RetentionPolicy, on_delete=models.PROTECT, related_name="proposals")
    due_on = models.DateField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PROPOSED)
    first_approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    first_approved_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["due_on", "created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "study"],
                condition=models.Q(status="proposed"),
                name="studies_retentionproposal_tenant_study_open_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"retention proposal {self.public_id}"


class RetentionTombstone(TenantOwnedModel):
    """What is left of a deleted study: its UIDs and dates, the policy, and who approved. No images, no keys."""

    proposal = models.OneToOneField(RetentionProposal, on_delete=models.PROTECT, related_name="tombstone")
    policy = models.ForeignKey(RetentionPolicy, on_delete=models.PROTECT, related_name="+")
    study_instance_uid = models.CharField(max_length=64)
    study_date = models.DateField(null=True, blank=True)
    patient_public_id = models.UUIDField()
    series_instance_uids = models.JSONField(default=list)
    sop_instance_uids = models.JSONField(default=list)
    number_of_instances = models.PositiveIntegerField()
    bytes_deleted = models.BigIntegerField()
    first_approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    deleted_at = models.DateTimeField()

    class Meta:
        ordering = ["-deleted_at"]

    def __str__(self) -> str:
        return f"tombstone {self.public_id}"


class RestoreDrill(models.Model):
    """One run of `manage.py restore_drill` (SECURITY.md B8, B9): the latest database backup and the replica's blobs
    restored into a scratch database and folder, then checked. Platform record, not a tenant's: a drill covers
    every tenant (each tenant's compliance report shows the last one through its own audit event)."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        PASSED = "passed", "Passed"
        FAILED = "failed", "Failed"

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.RUNNING)
    backup_name = models.CharField(max_length=100, blank=True)
    backup_created_at = models.DateTimeField(null=True, blank=True)
    # Measured recovery time: decrypting and restoring the database plus copying the blobs, in seconds.
    recovery_seconds = models.FloatField(null=True, blank=True)
    bytes_restored = models.BigIntegerField(default=0)
    # What was checked, with counts: tables, rows, blobs sampled and verified, chains and events verified.
    checks = models.JSONField(default=dict, blank=True)
    problems = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"restore drill {self.started_at:%Y-%m-%d %H:%M} ({self.status})"


class TenantOffboarding(TenantOwnedModel):
    """A tenant leaving (issue 13): requested by one platform operator, approved by another; the approval exports
    everything (encrypted under a one-off key wrapped by the master key, outside the tenant's keys), destroys the
    tenant's keys and leaves the certificate of destruction here."""

    class Status(models.TextChoices):
        REQUESTED = "requested", "Requested"
        DONE = "done", "Exported and shredded"
        REJECTED = "rejected", "Rejected"

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.REQUESTED)
    reason = models.CharField(max_length=500)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    export_name = models.CharField(max_length=255, blank=True)
    export_sha256 = models.CharField(max_length=64, blank=True)
    export_size = models.BigIntegerField(null=True, blank=True)
    export_key = models.BinaryField(blank=True, default=b"")
    certificate = models.JSONField(default=dict, blank=True)
    certificate_sha256 = models.CharField(max_length=64, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant"],
                condition=models.Q(status="requested"),
                name="studies_tenantoffboarding_tenant_open_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"offboarding {self.public_id}"
