"""Writes of the archive. One module per concern, re-exported here."""

from studies.services.break_glass import (
    break_glass_end,
    break_glass_end_expired,
    break_glass_review,
    break_glass_start,
)
from studies.services.exports import (
    ExportGone,
    ExportNotReady,
    export_download_once,
    export_owner_check,
    export_request,
    export_run,
    export_shown_check,
)
from studies.services.ingest import (
    Rejected,
    ingest_limits,
    ingest_process,
    ingest_quarantine,
    ingest_receive,
    ingest_receive_many,
    ingest_requeue_stale,
    ingest_verdicts_wait,
    ingest_wake,
    study_counts_refresh,
)
from studies.services.keys import RotationReport, master_key_rotate, study_keys_adopt, tenant_key_rotate
from studies.services.refusals import ingest_refusal_record
from studies.services.shares import (
    OUTSIDE_INVITED,
    share_create,
    share_invitation_accepted,
    share_invitation_withdraw,
    share_invite_outside,
    share_revoke,
    shares_expired_cleanup,
)
from studies.services.thumbnails import series_thumbnail_make
from studies.services.uploads import upload_receive, upload_reject

__all__ = [
    "OUTSIDE_INVITED",
    "ExportGone",
    "ExportNotReady",
    "Rejected",
    "RotationReport",
    "break_glass_end",
    "break_glass_end_expired",
    "break_glass_review",
    "break_glass_start",
    "export_download_once",
    "export_owner_check",
    "export_request",
    "export_run",
    "export_shown_check",
    "ingest_limits",
    "ingest_process",
    "ingest_quarantine",
    "ingest_receive",
    "ingest_receive_many",
    "ingest_refusal_record",
    "ingest_requeue_stale",
    "ingest_verdicts_wait",
    "ingest_wake",
    "master_key_rotate",
    "series_thumbnail_make",
    "share_create",
    "share_invitation_accepted",
    "share_invitation_withdraw",
    "share_invite_outside",
    "share_revoke",
    "shares_expired_cleanup",
    "study_counts_refresh",
    "study_keys_adopt",
    "tenant_key_rotate",
    "upload_receive",
    "upload_reject",
]
