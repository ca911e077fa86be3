"""Writes of the archive. One module per concern, re-exported here."""

from studies.services.ingest import (
    Rejected,
    ingest_limits,
    ingest_process,
    ingest_receive,
    ingest_requeue_stale,
)
from studies.services.thumbnails import series_thumbnail_make
from studies.services.uploads import upload_receive, upload_reject

__all__ = [
    "Rejected",
    "ingest_limits",
    "ingest_process",
    "ingest_receive",
    "ingest_requeue_stale",
    "series_thumbnail_make",
    "upload_receive",
    "upload_reject",
]
