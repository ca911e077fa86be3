"""Writes to a folder store that reach the disk before they count (settings.BLOB_SYNC, on unless turned off).

An object is stored once its row commits; PostgreSQL makes the row durable (its WAL is flushed at the commit), and
this makes the ciphertext and its key files durable too before the commit: the file's data (fdatasync on its own
descriptor), then its name and the names of the folders made for it (fsync of each folder that holds one). A sender
told that an object was stored (a C-STORE success, a STOW-RS answer) must not lose it to a crash of the machine
while its bytes were still in the page cache. Orthanc does the same by default (its SyncStorageArea option).

An S3 store needs none of it: an object it has accepted is stored. Only exactly Django's FileSystemStorage is
synced here, as studies.storage.blobs writes only it by hand.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.core.files.storage import FileSystemStorage, Storage


def sync_on() -> bool:
    """Whether a folder store's writes are synced before they count (settings.BLOB_SYNC)."""
    return bool(getattr(settings, "BLOB_SYNC", True))


def folder_sync(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def entries_sync(path: str, made: list[str]) -> None:
    """Make the name `path` and the folders `made` for it durable: fsync of the folder that holds each new name (a
    file's name is an entry of its folder, a new folder's name one of its parent's)."""
    for folder in {os.path.dirname(path), *(os.path.dirname(one) for one in made)}:
        folder_sync(folder)


def stored_file_sync(storage: Storage, name: str) -> None:
    """A file just saved through the storage API (`storage.save`), made durable when `storage` is a folder store:
    its data, then every folder from its own up to the store's root (the API does not say which folders it made,
    and these files are few: a study's key files)."""
    if not sync_on() or type(storage) is not FileSystemStorage:
        return
    path = storage.path(name)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
    root = os.path.abspath(storage.location)
    folder = os.path.dirname(path)
    while True:
        folder_sync(folder)
        if os.path.abspath(folder) == root or os.path.dirname(folder) == folder:
            break
        folder = os.path.dirname(folder)
