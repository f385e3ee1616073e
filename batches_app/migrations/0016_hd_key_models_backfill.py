from django.db import migrations
from django.db.models import Min


def key_models_fill(apps, schema_editor):
    """Each key's models from its requests already batched, so that /v1/models lists them
    after the upgrade as before. One grouped read of the requests (kept RESULT_RETENTION at
    most); the running version never reads the new table."""
    BatchRequest = apps.get_model("requests_app", "BatchRequest")
    KeyModel = apps.get_model("batches_app", "KeyModel")
    pairs = (
        BatchRequest.objects.exclude(batch=None)
        .values("api_key_id", "model")
        .annotate(first=Min("created_at"))
        .order_by()
    )
    rows = [
        KeyModel(api_key_id=row["api_key_id"], model=row["model"], first_used_at=row["first"])
        for row in pairs.iterator(chunk_size=2000)
    ]
    KeyModel.objects.bulk_create(rows, batch_size=2000, ignore_conflicts=True)


class Migration(migrations.Migration):
    dependencies = [
        ("batches_app", "0015_merge_hc_hd"),
        ("requests_app", "0013_alter_batchrequest_endpoint"),
    ]

    operations = [migrations.RunPython(key_models_fill, migrations.RunPython.noop)]
