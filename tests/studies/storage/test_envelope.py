"""Envelope encryption: round trips, and every way a blob can be tampered with is refused."""

from __future__ import annotations

import os

import pytest

from studies.storage import envelope as env

TENANT, BLOB = 7, "3f0b6a7e-blob"


@pytest.fixture
def key() -> bytes:
    return env.new_key()


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, 4095, 4097, 3 * 4096, 10_000])
def test_round_trip_at_every_boundary(key, size):
    data = os.urandom(size)
    sealed = env.encrypt(data, data_key=key, tenant_id=TENANT, blob_id=BLOB, chunk_size=4096)
    assert env.decrypt(sealed, data_key=key, tenant_id=TENANT, blob_id=BLOB) == data


def test_stream_decrypts_piece_by_piece(key):
    data = os.urandom(50_000)
    sealed = env.encrypt(data, data_key=key, tenant_id=TENANT, blob_id=BLOB, chunk_size=4096)
    pieces = [sealed[i : i + 777] for i in range(0, len(sealed), 777)]
    out = list(env.decrypt_stream(pieces, data_key=key, tenant_id=TENANT, blob_id=BLOB))
    assert b"".join(out) == data
    assert len(out) == 13  # one plaintext chunk at a time, never the whole blob


def test_ciphertext_shows_nothing_of_the_plaintext(key):
    data = b"\0" * 128 + b"DICM" + b"DOE^JANE" * 100
    sealed = env.encrypt(data, data_key=key, tenant_id=TENANT, blob_id=BLOB)
    assert b"DICM" not in sealed
    assert b"DOE^JANE" not in sealed


def test_flipped_byte_is_refused(key):
    sealed = bytearray(env.encrypt(os.urandom(10_000), data_key=key, tenant_id=TENANT, blob_id=BLOB, chunk_size=4096))
    sealed[5000] ^= 1
    with pytest.raises(env.DecryptionError):
        env.decrypt(bytes(sealed), data_key=key, tenant_id=TENANT, blob_id=BLOB)


@pytest.mark.parametrize("cut", [1, 16, 4096 + 16])
def test_truncated_blob_is_refused_even_at_a_chunk_boundary(key, cut):
    sealed = env.encrypt(os.urandom(3 * 4096), data_key=key, tenant_id=TENANT, blob_id=BLOB, chunk_size=4096)
    with pytest.raises(env.DecryptionError):
        env.decrypt(sealed[:-cut], data_key=key, tenant_id=TENANT, blob_id=BLOB)


def test_blob_bound_to_its_tenant_and_id(key):
    sealed = env.encrypt(b"pixels", data_key=key, tenant_id=TENANT, blob_id=BLOB)
    with pytest.raises(env.DecryptionError):
        env.decrypt(sealed, data_key=key, tenant_id=TENANT + 1, blob_id=BLOB)
    with pytest.raises(env.DecryptionError):
        env.decrypt(sealed, data_key=key, tenant_id=TENANT, blob_id="another")


def test_reordered_chunks_are_refused(key):
    sealed = env.encrypt(os.urandom(3 * 4096), data_key=key, tenant_id=TENANT, blob_id=BLOB, chunk_size=4096)
    header, size = sealed[: env.HEADER.size], 4096 + env.TAG_BYTES
    body = sealed[env.HEADER.size :]
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    swapped = header + chunks[1] + chunks[0] + b"".join(chunks[2:])
    with pytest.raises(env.DecryptionError):
        env.decrypt(swapped, data_key=key, tenant_id=TENANT, blob_id=BLOB)


def test_keys_wrap_and_unwrap_only_in_their_context():
    master, kek, dek = env.new_key(), env.new_key(), env.new_key()
    wrapped_kek = env.wrap_tenant_key(master_key=master, tenant_key=kek, tenant_id=TENANT, version=1)
    assert env.unwrap_tenant_key(master_key=master, wrapped=wrapped_kek, tenant_id=TENANT, version=1) == kek
    with pytest.raises(env.DecryptionError):
        env.unwrap_tenant_key(master_key=master, wrapped=wrapped_kek, tenant_id=TENANT + 1, version=1)
    with pytest.raises(env.DecryptionError):
        env.unwrap_tenant_key(master_key=env.new_key(), wrapped=wrapped_kek, tenant_id=TENANT, version=1)
    wrapped_dek = env.wrap_data_key(tenant_key=kek, data_key=dek, tenant_id=TENANT, blob_id=BLOB)
    assert env.unwrap_data_key(tenant_key=kek, wrapped=wrapped_dek, tenant_id=TENANT, blob_id=BLOB) == dek
    with pytest.raises(env.DecryptionError):
        env.unwrap_data_key(tenant_key=kek, wrapped=wrapped_dek, tenant_id=TENANT, blob_id="other")


def test_decrypt_chunks_gives_the_chunks_only_once_every_one_is_authenticated(key):
    data = os.urandom(3 * 4096 + 5)
    sealed = env.encrypt(data, data_key=key, tenant_id=TENANT, blob_id=BLOB, chunk_size=4096)
    chunks = env.decrypt_chunks(sealed, data_key=key, tenant_id=TENANT, blob_id=BLOB)
    assert [len(chunk) for chunk in chunks] == [4096, 4096, 4096, 5]
    assert b"".join(chunks) == data
    damaged_last = bytearray(sealed)
    damaged_last[-1] ^= 1
    extended = sealed + sealed[env.HEADER.size : env.HEADER.size + 4096 + env.TAG_BYTES]
    for bad in (bytes(damaged_last), extended, sealed[: env.HEADER.size], b"ENC1"):
        with pytest.raises(env.DecryptionError):
            env.decrypt_chunks(bad, data_key=key, tenant_id=TENANT, blob_id=BLOB)


def test_a_read_checks_tags_and_size_and_fixity_checks_the_stored_hash(key):
    """A read (`blob_sealed_open`) trusts AES-GCM's tags, which bind every chunk to this blob's own key, id and
    place, and compares the size; the fixity check (`blob_sealed_check`) still compares the stored SHA-256."""
    import hashlib
    import uuid

    from studies.models import Blob
    from studies.storage.blobs import blob_sealed_check, blob_sealed_open

    data = os.urandom(10_000)
    blob = Blob(tenant_id=TENANT, public_id=uuid.uuid4(), size=len(data), sha256=hashlib.sha256(data).hexdigest())
    sealed = env.encrypt(data, data_key=key, tenant_id=TENANT, blob_id=str(blob.public_id), chunk_size=4096)
    assert b"".join(blob_sealed_open(blob=blob, sealed=sealed, data_key=key)) == data
    assert blob_sealed_check(blob=blob, sealed=sealed, data_key=key) == data
    blob.sha256 = "0" * 64
    with pytest.raises(env.DecryptionError):
        blob_sealed_check(blob=blob, sealed=sealed, data_key=key)
    blob.size = len(data) - 1
    with pytest.raises(env.DecryptionError):
        blob_sealed_open(blob=blob, sealed=sealed, data_key=key)
    other = Blob(tenant_id=TENANT, public_id=uuid.uuid4(), size=len(data))
    with pytest.raises(env.DecryptionError):  # another blob's ciphertext under this key does not open
        blob_sealed_open(blob=other, sealed=sealed, data_key=key)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4095, 4096, 4097, 3 * 4096 + 5])
def test_decrypt_chunks_into_a_reused_buffer_gives_the_same_chunks_as_copies_of_their_own(key, size):
    """`scratch` (a buffer reused from one blob to the next): the same chunks, each its own bytes, so the next
    decryption into the buffer changes none of those already returned; a buffer smaller than a chunk is not used."""
    data, other = os.urandom(size), os.urandom(size)
    sealed = env.encrypt(data, data_key=key, tenant_id=TENANT, blob_id=BLOB, chunk_size=4096)
    sealed_other = env.encrypt(other, data_key=key, tenant_id=TENANT, blob_id=BLOB, chunk_size=4096)
    plain = env.decrypt_chunks(sealed, data_key=key, tenant_id=TENANT, blob_id=BLOB)
    for scratch in (bytearray(4096), bytearray(8192), bytearray(4095)):
        chunks = env.decrypt_chunks(sealed, data_key=key, tenant_id=TENANT, blob_id=BLOB, scratch=scratch)
        assert chunks == plain
        assert all(type(chunk) is bytes for chunk in chunks)
        assert (
            b"".join(env.decrypt_chunks(sealed_other, data_key=key, tenant_id=TENANT, blob_id=BLOB, scratch=scratch))
            == other
        )
        assert b"".join(chunks) == data  # the buffer was written again: what was returned did not change


def test_decrypt_chunks_into_a_reused_buffer_refuses_what_a_decryption_of_its_own_refuses(key):
    data = os.urandom(3 * 4096 + 5)
    sealed = env.encrypt(data, data_key=key, tenant_id=TENANT, blob_id=BLOB, chunk_size=4096)
    damaged_first = bytearray(sealed)
    damaged_first[env.HEADER.size] ^= 1
    damaged_last = bytearray(sealed)
    damaged_last[-1] ^= 1
    extended = sealed + sealed[env.HEADER.size : env.HEADER.size + 4096 + env.TAG_BYTES]
    last_cut_below_a_tag = sealed[: -(5 + env.TAG_BYTES) + 3]  # the last chunk's 3 bytes: shorter than a tag
    moved = (damaged_first, damaged_last, extended, last_cut_below_a_tag, sealed[: env.HEADER.size], b"ENC1")
    for bad in moved:
        with pytest.raises(env.DecryptionError):
            env.decrypt_chunks(bytes(bad), data_key=key, tenant_id=TENANT, blob_id=BLOB, scratch=bytearray(4096))
    with pytest.raises(env.DecryptionError):  # another blob's id
        env.decrypt_chunks(sealed, data_key=key, tenant_id=TENANT, blob_id="other", scratch=bytearray(4096))


@pytest.mark.parametrize("size", [0, 5, 4096, 3 * 4096 + 5])
def test_decrypt_chunks_lead_comes_first_once_every_chunk_is_authenticated(key, size):
    """`lead` (a WADO-RS part's header): at the head of the first chunk copied out of `scratch`, or its own first
    item without it; never returned for a blob that does not authenticate."""
    data, lead = os.urandom(size), b"\r\n--boundary\r\nContent-Type: application/dicom\r\n\r\n"
    sealed = env.encrypt(data, data_key=key, tenant_id=TENANT, blob_id=BLOB, chunk_size=4096)
    into = env.decrypt_chunks(sealed, data_key=key, tenant_id=TENANT, blob_id=BLOB, scratch=bytearray(4096), lead=lead)
    assert b"".join(into) == lead + data
    assert into[0].startswith(lead)
    assert len(into) == max(1, -(-size // 4096))
    own = env.decrypt_chunks(sealed, data_key=key, tenant_id=TENANT, blob_id=BLOB, lead=lead)
    assert own[0] == lead
    assert b"".join(own) == lead + data
    damaged = bytearray(sealed)
    damaged[-1] ^= 1
    for scratch in (bytearray(4096), None):
        with pytest.raises(env.DecryptionError):
            env.decrypt_chunks(bytes(damaged), data_key=key, tenant_id=TENANT, blob_id=BLOB, scratch=scratch, lead=lead)


@pytest.mark.parametrize("size", [0, 5, 4000, 4096, 3 * 4096 + 5])
def test_decrypt_chunks_views_give_a_one_chunk_blob_as_one_view_of_the_buffer(key, size):
    """`views` (a WADO-RS part gunicorn writes from the buffer): a blob of one chunk whose lead and plaintext fit
    in `scratch` is one view of `scratch`, the lead then the plaintext; a blob of several chunks, or one without
    room for its lead, is copies, as without `views`; a blob that does not authenticate raises, the same checks
    as every other way."""
    data, lead = os.urandom(size), b"\r\n--boundary\r\nContent-Type: application/dicom\r\n\r\n"
    sealed = env.encrypt(data, data_key=key, tenant_id=TENANT, blob_id=BLOB, chunk_size=4096)
    scratch = bytearray(4096 + 128)
    out = env.decrypt_chunks(
        sealed, data_key=key, tenant_id=TENANT, blob_id=BLOB, scratch=scratch, lead=lead, views=True
    )
    assert b"".join(out) == lead + data
    one_view = size <= 4096 and len(lead) + size <= len(scratch)
    assert [type(item) for item in out] == ([memoryview] if one_view else [bytes] * max(1, -(-size // 4096)))
    if one_view:
        assert out[0].obj is scratch  # nothing copied: the buffer itself
    small = bytearray(4096)  # room for the chunk, not for the lead in front of it: copies
    tight = env.decrypt_chunks(
        sealed, data_key=key, tenant_id=TENANT, blob_id=BLOB, scratch=small, lead=lead, views=True
    )
    assert b"".join(tight) == lead + data
    assert size < 4096 - len(lead) or all(type(item) is bytes for item in tight)
    for cut in (slice(None, -1), slice(None, env.HEADER.size + 3)):
        damaged = bytearray(sealed)
        damaged[-1] ^= 1
        for bad in (bytes(damaged), sealed[cut]):
            with pytest.raises(env.DecryptionError):
                env.decrypt_chunks(
                    bad, data_key=key, tenant_id=TENANT, blob_id=BLOB, scratch=scratch, lead=lead, views=True
                )
    with pytest.raises(env.DecryptionError):  # another blob's id
        env.decrypt_chunks(sealed, data_key=key, tenant_id=TENANT, blob_id="other", scratch=scratch, views=True)
