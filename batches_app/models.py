import re
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models.functions import Now
from django.utils import timezone


class Batch(models.Model):
    """One upstream batch, from the claim of its requests until its results are ingested.

    `state` is the proxy's own state machine; every step records its intent before the upstream
    call it makes, so that a crash at any point is finished (or undone) by the next tick:

        building --upload--> uploaded --create--> running --poll--> ingesting --> done
                                  \\________________________________________/
                                           (a permanent upstream refusal) --> done
    """

    class State(models.TextChoices):
        BUILDING = "building", "building (input not uploaded)"
        UPLOADED = "uploaded", "uploaded (batch not created)"
        RUNNING = "running"
        INGESTING = "ingesting"
        DONE = "done"

    class CancelMode(models.TextChoices):
        NONE = "", "not cancelled"
        REQUEUE = "requeue", "cancel and requeue"
        CANCEL = "cancel", "cancel its requests"

    ACTIVE = (State.BUILDING, State.UPLOADED, State.RUNNING, State.INGESTING)
    UPSTREAM_TERMINAL = ("completed", "failed", "expired", "cancelled")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    upstream = models.CharField(
        max_length=64, default="openai", help_text="The name of the upstream it was sent to."
    )
    endpoint = models.CharField(max_length=32)
    model = models.CharField(max_length=200)
    state = models.CharField(max_length=16, choices=State.choices, default=State.BUILDING)
    request_count = models.PositiveIntegerField(default=0)
    input_bytes = models.PositiveBigIntegerField(default=0)
    counted_tokens = models.PositiveBigIntegerField(
        default=0, help_text="Input tokens of its requests, as the proxy counted them."
    )

    upstream_id = models.CharField(max_length=100, blank=True, db_index=True)
    upstream_status = models.CharField(max_length=20, blank=True)
    input_file_id = models.CharField(max_length=100, blank=True)
    output_file_id = models.CharField(max_length=100, blank=True)
    error_file_id = models.CharField(max_length=100, blank=True)
    request_counts = models.JSONField(null=True, blank=True)
    usage = models.JSONField(null=True, blank=True)
    # Images (or seconds of video) its answers held, counted at ingest: DALL-E is priced per
    # image and Sora per second, with no usage.
    output_images = models.PositiveIntegerField(default=0, db_default=0)
    errors = models.JSONField(null=True, blank=True)
    upstream_created_at = models.DateTimeField(null=True, blank=True)

    # Intent and back-off bookkeeping.
    upload_attempted_at = models.DateTimeField(null=True, blank=True)
    create_attempted_at = models.DateTimeField(null=True, blank=True)
    # Set as a create is sent, cleared when its answer (or error) is known: a create whose
    # worker lost its database (and so its lease) meanwhile may still be under way upstream.
    create_started_at = models.DateTimeField(null=True, blank=True)
    cancel_mode = models.CharField(max_length=8, choices=CancelMode.choices, blank=True)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # A database default too: the version still running during a deploy inserts batches
    # without this column.
    state_since = models.DateTimeField(
        default=timezone.now,
        db_default=Now(),
        help_text="When the batch entered its current state.",
    )
    upstream_failures = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Added into `SpendTotal` once done (batches_app.spend.spend_tally), so that /metrics
    # reads a few totals instead of every batch, and old batches can be pruned.
    tallied = models.BooleanField(default=False, db_default=False, editable=False)

    class Meta:
        verbose_name_plural = "batches"
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="batch_due_idx"),
            # Only the done batches not yet tallied: a handful, however many batches there are.
            models.Index(
                fields=["finished_at"],
                condition=models.Q(state="done", tallied=False),
                name="batch_untallied_idx",
            ),
            # The retention's prune and the dashboard's last day read done batches by age.
            models.Index(
                fields=["finished_at"],
                condition=models.Q(state="done"),
                name="batch_finished_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.upstream} {self.endpoint} {self.model} {self.upstream_id or self.id}"

    @property
    def is_terminal(self) -> bool:
        return self.state == self.State.DONE

    @property
    def times_out_at(self) -> datetime | None:
        """When the scheduled step ends the batch if it is still in its state (settings
        BATCH_SUBMIT_TIMEOUT, BATCH_STUCK_AFTER, BATCH_INGEST_TIMEOUT); None once done."""
        if self.state in (self.State.BUILDING, self.State.UPLOADED):
            return self.state_since + timedelta(seconds=settings.BATCH_SUBMIT_TIMEOUT)
        if self.state == self.State.RUNNING:
            since = self.upstream_created_at or self.state_since
            return since + timedelta(seconds=settings.BATCH_STUCK_AFTER)
        if self.state == self.State.INGESTING:
            return self.state_since + timedelta(seconds=settings.BATCH_INGEST_TIMEOUT)
        return None

    @property
    def input_filename(self) -> str:
        return f"batchproxy-{self.id}.jsonl"


class SpendTotal(models.Model):
    """What the done batches of one upstream, model and upstream status added up to.

    Batches are added in once each (`Batch.tallied`), so the totals outlive the batches that
    the retention prunes, and /metrics reads a row per model instead of every batch.
    """

    upstream = models.CharField(max_length=64)
    model = models.CharField(max_length=200)
    upstream_status = models.CharField(max_length=20, blank=True)
    batches = models.PositiveBigIntegerField(default=0)
    requests = models.PositiveBigIntegerField(default=0)
    tokens_in = models.PositiveBigIntegerField(default=0)
    tokens_out = models.PositiveBigIntegerField(default=0)
    images = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["upstream", "model", "upstream_status"], name="one_spend_total_per_group"
            )
        ]

    def __str__(self) -> str:
        return f"{self.upstream} {self.model} {self.upstream_status}"


class KeyModel(models.Model):
    """A model one key has had a batch of: what `GET /v1/models` lists for that key besides the
    operator's models (another key's model names are never shown). Written by the flush, one
    row per key and model, so the list reads a key's few rows, never its requests."""

    api_key = models.ForeignKey(
        "requests_app.ApiKey", on_delete=models.CASCADE, related_name="models_used"
    )
    model = models.CharField(max_length=200)
    first_used_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "model"], name="one_row_per_key_and_model")
        ]

    def __str__(self) -> str:
        return f"{self.api_key_id} {self.model}"


class UpstreamFile(models.Model):
    """A file the proxy holds upstream, kept until it is deleted there."""

    class Purpose(models.TextChoices):
        INPUT = "input"
        OUTPUT = "output"
        ERROR = "error"

    file_id = models.CharField(max_length=100, primary_key=True)
    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="files")
    purpose = models.CharField(max_length=8, choices=Purpose.choices)
    bytes = models.PositiveBigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    ingested_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.file_id


class OpenAIWebhook(models.Model):
    """An event OpenAI sent to `/webhooks/openai`, kept so that a replay of it is refused.

    Kept a day (`tasks.purge`): OpenAI's signature holds a timestamp, and the SDK refuses one
    older than five minutes, so an older replay fails on its signature alone.
    """

    event_id = models.CharField(max_length=100, primary_key=True)
    type = models.CharField(max_length=64)
    upstream_id = models.CharField("upstream batch id", max_length=100, blank=True)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-received_at"]
        verbose_name = "webhook from OpenAI"
        verbose_name_plural = "webhooks from OpenAI"

    def __str__(self) -> str:
        return f"{self.type} {self.upstream_id}"


class ModelPrice(models.Model):
    """What OpenAI charges for a model synchronously; the Batch API charges half of it.

    Operators keep this table current in the admin. A model with no row here is shown as
    "unknown" on the dashboard, never as free.
    """

    BATCH_DISCOUNT = Decimal("0.5")

    model = models.CharField(
        max_length=200,
        unique=True,
        help_text="The model name as clients send it; dated snapshots (name-YYYY-MM-DD) match too.",
    )
    input_per_million = models.DecimalField("input $ / 1M tokens", max_digits=10, decimal_places=4)
    output_per_million = models.DecimalField(
        "output $ / 1M tokens", max_digits=10, decimal_places=4, default=Decimal(0)
    )
    per_image = models.DecimalField(
        "$ / image or video second",
        max_digits=10,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="For models priced per image (DALL-E) or per second of video (Sora), at their "
        "default size and quality.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]
        verbose_name = "model price"

    def __str__(self) -> str:
        return self.model

    def synchronous_cost(self, input_tokens: int, output_tokens: int, images: int = 0) -> Decimal:
        million = Decimal(1_000_000)
        per_token = (
            input_tokens * self.input_per_million + output_tokens * self.output_per_million
        ) / million
        return per_token + images * (self.per_image or 0)


# OpenAI dates its snapshots `-2024-08-06`, Anthropic `-20250514`.
SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|20\d{6})$")


def base_model(model: str) -> str:
    """A dated snapshot's model (`gpt-4o-2024-08-06` -> `gpt-4o`, `claude-sonnet-4-20250514`
    -> `claude-sonnet-4`); any other name unchanged."""
    return SNAPSHOT.sub("", model)


class QueueLimit(models.Model):
    """How much of a model may wait on one upstream in batches not yet finished (OpenAI's
    enqueued-token limit, per organisation and model), and what the proxy has learned of it
    from refusals.

    One row per upstream and model, as clients name it without a date; its snapshots share it.
    The same model on two upstreams (two OpenAI organisations) has two rows: each organisation
    has its own limit. A limit left empty here falls back to QUEUE_LIMITS / QUEUE_REQUEST_LIMITS;
    with neither, none is enforced until a refusal teaches one. Flushers lock the row while they
    take from the budget.
    """

    upstream = models.CharField(
        max_length=64, default="openai", help_text="The name of the upstream whose limit it is."
    )
    model = models.CharField(max_length=200, help_text="Without a date suffix.")
    enqueued_tokens = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="The upstream's enqueued-token limit for this model."
    )
    queued_requests = models.PositiveIntegerField(
        null=True, blank=True, help_text="The upstream's limit of queued requests (embeddings)."
    )
    learned_tokens = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        editable=False,
        help_text="A working budget lowered after a token_limit_exceeded refusal.",
    )
    stated_tokens = models.PositiveBigIntegerField(
        null=True, blank=True, editable=False, help_text="The limit the upstream's refusal named."
    )
    learned_at = models.DateTimeField(null=True, blank=True, editable=False)
    waiting_since = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="Since when queued requests wait for queue capacity.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["upstream", "model"]
        verbose_name = "queue limit"
        constraints = [
            models.UniqueConstraint(fields=["upstream", "model"], name="queue_limit_upstream_model")
        ]

    def __str__(self) -> str:
        return f"{self.upstream}:{self.model}"
