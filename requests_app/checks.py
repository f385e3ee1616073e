"""System checks of the client side's settings: fail loudly on nonsense."""

from django.conf import settings
from django.core.checks import Error, register


@register()
def webhook_settings_check(app_configs, **kwargs) -> list:
    problems = []
    positive = (
        "WEBHOOK_TIMEOUT",
        "WEBHOOK_BACKOFF",
        "WEBHOOK_RETRY_FOR",
        "WEBHOOK_MAX_EVENTS",
        "WEBHOOK_MAX_BYTES",
        "WEBHOOK_RUN_SECONDS",
        "WEBHOOK_DELIVERY_SECONDS",
    )
    for name in positive:
        if getattr(settings, name) <= 0:
            problems.append(Error(f"{name} must be above 0.", id="requests_app.E001"))
    if settings.WEBHOOK_BACKOFF_CAP < settings.WEBHOOK_BACKOFF:
        problems.append(
            Error("WEBHOOK_BACKOFF_CAP is below WEBHOOK_BACKOFF.", id="requests_app.E002")
        )
    # A delivery run (plus its last delivery) must end before django-q2 gives up on the task.
    longest = settings.WEBHOOK_RUN_SECONDS + settings.WEBHOOK_DELIVERY_SECONDS
    if longest >= settings.Q_CLUSTER["timeout"]:
        problems.append(
            Error(
                "WEBHOOK_RUN_SECONDS plus WEBHOOK_DELIVERY_SECONDS must stay below Q_TIMEOUT.",
                id="requests_app.E003",
            )
        )
    if settings.LIST_SETTLE_SECONDS < 0:
        problems.append(Error("LIST_SETTLE_SECONDS must not be negative.", id="requests_app.E004"))
    return problems
