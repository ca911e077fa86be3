"""Encrypted database backups in the replica store, each with its manifest. Pure storage and crypto: no ORM.

A backup is two files under `backups/` in the replica store (REPLICA_STORE: another disk, another site, S3):
`<name>.dump.enc`, a pg_dump archive (custom format) encrypted in the blob format of studies.storage.envelope
under a fresh data key, and `<name>.json`, its manifest: when, the dump's size and SHA-256, the row count of
every table and the head of every audit chain at the dump's snapshot, and the data key wrapped by the master key.
The key is wrapped with the manifest's digest as associated data, so an edited manifest (a row count lowered to
hide a loss) no longer opens the key. The manifest is written last: a backup without one is unfinished and is
never listed. A backup spans tenants, so no tenant key is used: losing the master key loses the backups.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import Storage, storages

from studies.storage import durable, envelope
from studies.storage.blobs import REPLICA
from studies.storage.keys import master_key_for_wrapping as master_key

logger = logging.getLogger(__name__)

FOLDER = "backups"
READ_PIECE = 1 << 20


class BackupError(Exception):
    """A backup is missing, altered, unreadable with this master key, or does not match its manifest."""


@dataclass
class BackupManifest:
    name: str
    created_at: str  # ISO 8601, UTC: the moment of the dump's snapshot
    database: str
    server_major: int
    pg_dump_version: int
    size: int  # of the pg_dump archive (plaintext)
    sha256: str  # of the pg_dump archive (plaintext)
    encrypted_size: int
    tables: dict[str, int] = field(default_factory=dict)
    chains: list[dict[str, Any]] = field(default_factory=list)
    wrapped_key: str = ""  # base64; associated data: the name and digest()

    @property
    def dump_path(self) -> str:
        return f"{FOLDER}/{self.name}.dump.enc"

    @property
    def manifest_path(self) -> str:
        return f"{FOLDER}/{self.name}.json"

    def digest(self) -> str:
        data = asdict(self)
        data.pop("wrapped_key")
        return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def seal(self, data_key: bytes) -> None:
        """Wrap `data_key` by the master key, bound to this manifest as it is now."""
        self.wrapped_key = base64.b64encode(
            envelope.wrap_backup_key(
                master_key=master_key(), data_key=data_key, name=self.name, manifest_digest=self.digest()
            )
        ).decode()

    def data_key(self) -> bytes:
        """The backup's data key; BackupError when the manifest was changed or the master key is not the one."""
        try:
            return envelope.unwrap_backup_key(
                master_key=master_key(),
                wrapped=base64.b64decode(self.wrapped_key),
                name=self.name,
                manifest_digest=self.digest(),
            )
        except (envelope.DecryptionError, ValueError) as exc:
            raise BackupError(
                f"backup {self.name}: its key does not open (another master key, or the manifest was changed)"
            ) from exc

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> BackupManifest:
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise BackupError("not a backup manifest") from exc


def backup_store() -> Storage:
    return storages[REPLICA]


def _file_pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while piece := handle.read(READ_PIECE):
            yield piece


def backup_write(*, manifest: BackupManifest, dump: Path, work_dir: Path) -> BackupManifest:
    """Encrypt the pg_dump archive `dump` under a fresh key and write it, then its sealed manifest, to the replica
    store. Fills the manifest's size, hash and key. `work_dir` holds the ciphertext until it is stored."""
    data_key = envelope.new_key()
    digest = hashlib.sha256()
    size = 0

    def counted() -> Iterator[bytes]:
        nonlocal size
        for piece in _file_pieces(dump):
            digest.update(piece)
            size += len(piece)
            yield piece

    sealed = work_dir / f"{manifest.name}.dump.enc"
    with sealed.open("wb") as out:
        for piece in envelope.encrypt_chunks(
            counted(), data_key=data_key, tenant_id=envelope.PLATFORM_TENANT_ID, blob_id=f"backup:{manifest.name}"
        ):
            out.write(piece)
    manifest.size, manifest.sha256 = size, digest.hexdigest()
    manifest.encrypted_size = sealed.stat().st_size
    manifest.seal(data_key)
    store = backup_store()
    with sealed.open("rb") as handle:
        stored = store.save(manifest.dump_path, File(handle))
    if stored != manifest.dump_path:
        raise BackupError(f"backup {manifest.name} already exists")
    # On disk in this order (a folder store, settings.BLOB_SYNC): the dump before the manifest that says it is
    # finished, and the manifest before the caller counts the backup done and prunes the older ones, so a crash of
    # the machine never leaves a manifest without its dump, nor the older backups pruned for one it lost.
    durable.stored_file_sync(store, stored)
    written = store.save(manifest.manifest_path, ContentFile(manifest.to_json()))
    durable.stored_file_sync(store, written)
    sealed.unlink()
    return manifest


def backup_list() -> list[BackupManifest]:
    """Every finished backup (one with a manifest), oldest first. An unreadable manifest is logged and skipped."""
    store = backup_store()
    try:
        _, files = store.listdir(FOLDER)
    except (FileNotFoundError, NotADirectoryError):
        return []
    manifests = []
    for file_name in sorted(files):
        if not file_name.endswith(".json"):
            continue
        try:
            with store.open(f"{FOLDER}/{file_name}", "rb") as handle:
                manifests.append(BackupManifest.from_json(handle.read()))
        except (OSError, BackupError):
            logger.warning("backup manifest %s is unreadable", file_name)
    return sorted(manifests, key=lambda m: (m.created_at, m.name))


def backup_get(name: str) -> BackupManifest:
    """The backup called `name`, or the newest for "latest"."""
    backups = backup_list()
    if name == "latest":
        if not backups:
            raise BackupError("there is no backup yet")
        return backups[-1]
    for manifest in backups:
        if manifest.name == name:
            return manifest
    raise BackupError(f"no backup called {name!r}")


def backup_decrypt(*, manifest: BackupManifest, out: Path) -> None:
    """Decrypt the backup into the file `out` and check its size and SHA-256 against the manifest (BackupError
    otherwise, `out` removed): a restore starts only from the exact archive that was made."""
    data_key = manifest.data_key()
    digest = hashlib.sha256()
    size = 0
    store = backup_store()
    try:
        with store.open(manifest.dump_path, "rb") as handle, out.open("wb") as target:
            pieces = iter(lambda: handle.read(READ_PIECE), b"")
            for plain in envelope.decrypt_stream(
                pieces,
                data_key=data_key,
                tenant_id=envelope.PLATFORM_TENANT_ID,
                blob_id=f"backup:{manifest.name}",
            ):
                digest.update(plain)
                size += len(plain)
                target.write(plain)
    except (OSError, envelope.DecryptionError) as exc:
        out.unlink(missing_ok=True)
        raise BackupError(f"backup {manifest.name} is unreadable: {exc}") from exc
    if size != manifest.size or digest.hexdigest() != manifest.sha256:
        out.unlink(missing_ok=True)
        raise BackupError(f"backup {manifest.name} does not match its manifest (size or SHA-256)")


def backup_delete(*, manifest: BackupManifest) -> None:
    """The manifest first, so that a deletion cut short leaves an unlisted file, never a listed broken backup."""
    store = backup_store()
    store.delete(manifest.manifest_path)
    store.delete(manifest.dump_path)


def _replica_files(store: Storage, folder: str = "") -> Iterator[str]:
    dirs, files = store.listdir(folder)
    for file_name in files:
        yield f"{folder}/{file_name}" if folder else file_name
    for sub in dirs:
        if not folder and sub == FOLDER:
            continue  # the backups themselves are not blobs
        yield from _replica_files(store, f"{folder}/{sub}" if folder else sub)


def replica_copy_to(folder: Path) -> tuple[int, int]:
    """Copy every file of the replica store but the backups into `folder`, under the same names (a primary store
    rebuilt elsewhere, for the restore drill). Returns the number of files and of bytes copied."""
    store = backup_store()
    files = size = 0
    for name in _replica_files(store):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with store.open(name, "rb") as source, target.open("wb") as out:
            shutil.copyfileobj(source, out, READ_PIECE)
        files += 1
        size += target.stat().st_size
    return files, size


def backup_unfinished(*, older_than: datetime) -> list[str]:
    """Paths of encrypted dumps that have no manifest (a backup cut short between its two files, or a manifest
    that could not be written) and were written before `older_than`: never listed, never restorable, only space."""
    store = backup_store()
    try:
        _, files = store.listdir(FOLDER)
    except (FileNotFoundError, NotADirectoryError):
        return []
    finished = {f.removesuffix(".json") for f in files if f.endswith(".json")}
    return [
        f"{FOLDER}/{f}"
        for f in sorted(files)
        if f.endswith(".dump.enc")
        and f.removesuffix(".dump.enc") not in finished
        and store.get_modified_time(f"{FOLDER}/{f}") < older_than
    ]
