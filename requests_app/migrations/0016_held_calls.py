from django.db import migrations, models

# PostgreSQL tells the web processes' watchers (requests_app/waiting.py) of each request that
# leaves the queue, whichever code path finished it. A row trigger whose WHEN is checked before
# any function runs: an update that leaves the status pending costs no call.
NOTIFY = """
CREATE FUNCTION batchproxy_answer_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('batchproxy_answers', NEW.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER batchproxy_answer_notify
    AFTER UPDATE OF status ON requests_app_batchrequest
    FOR EACH ROW
    WHEN (OLD.status IN ('queued', 'submitted') AND NEW.status NOT IN ('queued', 'submitted'))
    EXECUTE FUNCTION batchproxy_answer_notify();
"""
NOTIFY_DROP = """
DROP TRIGGER IF EXISTS batchproxy_answer_notify ON requests_app_batchrequest;
DROP FUNCTION IF EXISTS batchproxy_answer_notify();
"""


def notify_create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(NOTIFY)


def notify_drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(NOTIFY_DROP)


class Migration(migrations.Migration):
    """Held calls and streams (issue 25): a key's default hold, and the answers' NOTIFY."""

    dependencies = [
        ("requests_app", "0015_deadlines_and_tiers"),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="hold_seconds",
            field=models.PositiveIntegerField(
                blank=True,
                help_text="Seconds this key's calls are held for their answer when they ask no "
                "Prefer: wait=N (capped by MAX_HOLD_SECONDS). Empty: not held, answered 422 at "
                "once.",
                null=True,
            ),
        ),
        migrations.RunPython(notify_create, notify_drop, elidable=False),
    ]
