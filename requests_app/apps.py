from django.apps import AppConfig
from django.db.backends.signals import connection_created


def allow_prepared_statements(sender, connection, **kwargs) -> None:
    """On PostgreSQL, let the intake prepare its statements (`services.execute_prepared`).

    Django's own queries bind on the client and are never prepared. psycopg still counts each
    of them while a threshold is set, keeping its text for the last `prepared_max` of them, and
    some (ingest's updates) are megabytes long: with the default of 100 an ingest held 100 MB
    more, so only a few are kept.
    """
    if connection.vendor == "postgresql":
        connection.connection.prepare_threshold = 5
        connection.connection.prepared_max = 4


class RequestsAppConfig(AppConfig):
    name = "requests_app"
    verbose_name = "Client requests"

    def ready(self) -> None:
        connection_created.connect(allow_prepared_statements, dispatch_uid="prepared_statements")
        from . import checks  # noqa: F401  (registers the system checks)
