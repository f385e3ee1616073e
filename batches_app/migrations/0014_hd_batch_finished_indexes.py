from django.db import migrations, models

from batchproxy.migration_ops import AddIndexConcurrently


class Migration(migrations.Migration):
    """Indexes on done batches by age (the tally, the retention, the dashboard), built without
    stopping writes to the batch table."""

    atomic = False

    dependencies = [
        ('batches_app', '0013_hd_key_models_and_spend_totals'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='batch',
            index=models.Index(condition=models.Q(('state', 'done'), ('tallied', False)), fields=['finished_at'], name='batch_untallied_idx'),
        ),
        AddIndexConcurrently(
            model_name='batch',
            index=models.Index(condition=models.Q(('state', 'done')), fields=['finished_at'], name='batch_finished_idx'),
        ),
    ]
