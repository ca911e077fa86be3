from django.db import migrations

from training.catalogue import CATALOGUE

def catalogue_install(apps, schema_editor):
    CatalogueCourse = apps.get_model("training", "CatalogueCourse")
    for code, title, provider, months, evidence in CATALOGUE:
        CatalogueCourse.objects.update_or_create(
            code=code,
            defaults={"title": title, "provider": provider, "validity_months": months, "evidence_required": evidence},
        )


class Migration(migrations.Migration):
    dependencies = [("training", "0001_initial")]

    operations = [migrations.RunPython(catalogue_install, migrations.RunPython.noop)]
