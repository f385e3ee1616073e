"""Fill the new price table with default prices (see batches_app/prices.py)."""

from django.db import migrations


def create_defaults(apps, schema_editor):
    from batches_app.prices import prices_seed

    prices_seed(apps.get_model("batches_app", "ModelPrice"))


class Migration(migrations.Migration):
    dependencies = [("batches_app", "0002_model_price")]

    operations = [migrations.RunPython(create_defaults, migrations.RunPython.noop)]
