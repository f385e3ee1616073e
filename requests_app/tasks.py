"""django-q2 tasks of the client side: thin callers of the services, safe to run twice at once."""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from . import webhooks


def webhooks_deliver() -> str:
    report = webhooks.webhooks_deliver()
    if report is None:
        return "another webhook run is in progress"
    return (
        f"{report.grouped} webhook deliveries made, {report.delivered} delivered, "
        f"{report.failed} failed attempts"
    )


def webhooks_purge() -> str:
    """Forget finished deliveries once the answers they told of are purged too."""
    before = timezone.now() - timedelta(seconds=settings.RESULT_RETENTION)
    return f"{webhooks.webhook_deliveries_purge(before=before)} webhook rows purged"
