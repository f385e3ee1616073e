from django.apps import AppConfig


class OpsAppConfig(AppConfig):
    name = "ops_app"
    verbose_name = "Operations"

    def ready(self) -> None:
        from . import checks, openapi  # noqa: F401  (registers checks and the auth scheme)
