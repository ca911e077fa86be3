"""The Ed25519 key that signs the audit digests: read from the environment, never stored in the database.

AUDIT_SIGNING_KEY holds the private key, as the base64 of its raw 32-byte seed or as a PEM (PKCS#8) block. Make
one with

    python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"

or `openssl genpkey -algorithm ed25519` (the PEM). The public key that checks the digests is AUDIT_SIGNING_PUBLIC_KEY
(base64 of the raw 32 bytes) when set, so that a verifier can hold only the public half; otherwise it is derived
from the private key. It is shown on the compliance report, and `manage.py audit_verify --public-key` prints it, so
that an outside auditor can check the digest files of the replica store without Enclave.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

ALGORITHM = "ed25519"


def private_key_parse(text: str) -> Ed25519PrivateKey:
    """A private key from base64 of a raw 32-byte seed, or from a PEM block; ImproperlyConfigured otherwise."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_private_key(text.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ImproperlyConfigured("AUDIT_SIGNING_KEY is a PEM key, but not an Ed25519 one.")
        return key
    try:
        seed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImproperlyConfigured("AUDIT_SIGNING_KEY is neither base64 nor PEM.") from exc
    if len(seed) != 32:
        raise ImproperlyConfigured("AUDIT_SIGNING_KEY must be the base64 of 32 bytes (an Ed25519 seed).")
    return Ed25519PrivateKey.from_private_bytes(seed)


def signing_key() -> Ed25519PrivateKey | None:
    """The private key of AUDIT_SIGNING_KEY, or None when it is not set (nothing is signed then)."""
    text = settings.AUDIT_SIGNING_KEY
    return private_key_parse(text) if text else None


def public_key_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify_key() -> Ed25519PublicKey | None:
    """The public key that checks digests: AUDIT_SIGNING_PUBLIC_KEY, else the private key's; None with neither."""
    published = settings.AUDIT_SIGNING_PUBLIC_KEY
    if published:
        try:
            raw = base64.b64decode(published.strip(), validate=True)
            return Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, ValueError) as exc:
            raise ImproperlyConfigured("AUDIT_SIGNING_PUBLIC_KEY must be the base64 of 32 bytes.") from exc
    private = signing_key()
    return private.public_key() if private is not None else None


def public_key_text() -> str:
    """The public key as base64 of its 32 raw bytes (what is published), or "" when none is configured."""
    key = verify_key()
    return base64.b64encode(public_key_raw(key)).decode() if key is not None else ""


def key_id(key: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 16 hex digits of SHA-256 over its raw bytes."""
    return hashlib.sha256(public_key_raw(key)).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    """The Ed25519 signature of `message`, in hex (128 digits)."""
    return key.sign(message).hex()


def signature_valid(key: Ed25519PublicKey, signature: str, message: bytes) -> bool:
    try:
        key.verify(bytes.fromhex(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True
