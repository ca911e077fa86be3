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
)
from studies.services.ingest import (
    Rejected,
    ingest_limits,
    ingest_process,
    ingest_receive,
    ingest_requeue_stale,
    study_counts_refresh,
)
from studies.services.shares import share_create, share_invite_outside, share_revoke, shares_expired_cleanup
from studies.services.thumbnails import series_thumbnail_make
from studies.services.uploads import upload_receive, upload_reject

__all__ = [
    "ExportGone",
    "ExportNotReady",
    "Rejected",
    "break_glass_end",
    "break_glass_end_expired",
    "break_glass_review",
    "break_glass_start",
    "export_download_once",
    "export_owner_check",
    "export_request",
    "export_run",
    "ingest_limits",
    "ingest_process",
    "ingest_receive",
    "ingest_requeue_stale",
    "series_thumbnail_make",
    "share_create",
    "share_invite_outside",
    "share_revoke",
    "shares_expired_cleanup",
    "study_counts_refresh",
    "upload_receive",
    "upload_reject",
]
