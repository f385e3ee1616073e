from django.apps import AppConfig
from django.db.models.signals import post_migrate


class BatchesAppConfig(AppConfig):
    name = "batches_app"
    verbose_name = "Upstream batches"

    def ready(self) -> None:
        from django_q.signals import post_spawn

        from .flex import flex_ensure
        from .prices import prices_ensure
        from .schedules import schedules_ensure

        post_migrate.connect(schedules_ensure, sender=self)
        post_migrate.connect(prices_ensure, sender=self)
        post_migrate.connect(flex_ensure, sender=self)
        post_spawn.connect(_worker_spawned, dispatch_uid="batchproxy.worker_spawned")


def _worker_spawned(sender, proc_name: str, **kwargs) -> None:
    """In each django-q2 worker: a SIGTERM ends the batch step under way before the worker."""
    from .leases import exit_between_steps

    exit_between_steps()
