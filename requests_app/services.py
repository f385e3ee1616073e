"""Intake: turn a client's call into a queued request, exactly once per (key, endpoint, body)."""

import functools
import hashlib
import json
import re
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.db.models import QuerySet
from django.utils import timezone

from batches_app.upstreams.gemini import request_check

from .errors import ClientError
from .models import PROMPT_ENDPOINTS, ApiKey, BatchRequest, Endpoint


@dataclass(frozen=True, slots=True)
class ParsedCall:
    endpoint: str
    model: str
    canonical: bytes
    fingerprint: str
    embedding_inputs: int


def _embedding_inputs(body: dict) -> int:
    value = body.get("input")
    if isinstance(value, list) and value and not isinstance(value[0], int):
        return len(value)  # a list of strings or of token arrays: one input each
    return 1


def _check_required_fields(endpoint: str, body: dict) -> None:
    """Refuse at once the few wrong shapes that every model would refuse anyway.

    Everything else is OpenAI's to judge: it answers a bad line with a 400 that reaches the
    client as that line's answer, and the proxy cannot follow every schema of every endpoint.
    """
    if endpoint == Endpoint.GENERATE_CONTENT and not (
        isinstance(body.get("contents"), list) and body["contents"]
    ):
        raise ClientError(
            400, "contents: a non-empty array is required.", code="invalid_value", param="contents"
        )
    if endpoint == Endpoint.MESSAGES and not isinstance(body.get("messages"), list):
        raise ClientError(
            400, "messages: an array is required.", code="invalid_value", param="messages"
        )
    if endpoint == Endpoint.CHAT_COMPLETIONS and not isinstance(body.get("messages", []), list):
        raise ClientError(
            400, "'messages' must be an array.", code="invalid_value", param="messages"
        )
    if endpoint in (Endpoint.EMBEDDINGS, Endpoint.MODERATIONS) and not (
        isinstance(body.get("input"), str | list) and body["input"] != []
    ):
        raise ClientError(
            400,
            "'input' is required: a string or a non-empty array.",
            code="invalid_value",
            param="input",
        )
    if endpoint in PROMPT_ENDPOINTS and not (
        isinstance(body.get("prompt"), str) and body["prompt"]
    ):
        raise ClientError(
            400, "'prompt' is required: a non-empty string.", code="invalid_value", param="prompt"
        )
    if endpoint == Endpoint.IMAGES_EDITS and not (
        isinstance(body.get("images"), list) and body["images"]
    ):
        raise ClientError(400, IMAGES_EDITS_JSON_ONLY, code="invalid_value", param="images")


def generate_content_check(call: ParsedCall) -> None:
    """A new GenerateContentRequest is one the SDK can put in a batch job, or a 400 saying why
    not. Asked of new calls only (about 0.5 ms): a stored request passed it once."""
    try:
        request_check(orjson.loads(call.canonical))
    except ValueError as exc:
        raise ClientError(
            400,
            f"The request is not one a Gemini batch job takes: {str(exc)[:300]}",
            code="invalid_value",
        ) from None


IMAGES_EDITS_JSON_ONLY = (
    "The Batch API takes image edits in their JSON form only: send 'images' as an array of "
    '{"image_url": "https://… or data:…"} or {"file_id": "file-…"}, not a multipart upload.'
)


# 19 digits in a row: where an integer beyond 64 bits could hide.
LONG_DIGITS = re.compile(rb"\d{19}")
INT64 = range(-(2**63), 2**63)


def _has_huge_int(raw: bytes) -> bool:
    """True when the body holds an integer orjson would silently turn into a float.

    Only bodies with a run of 19 digits pay for this second, exact parse.
    """
    stack = [json.loads(raw)]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, int) and value not in INT64:
            return True
    return False


def call_parse(*, endpoint: str, raw: bytes, model: str | None = None) -> ParsedCall:
    """Validate a call's body and give its canonical form and fingerprint.

    Canonical JSON (sorted keys, no insignificant white space) is the request's identity, so
    the same call with its keys in another order is the same request. A `model` given apart
    (Gemini's is in the path) goes into the body, where the identity and the engine find it.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ClientError(400, "The body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ClientError(400, "The body must be a JSON object.", code="invalid_json")
    if model is not None:
        body["model"] = model
    if LONG_DIGITS.search(raw) and _has_huge_int(raw):
        raise ClientError(
            400, "The body holds an integer outside the 64-bit range.", code="invalid_json"
        )
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ClientError(
            400, "'model' is required and must be a string.", code="invalid_model", param="model"
        )
    if len(model) > 200 or not model.isprintable():
        raise ClientError(
            400,
            "'model' is too long or holds control characters.",
            code="invalid_model",
            param="model",
        )
    _check_required_fields(endpoint, body)
    if body.get("stream") not in (None, False):
        raise ClientError(
            400,
            "Streaming is not supported: batched requests are answered whole. Drop 'stream'.",
            code="unsupported_parameter",
            param="stream",
        )
    try:
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        raise ClientError(
            400,
            "The body is nested too deeply or holds a number too large to handle.",
            code="invalid_json",
        ) from None
    fingerprint = hashlib.sha256(endpoint.encode() + b"\n" + canonical).hexdigest()
    inputs = _embedding_inputs(body) if endpoint == Endpoint.EMBEDDINGS else 0
    return ParsedCall(endpoint, model, canonical, fingerprint, inputs)


def request_for_call(*, api_key_id: int, call: ParsedCall) -> BatchRequest:
    """A new, unsaved, queued request for this call."""
    return BatchRequest(
        api_key_id=api_key_id,
        endpoint=call.endpoint,
        model=call.model,
        body=call.canonical.decode(),
        body_bytes=len(call.canonical),
        embedding_inputs=call.embedding_inputs,
        fingerprint=call.fingerprint,
    )


def requests_enqueue(*, api_key_id: int, call: ParsedCall) -> BatchRequest:
    """The key's live request for this call, created if there is none.

    The unique constraint on (key, fingerprint) decides races: whoever inserts second gets an
    IntegrityError and reads the winner's row.
    """
    request = request_for_call(api_key_id=api_key_id, call=call)
    try:
        with transaction.atomic():
            request.save(force_insert=True)
            return request
    except IntegrityError:
        return BatchRequest.objects.get(api_key_id=api_key_id, fingerprint=call.fingerprint)


# --- The hot path: SQL compiled once per connection ------------------------------------------


class _PreparingCursor(psycopg.Cursor):
    """A psycopg cursor that prepares what it runs, with the parameters sent apart from the SQL."""

    def execute(self, query, params=None, *, prepare=True, binary=None):
        return super().execute(query, params, prepare=prepare, binary=binary)


def execute_prepared(
    connection, sql: str, params: list, *, returns_rows: bool
) -> tuple[int, tuple | None]:
    """Run one hot-path statement: its row count and, for a query, its first row.

    On PostgreSQL it is prepared once per connection, with its parameters sent apart from the
    SQL (`requests_app.apps.allow_prepared_statements` allows it; Django's own queries bind on
    the client and are never prepared). Planning cost more than running these statements
    (pg_stat_statements: the lookup planned in 0.04 to 0.1 ms and ran in 0.01), and quoting a
    kilobyte of body into the SQL cost more than sending it. The cursor is wrapped as Django
    wraps its own, so errors, query logging and query counts are Django's. The caller says
    whether rows come back: asking the cursor (`description`) builds an object per column.
    """
    if connection.vendor == "postgresql":
        connection.ensure_connection()
        raw = _PreparingCursor(connection.connection)
        logged = connection.queries_logged
        cursor = connection.make_debug_cursor(raw) if logged else connection.make_cursor(raw)
    else:
        cursor = connection.cursor()
    with cursor:
        cursor.execute(sql, params)
        return cursor.rowcount, cursor.fetchone() if returns_rows else None


class CompiledValues:
    """A `.values()` query compiled to SQL once per connection, then run with new parameters.

    On the hot path, building and compiling a queryset costs several times what the indexed
    query itself costs (PostgreSQL answers in well under a millisecond). Only the parameters
    change between calls, so the SQL and the column converters are kept; values come back
    converted exactly as `.values()` would give them.
    """

    def __init__(self, build: Callable[..., QuerySet], arity: int):
        self._build = build
        self._markers = tuple(f"\x00param{i}\x00" for i in range(arity))
        self._compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _compile(self, connection) -> tuple:
        query = self._build(*self._markers).query
        compiler = query.get_compiler(connection=connection)
        sql, params = compiler.as_sql()
        slots = [self._markers.index(p) if p in self._markers else p for p in params]
        columns = [select[0] for select in compiler.select[: compiler.col_count]]
        names = [*query.values_select, *query.annotation_select]
        return sql, slots, names, list(compiler.get_converters(columns).items())

    def first(self, *args) -> dict | None:
        connection = connections[DEFAULT_DB_ALIAS]
        compiled = self._compiled.get(connection)
        if compiled is None:
            compiled = self._compiled[connection] = self._compile(connection)
        sql, slots, names, converters = compiled
        params = [args[slot] if isinstance(slot, int) else slot for slot in slots]
        _, row = execute_prepared(connection, sql, params, returns_rows=True)
        if row is None:
            return None
        row = list(row)
        for position, (functions, expression) in converters:
            for function in functions:
                row[position] = function(row[position], expression, connection)
        return dict(zip(names, row, strict=True))


# What the hot path reads of a request to answer it: no body, no ORM instance.
ANSWER_FIELDS = (
    "id",
    "status",
    "endpoint",
    "model",
    "created_at",
    "not_before",
    "response_status",
    "response_body",
    "response_chunks",
    "response_bytes",
    "error_code",
    "error_message",
    "deadline",
    "sync_tier",
    "tier",
    "cost_usd",
)


# What a new request's row takes from its call and the clock; every other column takes its
# model default, the same for every row.
CALL_COLUMNS = (
    "id",
    "endpoint",
    "model",
    "body",
    "body_bytes",
    "embedding_inputs",
    "fingerprint",
    "created_at",
    "updated_at",
    "deadline",
)
_INSERT_SQL: dict[str, tuple[str, list]] = {}


@functools.cache
def _call_fields() -> tuple:
    return tuple(BatchRequest._meta.get_field(name) for name in CALL_COLUMNS)


def _insert_sql(connection) -> tuple[str, list]:
    """`requests_insert`'s statement, built once per database, and its constant parameters.

    Its parameters: the key's hash; whether an environment key with that hash is configured;
    the CALL_COLUMNS; the constants (the other columns' defaults; a NULL default is left to
    the column). Table and column names come from the model; every value is a parameter.
    """
    if connection.vendor in _INSERT_SQL:
        return _INSERT_SQL[connection.vendor]
    quote = connection.ops.quote_name
    columns, constants = [quote(column) for column in CALL_COLUMNS], []
    for field in BatchRequest._meta.concrete_fields:
        if field.attname in (*CALL_COLUMNS, "api_key_id") or field.get_default() is None:
            continue
        # A default computed per row (a callable) belongs in CALL_COLUMNS.
        assert not (field.has_default() and callable(field.default)), field.attname
        columns.append(quote(field.column))
        constants.append(field.get_db_prep_save(field.get_default(), connection))
    key_table = quote(ApiKey._meta.db_table)
    sql = (
        f"INSERT INTO {quote(BatchRequest._meta.db_table)} "  # noqa: S608
        f"({', '.join(columns)}, {quote('api_key_id')}) "
        f"SELECT {', '.join(['%s'] * len(columns))}, {quote('id')} FROM {key_table} "
        f"WHERE {quote('key_hash')} = %s AND {quote('revoked_at')} IS NULL "
        f"AND (NOT {quote('from_env')} OR %s) "
        "ON CONFLICT DO NOTHING"
    )
    _INSERT_SQL[connection.vendor] = sql, constants
    return sql, constants


def requests_insert(*, key_hash: str, call: ParsedCall, deadline=None, now=None) -> dict | None:
    """Queue a new call in one statement, for the active key with this hash; None otherwise.

    One INSERT ... SELECT finds the key and inserts its request, and ON CONFLICT DO NOTHING
    leaves a racing twin's row alone, so a new call costs one round trip and no transaction.
    None (nothing inserted) when the key has no row, is revoked or is an environment key no
    longer configured, or when a twin won the race: the caller then takes the general path,
    which tells those cases apart.
    """
    connection = connections[DEFAULT_DB_ALIAS]
    sql, constants = _insert_sql(connection)
    now = now or timezone.now()
    values = {
        "id": uuid.uuid4(),
        "endpoint": call.endpoint,
        "model": call.model,
        "body": call.canonical.decode(),
        "body_bytes": len(call.canonical),
        "embedding_inputs": call.embedding_inputs,
        "fingerprint": call.fingerprint,
        "created_at": now,
        "updated_at": now,
        "deadline": deadline,
    }
    params = [field.get_db_prep_save(values[field.attname], connection) for field in _call_fields()]
    params += [*constants, key_hash, key_hash in settings.ENV_API_KEY_HASHES]
    inserted, _ = execute_prepared(connection, sql, params, returns_rows=False)
    if inserted != 1:
        return None
    return dict.fromkeys(ANSWER_FIELDS) | {
        "id": values["id"],
        "status": BatchRequest.Status.QUEUED,
        "endpoint": call.endpoint,
        "model": call.model,
        "created_at": now,
        "error_code": "",
        "error_message": "",
        "deadline": deadline,
        "sync_tier": "",
        "tier": "",
    }
