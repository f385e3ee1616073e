"""The proxy's schedules, declared once and created idempotently after every `migrate`.

django-q2's scheduler wakes every 30 s and counts in whole minutes: the tick schedule starts a
chain of ticks that runs the engine every TICK_SECONDS for its minute (`tasks.tick`), and the
proxy's own intervals (BATCH_MAX_WAIT, POLL_INTERVAL) are in seconds, checked on every tick.
"""

from django_q.models import Schedule

SCHEDULES = {
    "batchproxy.tick": ("batches_app.tasks.tick", 1),
    "batchproxy.purge": ("batches_app.tasks.purge", 60),
    # Completion webhooks to callers: each run sends what is due for up to WEBHOOK_RUN_SECONDS.
    "batchproxy.webhooks": ("requests_app.tasks.webhooks_deliver", 1),
    "batchproxy.webhooks_purge": ("requests_app.tasks.webhooks_purge", 60),
}
# Schedules of earlier versions, which the tick chain replaces.
RETIRED = ("batchproxy.flush", "batchproxy.poll")


def schedules_ensure(**kwargs) -> None:
    Schedule.objects.filter(name__in=RETIRED).delete()
    for name, (func, minutes) in SCHEDULES.items():
        Schedule.objects.update_or_create(
            name=name,
            defaults={
                "func": func,
                "schedule_type": Schedule.MINUTES,
                "minutes": minutes,
                "repeats": -1,
            },
        )
