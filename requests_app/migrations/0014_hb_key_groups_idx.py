from django.db import migrations, models

from batchproxy.migration_ops import AddIndexConcurrently


class Migration(migrations.Migration):
    # Built CONCURRENTLY on PostgreSQL: the running version keeps queueing calls meanwhile.
    atomic = False

    dependencies = [
        ("batches_app", "0012_queue_limit_per_upstream"),
        ("requests_app", "0013_alter_batchrequest_endpoint"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="batchrequest",
            index=models.Index(
                condition=models.Q(("status__in", ["queued", "submitted"])),
                fields=["api_key", "endpoint", "model"],
                name="key_groups_idx",
            ),
        ),
    ]
