"""Settings for batchproxy, read from the environment (see .env.example for every variable)."""

import hashlib
import re
import warnings
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from batchproxy.tryout import FAKE_API_KEY, tryout_read, tryout_upstreams

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")

DATA_DIR = Path(env.str("DATA_DIR", default=str(BASE_DIR / "data")))
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    # A try-out's (or DEBUG's) key: one random key per data directory, kept across restarts.
    # Anything else refuses to start without SECRET_KEY (ops_app.checks); the key is never
    # derived from an upstream key, whose holders could then sign sessions and queued tasks.
    from django.core.management.utils import get_random_secret_key

    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(get_random_secret_key())
        key_file.chmod(0o600)
    SECRET_KEY = key_file.read_text().strip()

# Required outside a try-out (ops_app.checks); loopback is always allowed for the HEALTHCHECK,
# which asks from inside the container, and for the try-out.
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])
if "*" not in ALLOWED_HOSTS:
    ALLOWED_HOSTS += ["127.0.0.1", "localhost"]
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Behind a TLS-terminating load balancer: trust its X-Forwarded-Proto/-Host/-For (only then,
# since a client could send them too: the proxy must be reachable through the balancer only).
USE_X_FORWARDED = env.bool("USE_X_FORWARDED", default=False)
if USE_X_FORWARDED:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    USE_X_FORWARDED_HOST = True
# Served over https (by default, behind such a balancer): the admin's cookies never travel over
# plain HTTP, and browsers are told to use https only (HSTS, sent on https answers only).
HTTPS_ONLY = env.bool("HTTPS_ONLY", default=USE_X_FORWARDED)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=HTTPS_ONLY)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000 if HTTPS_ONLY else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "requests_app",
    "batches_app",
    "ops_app",
    # After batches_app, whose `qcluster` (with the try-out guard) shadows django-q2's.
    "django_q",
]

MIDDLEWARE = [
    "ops_app.logs.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# The client API (/v1/…, /v1beta/…, served by batchproxy.wsgi) takes only what it uses: request
# ids, the security headers and the host check. Sessions, CSRF, users, messages, static files
# and frames are the admin's (about 90 µs of CPU a call for all of MIDDLEWARE; docs/benchmarks.md).
CLIENT_API_MIDDLEWARE = [
    "ops_app.logs.RequestIdMiddleware",
    "batchproxy.middleware.SecurityMiddleware",
    "batchproxy.middleware.CommonMiddleware",
]

ROOT_URLCONF = "batchproxy.urls"
ADMIN_URL = env.str("ADMIN_URL", default="admin/").strip("/") + "/"
WSGI_APPLICATION = "batchproxy.wsgi.application"
ASGI_APPLICATION = "batchproxy.asgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# POSTGRES_URL is the original proxy's name, DATABASE_URL the usual one; else embedded SQLite.
_database_url = env.str("POSTGRES_URL", default="") or env.str("DATABASE_URL", default="")
if _database_url:
    DATABASES = {"default": env.db_url_config(_database_url)}
else:
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATA_DIR / "batchproxy.sqlite3"}
    }
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
# A kept connection is tested before each request reuses it: after a database restart the
# first call of each web thread would otherwise fail on its dead connection (500).
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Embedded or named by a sqlite:// URL alike. WAL lets the web server read while the
    # scheduler writes; IMMEDIATE avoids lock-upgrade deadlocks between the two processes.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    } | DATABASES["default"].get("OPTIONS", {})
    # A file, not Django's shared in-memory database, whose table locks ignore the busy timeout
    # and fail the concurrent tests that a file in WAL mode passes.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
# Times to the second in the admin (batchproxy/formats/en/formats.py).
FORMAT_MODULE_PATH = ["batchproxy.formats"]
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
if env.bool("STATIC_MANIFEST", default=False):
    # Set in the Docker image, whose build runs collectstatic: hashed, compressed, cached files.
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
else:
    # A checkout without collectstatic: serve the admin's files straight from the apps. No
    # collected directory is expected, so WhiteNoise's warning that there is none is noise.
    WHITENOISE_USE_FINDERS = True
    warnings.filterwarnings("ignore", message=f"No directory at: {re.escape(str(STATIC_ROOT))}")

# --- The proxy's own knobs (CONTRACT.md §4) ---------------------------------------------------
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="https://api.openai.com/v1")
# A data directory in try-out mode (batchproxy/tryout.py) talks to its fakes only.
TRY_OUT = tryout_read(DATA_DIR)
if TRY_OUT is not None:
    OPENAI_BASE_URL, OPENAI_API_KEY = TRY_OUT["fakes"]["openai"], FAKE_API_KEY
OPENAI_TIMEOUT = env.float("OPENAI_TIMEOUT", default=60.0)
# The SDK's own retries of reads; calls that create something upstream never retry blindly.
OPENAI_MAX_RETRIES = env.int("OPENAI_MAX_RETRIES", default=2)
BATCH_SERVER_API_KEY = env.list("BATCH_SERVER_API_KEY", default=[])


def upstream_from_env(name: str) -> dict:
    """A named upstream from its UPSTREAM_<NAME>_* variables (docs/providers.md)."""
    prefix = f"UPSTREAM_{name.upper().replace('-', '_')}_"
    return {
        "name": name,
        "kind": env.str(prefix + "KIND", default="openai"),
        "base_url": env.str(prefix + "BASE_URL", default=""),
        "key_env": env.str(prefix + "KEY_ENV", default=prefix + "API_KEY"),
        "models": env.list(prefix + "MODELS", default=[]),
        "api_version": env.str(prefix + "API_VERSION", default=""),
        # A kind's own defaults (upstreams.KIND_DEFAULTS) apply where these are not set.
        "completion_window": env.str(prefix + "COMPLETION_WINDOW", default=""),
        "max_requests": env.int(prefix + "MAX_REQUESTS", default=0),
        "max_bytes": env.int(prefix + "MAX_BYTES", default=0),
        "min_requests": env.int(prefix + "MIN_REQUESTS", default=0),
    }


# Upstreams besides the default OpenAI one (OPENAI_*), tried in this order for each model.
UPSTREAMS = [upstream_from_env(name) for name in env.list("UPSTREAMS", default=[])]
if env.str("ANTHROPIC_API_KEY", default=""):
    # The Anthropic SDK's own variables make the default Anthropic upstream.
    UPSTREAMS.append(
        {
            "name": "anthropic",
            "kind": "anthropic",
            "base_url": env.str("ANTHROPIC_BASE_URL", default="https://api.anthropic.com"),
            "key_env": "ANTHROPIC_API_KEY",
            "models": env.list("ANTHROPIC_MODELS", default=["claude-*"]),
            "api_version": "",
        }
    )
if env.str("GEMINI_API_KEY", default=""):
    # google-genai's own variables make the default Gemini upstream.
    UPSTREAMS.append(
        {
            "name": "gemini",
            "kind": "gemini",
            "base_url": env.str(
                "GOOGLE_GEMINI_BASE_URL", default="https://generativelanguage.googleapis.com/"
            ),
            "key_env": "GEMINI_API_KEY",
            "models": env.list("GEMINI_MODELS", default=["gemini-*"]),
            "api_version": env.str("GEMINI_API_VERSION", default="v1beta"),
        }
    )
# A Gemini batch of at most this many bytes goes with its requests inline (the API takes
# 20 MB), a larger one as a JSONL file through the File API.
GEMINI_INLINE_MAX_BYTES = env.int("GEMINI_INLINE_MAX_BYTES", default=10_000_000)
if env.str("AZURE_OPENAI_ENDPOINT", default="") and env.str("AZURE_OPENAI_API_KEY", default=""):
    # The AzureOpenAI SDK's own variables make the default Azure upstream; its models are the
    # names of its Global-Batch deployments.
    UPSTREAMS.append(
        {
            "name": "azure",
            "kind": "azure",
            "base_url": env.str("AZURE_OPENAI_ENDPOINT"),
            "key_env": "AZURE_OPENAI_API_KEY",
            "models": env.list("AZURE_OPENAI_MODELS", default=[]),
            "api_version": env.str("OPENAI_API_VERSION", default="2025-04-01-preview"),
        }
    )
if TRY_OUT is not None:
    # The environment's upstreams are set aside, keys and all: the try-out's prompts go to its
    # fakes (claude-* to the fake Anthropic, gemini-* to the fake Gemini), never to a provider.
    UPSTREAMS = tryout_upstreams(TRY_OUT)
# Only the hashes are kept in memory beyond this point.
ENV_API_KEY_HASHES = frozenset(
    hashlib.sha256(key.encode()).hexdigest() for key in BATCH_SERVER_API_KEY if key
)
del BATCH_SERVER_API_KEY

BATCH_MAX_REQUESTS = env.int("BATCH_MAX_REQUESTS", default=50_000)
BATCH_MAX_BYTES = env.int("BATCH_MAX_BYTES", default=190_000_000)
BATCH_MAX_EMBEDDING_INPUTS = 50_000
BATCH_MAX_WAIT = env.int("BATCH_MAX_WAIT", default=300)
# Seconds the oldest request of a group under its upstream's fewest requests per batch (Bedrock:
# 100 records a job) may wait for the group to grow; then the group is sent synchronously at
# its cheapest synchronous tier. An hour: a trickle of 100 an hour still fills a job at the
# batch price, and a slower one is answered well within the hours a job itself takes.
BATCH_MIN_WAIT = env.int("BATCH_MIN_WAIT", default=3600)
POLL_INTERVAL = env.int("POLL_INTERVAL", default=60)
MAX_ATTEMPTS = env.int("MAX_ATTEMPTS", default=3)
UPSTREAM_BACKOFF = env.int("UPSTREAM_BACKOFF", default=5)
TOKEN_LIMIT_BACKOFF = env.int("TOKEN_LIMIT_BACKOFF", default=600)
# Each upstream's enqueued-token limit per model (batches_app.capacity), e.g.
# QUEUE_LIMITS=gpt-4o=90000,openai-2:gpt-4o=450000: `UPSTREAM:MODEL=N` names the upstream, a
# plain `MODEL=N` means the upstream the model routes to (capacity.env_limits reads the keys).
# The admin's Queue limits table overrides it.


def _model_numbers(name: str) -> dict[str, int]:
    """`MODEL=N` (or `UPSTREAM:MODEL=N`) pairs from the environment, keyed as written."""
    pairs = {}
    for pair in env.list(name, default=[]):
        model, _, number = pair.partition("=")
        if not model.strip() or not number.strip().isdigit():
            raise ImproperlyConfigured(
                f"{name}: {pair!r} is not MODEL=N or UPSTREAM:MODEL=N (e.g. gpt-4o=90000)."
            )
        pairs[model.strip()] = int(number)
    return pairs


QUEUE_LIMITS = _model_numbers("QUEUE_LIMITS")
QUEUE_REQUEST_LIMITS = _model_numbers("QUEUE_REQUEST_LIMITS")
# The share of a configured limit kept free for the difference between our count and OpenAI's.
QUEUE_LIMIT_MARGIN = env.float("QUEUE_LIMIT_MARGIN", default=0.1)
# How long a budget learned from a token_limit_exceeded refusal is kept.
QUEUE_LIMIT_LEARNED_TTL = env.int("QUEUE_LIMIT_LEARNED_TTL", default=86_400)
# How long a web process keeps the list of models waiting for queue capacity.
CAPACITY_CACHE_SECONDS = env.float("CAPACITY_CACHE_SECONDS", default=5.0)
RESULT_RETENTION = env.int("RESULT_RETENTION", default=604_800)
# Seconds a done batch (ids, counts, usage; no prompt, no answer) and its upstream-file records
# are kept after it ended; its figures stay in /metrics' totals. And django-q2's task rows.
BATCH_RETENTION = env.int("BATCH_RETENTION", default=2_592_000)
TASK_RETENTION = env.int("TASK_RETENTION", default=604_800)
MAX_REQUEST_BYTES = env.int("MAX_REQUEST_BYTES", default=20_971_520)
DELETE_UPSTREAM_FILES = env.bool("DELETE_UPSTREAM_FILES", default=True)
# A batch still running this long after creation is treated as expired (24 h window + margin).
BATCH_STUCK_AFTER = env.int("BATCH_STUCK_AFTER", default=26 * 3600)
# No batch state lasts for ever (Batch.times_out_at): a batch not uploaded and created upstream
# within BATCH_SUBMIT_TIMEOUT of entering `building` or `uploaded`, or whose results are not read
# within BATCH_INGEST_TIMEOUT of entering `ingesting`, ends; its unanswered requests are requeued
# (or failed, once out of attempts). `running` is bounded by BATCH_STUCK_AFTER.
BATCH_SUBMIT_TIMEOUT = env.int("BATCH_SUBMIT_TIMEOUT", default=12 * 3600)
BATCH_INGEST_TIMEOUT = env.int("BATCH_INGEST_TIMEOUT", default=6 * 3600)
# Seconds between two rounds of the engine's work (flush, poll, ingest), under django-q2.
TICK_SECONDS = env.float("TICK_SECONDS", default=5.0)

# --- Held calls and streams (requests_app/waiting.py, docs: "Held calls and streams") -----------
# The most seconds a call is held for its answer (`Prefer: wait=N`, or its key's hold_seconds)
# before today's 422; streams are held until the answer, however long.
MAX_HOLD_SECONDS = env.int("MAX_HOLD_SECONDS", default=600)
# A stream waiting for its batch gets a keep-alive frame this often (read timeouts, proxies).
STREAM_KEEPALIVE_SECONDS = env.float("STREAM_KEEPALIVE_SECONDS", default=15.0)
# SQLite has no NOTIFY: each web process checks the requests it holds this often.
HOLD_POLL_SECONDS = env.float("HOLD_POLL_SECONDS", default=1.0)
# Threads per web process that run the client API's views (under ASGI; gunicorn's own under WSGI).
WEB_THREADS = env.int("WEB_THREADS", default=8)

# --- Deadlines and tiers (batches_app/tiers.py, docs: "Deadlines") ----------------------------
# The deadline of a call that names none and whose key has no default, in seconds from the call
# (empty: none, the call waits for its batch however long it takes).
DEFAULT_DEADLINE = env.int("DEFAULT_DEADLINE", default=None)
# Seconds of slack kept between a forecast's p90 and a deadline when choosing the tier.
DEADLINE_MARGIN = env.float("DEADLINE_MARGIN", default=60.0)
# Synchronous sends (flex, standard) in flight at once per upstream.
SYNC_CONCURRENCY = env.int("SYNC_CONCURRENCY", default=8)
# Timeout of one synchronous send; OpenAI advises up to 15 minutes for flex.
SYNC_TIMEOUT = env.float("SYNC_TIMEOUT", default=900.0)
# First delay before a refused flex send (or a failed one) is tried again; doubles, capped at 5 min.
SYNC_BACKOFF = env.float("SYNC_BACKOFF", default=5.0)
# Synchronous sends of one request at most (every tier, every failure: 429, 5xx, timeouts); then
# it goes back to its batch if its deadline allows, else it fails with `sync_attempts_exhausted`.
SYNC_MAX_ATTEMPTS = env.int("SYNC_MAX_ATTEMPTS", default=6)
# The forecast: measurements kept per upstream, endpoint, model and tier, the fewest that
# replace the stated defaults, and how long a measurement counts (seconds).
FORECAST_SAMPLES = env.int("FORECAST_SAMPLES", default=50)
FORECAST_MIN_SAMPLES = env.int("FORECAST_MIN_SAMPLES", default=5)
FORECAST_WINDOW = env.int("FORECAST_WINDOW", default=7 * 86_400)
# The signing secret of the endpoint registered with OpenAI for `POST /webhooks/openai`
# (`manage.py register_webhook`); empty: webhooks are refused and polling alone finds results.
OPENAI_WEBHOOK_SECRET = env.str("OPENAI_WEBHOOK_SECRET", default="")
# Output lines applied per transaction while ingesting.
INGEST_CHUNK_LINES = env.int("INGEST_CHUNK_LINES", default=1000)
# ... and at most this many bytes of them, so 1000 lines of 5 MB images are never held at once.
INGEST_CHUNK_BYTES = env.int("INGEST_CHUNK_BYTES", default=16_777_216)
# The largest answer the proxy keeps (one output line is read whole at ingest); a larger one
# fails its request with `response_too_large`. Answers over RESPONSE_INLINE_BYTES are stored in
# pieces and streamed to the client.
MAX_RESPONSE_BYTES = env.int("MAX_RESPONSE_BYTES", default=104_857_600)
RESPONSE_INLINE_BYTES = 262_144
# Files the proxy uploads, and the output and error files of its batches, expire upstream this
# many seconds after their creation (OpenAI takes 3600 to 2592000), even if deleting them fails.
UPSTREAM_FILE_EXPIRY = env.int("UPSTREAM_FILE_EXPIRY", default=2_592_000)

DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES
# Per-key limits (requests_app.limits); 0 turns a limit off.
RATE_LIMIT_PER_MINUTE = env.int("RATE_LIMIT_PER_MINUTE", default=0)
MAX_QUEUED_PER_KEY = env.int("MAX_QUEUED_PER_KEY", default=0)
# Distinct (endpoint, model) groups one key may have waiting at once: each is a batch of its own
# upstream, so a key inventing model names cannot flood the engine with them (429 past it).
MAX_GROUPS_PER_KEY = env.int("MAX_GROUPS_PER_KEY", default=100)
# Sign-ins on the admin (requests_app.limits.login_wait): ADMIN_LOGIN_ATTEMPTS per
# ADMIN_LOGIN_WINDOW seconds from one address for one user name, then locked; past as many for
# one user name from anywhere, one attempt per ADMIN_LOGIN_SLOWDOWN seconds.
ADMIN_LOGIN_ATTEMPTS = env.int("ADMIN_LOGIN_ATTEMPTS", default=10)
ADMIN_LOGIN_WINDOW = env.int("ADMIN_LOGIN_WINDOW", default=900)
ADMIN_LOGIN_SLOWDOWN = env.int("ADMIN_LOGIN_SLOWDOWN", default=5)

# Completion webhooks to callers (requests_app.webhooks).
# Seconds to connect, and to wait for each read of the receiver's answer.
WEBHOOK_TIMEOUT = env.float("WEBHOOK_TIMEOUT", default=10.0)
# Seconds one delivery may take in all (connect, send, answer), however the receiver drips.
WEBHOOK_DELIVERY_SECONDS = env.float("WEBHOOK_DELIVERY_SECONDS", default=30.0)
# First delay (s) before resending a failed delivery; doubles, capped at WEBHOOK_BACKOFF_CAP.
WEBHOOK_BACKOFF = env.float("WEBHOOK_BACKOFF", default=30.0)
WEBHOOK_BACKOFF_CAP = env.float("WEBHOOK_BACKOFF_CAP", default=3600.0)
# A delivery still failing this many seconds after it was made is given up (the admin resends).
WEBHOOK_RETRY_FOR = env.int("WEBHOOK_RETRY_FOR", default=86_400)
# Events per POST, and bytes of answer bodies per POST for endpoints that include them.
WEBHOOK_MAX_EVENTS = env.int("WEBHOOK_MAX_EVENTS", default=100)
WEBHOOK_MAX_BYTES = env.int("WEBHOOK_MAX_BYTES", default=1_000_000)
# Hosts that may be sent to over plain http; every other URL must be https. Loopback by default:
# its traffic never leaves the machine, and it is refused anyway unless private URLs are allowed.
WEBHOOK_ALLOW_HTTP_HOSTS = env.list(
    "WEBHOOK_ALLOW_HTTP_HOSTS", default=["localhost", "127.0.0.1", "::1"]
)
# Loopback, private, link-local and metadata addresses are refused unless this is true.
WEBHOOK_ALLOW_PRIVATE_URLS = env.bool("WEBHOOK_ALLOW_PRIVATE_URLS", default=False)
# Seconds one run of the delivery task may spend sending before it leaves the rest to the next.
WEBHOOK_RUN_SECONDS = env.int("WEBHOOK_RUN_SECONDS", default=50)
# GET /v1/batch_requests lists a request this many seconds after it finished, so that one
# whose transaction commits late (or on a worker whose clock lags) never lands behind a cursor.
LIST_SETTLE_SECONDS = env.float("LIST_SETTLE_SECONDS", default=10.0)
# A page of `GET /v1/batch_requests?include=body` ends once its answers reach this many bytes
# (`has_more` then says there is more), however high its `limit`.
LIST_MAX_BYTES = env.int("LIST_MAX_BYTES", default=8_388_608)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["requests_app.auth.ProxyKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["requests_app.auth.HasActiveKey"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "requests_app.api.FirstRenderer",
    "EXCEPTION_HANDLER": "requests_app.errors.drf_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

# django-q2: the timeout stays well below retry, so a slow task is never handed to a second
# worker while the first still runs it (and every task is safe to run twice anyway).
Q_CLUSTER = {
    "name": "batchproxy",
    "orm": "default",
    "workers": env.int("Q_WORKERS", default=2),
    "timeout": env.int("Q_TIMEOUT", default=900),
    "retry": env.int("Q_RETRY", default=1200),
    "max_attempts": 1,
    "catch_up": False,
    "save_limit": 250,
    "ack_failures": True,
}
if env.str("Q_REDIS_URL", default=""):
    Q_CLUSTER.pop("orm")
    Q_CLUSTER["redis"] = env.str("Q_REDIS_URL")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "ops_app.logs.JsonFormatter"},
    },
    # Every record gets the request id, and secrets (bearer tokens, API keys) masked.
    "filters": {
        "context": {"()": "ops_app.logs.RequestContextFilter"},
        # The scheduler's per-task lines: quiet unless SCHEDULER_LOG_LEVEL asks for them.
        "scheduler_chatter": {
            "()": "ops_app.logs.SchedulerChatterFilter",
            "level": env.str("SCHEDULER_LOG_LEVEL", default="WARNING"),
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            # LOG_FORMAT=json: one JSON object per line, for log shippers.
            "formatter": env.str("LOG_FORMAT", default="plain"),
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # 422 is the normal "not yet" answer: Django would log every one as a warning.
    "loggers": {
        "httpx2": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},
        "django-q": {"filters": ["scheduler_chatter"]},
    },
}

# --- Operations: health, metrics, OpenAPI ------------------------------------------------------
# /metrics asks for `Authorization: Bearer <METRICS_TOKEN>`. Without a token it is closed (403),
# unless METRICS_PUBLIC=true opens it to anyone who can reach it, or in try-out mode to loopback.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_PUBLIC = env.bool("METRICS_PUBLIC", default=False)
# One log line per HTTP request (method, path, status, time; never headers or bodies).
LOG_REQUESTS = env.bool("LOG_REQUESTS", default=False)
# `serve` applies the migrations at start (under a lock). A deploy of several containers sets it
# false on all of them and runs the migrations once, as a job (`serve --role migrate`).
RUN_MIGRATIONS = env.bool("RUN_MIGRATIONS", default=True)
# /readyz fails when no scheduler has run the flush schedule for this long.
SCHEDULER_STALE_AFTER = env.int("SCHEDULER_STALE_AFTER", default=300)
SPECTACULAR_SETTINGS = {
    "TITLE": "batchproxy",
    "DESCRIPTION": (
        "The proxy's own endpoints. Every path is also served without the /v1 prefix. "
        "Repeat an identical call until it stops answering 422."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "PREPROCESSING_HOOKS": ["ops_app.openapi.only_v1_paths"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "ops_app.openapi.add_intake_paths",
    ],
}

# Test-only: a named point at which a worker process kills itself, for crash tests.
CRASH_AT = env.str("BATCHPROXY_CRASH_AT", default="")
