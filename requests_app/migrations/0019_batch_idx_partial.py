import django.db.models.deletion
from django.db import migrations, models

from batchproxy.migration_ops import AddIndexConcurrently


def drop_foreign_key_index(apps, schema_editor):
    """The foreign key's own index (every queued request had a NULL entry in it), by whatever
    name Django gave it; CONCURRENTLY on PostgreSQL, as batch_idx was built."""
    model = apps.get_model("requests_app", "BatchRequest")
    names = schema_editor._constraint_names(model, ["batch_id"], index=True, exclude={"batch_idx"})
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    for name in names:
        schema_editor.execute(f"DROP INDEX {concurrently}IF EXISTS {schema_editor.quote_name(name)}")


class Migration(migrations.Migration):
    # Built and dropped CONCURRENTLY on PostgreSQL: the running version keeps queueing calls.
    atomic = False

    dependencies = [
        ("batches_app", "0025_hv_vertex_prices"),
        ("requests_app", "0018_hx_bedrock_endpoints"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="batchrequest",
            index=models.Index(
                condition=models.Q(("batch__isnull", False)), fields=["batch"], name="batch_idx"
            ),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="batchrequest",
                    name="batch",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="requests",
                        to="batches_app.batch",
                    ),
                ),
            ],
            # Going back keeps batch_idx alone, which serves every read of the old index.
            database_operations=[
                migrations.RunPython(drop_foreign_key_index, migrations.RunPython.noop)
            ],
        ),
    ]
