"""The engine: flush queued requests into batches, drive each batch upstream, ingest results.

A batch moves through its states one step at a time (`batch_step`). Each step records its intent
before the upstream call it makes and its result right after, so a crash anywhere is finished by
the next tick, and a batch is never created upstream twice: before creating again, the step
looks for an upstream batch whose metadata names ours.
"""

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Min, Q, QuerySet, Sum
from django.utils import timezone

from batchproxy.tokens import tokens_count
from batchproxy.utils import batched
from requests_app.keys import api_key_revoke
from requests_app.models import ApiKey, BatchRequest, ResponseChunk, jsonl_line
from requests_app.webhooks import webhook_events_record

from . import capacity, catalog, forecast, tiers, upstreams
from .attempts import attempts_close, attempts_open
from .leases import batch_lease, stopping
from .models import Batch, RequestAttempt, UpstreamFile, base_model
from .outcomes import (
    batch_settle_rest,
    lines_apply,
    requests_retry,
    rows_update,
    webhooks_for_settled,
)
from .upstreams import METADATA_KEY, UpstreamError

log = logging.getLogger(__name__)
Status = BatchRequest.Status
State = Batch.State
BACKOFF_CAP = 3600
# Keys revoked this recently are swept at each flush (`_revoked_sweep`).
REVOKED_SWEEP_SECONDS = 600
# Requests whose tokens are counted per round.
TOKEN_COUNT_CHUNK = 1000
# Request bodies held in memory at once by a step (one body at least), and rows per read:
# 1,000 bodies of 4 MB must never be read together.
PIECE_BYTES = 16 * 1024 * 1024
PIECE_ROWS = 2000
# How many OPENAI_TIMEOUTs a create may take, from its start to its answer (one attempt, never
# retried by the SDK; the margin covers a slow upload of an inline batch's body).
CREATE_WINDOW = 2
# The statuses of a refusal that may concern some requests of a batch only (invalid, too
# large, unprocessable): such a batch is split until the offenders stand alone (`batch_split`).
CONTENT_REFUSALS = (400, 413, 422)
# Failures after which a call may or may not have done its work upstream.
AMBIGUOUS = ("timeout", "connection_error")


def crash_point(name: str) -> None:
    """Test-only: die here, as a `kill -9` would, when BATCHPROXY_CRASH_AT names this point."""
    if name == settings.CRASH_AT:
        os._exit(137)


def _line_overhead(endpoint: str) -> int:
    return len(jsonl_line("00000000-0000-0000-0000-000000000000", endpoint, "").encode())


# --- Flush ----------------------------------------------------------------------------------


def _ready(now: datetime) -> QuerySet:
    # A request sent synchronously (tiers.py) and requeued by its batch's end is not batched again.
    return BatchRequest.objects.filter(status=Status.QUEUED, sync_tier="").filter(
        Q(not_before__isnull=True) | Q(not_before__lte=now)
    )


def _group_due(group: dict, now: datetime, limits: tuple[int, int]) -> bool:
    wait = timedelta(seconds=settings.BATCH_MAX_WAIT)
    line_bytes = group["bytes"] + group["n"] * _line_overhead(group["endpoint"])
    max_requests, max_bytes = limits
    return (
        group["n"] >= max_requests
        or line_bytes >= max_bytes
        or group["inputs"] >= settings.BATCH_MAX_EMBEDDING_INPUTS
        or group["oldest"] <= now - wait
    )


def _under_minimum(group: dict, route) -> bool:
    """Too few requests for one batch of this upstream, which can answer them synchronously."""
    return group["n"] < upstreams.upstream_min_requests(route) and tiers.sync_offered(
        route, group["endpoint"]
    )


def _revoked_sweep(now: datetime) -> None:
    """Cancel what keys revoked in the last minutes still have queued: a call that raced its
    key's revocation (its insert committed just after the revocation's cancel) is never sent."""
    since = now - timedelta(seconds=REVOKED_SWEEP_SECONDS)
    for key_id in ApiKey.objects.filter(revoked_at__gte=since).values_list("pk", flat=True):
        api_key_revoke(key_id=key_id)


def batch_flush(
    *, force: bool = False, endpoint: str | None = None, model: str | None = None
) -> list[Batch]:
    """Claim every due group of queued requests into batches.

    1. Group the ready queued requests (back-off over) by endpoint and model; the model routes
       the group to its upstream (`upstreams.upstream_route`).
    2. Count the input tokens of the requests not counted yet.
    3. For each group that is due (size, bytes, embedding inputs, age; or `force`), claim its
       requests a batch at a time, each within OpenAI's limits and the model's queue budget
       (`capacity`); what does not fit waits for capacity. A group under its upstream's
       fewest requests per batch waits BATCH_MIN_WAIT for more instead, then goes to the
       synchronous tiers (`tiers.group_send_now`).
    The new batches are in state `building`, each for one upstream, endpoint and model;
    `batches_advance` uploads and creates them.
    """
    now = timezone.now()
    _revoked_sweep(now)
    ready = _ready(now)
    if endpoint:
        ready = ready.filter(endpoint=endpoint)
    if model:
        ready = ready.filter(model=model)
    groups = ready.values("endpoint", "model").annotate(
        n=Count("pk"),
        bytes=Sum("body_bytes"),
        inputs=Sum("embedding_inputs"),
        oldest=Min("created_at"),
        first_deadline=Min("deadline"),
    )
    created, waiting = [], set()
    for group in groups:
        route = upstreams.upstream_route(endpoint=group["endpoint"], model=group["model"])
        if route is None:
            log.warning("flush: no upstream serves %s on %s", group["model"], group["endpoint"])
            continue
        tokens_fill(endpoint=group["endpoint"], model=group["model"])
        # A deadline the batch can meet only if it starts now flushes its group now.
        urgent = tiers.group_due(group=group, upstream=route, now=now)
        if _under_minimum(group, route):
            # Too few for a batch (Bedrock's jobs take 100 records at least): the group waits
            # for more, then goes synchronously (a forced or urgent flush at once).
            if (
                force
                or urgent
                or group["oldest"] <= now - timedelta(seconds=settings.BATCH_MIN_WAIT)
            ):
                tiers.group_send_now(endpoint=group["endpoint"], model=group["model"], now=now)
            continue
        if not (force or urgent or _group_due(group, now, upstreams.upstream_limits(route))):
            continue
        while claim := _claim_one_batch(group["endpoint"], group["model"], force=force or urgent):
            if claim.batch:
                created.append(claim.batch)
            if claim.waiting:
                waiting.add((route.name, base_model(group["model"])))
                break
    if not (endpoint or model):
        capacity.waiting_clear(still_waiting=waiting)
    return created


def tokens_fill(*, endpoint: str, model: str) -> int:
    """Count the input tokens of the group's queued requests that have no count yet.

    Counted here rather than at intake, which stays as fast as it was; a count is kept, so each
    request is counted once.
    """
    uncounted = BatchRequest.objects.filter(
        status=Status.QUEUED, endpoint=endpoint, model=model, counted_tokens=None
    )
    counted = 0
    while ids := list(uncounted.values_list("pk", flat=True)[:TOKEN_COUNT_CHUNK]):
        for piece in bodies_in_pieces(BatchRequest.objects.filter(pk__in=ids)):
            counts = [(tokens_count(model=model, body=_parsed(b)), pk) for pk, b in piece]
            rows_update(counts, timezone.now(), names=("counted_tokens",))
            counted += len(counts)
    return counted


def _parsed(body: str):
    """orjson for ordinary bodies; the standard library for large ones, where orjson's working
    memory is about thirteen times the body's size (27 MB for a 2 MB body) and json's one."""
    return orjson.loads(body) if len(body) <= settings.RESPONSE_INLINE_BYTES else json.loads(body)


def bodies_in_pieces(requests: QuerySet) -> Iterator[list[tuple]]:
    """The (id, body) of `requests` in id order, a piece at a time: at most PIECE_BYTES of
    bodies (or PIECE_ROWS rows) each, their sizes read first without the bodies."""
    piece, size = [], 0
    for pk, body_bytes in requests.order_by("pk").values_list("pk", "body_bytes"):
        if piece and (size + body_bytes > PIECE_BYTES or len(piece) == PIECE_ROWS):
            yield list(_bodies_of(piece))
            piece, size = [], 0
        piece.append(pk)
        size += body_bytes
    if piece:
        yield list(_bodies_of(piece))


def _bodies_of(ids: list) -> QuerySet:
    return BatchRequest.objects.filter(pk__in=ids).order_by("pk").values_list("pk", "body")


@dataclass(frozen=True)
class Claim:
    batch: Batch | None
    waiting: bool  # requests of the group were left for want of queue capacity


def _claim_one_batch(endpoint: str, model: str, *, force: bool) -> Claim | None:
    """Claim the oldest ready requests of one group into a new batch, if a batch is due.

    `SKIP LOCKED` lets flushers run side by side on PostgreSQL, each claiming other rows; the
    status filter in the update keeps SQLite (which serialises writers) just as safe. The
    queue budget of the group's upstream and model is taken under a lock on its row
    (`capacity.room_take`), so two flushers never fill the same room. None when nothing was
    claimed and nothing waits.
    """
    now = timezone.now()
    overhead = _line_overhead(endpoint)
    route = upstreams.upstream_route(endpoint=endpoint, model=model)
    upstream, (max_requests, max_bytes) = route.name, upstreams.upstream_limits(route)
    with transaction.atomic():
        room = capacity.room_take(upstream=upstream, model=model)
        if room is not None and room.busy and not room.fits(1, 1):
            capacity.waiting_mark(upstream=upstream, model=model, waiting=True)
            return Claim(None, waiting=True)
        rows = list(
            _ready(now)
            .filter(endpoint=endpoint, model=model, counted_tokens__isnull=False)
            .order_by("created_at", "pk")
            .select_for_update(skip_locked=True)
            .values_list("pk", "body_bytes", "embedding_inputs", "created_at", "counted_tokens")[
                :max_requests
            ]
        )
        if not rows:
            return None
        taken, size, inputs, tokens, full = [], 0, 0, 0, len(rows) == max_requests
        too_large, waiting, alone = [], False, False
        for pk, body_bytes, embedding_inputs, _created, counted in rows:
            if taken and (
                size + body_bytes + overhead > max_bytes
                or inputs + embedding_inputs > settings.BATCH_MAX_EMBEDDING_INPUTS
            ):
                full = True
                break
            if room is not None and not room.fits(tokens + counted, len(taken) + 1):
                if room.limit is not None and counted > room.limit:
                    too_large.append((pk, counted))
                    continue
                if taken or room.busy:
                    full = waiting = True
                    break
                # Over the budget, but within the limit and alone upstream: worth a try.
                full = alone = True
            taken.append(pk)
            size, inputs = size + body_bytes + overhead, inputs + embedding_inputs
            tokens += counted
            if alone:
                break
        if too_large:
            _fail_too_large(too_large, model=model, limit=room.limit)
        if room is not None:
            capacity.waiting_mark(upstream=upstream, model=model, waiting=waiting)
        aged = rows[0][3] <= now - timedelta(seconds=settings.BATCH_MAX_WAIT)
        # A remainder under the upstream's minimum is left queued: the next flush sends it
        # synchronously once it has waited (batch_flush).
        few = len(taken) < upstreams.upstream_min_requests(route) and tiers.sync_offered(
            route, endpoint
        )
        if not taken or few or not (full or force or aged):
            return Claim(None, waiting) if waiting else None
        batch = Batch.objects.create(
            upstream=upstream,
            endpoint=endpoint,
            model=model,
            input_bytes=size,
            counted_tokens=tokens,
        )
        claimed = 0
        for chunk in batched(taken, 2000):
            moved = BatchRequest.objects.filter(pk__in=chunk, status=Status.QUEUED).update(
                status=Status.SUBMITTED, batch=batch, attempts=F("attempts") + 1, updated_at=now
            )
            claimed += moved
            if moved < len(chunk):  # not all were still queued: record only those taken
                chunk = BatchRequest.objects.filter(pk__in=chunk, batch=batch)
                chunk = list(chunk.values_list("pk", flat=True))
            attempts_open(batch=batch, request_ids=chunk)
        Batch.objects.filter(pk=batch.pk).update(request_count=claimed)
        batch.request_count = claimed
    crash_point("after_claim")
    log.info("flush: batch %s claimed %d %s %s requests", batch.pk, claimed, endpoint, model)
    return Claim(batch, waiting)


def _fail_too_large(rows: list[tuple], *, model: str, limit: int) -> None:
    """Requests that alone have more input tokens than the model's queue limit never fit."""
    for pk, counted in rows:
        with transaction.atomic():
            failed = BatchRequest.objects.filter(pk=pk, status=Status.QUEUED).update(
                status=Status.FAILED,
                error_code="token_limit_exceeded",
                error_message=capacity.too_large_message(tokens=counted, limit=limit, model=model),
                finished_at=timezone.now(),
            )
            if failed:
                webhook_events_record(requests=BatchRequest.objects.filter(pk=pk))
    log.warning("flush: %d %s requests over the queue limit failed for good", len(rows), model)


# --- Steps ----------------------------------------------------------------------------------


@dataclass
class AdvanceReport:
    stepped: int = 0
    failures: list[str] = field(default_factory=list)


def batches_advance(
    *, states: tuple[str, ...] = Batch.ACTIVE, force: bool = False, batch_id=None
) -> AdvanceReport:
    """Take one step for every active batch that is due (all of them with `force`)."""
    due = Batch.objects.filter(state__in=states)
    if batch_id:
        due = due.filter(pk=batch_id)
    if not force:
        due = due.filter(next_attempt_at__lte=timezone.now())
    report = AdvanceReport()
    for pk in due.order_by("created_at").values_list("pk", flat=True):
        if stopping.is_set():
            break  # a SIGTERM: leave the rest to the next tick, which may be another worker's
        error = batch_step(batch_id=pk, force=force)
        report.stepped += 1
        if error:
            report.failures.append(f"{pk}: {error}")
    return report


def batch_step(*, batch_id, force: bool = False, wait: float = 0) -> str | None:
    """Advance one batch as far as it goes now; return the upstream error that stopped it.

    The batch is held by a lease that dies with this worker (`leases`), then read afresh: a
    step that another worker finished meanwhile is not repeated unless `force`. With `wait`,
    a batch another worker holds is waited for that many seconds, so that a step asked for
    now (a webhook's) runs after the one under way rather than not at all.
    """
    deadline = time.monotonic() + wait
    while True:
        with batch_lease(batch_id) as held:
            if held:
                due = Batch.objects.filter(pk=batch_id, state__in=Batch.ACTIVE)
                if not force:
                    due = due.filter(next_attempt_at__lte=timezone.now())
                batch = due.first()
                return _step(batch) if batch else None
        if time.monotonic() >= deadline or stopping.is_set():
            return None
        time.sleep(0.2)


def _step(batch: Batch) -> str | None:
    try:
        if (deadline := batch.times_out_at) and deadline <= timezone.now():
            _time_out(batch)
        elif batch.state in (State.BUILDING, State.UPLOADED):
            _submit(batch)
        elif batch.state == State.RUNNING:
            _poll(batch)
        elif batch.state == State.INGESTING:
            _ingest(batch)
    except UpstreamError as exc:
        _upstream_failed(batch, exc)
        return str(exc)
    except Exception as exc:
        # A bug or a malformed upstream answer must not stall every other batch each tick:
        # back off this one like an outage, loudly.
        log.exception("batch %s: unexpected error", batch.pk)
        _upstream_failed(batch, UpstreamError(repr(exc), permanent=False, code="internal"))
        return repr(exc)
    return None


def _upstream_failed(batch: Batch, exc: UpstreamError) -> None:
    batch.refresh_from_db()
    if exc.permanent and batch.state in (State.BUILDING, State.UPLOADED):
        log.warning("batch %s refused upstream: %s", batch.pk, exc)
        # Its input file, if any, is deleted by `files_sweep` on a later tick.
        if exc.status in CONTENT_REFUSALS:
            # Refused for what its requests hold: split it, so that only the offenders fail.
            batch_split(batch=batch, error=exc)
            return
        # Refused for what concerns every request (an unknown model): splitting would only
        # multiply the refusals. Give the requests back to the queue, by the usual rules.
        with transaction.atomic():
            started = timezone.now()
            requests_retry(_submitted(batch), code=exc.code, message=str(exc))
            webhooks_for_settled(batch=batch, since=started)
        _finish(batch, last_error=str(exc))
        return
    failures = batch.upstream_failures + 1
    delay = min(settings.UPSTREAM_BACKOFF * 2 ** (failures - 1), BACKOFF_CAP)
    if exc.code in AMBIGUOUS and batch.state in (State.BUILDING, State.UPLOADED):
        # The upload or create may still be under way upstream: let it land before the next
        # attempt looks for it, or the look would miss it and make a second one.
        delay = max(delay, 2 * settings.OPENAI_TIMEOUT)
    log.warning("batch %s: upstream error, retry in %ss: %s", batch.pk, delay, exc)
    Batch.objects.filter(pk=batch.pk).update(
        upstream_failures=failures,
        last_error=str(exc)[:2000],
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
    )


def batch_split(*, batch: Batch, error: UpstreamError) -> list[Batch]:
    """End a batch refused upstream at upload or create; bisect its requests.

    Two batches (`building`) take its requests, half each, by id: they are sent as they are,
    without spending another attempt, since nothing ran; halving again on each refusal, the
    requests that a refusal truly concerns end alone in their batch, and a batch of one that is
    refused fails its request for good, with the refusal's words. Nothing of a refused batch
    was created upstream, so no request is ever sent twice. One transaction: a crash leaves the
    batch as it was, refused again on the next tick.
    """
    halves = []
    with transaction.atomic():
        if (
            Batch.objects.filter(pk=batch.pk, state=batch.state).update(
                state=State.DONE, finished_at=timezone.now(), last_error=str(error)[:2000]
            )
            != 1
        ):
            return []  # someone else ended it first
        ids = list(_submitted(batch).order_by("pk").values_list("pk", flat=True))
        if len(ids) == 1:
            started = timezone.now()
            _submitted(batch).update(
                status=Status.FAILED,
                error_code=error.code,
                error_message=str(error)[:2000],
                finished_at=started,
                updated_at=started,
            )
            webhooks_for_settled(batch=batch, since=started)
        elif ids:
            attempts_close(request_ids=ids, outcome="split", error=(error.code, str(error)[:2000]))
            middle = len(ids) // 2
            halves = [_batch_of(batch, ids[:middle]), _batch_of(batch, ids[middle:])]
    log.info("batch %s split into %s", batch.pk, [str(half.pk) for half in halves])
    return halves


def _batch_of(parent: Batch, ids: list) -> Batch:
    """A new batch for some of `parent`'s requests, in the same upstream, endpoint and model."""
    batch = Batch.objects.create(
        upstream=parent.upstream, endpoint=parent.endpoint, model=parent.model
    )
    for chunk in batched(ids, 2000):
        _submitted(parent).filter(pk__in=chunk).update(batch=batch, updated_at=timezone.now())
        attempts_open(batch=batch, request_ids=chunk)
    totals = BatchRequest.objects.filter(batch=batch).aggregate(
        n=Count("pk"), size=Sum("body_bytes"), tokens=Sum("counted_tokens")
    )
    batch.request_count = totals["n"]
    batch.input_bytes = (totals["size"] or 0) + totals["n"] * _line_overhead(parent.endpoint)
    batch.counted_tokens = totals["tokens"] or 0
    batch.save(update_fields=["request_count", "input_bytes", "counted_tokens"])
    return batch


def _move(batch: Batch, old: str, new: str, **fields) -> bool:
    """Compare-and-set a state transition; False when someone else moved the batch first."""
    fields |= {"state": new, "state_since": timezone.now(), "upstream_failures": 0}
    fields.setdefault("last_error", "")
    if Batch.objects.filter(pk=batch.pk, state=old).update(**fields) != 1:
        return False
    for name, value in fields.items():
        setattr(batch, name, value)
    return True


def _finish(batch: Batch, **fields) -> None:
    Batch.objects.filter(pk=batch.pk).update(state=State.DONE, finished_at=timezone.now(), **fields)


def _time_out(batch: Batch) -> None:
    """End a batch that outstayed its state's bound (`Batch.times_out_at`), whatever upstream
    does: no state lasts for ever.

    - building, uploaded: an interrupted create is looked for one last time (and adopted if
      found); otherwise the requests are requeued, or failed once out of attempts;
    - running: cancelled upstream if it can be, then ingested as expired (what it delivered
      is kept, the rest requeued);
    - ingesting: the requests no file answered are settled as if their lines were missing,
      and the files are left for `files_sweep`.
    """
    log.warning("batch %s: %s since %s, past its bound", batch.pk, batch.state, batch.state_since)
    if batch.state == State.UPLOADED and batch.create_attempted_at:
        try:
            if found := _find_upstream(batch):
                _record_running(batch, found)
                return
        except UpstreamError as exc:
            log.warning("batch %s: last look for its upstream batch failed: %s", batch.pk, exc)
    if batch.state in (State.BUILDING, State.UPLOADED) and batch.cancel_mode:
        batch.upstream_status = "cancelled"  # as the operator asked, with nothing upstream
        batch_settle_rest(batch=batch)
        _finish(batch, upstream_status="cancelled")
    elif batch.state in (State.BUILDING, State.UPLOADED):
        message = f"Not submitted upstream within {settings.BATCH_SUBMIT_TIMEOUT}s."
        with transaction.atomic():
            started = timezone.now()
            requests_retry(_submitted(batch), code="batch_timed_out", message=message)
            webhooks_for_settled(batch=batch, since=started)
        _finish(batch, last_error=message)
    elif batch.state == State.RUNNING:
        try:
            _poll(batch)  # past BATCH_STUCK_AFTER: cancels, then ingests what it delivered
            return
        except UpstreamError as exc:
            log.warning("batch %s: its last poll failed: %s", batch.pk, exc)
        _cancel_stuck_quietly(batch)
        if _move(batch, State.RUNNING, State.INGESTING, upstream_status="expired"):
            _ingest(batch)
    elif batch.state == State.INGESTING:
        message = f"Results not read within {settings.BATCH_INGEST_TIMEOUT}s."
        batch_settle_rest(batch=batch)
        _finish(batch, last_error=message)


def _submitted(batch: Batch) -> QuerySet:
    return BatchRequest.objects.filter(batch=batch, status=Status.SUBMITTED)


# --- Submit: building -> uploaded -> running -------------------------------------------------


def _submit(batch: Batch) -> None:
    if batch.cancel_mode and not batch.create_attempted_at:
        _cancel_before_upstream(batch)
        return
    if batch.state == State.BUILDING:
        _upload(batch)
    if batch.state == State.UPLOADED:
        _create(batch)


def _upload(batch: Batch) -> None:
    """Write the input file and upload it; an earlier, interrupted upload's file is deleted.

    The file id is recorded only after the upload answers, so a crash or a lost response in
    between leaves a file upstream that only its name ties to this batch.
    """
    transport = upstreams.transport(batch.upstream)
    if transport.takes_inline(batch.input_bytes):
        _move_inline(batch)
        return
    if batch.upload_attempted_at:
        _delete_orphan_inputs(batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / batch.input_filename
        written = 0
        with path.open("w", encoding="utf-8") as fh:
            for piece in bodies_in_pieces(_submitted(batch)):
                for pk, body in piece:
                    fh.write(transport.input_line(pk, batch.endpoint, body))
                written += len(piece)
        if not written:
            _finish(batch, last_error="no requests left to submit")
            return
        batch.upload_attempted_at = timezone.now()
        Batch.objects.filter(pk=batch.pk).update(upload_attempted_at=batch.upload_attempted_at)
        file_id = transport.upload_file(path, batch.input_filename)
    crash_point("after_upload")
    with transaction.atomic():
        UpstreamFile.objects.get_or_create(
            file_id=file_id, defaults={"batch": batch, "purpose": UpstreamFile.Purpose.INPUT}
        )
        _move(batch, State.BUILDING, State.UPLOADED, input_file_id=file_id)


def _move_inline(batch: Batch) -> None:
    """A kind whose batches take their requests inline has nothing to upload."""
    if not _submitted(batch).exists():
        _finish(batch, last_error="no requests left to submit")
        return
    _move(batch, State.BUILDING, State.UPLOADED)


def _delete_orphan_inputs(batch: Batch) -> None:
    """Delete the upstream files named after this batch that it never recorded."""
    known = set(UpstreamFile.objects.filter(batch=batch).values_list("pk", flat=True))
    transport = upstreams.transport(batch.upstream)
    for file_id in transport.find_files(filename=batch.input_filename):
        if file_id not in known:
            log.info("batch %s: deleting orphaned upload %s", batch.pk, file_id)
            transport.delete_file(file_id)


def _create(batch: Batch) -> None:
    """Create the batch upstream, unless an earlier create made it (adopted) or may still.

    A create's start is recorded before it is sent (`create_started_at`) and forgotten when its
    answer or error comes back. A worker whose database connection drops while its create is
    under way loses its lease (PostgreSQL releases it with the session) and cannot record the
    answer: the next worker to step the batch finds the mark, and makes no create of its own
    until that one has had time to land (CREATE_WINDOW); then it looks again, and adopts it.
    """
    if batch.create_attempted_at and (found := _find_upstream(batch)):
        _record_running(batch, found)
        return
    now = timezone.now()
    window = timedelta(seconds=CREATE_WINDOW * settings.OPENAI_TIMEOUT)
    if batch.create_started_at and batch.create_started_at + window > now:
        log.warning(
            "batch %s: a create may be under way since %s", batch.pk, batch.create_started_at
        )
        Batch.objects.filter(pk=batch.pk).update(next_attempt_at=batch.create_started_at + window)
        return
    crash_point("before_create")
    # The first attempt's time bounds how far back `_find_upstream` looks.
    batch.create_attempted_at = batch.create_attempted_at or now
    Batch.objects.filter(pk=batch.pk).update(
        create_attempted_at=batch.create_attempted_at, create_started_at=now
    )
    try:
        created = _create_upstream(batch)
    except UpstreamError:
        # This worker saw its create end: the next attempt need not wait for it (an ambiguous
        # end is waited for by the back-off, `_upstream_failed`).
        Batch.objects.filter(pk=batch.pk, create_started_at=now).update(create_started_at=None)
        raise
    crash_point("after_create")
    _record_running(batch, created)


def _create_upstream(batch: Batch) -> dict:
    transport = upstreams.transport(batch.upstream)
    metadata = {METADATA_KEY: str(batch.pk), "model": batch.model[:512]}
    if transport.takes_inline(batch.input_bytes):
        # The provider's SDK sends the batch as one body: bounded by the kind's inline size.
        return transport.create_inline(
            requests=(row for piece in bodies_in_pieces(_submitted(batch)) for row in piece),
            model=batch.model,
            metadata=metadata,
        )
    return transport.create_batch(
        input_file_id=batch.input_file_id,
        endpoint=batch.endpoint,
        model=batch.model,
        metadata=metadata,
    )


def _find_upstream(batch: Batch) -> dict | None:
    """The upstream batch an earlier, interrupted create made for this batch, if any."""
    others = Batch.objects.filter(upstream=batch.upstream).exclude(pk=batch.pk)
    known = others.filter(created_at__gte=batch.created_at - timedelta(days=2)).exclude(
        upstream_id=""
    )
    return upstreams.transport(batch.upstream).find_batch(
        key=METADATA_KEY,
        value=str(batch.pk),
        attempted_at=batch.create_attempted_at.timestamp(),
        request_count=batch.request_count,
        known=frozenset(known.values_list("upstream_id", flat=True)),
    )


def _record_running(batch: Batch, data: dict) -> None:
    _move(
        batch,
        State.UPLOADED,
        State.RUNNING,
        create_started_at=None,
        upstream_id=data["id"],
        upstream_status=data.get("status") or "",
        next_attempt_at=timezone.now(),
        upstream_created_at=_timestamp(data.get("created_at")) or timezone.now(),
    )
    log.info("batch %s created upstream as %s", batch.pk, data["id"])
    # Here, not in the claim: two flushers claiming batches of one model would wait on each
    # other's new KeyModel rows while holding their claims.
    catalog.key_models_record(batch=batch)


def _cancel_before_upstream(batch: Batch) -> None:
    """Cancelled before anything was created upstream: settle locally."""
    batch.upstream_status = "cancelled"
    batch_settle_rest(batch=batch)
    if batch.upload_attempted_at:
        _delete_orphan_inputs(batch)
    _delete_files(batch)
    _finish(batch, upstream_status="cancelled")


# --- Poll: running -> ingesting -> done ------------------------------------------------------


def _timestamp(value) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value else None


def _poll(batch: Batch) -> None:
    transport = upstreams.transport(batch.upstream)
    data = transport.retrieve_batch(batch.upstream_id)
    status = data.get("status") or ""
    if batch.cancel_mode and status not in ("cancelling", *Batch.UPSTREAM_TERMINAL):
        data = transport.cancel_batch(batch.upstream_id)
        status = data.get("status") or status
    fields = {
        "upstream_status": status,
        "output_file_id": data.get("output_file_id") or "",
        "error_file_id": data.get("error_file_id") or "",
        "request_counts": data.get("request_counts"),
        "usage": data.get("usage"),
        "errors": data.get("errors"),
    }
    stuck = batch.upstream_created_at and timezone.now() - batch.upstream_created_at > timedelta(
        seconds=upstreams.upstream_stuck_after(batch.upstream)
    )
    if status in Batch.UPSTREAM_TERMINAL or stuck:
        if stuck and status not in Batch.UPSTREAM_TERMINAL:
            log.warning("batch %s stuck upstream in %s: treated as expired", batch.pk, status)
            _cancel_stuck(batch, status)
            fields["upstream_status"] = "expired"
        if _move(batch, State.RUNNING, State.INGESTING, **fields):
            _ingest(batch)
        return
    next_poll = timezone.now() + timedelta(seconds=settings.POLL_INTERVAL)
    Batch.objects.filter(pk=batch.pk).update(next_attempt_at=next_poll, **fields)


def _cancel_stuck_quietly(batch: Batch) -> None:
    try:
        _cancel_stuck(batch, batch.upstream_status)
    except UpstreamError as exc:
        log.warning("batch %s: not cancelled upstream: %s", batch.pk, exc)


def _cancel_stuck(batch: Batch, status: str) -> None:
    """Stop a stuck batch upstream: its requests are requeued, and must not be paid twice."""
    if status == "cancelling":
        return
    try:
        upstreams.transport(batch.upstream).cancel_batch(batch.upstream_id)
    except UpstreamError as exc:
        if not exc.permanent:
            raise
        log.warning("batch %s: stuck batch not cancelled upstream: %s", batch.pk, exc)


def _ingest(batch: Batch) -> None:
    """Deliver what the output and error files say, settle the rest, delete the files.

    1. Stream each file not yet ingested and apply its lines (idempotent per request).
    2. Mark the file ingested.
    3. Settle the requests no file answered, by how the batch ended.
    4. Delete the batch's files upstream; then the batch is done.
    """
    purposes = (
        (batch.output_file_id, UpstreamFile.Purpose.OUTPUT),
        (batch.error_file_id, UpstreamFile.Purpose.ERROR),
    )
    for file_id, purpose in purposes:
        if not file_id:
            continue
        upstream_file, _ = UpstreamFile.objects.get_or_create(
            file_id=file_id, defaults={"batch": batch, "purpose": purpose}
        )
        if upstream_file.ingested_at:
            continue
        lines = upstreams.transport(batch.upstream).iter_file_lines(file_id)
        lines = _crash_between_chunks(lines)
        try:
            settled = lines_apply(batch=batch, lines=lines, chunk_size=settings.INGEST_CHUNK_LINES)
        except UpstreamError as exc:
            if not exc.permanent:
                raise  # read again on a later tick, within BATCH_INGEST_TIMEOUT
            # Gone upstream (expired, deleted: a 404): what it held is lost; the requests it
            # did not answer are settled below, as if their lines were missing.
            log.warning("batch %s: %s file %s unreadable: %s", batch.pk, purpose, file_id, exc)
            settled = 0
        crash_point("after_ingest_file")
        UpstreamFile.objects.filter(pk=file_id).update(ingested_at=timezone.now())
        log.info("batch %s: %s file %s settled %d requests", batch.pk, purpose, file_id, settled)
    batch_settle_rest(batch=batch)
    forecast.batch_observed(batch)
    _delete_files(batch)
    _finish(batch)


def _crash_between_chunks(lines: Iterator[str]) -> Iterator[str]:
    """Test-only "mid_ingest" point: reached once the first chunk of lines is committed."""
    for number, line in enumerate(lines):
        if number and number % settings.INGEST_CHUNK_LINES == 0:
            crash_point("mid_ingest")
        yield line


def _delete_files(batch: Batch) -> None:
    if not settings.DELETE_UPSTREAM_FILES:
        return
    for file_id in UpstreamFile.objects.filter(batch=batch, deleted_at=None).values_list(
        "pk", flat=True
    ):
        _file_delete(file_id, upstream=batch.upstream)


def _file_delete(file_id: str, *, upstream: str) -> None:
    upstreams.transport(upstream).delete_file(file_id)
    UpstreamFile.objects.filter(pk=file_id).update(deleted_at=timezone.now())


def files_sweep() -> int:
    """Delete the upstream files of finished batches that are still there; return how many.

    A batch refused upstream, or cancelled before its batch was created, may leave its input
    file behind when the delete itself fails; this retries it on every poll tick.
    """
    if not settings.DELETE_UPSTREAM_FILES:
        return 0
    left = UpstreamFile.objects.filter(deleted_at=None, batch__state=State.DONE)
    deleted = 0
    for file_id, upstream in left.values_list("pk", "batch__upstream")[:100]:
        try:
            _file_delete(file_id, upstream=upstream)
        except UpstreamError as exc:
            log.warning("file %s not deleted yet: %s", file_id, exc)
            break
        deleted += 1
    return deleted


# --- Operator actions -----------------------------------------------------------------------


def batch_cancel(*, batch_id, requeue: bool) -> bool:
    """Cancel a batch upstream; its unfinished requests are requeued or cancelled.

    Records the operator's choice, then takes the batch's next step right away; a failed
    upstream cancel is retried by later ticks. False when the batch had already ended.
    """
    mode = Batch.CancelMode.REQUEUE if requeue else Batch.CancelMode.CANCEL
    changed = Batch.objects.filter(pk=batch_id, state__in=Batch.ACTIVE).update(
        cancel_mode=mode, next_attempt_at=timezone.now()
    )
    if changed:
        batch_step(batch_id=batch_id)
    return bool(changed)


def requests_requeue(*, request_ids) -> int:
    """Give failed or cancelled requests a fresh start, with all their attempts (never those
    of a revoked key: it was revoked so that they would not be sent)."""
    ended = BatchRequest.objects.filter(
        pk__in=request_ids, status__in=(Status.FAILED, Status.CANCELLED), api_key__revoked_at=None
    )
    with transaction.atomic():
        attempts_close(request_ids=ended.values("pk"))  # the history keeps how each had ended
        return ended.update(
            status=Status.QUEUED,
            batch=None,
            attempts=0,
            deferrals=0,
            not_before=None,
            response_status=None,
            response_body=None,
            error_code="",
            error_message="",
            finished_at=None,
            created_at=timezone.now(),
            updated_at=timezone.now(),
        )


def requests_purge(*, now: datetime | None = None) -> int:
    """Delete answers older than RESULT_RETENTION; an identical call then starts afresh."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.RESULT_RETENTION)
    expired = BatchRequest.objects.filter(
        status__in=(Status.COMPLETED, Status.FAILED, Status.CANCELLED), finished_at__lt=cutoff
    )
    purged = 0
    while ids := list(expired.values_list("pk", flat=True)[:5000]):
        with transaction.atomic():
            ResponseChunk.objects.filter(request_id__in=ids).delete()
            RequestAttempt.objects.filter(request_id__in=ids).delete()
            purged += BatchRequest.objects.filter(pk__in=ids).delete()[0]
    return purged
