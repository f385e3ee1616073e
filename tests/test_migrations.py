"""Migrations a rolling deploy survives on PostgreSQL, applied by one job.

During a rolling deploy the old version keeps serving against the migrated schema, and a
migration runs against tables that are written all the time. So a migration must not:
build or drop an index the plain way (CREATE INDEX locks out writes until it is done: use
`batchproxy.migration_ops.AddIndexConcurrently`, in a migration with `atomic = False`); add a
constraint to an existing table (the same lock); rename or drop a column, a table or a model
(the old version still names them); add a NOT NULL column without a database default (the old
version's inserts leave it out). Migrations from before this rule (already applied everywhere)
are listed and exempt.
"""

from pathlib import Path

import pytest
import yaml
from django.contrib.postgres.operations import NotInTransactionMixin
from django.db import migrations, models
from django.db.migrations.loader import MigrationLoader
from django.db.models.fields import NOT_PROVIDED

from batchproxy.migration_ops import AddIndexConcurrently

from .processes import ROOT

# The last migration of each app from before this rule.
EXEMPT_UP_TO = {"batches_app": 12, "requests_app": 13, "ops_app": 2}
# Found unsafe after it was merged, and repaired by a later migration (named with the reason).
REPAIRED = {
    ("batches_app", "0013_hc_state_since"): "0017_hd_state_since_db_default adds its db default",
}
PROJECT_APPS = tuple(EXEMPT_UP_TO)
BREAKS_OLD_VERSION = (
    migrations.RenameField,
    migrations.RenameModel,
    migrations.RemoveField,
    migrations.DeleteModel,
    migrations.AlterModelTable,
)
LOCKS_WRITES = (migrations.AddIndex, migrations.RemoveIndex, migrations.AddConstraint)


def problems_of(migration) -> list[str]:
    """What in this migration a running older version or a busy table would not survive."""
    made = {op.name_lower for op in migration.operations if isinstance(op, migrations.CreateModel)}
    found = []
    for op in migration.operations:
        name = f"{migration.app_label}.{migration.name}: {op.describe()}"
        model = getattr(op, "model_name_lower", getattr(op, "name_lower", ""))
        if isinstance(op, BREAKS_OLD_VERSION):
            found.append(f"{name}: breaks the running version (add the new, drop the old later)")
        elif isinstance(op, NotInTransactionMixin):
            if migration.atomic:
                found.append(f"{name}: CONCURRENTLY needs `atomic = False`")
        elif isinstance(op, LOCKS_WRITES) and model not in made:
            found.append(f"{name}: locks out writes while it builds; use AddIndexConcurrently")
        elif isinstance(op, migrations.AddField) and model not in made:
            field = op.field
            if not field.null and field.db_default is NOT_PROVIDED and not field.many_to_many:
                found.append(f"{name}: NOT NULL without db_default fails the old version's inserts")
    return found


def project_migrations():
    loader = MigrationLoader(None, ignore_no_migrations=True)
    for (app, name), migration in sorted(loader.disk_migrations.items()):
        if app not in PROJECT_APPS or (app, name) in REPAIRED:
            continue
        if int(name.split("_", 1)[0]) > EXEMPT_UP_TO[app]:
            yield migration


def test_every_new_migration_is_safe_for_a_rolling_deploy():
    checked = list(project_migrations())
    assert checked  # this branch's own are among them
    problems = [problem for migration in checked for problem in problems_of(migration)]
    assert problems == []


def _migration(*operations, atomic: bool = True):
    class Migration(migrations.Migration):
        pass

    migration = Migration("0099_example", "batches_app")
    migration.operations = list(operations)
    migration.atomic = atomic
    return migration


@pytest.mark.parametrize(
    "operation",
    [
        migrations.RenameField("batch", "model", "model_name"),
        migrations.RenameModel("Batch", "UpstreamBatch"),
        migrations.RemoveField("batch", "errors"),
        migrations.AddIndex("batch", models.Index(fields=["model"], name="batch_model_idx")),
        migrations.AddField("batch", "priority", models.IntegerField(default=0)),
    ],
    ids=["rename field", "rename model", "remove field", "plain index", "not null, no db default"],
)
def test_the_check_refuses_each_unsafe_operation(operation):
    assert problems_of(_migration(operation))


def test_the_check_takes_the_safe_forms():
    index = models.Index(fields=["model"], name="batch_model_idx")
    assert problems_of(_migration(AddIndexConcurrently("batch", index), atomic=False)) == []
    assert problems_of(_migration(AddIndexConcurrently("batch", index)))  # atomic: refused
    nullable = migrations.AddField("batch", "note", models.TextField(null=True))
    defaulted = migrations.AddField("batch", "n", models.IntegerField(default=0, db_default=0))
    assert problems_of(_migration(nullable, defaulted)) == []
    new_table = migrations.CreateModel("Thing", [("id", models.BigAutoField(primary_key=True))])
    on_new = migrations.AddIndex("thing", models.Index(fields=["id"], name="thing_idx"))
    assert problems_of(_migration(new_table, on_new)) == []  # an empty table locks nobody


def test_compose_migrates_once_in_a_job_before_the_proxy_starts():
    compose = yaml.safe_load((Path(ROOT) / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    # Every proxy service but the try-out (its own SQLite, migrated by itself: a profile apart).
    proxies = [
        service
        for name, service in services.items()
        if name not in ("db", "migrate", "redis") and "profiles" not in service
    ]
    assert proxies
    for service in proxies:
        assert service["environment"]["RUN_MIGRATIONS"] == "false"
        done = service["depends_on"]["migrate"]["condition"]
        assert done == "service_completed_successfully"


@pytest.mark.django_db(transaction=True)
def test_the_upgrade_fills_each_keys_models_from_its_batched_requests():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("batches_app", "0015_merge_hc_hd")]
    after = [("batches_app", "0016_hd_key_models_backfill")]
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate(before)
        old = executor.loader.project_state(before).apps
        key = old.get_model("requests_app", "ApiKey").objects.create(name="k", key_hash="h" * 64)
        batch = old.get_model("batches_app", "Batch").objects.create(
            endpoint="/v1/chat/completions", model="ft:mine"
        )
        Request = old.get_model("requests_app", "BatchRequest")
        common = {"api_key": key, "endpoint": "/v1/chat/completions", "body": "{}", "body_bytes": 2}
        Request.objects.create(model="ft:mine", fingerprint="a", batch=batch, **common)
        Request.objects.create(model="never-batched", fingerprint="b", **common)

        executor = MigrationExecutor(connection)
        executor.migrate(after)
        new = executor.loader.project_state(after).apps
        rows = new.get_model("batches_app", "KeyModel").objects.values_list("api_key_id", "model")
        assert list(rows) == [(key.pk, "ft:mine")]
    finally:
        # Later tests in this worker find today's tables.
        MigrationExecutor(connection).migrate(leaves)


@pytest.mark.django_db(transaction=True)
def test_an_index_left_invalid_by_a_failed_concurrent_build_is_built_again():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    if connection.vendor != "postgresql":
        pytest.skip("invalid indexes are PostgreSQL's (SQLite builds indexes in a transaction)")
    before = [("batches_app", "0013_hd_key_models_and_spend_totals")]
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate(before)
        with connection.cursor() as cursor:
            # What a cancelled CREATE INDEX CONCURRENTLY leaves: the index, marked invalid.
            cursor.execute('CREATE INDEX batch_untallied_idx ON batches_app_batch ("finished_at")')
            cursor.execute(
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = "
                "'batch_untallied_idx'::regclass"
            )
    finally:
        MigrationExecutor(connection).migrate(leaves)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index "
            "WHERE indexrelid = 'batch_untallied_idx'::regclass"
        )
        valid, definition = cursor.fetchone()
    assert valid and "WHERE" in definition  # the migration's own partial index
