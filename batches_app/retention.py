"""Data that can be erased: every table pruned by age, and one key's data purged on request.

What the proxy keeps, and how long (docs: "Personal data and retention"):
- a request's body and answer: until RESULT_RETENTION after it finished (`requests_purge`);
  the queued or submitted requests of a revoked key: RESULT_RETENTION after the revocation;
- webhook events, deliveries and attempts (a receiver's answer): RESULT_RETENTION;
- batches and their upstream-file records (no prompt, no answer: ids, counts, usage):
  BATCH_RETENTION after they ended, once their figures are in the totals (`spend_tally`);
- django-q2's task results and leftover queue rows: TASK_RETENTION.
`key_purge` erases one key's requests, answers, webhook records and the upstream files that
hold its lines, at once.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_q.models import OrmQ, Task

from requests_app.models import (
    ApiKey,
    BatchRequest,
    RateCounter,
    ResponseChunk,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

from . import upstreams
from .models import Batch, KeyModel, UpstreamFile
from .spend import spend_tally
from .upstreams import UpstreamError

log = logging.getLogger(__name__)
Status = BatchRequest.Status
CHUNK = 5000


def _delete_requests(requests) -> int:
    """Delete requests (with their answers' pieces) a chunk per transaction; `requests` is
    a queryset, read again for each chunk."""
    deleted = 0
    while ids := list(requests.values_list("pk", flat=True)[:CHUNK]):
        with transaction.atomic():
            ResponseChunk.objects.filter(request_id__in=ids).delete()
            WebhookEvent.objects.filter(request_id__in=ids, delivery=None).delete()
            deleted += BatchRequest.objects.filter(pk__in=ids).delete()[0]
    return deleted


def _delete_in_chunks(rows) -> int:
    deleted = 0
    while ids := list(rows.values_list("pk", flat=True)[:CHUNK]):
        deleted += rows.model.objects.filter(pk__in=ids).delete()[0]
    return deleted


# --- Pruning by age -------------------------------------------------------------------------


@dataclass
class PruneReport:
    revoked_requests: int = 0
    webhook_rows: int = 0
    batches: int = 0
    file_records: int = 0
    tasks: int = 0

    def __str__(self) -> str:
        return (
            f"{self.revoked_requests} requests of revoked keys, {self.webhook_rows} webhook "
            f"rows, {self.batches} batches, {self.file_records} file records, {self.tasks} "
            "task rows pruned"
        )


def retention_prune(*, now: datetime | None = None) -> PruneReport:
    """Delete what has outlived its retention (the answers' own purge is `requests_purge`).

    1. Queued or submitted requests of keys revoked more than RESULT_RETENTION ago.
    2. Webhook events never put in a delivery, and pending deliveries, older than
       RESULT_RETENTION (a paused endpoint's); finished ones go with `webhook_deliveries_purge`.
    3. Done batches that ended more than BATCH_RETENTION ago, once tallied, with their file
       records; and file records deleted upstream that long ago.
    4. django-q2's task rows that stopped, and queue rows locked, TASK_RETENTION ago.
    Each step deletes in chunks, so it never holds long locks; safe to run twice at once.
    """
    now = now or timezone.now()
    results = now - timedelta(seconds=settings.RESULT_RETENTION)
    batches = now - timedelta(seconds=settings.BATCH_RETENTION)
    tasks = now - timedelta(seconds=settings.TASK_RETENTION)
    report = PruneReport()
    revoked = ApiKey.objects.filter(revoked_at__lt=results)
    report.revoked_requests = _delete_requests(
        BatchRequest.objects.filter(status__in=BatchRequest.PENDING, api_key__in=revoked)
    )
    waiting = WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING)
    report.webhook_rows = _delete_in_chunks(
        WebhookEvent.objects.filter(delivery=None, created_at__lt=results)
    ) + _delete_in_chunks(waiting.filter(created_at__lt=results))
    spend_tally()  # a batch's figures outlive it
    report.file_records = _delete_in_chunks(UpstreamFile.objects.filter(deleted_at__lt=batches))
    old = Batch.objects.filter(state=Batch.State.DONE, tallied=True, finished_at__lt=batches)
    while ids := list(old.values_list("pk", flat=True)[:CHUNK]):
        with transaction.atomic():
            # Requests still pointing at them (answers kept longer than batches) lose the link.
            BatchRequest.objects.filter(batch__in=ids).update(batch=None)
            report.file_records += UpstreamFile.objects.filter(batch__in=ids).delete()[0]
            report.batches += Batch.objects.filter(pk__in=ids).delete()[0]
    report.tasks = _delete_in_chunks(Task.objects.filter(stopped__lt=tasks))
    report.tasks += _delete_in_chunks(OrmQ.objects.filter(lock__lt=tasks))
    return report


# --- One key's erasure ----------------------------------------------------------------------


@dataclass
class PurgeReport:
    key: str
    requests: int = 0
    answers: int = 0
    webhook_events: int = 0
    webhook_deliveries: int = 0
    webhook_endpoints: int = 0
    files_deleted: int = 0
    files_failed: list[str] = field(default_factory=list)
    files_later: int = 0  # of batches still running: deleted when they end

    def lines(self) -> list[str]:
        said = [
            f"Key {self.key}: deleted.",
            f"{self.requests} requests deleted, {self.answers} of them with an answer.",
            f"{self.webhook_events} webhook events, {self.webhook_deliveries} deliveries "
            f"(with their attempts) and {self.webhook_endpoints} webhook endpoints deleted.",
            f"{self.files_deleted} upstream files holding its lines deleted upstream.",
        ]
        if self.files_later:
            said.append(
                f"{self.files_later} upstream files of batches still running hold some of its "
                "lines: they are deleted when those batches end (DELETE_UPSTREAM_FILES)."
            )
        if self.files_failed:
            said.append(f"Not deleted upstream (try again): {', '.join(self.files_failed)}.")
        return said


def key_purge(*, key_id: int) -> PurgeReport:
    """Erase one key: its requests and answers, its webhook records, the upstream files that
    hold its lines, and the key itself.

    1. Revoke it first, so that nothing new arrives while it is erased.
    2. Delete upstream the files of its finished batches that are still there (through each
       upstream's transport); a batch still running keeps its files until it ends, and they
       are then deleted with the others (its lines for this key are ignored, their requests
       being gone).
    3. Delete its webhook events and the deliveries left with no event, its own webhook
       endpoints, its requests with their answers, its model list, and the key.
    """
    key = ApiKey.objects.get(pk=key_id)
    ApiKey.objects.filter(pk=key_id, revoked_at=None).update(revoked_at=timezone.now())
    report = PurgeReport(key=str(key))
    mine = BatchRequest.objects.filter(api_key_id=key_id)
    batch_ids = set(mine.exclude(batch=None).values_list("batch_id", flat=True).distinct())
    _files_delete(batch_ids, report)

    event_ids = WebhookEvent.objects.filter(
        Q(request__api_key_id=key_id) | Q(endpoint__api_key_id=key_id)
    )
    touched = set(event_ids.exclude(delivery=None).values_list("delivery_id", flat=True))
    report.webhook_events = _delete_in_chunks(event_ids)
    emptied = WebhookDelivery.objects.filter(Q(pk__in=touched) | Q(endpoint__api_key_id=key_id))
    report.webhook_deliveries = (
        emptied.filter(events=None).delete()[1].get(WebhookDelivery._meta.label, 0)
    )
    report.webhook_endpoints = (
        WebhookEndpoint.objects.filter(api_key_id=key_id)
        .delete()[1]
        .get(WebhookEndpoint._meta.label, 0)
    )
    report.answers = mine.exclude(response_status=None).count()
    report.requests = _delete_requests(mine)
    KeyModel.objects.filter(api_key_id=key_id).delete()
    RateCounter.objects.filter(scope=f"key:{key_id}").delete()
    ApiKey.objects.filter(pk=key_id).delete()
    return report


def _files_delete(batch_ids: set, report: PurgeReport) -> None:
    files = UpstreamFile.objects.filter(batch__in=batch_ids, deleted_at=None)
    for file_id, upstream, state in files.values_list("pk", "batch__upstream", "batch__state"):
        if state != Batch.State.DONE:
            report.files_later += 1
            continue
        try:
            upstreams.transport(upstream).delete_file(file_id)
        except UpstreamError as exc:
            log.warning("purge: file %s not deleted upstream: %s", file_id, exc)
            report.files_failed.append(file_id)
            continue
        UpstreamFile.objects.filter(pk=file_id).update(deleted_at=timezone.now())
        report.files_deleted += 1
