"""Audit digests signed with Ed25519 (audit.signing) instead of HMAC, chained to the previous digest, and written
as files to the replica store. Rows signed before keep their HMAC signature, marked `hmac-sha256` (adding the
column with that default fills the existing rows without an UPDATE, which the append-only trigger would refuse);
new rows default to `ed25519`."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("audit", "0009_partition_auditevent_by_month")]

    operations = [
        migrations.AlterField(model_name="auditdigest", name="signature", field=models.CharField(max_length=128)),
        migrations.AddField(
            model_name="auditdigest",
            name="algorithm",
            field=models.CharField(default="hmac-sha256", max_length=16),
            preserve_default=False,
        ),
        migrations.AlterField(
            model_name="auditdigest", name="algorithm", field=models.CharField(default="ed25519", max_length=16)
        ),
        migrations.AddField(
            model_name="auditdigest", name="key_id", field=models.CharField(blank=True, max_length=16)
        ),
        migrations.AddField(
            model_name="auditdigest", name="prev_signature", field=models.CharField(blank=True, max_length=128)
        ),
        migrations.AddField(model_name="auditdigest", name="path", field=models.CharField(blank=True, max_length=200)),
    ]
