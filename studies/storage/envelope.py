"""Envelope encryption, pure functions over bytes (no ORM, no settings).

The master key wraps one key-encryption key (KEK) per tenant. A study has its own key-encryption key (the study
key), wrapped by the tenant KEK and kept in the blob stores, never in the database; each blob has its own random
data key, wrapped by its study's key (instances and thumbnails) or by its tenant's KEK (blobs of no one study).
Blobs are AES-256-GCM in independent chunks (the STREAM construction): each chunk's nonce is a random per-blob
prefix plus the chunk counter, and its associated data binds the tenant id, the blob id, the chunk index and
whether it is the last chunk. So a chunk cannot be moved to another blob, another tenant or
another position, and a blob cut short is detected; and a blob can be decrypted as a stream, chunk by chunk,
without holding it whole in memory.

Format of an encrypted blob: MAGIC (4) | chunk size (4, big-endian) | nonce prefix (8) | chunks, each the
ciphertext of up to `chunk size` bytes followed by its 16-byte tag.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"ENC1"
HEADER = struct.Struct(">4sI8s")
TAG_BYTES = 16
KEY_BYTES = 32
DEFAULT_CHUNK = 1 << 20


class DecryptionError(Exception):
    """The bytes were altered, truncated, reordered or belong to another blob or tenant."""


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def _wrap(wrapping_key: bytes, key: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(wrapping_key).encrypt(nonce, key, aad)


def _unwrap(wrapping_key: bytes, wrapped: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(wrapping_key).decrypt(wrapped[:12], wrapped[12:], aad)
    except InvalidTag as exc:
        raise DecryptionError("a wrapped key does not open with this key") from exc


def _kek_aad(tenant_id: int, version: int) -> bytes:
    return f"enclave:kek:{tenant_id}:{version}".encode()


def _data_key_aad(tenant_id: int, blob_id: str) -> bytes:
    return f"enclave:dek:{tenant_id}:{blob_id}".encode()


def wrap_tenant_key(*, master_key: bytes, tenant_key: bytes, tenant_id: int, version: int) -> bytes:
    return _wrap(master_key, tenant_key, _kek_aad(tenant_id, version))


def unwrap_tenant_key(*, master_key: bytes, wrapped: bytes, tenant_id: int, version: int) -> bytes:
    return _unwrap(master_key, wrapped, _kek_aad(tenant_id, version))


def wrap_data_key(*, tenant_key: bytes, data_key: bytes, tenant_id: int, blob_id: str) -> bytes:
    return _wrap(tenant_key, data_key, _data_key_aad(tenant_id, blob_id))


def unwrap_data_key(*, tenant_key: bytes, wrapped: bytes, tenant_id: int, blob_id: str) -> bytes:
    return _unwrap(tenant_key, wrapped, _data_key_aad(tenant_id, blob_id))


def _study_key_aad(tenant_id: int, key_id: str, version: int) -> bytes:
    return f"enclave:sk:{tenant_id}:{key_id}:{version}".encode()


def _study_data_key_aad(tenant_id: int, blob_id: str) -> bytes:
    return f"enclave:dek-study:{tenant_id}:{blob_id}".encode()


def wrap_study_key(*, tenant_key: bytes, study_key: bytes, tenant_id: int, key_id: str, version: int) -> bytes:
    """`version` is that of the tenant key that wraps it: a file rewrapped under another version is another file."""
    return _wrap(tenant_key, study_key, _study_key_aad(tenant_id, key_id, version))


def unwrap_study_key(*, tenant_key: bytes, wrapped: bytes, tenant_id: int, key_id: str, version: int) -> bytes:
    return _unwrap(tenant_key, wrapped, _study_key_aad(tenant_id, key_id, version))


def wrap_data_key_by_study(*, study_key: bytes, data_key: bytes, tenant_id: int, blob_id: str) -> bytes:
    return _wrap(study_key, data_key, _study_data_key_aad(tenant_id, blob_id))


def unwrap_data_key_by_study(*, study_key: bytes, wrapped: bytes, tenant_id: int, blob_id: str) -> bytes:
    return _unwrap(study_key, wrapped, _study_data_key_aad(tenant_id, blob_id))


def wrap_export_key(*, master_key: bytes, export_key: bytes, tenant_id: int, export_id: str) -> bytes:
    """A tenant's offboarding export is keyed apart from the tenant's keys, which are destroyed after it."""
    return _wrap(master_key, export_key, f"enclave:offboard:{tenant_id}:{export_id}".encode())


def unwrap_export_key(*, master_key: bytes, wrapped: bytes, tenant_id: int, export_id: str) -> bytes:
    return _unwrap(master_key, wrapped, f"enclave:offboard:{tenant_id}:{export_id}".encode())


def _chunk_aad(tenant_id: int, blob_id: str, index: int, last: bool) -> bytes:
    return f"enclave:blob:{tenant_id}:{blob_id}:{index}:{int(last)}".encode()


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">I", index)


def encrypt_chunks(
    chunks: Iterable[bytes], *, data_key: bytes, tenant_id: int, blob_id: str, chunk_size: int = DEFAULT_CHUNK
) -> Iterator[bytes]:
    """Encrypt a stream of plaintext (any chunking) into the blob format, yielding the output piece by piece."""
    prefix = os.urandom(8)
    aead = AESGCM(data_key)
    yield HEADER.pack(MAGIC, chunk_size, prefix)
    pending = b""
    index = 0
    source = iter(chunks)
    exhausted = False
    while not exhausted or pending:
        while len(pending) <= chunk_size and not exhausted:
            try:
                pending += next(source)
            except StopIteration:
                exhausted = True
        piece, pending = pending[:chunk_size], pending[chunk_size:]
        last = exhausted and not pending
        yield aead.encrypt(_nonce(prefix, index), piece, _chunk_aad(tenant_id, blob_id, index, last))
        index += 1
        if last:
            return  # empty input gives one empty final chunk, so an empty blob still authenticates


def encrypt(
    plaintext: bytes, *, data_key: bytes, tenant_id: int, blob_id: str, chunk_size: int = DEFAULT_CHUNK
) -> bytes:
    return b"".join(
        encrypt_chunks([plaintext], data_key=data_key, tenant_id=tenant_id, blob_id=blob_id, chunk_size=chunk_size)
    )


def encrypt_and_hash(
    plaintext: bytes, *, data_key: bytes, tenant_id: int, blob_id: str, chunk_size: int = DEFAULT_CHUNK
) -> tuple[bytes, str]:
    """The blob format of `plaintext` and its SHA-256 (hex), in one pass over the bytes: each chunk is hashed and
    encrypted while it is in the cache, and no chunk is copied before it is encrypted (the chunks are views)."""
    prefix = os.urandom(8)
    aead = AESGCM(data_key)
    digest = hashlib.sha256()
    view = memoryview(plaintext)
    out = [HEADER.pack(MAGIC, chunk_size, prefix)]
    count = max(1, -(-len(view) // chunk_size))  # an empty input is one empty final chunk, as in encrypt_chunks
    for index in range(count):
        piece = view[index * chunk_size : (index + 1) * chunk_size]
        digest.update(piece)
        last = index == count - 1
        out.append(aead.encrypt(_nonce(prefix, index), piece, _chunk_aad(tenant_id, blob_id, index, last)))
    return b"".join(out), digest.hexdigest()


def decrypt_stream(read: Iterable[bytes], *, data_key: bytes, tenant_id: int, blob_id: str) -> Iterator[bytes]:
    """Decrypt a blob given as a stream of ciphertext pieces, yielding plaintext chunk by chunk.

    Raises DecryptionError as soon as a chunk fails, and at the end if the final chunk never came.
    """
    buffer = b""
    source = iter(read)
    exhausted = False

    def fill(n: int) -> None:
        nonlocal buffer, exhausted
        while len(buffer) < n and not exhausted:
            try:
                buffer += next(source)
            except StopIteration:
                exhausted = True

    fill(HEADER.size)
    if len(buffer) < HEADER.size:
        raise DecryptionError("too short to be an encrypted blob")
    magic, chunk_size, prefix = HEADER.unpack(buffer[: HEADER.size])
    if magic != MAGIC or chunk_size <= 0:
        raise DecryptionError("not an encrypted blob")
    buffer = buffer[HEADER.size :]
    aead = AESGCM(data_key)
    sealed = chunk_size + TAG_BYTES
    index = 0
    while True:
        fill(sealed + 1)  # one byte more tells whether this chunk is the last
        if not buffer:
            raise DecryptionError("the blob ends before its final chunk")
        piece, rest = buffer[:sealed], buffer[sealed:]
        last = exhausted and not rest
        try:
            yield aead.decrypt(_nonce(prefix, index), piece, _chunk_aad(tenant_id, blob_id, index, last))
        except InvalidTag as exc:
            raise DecryptionError(f"chunk {index} was altered, moved or cut") from exc
        if last:
            return
        buffer = rest
        index += 1


def decrypt_chunks(
    ciphertext: bytes | memoryview,
    *,
    data_key: bytes | AESGCM,
    tenant_id: int,
    blob_id: str,
    scratch: bytearray | None = None,
    lead: bytes = b"",
    views: bool = False,
) -> list[bytes] | list[memoryview]:
    """The plaintext of a whole blob held in memory, as its chunks, every one authenticated before this returns.

    The same checks as `decrypt_stream` (each chunk's tag under its index, the final chunk marked final, so a
    blob altered, cut short, extended or moved raises DecryptionError), without copying the ciphertext: each
    chunk is decrypted from a view of `ciphertext`. A caller that writes the chunks out one after the other (a
    WADO-RS part) never joins them; `decrypt` does.

    `scratch`, a buffer the caller reuses from one blob to the next (at least the blob's chunk size, else it is
    not used): each chunk is decrypted into it (`AESGCM.decrypt_into`) and copied out as its own bytes, instead of
    into a new bytes object that AES-GCM's binding first fills with zeros. The buffer stays in the CPU's cache
    from one instance to the next, so the decryption writes to cache rather than to fresh memory (issue 10: the
    60 instances of a CT series, read and decrypted, about 1 ms of CPU less). The chunks returned are copies:
    nothing returned refers to `scratch`, so it can be reused as soon as this returns.

    `lead`: bytes that go before the plaintext (a WADO-RS part's header), returned at the head of the first chunk
    (copied out of `scratch` with it, at no cost more) or, without `scratch`, as a first item of their own:
    `b"".join(result) == lead + plaintext` either way, and `lead` is returned only once every chunk has
    authenticated. A caller writing the items out then writes a part's header and its instance in one write.

    `data_key`: the blob's data key, or `AESGCM(data_key)` made by a caller that prepared it ahead (a WADO-RS
    retrieval: studies.storage.blobs.blob_reads_prepare).

    `views`: a blob of one chunk (a CT slice) whose `lead` and plaintext fit in `scratch` is returned as one
    view of `scratch`, `lead` then the plaintext, copied nowhere: for a caller that writes it out before it
    reads again (a WADO-RS part written by gunicorn straight from the buffer the chunk was decrypted into; issue
    10). The view is valid only until `scratch` is used again. A blob of several chunks, or without room, is
    returned as copies, as without `views`."""
    view = memoryview(ciphertext)
    if len(view) < HEADER.size:
        raise DecryptionError("too short to be an encrypted blob")
    magic, chunk_size, prefix = HEADER.unpack_from(view)
    if magic != MAGIC or chunk_size <= 0:
        raise DecryptionError("not an encrypted blob")
    body = view[HEADER.size :]
    if not body:
        raise DecryptionError("the blob ends before its final chunk")
    aead = data_key if isinstance(data_key, AESGCM) else AESGCM(data_key)
    sealed = chunk_size + TAG_BYTES
    count = -(-len(body) // sealed)
    plain = []
    start = len(lead)
    if views and scratch is not None and count == 1 and start + len(body) - TAG_BYTES <= len(scratch):
        out = memoryview(scratch)
        size = len(body) - TAG_BYTES
        try:
            if size < 0:  # shorter than a tag: `decrypt` refuses it as InvalidTag
                raise InvalidTag()
            aead.decrypt_into(_nonce(prefix, 0), body, _chunk_aad(tenant_id, blob_id, 0, True), out[start:][:size])
        except InvalidTag as exc:
            raise DecryptionError("chunk 0 was altered, moved or cut") from exc
        out[:start] = lead  # after the tag is checked: nothing of a damaged copy is returned
        return [out[: start + size]]
    if scratch is not None and chunk_size <= len(scratch):
        out = memoryview(scratch)
        for index in range(count):
            piece = body[index * sealed : (index + 1) * sealed]
            size = len(piece) - TAG_BYTES
            try:
                if size < 0:  # shorter than a tag: `decrypt` refuses it as InvalidTag
                    raise InvalidTag()
                aead.decrypt_into(
                    _nonce(prefix, index), piece, _chunk_aad(tenant_id, blob_id, index, index == count - 1), out[:size]
                )
            except InvalidTag as exc:
                raise DecryptionError(f"chunk {index} was altered, moved or cut") from exc
            plain.append(b"".join((lead, out[:size])) if index == 0 else bytes(out[:size]))
        return plain
    if lead:
        plain.append(lead)
    for index in range(count):
        last = index == count - 1
        try:
            plain.append(
                aead.decrypt(
                    _nonce(prefix, index),
                    body[index * sealed : (index + 1) * sealed],
                    _chunk_aad(tenant_id, blob_id, index, last),
                )
            )
        except InvalidTag as exc:
            raise DecryptionError(f"chunk {index} was altered, moved or cut") from exc
    return plain


def decrypt(ciphertext: bytes, *, data_key: bytes, tenant_id: int, blob_id: str) -> bytes:
    # A blob of one chunk (up to 1 MiB) is returned as decrypted: bytes.join of one item is that item.
    return b"".join(decrypt_chunks(ciphertext, data_key=data_key, tenant_id=tenant_id, blob_id=blob_id))


# Database backups (studies.storage.backups) are platform data: no tenant. Their chunks use tenant id 0 (tenant
# ids start at 1) and the backup's name as the blob id; their data key is wrapped by the master key directly, with
# the digest of the backup's manifest as associated data, so a changed manifest no longer opens the key.
PLATFORM_TENANT_ID = 0


def _backup_key_aad(name: str, manifest_digest: str) -> bytes:
    return f"enclave:backup:{name}:{manifest_digest}".encode()


def wrap_backup_key(*, master_key: bytes, data_key: bytes, name: str, manifest_digest: str) -> bytes:
    return _wrap(master_key, data_key, _backup_key_aad(name, manifest_digest))


def unwrap_backup_key(*, master_key: bytes, wrapped: bytes, name: str, manifest_digest: str) -> bytes:
    return _unwrap(master_key, wrapped, _backup_key_aad(name, manifest_digest))
