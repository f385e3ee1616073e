"""Add list prices for Groq, Together and Mistral models to the price table (see
batches_app/prices.py); models that already have a row keep it."""

from django.db import migrations


def add_prices(apps, schema_editor):
    from batches_app.prices import PROVIDER_PRICES, prices_add

    prices_add(apps.get_model("batches_app", "ModelPrice"), list(PROVIDER_PRICES))


class Migration(migrations.Migration):
    dependencies = [("batches_app", "0012_queue_limit_per_upstream")]

    operations = [migrations.RunPython(add_prices, migrations.RunPython.noop)]
