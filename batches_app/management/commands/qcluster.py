from django.core.management.base import CommandError
from django_q.management.commands.qcluster import Command as ClusterCommand

from batches_app import upstreams
from ops_app.checks import startup_refusal


class Command(ClusterCommand):
    """django-q2's qcluster, which refuses to start when its tasks could not call upstream.

    It shadows django-q2's own command: batches_app comes before django_q in INSTALLED_APPS.
    """

    help = (
        "Starts a Django Q cluster; refuses to start without OPENAI_API_KEY unless in try-out mode."
    )

    def handle(self, *args, **options) -> None:
        refusal = upstreams.upstream_refusal() or startup_refusal()
        if refusal is not None:
            raise CommandError(refusal)
        super().handle(*args, **options)
