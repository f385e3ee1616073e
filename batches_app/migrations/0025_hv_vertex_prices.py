"""Add Vertex AI's versioned Gemini model ids to the price table (batches_app/prices.py);
models that already have a row keep it."""

from django.db import migrations


def add_prices(apps, schema_editor):
    from batches_app.prices import VERTEX_PRICES, prices_add

    prices_add(apps.get_model("batches_app", "ModelPrice"), list(VERTEX_PRICES))


class Migration(migrations.Migration):
    dependencies = [("batches_app", "0024_hx_bedrock_prices")]

    operations = [migrations.RunPython(add_prices, migrations.RunPython.noop)]
