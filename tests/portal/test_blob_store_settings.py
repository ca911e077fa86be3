"""The blob stores' settings from the environment (portal.settings.base.blob_store): a folder, or S3 with its
endpoint, keys and server-side encryption passed through to every object."""

from __future__ import annotations

from pathlib import Path

from portal.settings.base import blob_store


def test_a_file_url_or_nothing_is_a_folder(tmp_path):
    assert blob_store(f"file://{tmp_path}", Path("/unused")) == {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(tmp_path)},
    }
    assert blob_store("", tmp_path)["OPTIONS"] == {"location": str(tmp_path)}


def test_an_s3_url_takes_its_endpoint_keys_and_sse_kms_from_the_environment(monkeypatch):
    for name, value in {
        "BLOB_S3_ENDPOINT_URL": "https://s3.example.org",
        "BLOB_S3_REGION": "eu-central-1",
        "BLOB_S3_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "BLOB_S3_SECRET_ACCESS_KEY": "not-a-real-secret",  # pragma: allowlist secret
        "BLOB_S3_SSE": "aws:kms",
        "BLOB_S3_SSE_KMS_KEY_ID": "arn:aws:kms:eu-central-1:111122223333:key/example",
    }.items():
        monkeypatch.setenv(name, value)
    store = blob_store("s3://enclave-primary/archive/", Path("/unused"))
    assert store["BACKEND"] == "storages.backends.s3.S3Storage"
    options = store["OPTIONS"]
    assert (options["bucket_name"], options["location"]) == ("enclave-primary", "archive")
    assert options["endpoint_url"] == "https://s3.example.org"
    assert (options["access_key"], options["secret_key"], options["region_name"]) == (
        "AKIDEXAMPLE", "not-a-real-secret", "eu-central-1",
    )  # fmt: skip
    assert options["object_parameters"] == {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "arn:aws:kms:eu-central-1:111122223333:key/example",
    }
    assert options["default_acl"] is None  # never a public ACL


def test_an_s3_url_without_variables_leaves_boto3_its_own_credentials(monkeypatch):
    for name in ("BLOB_S3_ENDPOINT_URL", "BLOB_S3_ACCESS_KEY_ID", "BLOB_S3_SECRET_ACCESS_KEY", "BLOB_S3_SSE",
                 "BLOB_S3_SSE_KMS_KEY_ID", "BLOB_S3_REGION"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    options = blob_store("s3://enclave-replica", Path("/unused"))["OPTIONS"]
    assert (options["bucket_name"], options["location"]) == ("enclave-replica", "")
    assert (options["access_key"], options["secret_key"], options["endpoint_url"]) == (None, None, None)
    assert options["object_parameters"] == {}
