"""Migration operations that a running version of the proxy survives (rolling deploys).

On PostgreSQL an index on a table the proxy writes to all the time (requests, batches) is built
`CONCURRENTLY`: a plain CREATE INDEX holds a lock that stops every write until it is done,
minutes on a big table. A migration that uses these sets `atomic = False` (CONCURRENTLY cannot
run in a transaction). SQLite (one machine, small) builds the index the ordinary way.
`tests/test_migrations.py` refuses a migration with an unsafe operation.
"""

from django.contrib.postgres import operations as postgres
from django.db.migrations import AddIndex, RemoveIndex


class AddIndexConcurrently(postgres.AddIndexConcurrently):
    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            _drop_if_invalid(schema_editor, self.index.name)
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        return AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        return AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)


class RemoveIndexConcurrently(postgres.RemoveIndexConcurrently):
    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        return RemoveIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        return RemoveIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)


def _drop_if_invalid(schema_editor, name: str) -> None:
    """A CREATE INDEX CONCURRENTLY that failed (cancelled, a deadlock, a deploy killed) leaves
    an invalid index of that name behind, and the next try would fail on it: drop it first."""
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = %s AND pg_table_is_visible(c.oid)",
            [name],
        )
        row = cursor.fetchone()
    if row and row[0]:
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {schema_editor.quote_name(name)}")
