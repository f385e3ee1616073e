"""Liveness and readiness, for load balancers and orchestrators."""

from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

FLUSH_SCHEDULE = "batchproxy.tick"


def readiness_problems() -> list[str]:
    """What keeps this process from serving well; empty when ready.

    1. The database answers.
    2. Every migration is applied (a rolling deploy may run new code on an old schema).
    3. A scheduler ran the tick schedule recently: django-q2 moves a schedule's `next_run`
       forward each time it runs it, so a `next_run` long past means no scheduler is running.
    """
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return [f"database unreachable: {type(exc).__name__}"]
    problems = []
    executor = MigrationExecutor(connection)
    unapplied = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if unapplied:
        problems.append(f"{len(unapplied)} migrations not applied")
        return problems  # the schedule table may not exist yet
    from django_q.models import Schedule

    next_run = (
        Schedule.objects.filter(name=FLUSH_SCHEDULE).values_list("next_run", flat=True).first()
    )
    stale_after = timedelta(seconds=settings.SCHEDULER_STALE_AFTER)
    if next_run is None:
        problems.append(f"schedule {FLUSH_SCHEDULE} missing")
    elif timezone.now() - next_run > stale_after:
        problems.append(f"scheduler not seen since {next_run.isoformat()}")
    return problems
