from django.apps import AppConfig
from django.db.models.signals import post_migrate


class BatchesAppConfig(AppConfig):
    name = "batches_app"
    verbose_name = "Upstream batches"

    def ready(self) -> None:
        from .prices import prices_ensure
        from .schedules import schedules_ensure

        post_migrate.connect(schedules_ensure, sender=self)
        post_migrate.connect(prices_ensure, sender=self)
