"""The worker's claim reads a tenant's waiting items in id order off an index of their own (tenant, state, id).

Built CONCURRENTLY: the ingest table of a running archive is large and written by every door, and a plain
CREATE INDEX would hold its writes for the whole build."""

from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("devices", "0004_device_certificate_sha256"),
        ("studies", "0018_search_under_row_security"),
        ("tenants", "0018_manage_export_policy"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="ingestitem",
            index=models.Index(fields=["tenant", "state", "id"], name="studies_ingest_claim"),
        ),
    ]
