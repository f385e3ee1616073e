"""The proxy's schedules, declared once and created idempotently after every `migrate`.

django-q2's scheduler wakes every 30 s and counts in whole minutes; the proxy's own intervals
(BATCH_MAX_WAIT, POLL_INTERVAL) are in seconds and are checked by the tasks on every run.
"""

from django_q.models import Schedule

SCHEDULES = {
    "batchproxy.flush": ("batches_app.tasks.flush", 1),
    "batchproxy.poll": ("batches_app.tasks.poll", 1),
    "batchproxy.purge": ("batches_app.tasks.purge", 60),
    # Completion webhooks to callers: each run sends what is due for up to WEBHOOK_RUN_SECONDS.
    "batchproxy.webhooks": ("requests_app.tasks.webhooks_deliver", 1),
    "batchproxy.webhooks_purge": ("requests_app.tasks.webhooks_purge", 60),
}


def schedules_ensure(**kwargs) -> None:
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
