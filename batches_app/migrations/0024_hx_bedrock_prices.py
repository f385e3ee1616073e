"""Add on-demand prices for a few Bedrock model ids to the price table (batches_app/prices.py);
models that already have a row keep it."""

from django.db import migrations


def add_prices(apps, schema_editor):
    from batches_app.prices import BEDROCK_PRICES, prices_add

    prices_add(apps.get_model("batches_app", "ModelPrice"), list(BEDROCK_PRICES))


class Migration(migrations.Migration):
    dependencies = [("batches_app", "0023_hx_xai_prices")]

    operations = [migrations.RunPython(add_prices, migrations.RunPython.noop)]
