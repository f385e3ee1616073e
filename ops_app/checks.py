"""System checks for production configuration: fail loudly on nonsense, warn on risky defaults."""

import os

from django.conf import settings
from django.core.checks import Error, Warning, register

from batchproxy.tryout import tryout_read


def production() -> bool:
    """Neither a try-out nor DEBUG: what must not run on generated or permissive defaults.

    The try-out record is read afresh: `serve --fake-openai` writes it after its own settings
    were loaded, and checks again then.
    """
    return not settings.DEBUG and tryout_read(settings.DATA_DIR) is None


@register(deploy=True)
def secret_key_check(app_configs, **kwargs) -> list:
    problems = []
    from_env = bool(os.environ.get("SECRET_KEY"))
    if from_env and len(settings.SECRET_KEY) < 32 and not settings.DEBUG:
        problems.append(
            Error(
                "SECRET_KEY is shorter than 32 characters.",
                hint="Generate one: python -c 'import secrets; print(secrets.token_urlsafe(50))'",
                id="ops_app.E001",
            )
        )
    if not from_env and production():
        # It signs admin sessions and django-q2's queued tasks: it is never derived from an
        # upstream key, and a key generated per machine would not be shared by the others.
        problems.append(
            Error(
                "SECRET_KEY is not set: the proxy does not start without it outside a try-out.",
                hint="Set SECRET_KEY to the same long random value on every machine of this "
                "deployment: python -c 'import secrets; print(secrets.token_urlsafe(50))'. "
                "A try-out (manage.py serve --fake-openai) keeps a generated key in DATA_DIR.",
                id="ops_app.E020",
            )
        )
    return problems


@register(deploy=True)
def allowed_hosts_check(app_configs, **kwargs) -> list:
    if os.environ.get("ALLOWED_HOSTS") or not production():
        return []
    return [
        Error(
            "ALLOWED_HOSTS is not set: the proxy does not start without it outside a try-out.",
            hint="Set ALLOWED_HOSTS to the host names clients and operators use to reach the "
            "proxy, separated by commas (e.g. batchproxy.example.com); * accepts any, for a "
            "proxy behind a load balancer that checks the Host itself.",
            id="ops_app.E021",
        )
    ]


@register()
def login_throttle_check(app_configs, **kwargs) -> list:
    if settings.ADMIN_LOGIN_WINDOW >= 1 and settings.ADMIN_LOGIN_SLOWDOWN >= 1:
        return []
    return [
        Error(
            "ADMIN_LOGIN_WINDOW and ADMIN_LOGIN_SLOWDOWN are at least 1 second.", id="ops_app.E022"
        )
    ]


def startup_refusal() -> str | None:
    """Why the proxy must not start, or None: asked by `serve`, `qcluster` and the web
    application (gunicorn runs no system checks), and shown by `manage.py check --deploy`.

    Not a check that every command runs: makemigrations or createsuperuser in a checkout need
    neither setting."""
    errors = [*secret_key_check(None), *allowed_hosts_check(None)]
    return "\n".join(f"{e.id}: {e.msg} {e.hint or ''}" for e in errors) or None


@register()
def metrics_token_check(app_configs, **kwargs) -> list:
    token = settings.METRICS_TOKEN
    if token and len(token) < 16:
        return [Error("METRICS_TOKEN is shorter than 16 characters.", id="ops_app.E002")]
    return []


@register()
def queue_limits_check(app_configs, **kwargs) -> list:
    problems = []
    if not 0 <= settings.QUEUE_LIMIT_MARGIN < 1:
        problems.append(
            Error("QUEUE_LIMIT_MARGIN is a share of the limit, from 0 up to 1.", id="ops_app.E003")
        )
    for name in ("QUEUE_LIMITS", "QUEUE_REQUEST_LIMITS"):
        bad = [model for model, limit in getattr(settings, name).items() if limit <= 0]
        if bad:
            problems.append(
                Error(
                    f"{name} holds limits that are not positive: {', '.join(bad)}.",
                    hint="Write MODEL=N pairs separated by commas, e.g. gpt-4o=90000.",
                    id="ops_app.E004",
                )
            )
    return problems


@register()
def upstream_limits_check(app_configs, **kwargs) -> list:
    problems = []
    if not 3600 <= settings.UPSTREAM_FILE_EXPIRY <= 2_592_000:
        problems.append(
            Error(
                "UPSTREAM_FILE_EXPIRY must be between 3600 and 2592000 seconds (OpenAI's range).",
                id="ops_app.E010",
            )
        )
    if settings.MAX_RESPONSE_BYTES < settings.RESPONSE_INLINE_BYTES:
        problems.append(
            Error(
                f"MAX_RESPONSE_BYTES must be at least {settings.RESPONSE_INLINE_BYTES}.",
                id="ops_app.E011",
            )
        )
    return problems


@register()
def ticks_and_webhooks_check(app_configs, **kwargs) -> list:
    problems = []
    if not 0.5 <= settings.TICK_SECONDS <= 60:
        # Under half a second the ticks only load the database; over a minute a tick chain
        # (a minute long) would not tick at all.
        problems.append(Error("TICK_SECONDS must be from 0.5 to 60 seconds.", id="ops_app.E005"))
    secret = settings.OPENAI_WEBHOOK_SECRET
    if secret and not secret.startswith("whsec_"):
        problems.append(
            Warning(
                "OPENAI_WEBHOOK_SECRET does not start with whsec_: OpenAI's secrets do.",
                hint="Copy the secret OpenAI showed when the endpoint was created, whole.",
                id="ops_app.W002",
            )
        )
    return problems


# The kinds of upstream the proxy can send batches to today (batches_app/upstreams).
UPSTREAM_KINDS = (
    "openai",
    "azure",
    "groq",
    "together",
    "mistral",
    "fireworks",
    "xai",
    "bedrock",
    "vertex",
    "anthropic",
    "gemini",
)


@register()
def upstreams_check(app_configs, **kwargs) -> list:
    """Every configured upstream names a known kind, a base URL, models and a set key."""
    from batches_app.upstreams import KIND_DEFAULTS, window_seconds

    problems, seen = [], {"openai"}
    for upstream in settings.UPSTREAMS:
        name = upstream["name"]
        if name in seen:
            problems.append(Error(f"Upstream {name!r} is defined twice.", id="ops_app.E012"))
        seen.add(name)
        if upstream["kind"] not in UPSTREAM_KINDS:
            problems.append(
                Error(
                    f"Upstream {name!r} has kind {upstream['kind']!r}; "
                    f"supported: {', '.join(UPSTREAM_KINDS)}.",
                    id="ops_app.E013",
                )
            )
        if window := upstream.get("completion_window"):
            try:
                window_seconds(window)
            except ValueError:
                problems.append(
                    Error(
                        f"Upstream {name!r} has completion window {window!r}.",
                        hint="A duration like 24h or 7d (Groq takes 24h to 7d).",
                        id="ops_app.E015",
                    )
                )
        defaults = KIND_DEFAULTS.get(upstream["kind"])
        has_url = upstream["base_url"] or (defaults and defaults.base_url)
        if not has_url or not upstream["models"]:
            problems.append(
                Error(
                    f"Upstream {name!r} needs a base URL and the models it serves.",
                    hint="Set its UPSTREAM_<NAME>_BASE_URL and UPSTREAM_<NAME>_MODELS.",
                    id="ops_app.E014",
                )
            )
        # A try-out's upstreams are fakes, sent a placeholder key (batchproxy/tryout.py).
        if settings.TRY_OUT is None and not os.environ.get(upstream["key_env"]):
            problems.append(
                Warning(
                    f"Upstream {name!r} reads its key from {upstream['key_env']}: not set.",
                    id="ops_app.W003",
                )
            )
    return problems


@register()
def deadlines_check(app_configs, **kwargs) -> list:
    """Synchronous sends (batches_app.tiers) run as django-q2 tasks: a task outliving Q_RETRY
    would be handed to a second worker, which would send it again."""
    problems = []
    if settings.DEFAULT_DEADLINE is not None and settings.DEFAULT_DEADLINE < 0:
        problems.append(Error("DEFAULT_DEADLINE is seconds, 0 or more.", id="ops_app.E210"))
    if settings.SYNC_CONCURRENCY < 1 or settings.SYNC_TIMEOUT <= 0 or settings.SYNC_BACKOFF < 0:
        problems.append(
            Error(
                "SYNC_CONCURRENCY must be at least 1, SYNC_TIMEOUT above 0, SYNC_BACKOFF 0 or "
                "more.",
                id="ops_app.E211",
            )
        )
    if settings.Q_CLUSTER["retry"] <= settings.SYNC_TIMEOUT + 30:
        problems.append(
            Error(
                "SYNC_TIMEOUT + 30 s must stay below Q_RETRY: a send still running at Q_RETRY "
                "would be run a second time.",
                hint="Lower SYNC_TIMEOUT or raise Q_RETRY (and Q_TIMEOUT below it).",
                id="ops_app.E212",
            )
        )
    if (
        settings.FORECAST_MIN_SAMPLES < 1
        or settings.FORECAST_SAMPLES < settings.FORECAST_MIN_SAMPLES
    ):
        problems.append(
            Error(
                "FORECAST_MIN_SAMPLES must be at least 1 and at most FORECAST_SAMPLES.",
                id="ops_app.E213",
            )
        )
    return problems
