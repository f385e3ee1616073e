"""Intake: turn a client's call into a queued request, exactly once per (key, endpoint, body)."""

import hashlib
import json
import re
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
from batchproxy import utils

from .errors import ClientError
from .models import PROMPT_ENDPOINTS, ApiKey, BatchRequest, Endpoint


@dataclass(frozen=True, slots=True)
class ParsedCall:
    endpoint: str
    model: str
    canonical: bytes
    fingerprint: str
    embedding_inputs: int
    # How the caller wants its answer, not part of the call: a stream of the provider's own
    # events, with a last usage chunk (OpenAI's stream_options.include_usage).
    stream: bool = False
    include_usage: bool = False


# The endpoints whose calls may ask for their answer as a stream (Gemini's streams by its path).
STREAM_ENDPOINTS = frozenset(
    {Endpoint.CHAT_COMPLETIONS, Endpoint.RESPONSES, Endpoint.COMPLETIONS, Endpoint.MESSAGES}
)


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

    Only bodies with a run of 19 digits pay for this second, exact parse. Python's parser
    recurses, so a body nested near orjson's own limit (1,024) is too deep for it: refused.
    """
    try:
        stack = [json.loads(raw)]
    except RecursionError:
        raise ClientError(400, "The body is nested too deeply.", code="invalid_json") from None
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, int) and value not in INT64:
            return True
    return False


def call_parse(
    *, endpoint: str, raw: bytes, model: str | None = None, stream: bool = False
) -> ParsedCall:
    """Validate a call's body and give its canonical form and fingerprint.

    Canonical JSON (sorted keys, no insignificant white space) is the request's identity, so
    the same call with its keys in another order is the same request. A `model` given apart
    (Gemini's is in the path) goes into the body, where the identity and the engine find it.
    `stream` and `stream_options` say how the answer travels, not what is asked: they are
    neither in the identity nor in the batch line (`stream`: Gemini's streaming path).
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
    include_usage = False
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise ClientError(
            400, "'stream' must be true or false.", code="invalid_type", param="stream"
        )
    if endpoint in STREAM_ENDPOINTS and body.get("stream"):
        # Only a stream's flag is dropped: `"stream": false` stays part of the identity it
        # always was, so a request queued before this proxy streamed is still found.
        del body["stream"]
        stream = True
        options = body.pop("stream_options", None)
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
    elif body.get("stream") not in (None, False):
        raise ClientError(
            400,
            "Streaming is not offered on this endpoint: its answer comes whole. Drop 'stream'.",
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
    return ParsedCall(endpoint, model, canonical, fingerprint, inputs, stream, include_usage)


def request_for_call(*, api_key_id: int, call: ParsedCall) -> BatchRequest:
    """A new, unsaved, queued request for this call: the same values as the one statement's."""
    return BatchRequest(api_key_id=api_key_id, **call_row(call))


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
    connection, sql: str, params: list | dict, *, returns_rows: bool
) -> tuple[int, tuple | None]:
    """Run one hot-path statement: its row count and, for a query, its first row.

    On PostgreSQL it is prepared once per connection, with its parameters sent apart from the
    SQL (`requests_app.apps.allow_prepared_statements` allows it; Django's own queries bind on
    the client and are never prepared). Planning costs more than running these statements
    (EXPLAIN ANALYZE: the one statement of `requests_take` plans in 1.1 to 1.3 ms and runs in
    0.03 ms for a repeat, 0.3 to 0.6 ms for a new call; the lookup planned in 0.04 to 0.1 ms
    and ran in 0.01), and quoting a kilobyte of body into the SQL cost more than sending it.
    The cursor is wrapped as Django wraps its own, so errors, query logging and query counts
    are Django's. The caller says whether rows come back: asking the cursor (`description`)
    builds an object per column.
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


def call_row(call: ParsedCall, *, deadline=None, now=None) -> dict:
    """A new request's values taken from its call and the clock, by field name; every other
    column takes its model default. The one statement's SQL is built from these names, so
    storing one more thing of a call is one line here."""
    now = now or timezone.now()
    return {
        "id": utils.uuid4(),
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


def _pending_in() -> str:
    # Literal, not a parameter: a prepared statement's generic plan can use a partial index
    # only when the statement's own condition is written out.
    return "status IN ({})".format(", ".join(f"'{status}'" for status in BatchRequest.PENDING))


_TAKE_SQL: dict[tuple, tuple[str, dict]] = {}


def _take_sql(connection, names: tuple[str, ...]) -> tuple[str, dict]:
    """`requests_take`'s statement for this database and these columns, built once, and its
    constant parameters (the other columns' non-NULL defaults).

    PostgreSQL: one statement. `k` is the key, `f` the request already made of this call,
    `i` the insert, done only when the key is active, no such request exists and the key's
    queued groups leave room (MAX_GROUPS_PER_KEY); it answers (key active, inserted, the
    found request's ANSWER_FIELDS). SQLite has no INSERT inside WITH: its statement is the
    insert alone, run after the lookup (`requests_take`).
    Table and column names come from the model; every value is a parameter.
    """
    cache_key = (connection.vendor, names)
    if cache_key in _TAKE_SQL:
        return _TAKE_SQL[cache_key]
    quote = connection.ops.quote_name
    meta = BatchRequest._meta
    columns = [quote(meta.get_field(name).column) for name in names]
    values = [f"%(c_{name})s" for name in names]
    constants = {}
    for field in meta.concrete_fields:
        if field.attname in (*names, "api_key_id") or field.get_default() is None:
            continue
        # A default computed per row (a callable) belongs in `call_row`.
        assert not (field.has_default() and callable(field.default)), field.attname
        columns.append(quote(field.column))
        values.append(f"%(d_{field.attname})s")
        constants[f"d_{field.attname}"] = field.get_db_prep_save(field.get_default(), connection)
    requests, keys = quote(meta.db_table), quote(ApiKey._meta.db_table)
    pending = _pending_in()
    key = (
        f"SELECT id, (revoked_at IS NULL AND (NOT from_env OR %(env_ok)s)) AS active "  # noqa: S608
        f"FROM {keys} WHERE key_hash = %(key_hash)s"
    )
    # The key's waiting groups in order, one index probe each (key_groups_idx), stopping at
    # the cap: counted in at most MAX_GROUPS_PER_KEY probes however many requests wait.
    mine = f"api_key_id = (SELECT id FROM k) AND {pending}"  # noqa: S608
    groups = (
        "groups (endpoint, model, n) AS (SELECT endpoint, model, 1 FROM "  # noqa: S608
        f"(SELECT endpoint, model FROM {requests} WHERE {mine} ORDER BY endpoint, model LIMIT 1) "
        "a UNION ALL SELECT r.endpoint, r.model, groups.n + 1 FROM groups JOIN "
        f"{requests} r ON r.id = (SELECT id FROM {requests} WHERE {mine} "
        "AND (endpoint, model) > (groups.endpoint, groups.model) ORDER BY endpoint, model "
        "LIMIT 1) WHERE groups.n < %(max_groups)s)"
    )
    # One group (endpoint, model) more is let in while the key has fewer than the cap waiting.
    # Whether the call's group waits already: the key's first group from it on, in index order.
    # An EXISTS would do, but the key's id is a parameter to the planner, which with a few
    # keys may then expect a match within a few rows of a sequential scan.
    waits = (
        "COALESCE((SELECT endpoint = %(g_endpoint)s AND model = %(g_model)s "  # noqa: S608
        f"FROM {requests} WHERE {mine} AND (endpoint, model) >= (%(g_endpoint)s, %(g_model)s) "
        "ORDER BY endpoint, model LIMIT 1), FALSE)"
    )
    room = f"(%(max_groups)s <= 0 OR {waits} OR (SELECT count(*) FROM groups) < %(max_groups)s)"  # noqa: S608
    values = ", ".join(values)
    insert = f"INSERT INTO {requests} ({', '.join(columns)}, api_key_id) "
    if connection.vendor == "postgresql":
        answer = ", ".join(f"f.{quote(name)}" for name in ANSWER_FIELDS)
        sql = (
            f"WITH RECURSIVE k AS ({key}), {groups}, "  # noqa: S608
            f"f AS (SELECT {', '.join(ANSWER_FIELDS)} FROM {requests} "
            "WHERE api_key_id = (SELECT id FROM k) AND fingerprint = %(c_fingerprint)s), "
            f"i AS ({insert} SELECT {values}, k.id FROM k "
            f"WHERE k.active AND NOT EXISTS (SELECT 1 FROM f) AND {room} "
            "ON CONFLICT DO NOTHING RETURNING id) "
            f"SELECT k.active, i.id IS NOT NULL, {answer} "
            "FROM k LEFT JOIN i ON TRUE LEFT JOIN f ON TRUE"
        )
    else:
        # INSERT first: SQLite's driver counts the rows of a statement that starts with it.
        sql = (
            f"{insert} WITH RECURSIVE k AS ({key}), {groups} "  # noqa: S608
            f"SELECT {values}, k.id FROM k WHERE k.active AND {room} ON CONFLICT DO NOTHING"
        )
    _TAKE_SQL[cache_key] = sql, constants
    return sql, constants


class RecentCalls:
    """The calls (key hash, fingerprint) this process queued or answered lately, kept as their
    hashes, up to `size`, then forgotten all at once. On SQLite they decide which statement a
    call runs first: one met lately is looked up (a repeat ask reads, and never waits for the
    one write lock), any other is inserted (a new call costs one statement). Only a hint: a
    call forgotten or mistaken costs one statement more, never another answer."""

    def __init__(self, size: int):
        self.size = size
        self._hashes: set[int] = set()

    def __contains__(self, call: tuple[str, str]) -> bool:
        return hash(call) in self._hashes

    def add(self, call: tuple[str, str]) -> None:
        if len(self._hashes) >= self.size:
            self._hashes.clear()
        self._hashes.add(hash(call))


RECENT_CALLS = RecentCalls(50_000)  # about 3 MB when full


@dataclass(frozen=True, slots=True)
class Taken:
    """What `requests_take` did: `row` is the call's request (ANSWER_FIELDS) when one was
    found or made; `key_active` is None when the key has no row."""

    row: dict | None
    created: bool
    key_active: bool | None


def requests_take(*, key_hash: str, call: ParsedCall, deadline=None, now=None) -> Taken:
    """The request of this call for the active key with this hash: found, or queued now.

    On PostgreSQL one statement does it all (one round trip, no transaction). On SQLite it
    only inserts: the caller looks up a call it met lately first (an insert that inserts
    nothing would still take SQLite's one write lock, and repeat asks would queue behind every
    writer), and any other after an insert that inserted nothing (RECENT_CALLS).
    Nothing is made when the key is inactive, when its waiting groups are at
    MAX_GROUPS_PER_KEY, or when an identical call racing this one inserted first (ON CONFLICT
    DO NOTHING): then `row` is None and the caller takes the general path
    (`limits.requests_enqueue_capped`), which tells those apart.

    To store one more thing of a call (a column of BatchRequest), add it to `call_row`.
    """
    connection = connections[DEFAULT_DB_ALIAS]
    values = call_row(call, deadline=deadline, now=now)
    sql, constants = _take_sql(connection, tuple(values))
    env_ok = key_hash in settings.ENV_API_KEY_HASHES
    fields = BatchRequest._meta
    params = {
        f"c_{name}": fields.get_field(name).get_db_prep_save(value, connection)
        for name, value in values.items()
    }
    params |= constants | {
        "key_hash": key_hash,
        "env_ok": env_ok,
        "max_groups": settings.MAX_GROUPS_PER_KEY,
        # Apart from c_…: a parameter has one type, and the comparison deduces `text`.
        "g_endpoint": call.endpoint,
        "g_model": call.model,
    }
    rowcount, result = execute_prepared(
        connection, sql, params, returns_rows=connection.vendor == "postgresql"
    )
    if connection.vendor == "postgresql":
        if result is None:
            return Taken(None, created=False, key_active=None)
        active, created, *found = result
        if not created:
            row = dict(zip(ANSWER_FIELDS, found, strict=True)) if found[0] is not None else None
            return Taken(row, created=False, key_active=active)
    elif rowcount != 1:
        return Taken(None, created=False, key_active=None)
    return Taken(_new_answer(values), created=True, key_active=True)


def _new_answer(values: dict) -> dict:
    """A request just queued, as ANSWER_FIELDS."""
    return dict.fromkeys(ANSWER_FIELDS) | {
        "id": values["id"],
        "status": BatchRequest.Status.QUEUED,
        "endpoint": values["endpoint"],
        "model": values["model"],
        "created_at": values["created_at"],
        "response_chunks": 0,
        "error_code": "",
        "error_message": "",
        "deadline": values["deadline"],
        "sync_tier": "",
        "tier": "",
    }
