"""OpenAI's webhooks: a batch that ended upstream is polled and ingested at once.

Polling stays the safety net (a lost webhook costs at most POLL_INTERVAL); with webhooks set,
POLL_INTERVAL can be long.
"""

import logging
from collections.abc import Mapping
from datetime import timedelta
from functools import cache

import openai
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_q.tasks import async_task

from . import services
from .models import Batch, OpenAIWebhook

log = logging.getLogger(__name__)
BATCH_EVENTS = ("batch.completed", "batch.failed", "batch.expired", "batch.cancelled")
# How long a refresh waits for a worker that holds the batch (polling it, say) to let go.
REFRESH_WAIT = 30.0
KEEP_EVENTS = timedelta(days=1)


class WebhookRefused(Exception):
    """The webhook is not one OpenAI sent, or not for the first time: answer 400."""


@cache
def _verifier() -> openai.OpenAI:
    # Verification is local (Standard Webhooks: HMAC over id, timestamp and body); the
    # client never calls out, so it needs no key.
    return openai.OpenAI(api_key="unused-for-verification", base_url="http://127.0.0.1:9")


def webhook_receive(*, payload: bytes, headers: Mapping[str, str]) -> str:
    """Verify one webhook and act on it; return what was done.

    1. Check its signature and timestamp with OPENAI_WEBHOOK_SECRET (the SDK's `unwrap`).
    2. Record its event id; an id seen before is a replay.
    3. For a batch event about a batch of ours still active, queue its refresh (a django-q2
       task), in the same transaction: a crash between the two loses neither.
    Raises `WebhookRefused` for a forged, stale or replayed webhook, which changes nothing.
    """
    if not settings.OPENAI_WEBHOOK_SECRET:
        raise WebhookRefused("webhooks are not configured (OPENAI_WEBHOOK_SECRET)")
    try:
        event = _verifier().webhooks.unwrap(payload, headers, secret=settings.OPENAI_WEBHOOK_SECRET)
        event_id, event_type = event.id, event.type
        upstream_id = event.data.id if event_type in BATCH_EVENTS else ""
    except (ValueError, AttributeError) as exc:
        # ValueError covers the SDK's InvalidWebhookSignatureError, missing headers and a body
        # that is no JSON; AttributeError an event without the fields every event has.
        raise WebhookRefused(f"webhook not verified: {exc}") from None
    try:
        with transaction.atomic():
            OpenAIWebhook.objects.create(
                event_id=event_id, type=event_type, upstream_id=upstream_id or ""
            )
            active = Batch.objects.filter(upstream_id=upstream_id, state__in=Batch.ACTIVE)
            if not upstream_id or not active.exists():
                return f"{event_type} ignored (no active batch of ours)"
            async_task(
                "batches_app.tasks.batch_refresh",
                upstream_id,
                q_options={"task_name": f"batchproxy.refresh.{upstream_id}"[:100]},
            )
    except IntegrityError:
        raise WebhookRefused(f"event {event_id} already received") from None
    log.info("webhook %s: batch %s refresh queued", event_type, upstream_id)
    return f"{event_type}: refresh of {upstream_id} queued"


def batch_refresh(*, upstream_id: str) -> str:
    """Poll and ingest one batch now, whatever POLL_INTERVAL or a back-off says."""
    batch = Batch.objects.filter(upstream_id=upstream_id, state__in=Batch.ACTIVE).first()
    if batch is None:
        return f"{upstream_id}: not active"
    error = services.batch_step(batch_id=batch.pk, force=True, wait=REFRESH_WAIT)
    return f"{upstream_id}: {error or 'refreshed'}"


def last_webhook_at():
    return OpenAIWebhook.objects.values_list("received_at", flat=True).first()


def openai_webhooks_prune() -> int:
    """Forget event ids older than a day: their signatures are long stale by then."""
    cutoff = timezone.now() - KEEP_EVENTS
    return OpenAIWebhook.objects.filter(received_at__lt=cutoff).delete()[0]
