import base64
import hashlib
import secrets
import uuid
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db import models
from django.utils import timezone

ENDPOINTS = (
    "responses",
    "chat/completions",
    "embeddings",
    "completions",
    "moderations",
    "images/generations",
    "images/edits",
    "videos",
)


class Endpoint(models.TextChoices):
    RESPONSES = "/v1/responses"
    CHAT_COMPLETIONS = "/v1/chat/completions"
    EMBEDDINGS = "/v1/embeddings"
    COMPLETIONS = "/v1/completions"
    MODERATIONS = "/v1/moderations"
    IMAGES_GENERATIONS = "/v1/images/generations"
    IMAGES_EDITS = "/v1/images/edits"
    VIDEOS = "/v1/videos"
    MESSAGES = "/v1/messages"  # Anthropic's
    # Gemini's `models/{model}:generateContent`, under /v1 or /v1beta: the model is the path's.
    GENERATE_CONTENT = "/v1beta/models:generateContent"
    # Bedrock runtime's `/model/{modelId}/converse` and `/invoke` (boto3's converse and
    # invoke_model): the model is the path's.
    BEDROCK_CONVERSE = "/model/converse"
    BEDROCK_INVOKE = "/model/invoke"


# The endpoints whose calls are a prompt (and whose answers are priced per image or second).
IMAGE_ENDPOINTS = (Endpoint.IMAGES_GENERATIONS, Endpoint.IMAGES_EDITS)
PROMPT_ENDPOINTS = (*IMAGE_ENDPOINTS, Endpoint.VIDEOS)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKey(models.Model):
    """A proxy key: one tenant. Only the SHA-256 of the secret is stored."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(
        max_length=12,
        help_text="To recognise a key: a made key's first 8 characters, an env key's last 4.",
    )
    key_hash = models.CharField(max_length=64, unique=True)
    from_env = models.BooleanField(default=False, help_text="Defined by BATCH_SERVER_API_KEY.")
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    default_deadline = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Seconds: the deadline of this key's calls that name none (X-Batch-Deadline). "
        "Empty: the proxy's DEFAULT_DEADLINE, if any.",
    )
    hold_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Seconds this key's calls are held for their answer when they ask no Prefer: "
        "wait=N (capped by MAX_HOLD_SECONDS). Empty: not held, answered 422 at once.",
    )

    # A key stands in for the user in DRF views.
    is_authenticated = True

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.hint})" if self.hint else self.name

    @property
    def hint(self) -> str:
        """How the key is recognised: `bp-AbCdE…` for a made key, `…wxyz` for an env key."""
        if not self.prefix:
            return ""
        return f"…{self.prefix}" if self.from_env else f"{self.prefix}…"

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return not self.from_env or self.key_hash in settings.ENV_API_KEY_HASHES

    @staticmethod
    def new_secret() -> str:
        return "bp-" + secrets.token_urlsafe(32)


class BatchRequest(models.Model):
    """One client call, from intake until its answer is purged."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        SUBMITTED = "submitted"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    PENDING = (Status.QUEUED, Status.SUBMITTED)

    class Tier(models.TextChoices):
        """How a request is (to be) answered: batch, flex (batch price, synchronous) or
        standard (full price, synchronous)."""

        BATCH = "batch"
        FLEX = "flex"
        STANDARD = "standard"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: the unique (api_key, fingerprint) index starts with it.
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.PROTECT, related_name="requests", db_index=False
    )
    endpoint = models.CharField(max_length=32, choices=Endpoint.choices)
    model = models.CharField(max_length=200)
    # The canonical JSON text: what the fingerprint covers and what the batch line carries.
    body = models.TextField()
    body_bytes = models.PositiveIntegerField()
    embedding_inputs = models.PositiveIntegerField(default=0)
    fingerprint = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    deferrals = models.PositiveSmallIntegerField(
        default=0, help_text="Token-limit requeues, which back off without using attempts."
    )
    not_before = models.DateTimeField(null=True, blank=True)
    batch = models.ForeignKey(
        "batches_app.Batch",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="requests",
        db_index=False,  # batch_idx: the rows with a batch only
    )
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    # NULL is "no answer yet", which an empty answer is not. A large answer (an image's
    # b64_json) is kept in `ResponseChunk` rows instead, and this stays NULL.
    response_body = models.TextField(null=True, blank=True)  # noqa: DJ001
    # A database default too, so that rows inserted by raw SQL (bench/, scripts/) get it.
    response_chunks = models.PositiveIntegerField(
        default=0,
        db_default=0,
        help_text="How many ResponseChunk rows hold the answer (0: it is inline).",
    )
    response_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=100, blank=True)
    error_message = models.TextField(blank=True)
    # Tokens from the answer's own `usage`, kept apart from the body so that per-key figures are
    # one SQL aggregate; recorded at ingest, NULL for requests with no answer.
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    # Images (or seconds of video) in the answer, for models priced per image (dall-e-2,
    # dall-e-3) or per second (sora-2).
    output_images = models.PositiveSmallIntegerField(null=True, blank=True)
    # Input tokens counted by the proxy (batchproxy.tokens) before batching, for the upstream's
    # enqueued-token limit; counted by the flush, off the intake's hot path.
    counted_tokens = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # Deadlines and tiers (batches_app.tiers). NULL deadline: wait for the batch, however long.
    deadline = models.DateTimeField(null=True, blank=True)
    # The synchronous tier chosen for it ("": none, it waits for a batch), and the intent and
    # lease of the send in flight: set before the upstream call, cleared when it failed.
    # Database defaults too, for rows inserted by raw SQL (bench/, scripts/).
    sync_tier = models.CharField(
        "synchronous tier",
        max_length=8,
        choices=Tier.choices,
        blank=True,
        default="",
        db_default="",
    )
    sync_started_at = models.DateTimeField("send started", null=True, blank=True)
    sync_attempts = models.PositiveSmallIntegerField("synchronous sends", default=0, db_default=0)
    sync_not_before = models.DateTimeField("next send not before", null=True, blank=True)
    escalated_at = models.DateTimeField(
        "escalated",
        null=True,
        blank=True,
        help_text="Sent synchronously after its batch was submitted.",
    )
    # The receipt: who answered, what it cost, what it would have cost at the standard tier.
    tier = models.CharField(
        max_length=8, choices=Tier.choices, blank=True, default="", db_default=""
    )
    cost_usd = models.DecimalField(
        "cost (USD)", max_digits=14, decimal_places=8, null=True, blank=True
    )
    standard_cost_usd = models.DecimalField(
        "at standard price (USD)", max_digits=14, decimal_places=8, null=True, blank=True
    )
    paid_twice = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Answered (and billed) by both its batch and a synchronous send.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "fingerprint"], name="one_request_per_key_and_body"
            ),
        ]
        # Both partial: a row is in `pending_idx` only while it waits, in `finished_at_idx` only
        # once it has ended, so each stays small at millions of rows and serves its queries
        # (flush, queue depth; dashboard counts, purge) from the index alone on PostgreSQL.
        indexes = [
            # A batch's requests (ingest, poll, SET_NULL when a batch goes). A queued request
            # has none, and a plain index would hold an entry for each (11 us of a SQLite insert).
            models.Index(
                fields=["batch"], condition=models.Q(batch__isnull=False), name="batch_idx"
            ),
            models.Index(
                fields=["status", "endpoint", "model", "created_at"],
                include=["id", "body_bytes", "embedding_inputs", "not_before"],
                condition=models.Q(status__in=["queued", "submitted"]),
                name="pending_idx",
            ),
            # Only the queued requests the flush has not counted yet (batchproxy.tokens).
            models.Index(
                fields=["endpoint", "model"],
                condition=models.Q(status="queued", counted_tokens__isnull=True),
                name="uncounted_idx",
            ),
            models.Index(
                fields=["finished_at"],
                include=["status", "id"],
                condition=models.Q(finished_at__isnull=False),
                name="finished_at_idx",
            ),
            # A key's waiting groups, for MAX_GROUPS_PER_KEY at intake (is this call's group
            # waiting? how many are?) and its queued count for MAX_QUEUED_PER_KEY: a key's
            # waiting rows only, whatever it has kept.
            models.Index(
                fields=["api_key", "endpoint", "model"],
                condition=models.Q(status__in=["queued", "submitted"]),
                name="key_groups_idx",
            ),
            # Pending requests with a deadline, for the tier choice on every tick.
            models.Index(
                fields=["deadline"],
                condition=models.Q(status__in=["queued", "submitted"], deadline__isnull=False),
                name="deadline_idx",
            ),
            # Requests to send synchronously (tiers.sends_dispatch): a handful at any time. Its
            # condition is the dispatcher's filter word for word (tiers.SYNCABLE), so that the
            # planner can use it: an escalated request failed by its batch is still sent.
            models.Index(
                fields=["sync_not_before"],
                condition=models.Q(status__in=["queued", "submitted", "failed"])
                & ~models.Q(sync_tier=""),
                name="sync_due_idx",
            ),
            # A key's videos, for the owner check of a video's content (requests_app.videos):
            # a handful of rows per key, however many other calls it makes.
            models.Index(
                fields=["api_key", "status"],
                condition=models.Q(endpoint="/v1/videos"),
                name="videos_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.model} {self.id}"

    @property
    def is_pending(self) -> bool:
        return self.status in self.PENDING

    @property
    def saving_usd(self):
        """What the receipt saved against the standard tier (negative when paid twice)."""
        if self.cost_usd is None or self.standard_cost_usd is None:
            return None
        return self.standard_cost_usd - self.cost_usd

    def as_jsonl_line(self) -> str:
        return jsonl_line(self.id, self.endpoint, self.body)


def jsonl_line(request_id: uuid.UUID | str, endpoint: str, body: str) -> str:
    """One line of a batch input file; `body` is already canonical JSON."""
    return f'{{"custom_id":"{request_id}","method":"POST","url":"{endpoint}","body":{body}}}\n'


class ResponseChunk(models.Model):
    """One piece of a large answer, in order.

    Large answers live in rows of at most RESPONSE_CHUNK_CHARS characters so that any web
    process can stream one from the database a piece at a time, never holding it whole.
    """

    # Deleted with their request by `requests_purge`, explicitly: a cascade would make Django
    # load every purged request (bodies and all) instead of deleting them in one statement.
    request = models.ForeignKey(BatchRequest, on_delete=models.DO_NOTHING, related_name="chunks")
    seq = models.PositiveIntegerField()
    data = models.TextField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["request", "seq"], name="one_chunk_per_place"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} #{self.seq}"


class RateCounter(models.Model):
    """Hits on one scope (a proxy key, an admin login address) in one fixed time window.

    In the database rather than a per-process cache, so that every web process counts against
    the same number (see requests_app.limits).
    """

    scope = models.CharField(max_length=200)
    window_end = models.BigIntegerField(help_text="Unix time at which this window closes.")
    hits = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "window_end"], name="one_counter_per_window"),
        ]

    def __str__(self) -> str:
        return f"{self.scope} until {self.window_end}: {self.hits}"


def url_redacted(url: str) -> str:
    """A URL with its query string (often a token) and any user name or password hidden."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    if netloc != parts.netloc:
        netloc = "…@" + netloc
    query = "…" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class WebhookEndpoint(models.Model):
    """A caller's URL told when requests of one key (or of every key) finish.

    The signing secret must be kept in clear to sign with (an HMAC key cannot be hashed); it is
    shown once when the endpoint is made and never again in the admin.
    """

    url = models.URLField(max_length=2000)
    api_key = models.ForeignKey(
        ApiKey,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="webhooks",
        help_text="Empty: the requests of every key.",
    )
    include_body = models.BooleanField(
        default=False, help_text="Send each answer's body with its event."
    )
    secret = models.CharField(max_length=100, editable=False)
    is_active = models.BooleanField(
        default=True, help_text="Off: no new events; waiting deliveries are held until it is on."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "webhook endpoint"

    def __str__(self) -> str:
        return self.url_shown

    @property
    def url_shown(self) -> str:
        """The URL as logs and the admin show it: a query string (often a token) and a user
        name or password are hidden."""
        return url_redacted(self.url)

    @staticmethod
    def new_secret() -> str:
        """Standard Webhooks' format: `whsec_` and 32 random bytes in base64."""
        return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookDelivery(models.Model):
    """One POST of a list of events to one endpoint, retried as a unit with the same id."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # Also the lease of the worker sending it: pushed past the send's timeout when claimed.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    give_up_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(status="pending"),
                name="webhook_due_idx",
            ),
        ]

    def __str__(self) -> str:
        return self.message_id

    @property
    def message_id(self) -> str:
        """The `webhook-id` header: the same on every attempt, so receivers can de-duplicate."""
        return f"msg_{self.id.hex}"


class WebhookEvent(models.Model):
    """The outbox: one finished request to tell one endpoint about, written in the same
    transaction that finished the request."""

    class Type(models.TextChoices):
        COMPLETED = "batch_request.completed"
        FAILED = "batch_request.failed"
        CANCELLED = "batch_request.cancelled"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="events")
    # No constraint and no cascade: the answers' purge deletes requests without looking for
    # their events (nor locking them). An event whose request was purged is skipped when sent,
    # and goes with its delivery (`webhook_deliveries_purge`).
    request = models.ForeignKey(
        BatchRequest,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    type = models.CharField(max_length=32, choices=Type.choices)
    status = models.CharField(max_length=16, choices=BatchRequest.Status.choices)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivery = models.ForeignKey(
        WebhookDelivery, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )

    class Meta:
        indexes = [
            models.Index(
                fields=["endpoint", "id"],
                condition=models.Q(delivery__isnull=True),
                name="webhook_undelivered_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.request_id}"


class WebhookAttempt(models.Model):
    """One try at a delivery, and what the receiver answered."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    started_at = models.DateTimeField(default=timezone.now)
    duration_ms = models.PositiveIntegerField(default=0)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True, help_text="The first 1,000 characters.")
    error = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"{self.delivery_id} at {self.started_at:%Y-%m-%d %H:%M:%S}"
