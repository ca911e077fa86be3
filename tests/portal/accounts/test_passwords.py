"""Argon2 hashing in the real settings (the test settings use a fast hasher)."""

from __future__ import annotations

from django.contrib.auth.hashers import Argon2PasswordHasher

from portal.settings import base


def test_base_settings_hash_with_argon2_first():
    assert base.PASSWORD_HASHERS[0] == "django.contrib.auth.hashers.Argon2PasswordHasher"
    names = [v["NAME"].rsplit(".", 1)[-1] for v in base.AUTH_PASSWORD_VALIDATORS]
    assert {"MinimumLengthValidator", "CommonPasswordValidator"} <= set(names)


def test_argon2_hashes_and_checks_a_password():
    hasher = Argon2PasswordHasher()
    encoded = hasher.encode("correct horse battery staple 42", hasher.salt())
    assert encoded.startswith("argon2$argon2id$")
    assert hasher.verify("correct horse battery staple 42", encoded)
    assert not hasher.verify("correct horse battery staple 43", encoded)
