"""Deadlines (issue 21): each request answered by the deadline its caller names, at the cheapest
tier that can (batch, then flex, then standard), over real HTTP against the fakes."""

import json
import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import openai
import pytest
from django.core.management import call_command
from django.utils import timezone

from batches_app import forecast, tiers
from batches_app.flex import flex_forget
from batches_app.models import Batch, TierTiming
from batches_app.receipts import prices_forget
from requests_app.models import BatchRequest

from .engine import cycle

Status = BatchRequest.Status
FLEX_MODEL = "gpt-5-mini"  # in the default flex table
CENT_MILLIONTH = Decimal("0.00000002")  # costs are kept to 8 places: halves round
PLAIN_MODEL = "gpt-4o-mini"  # not


@pytest.fixture(autouse=True)
def fresh_caches():
    """Forecasts, prices and the flex table are cached per process: each test starts afresh."""
    for forget in (forecast.forecast_forget, flex_forget, prices_forget):
        forget()
    yield
    for forget in (forecast.forecast_forget, flex_forget, prices_forget):
        forget()


@pytest.fixture
def held(fake_openai, settings):
    """Upstream batches that never finish, so only a synchronous send answers in time."""
    fake_openai.configure(stall_after_lines=0)
    settings.SYNC_BACKOFF = 0.01
    return fake_openai


def chat(model: str, text: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def tick(**kwargs) -> tiers.TickReport:
    """The deadline work of one tick, its sends run here rather than in django-q2 workers."""
    return tiers.deadlines_tick(send=tiers.request_send, **kwargs)


def error_of(response) -> dict:
    return json.loads(response.content)["error"]


# --- 1. Saying when ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["soon", "-5", "nan", "99999999", "2026-12-05 07:00", "2026-12-05T07:00:00"]
)
def test_an_unreadable_deadline_is_400_and_stores_nothing(post, fake_openai, value):
    response = post("/v1/chat/completions", chat(PLAIN_MODEL, "x"), HTTP_X_BATCH_DEADLINE=value)
    assert response.status_code == 400
    assert error_of(response)["param"] == "X-Batch-Deadline"
    assert not BatchRequest.objects.exists()


def test_an_unknown_mode_is_400(post, fake_openai):
    response = post("/v1/chat/completions", chat(PLAIN_MODEL, "x"), HTTP_X_BATCH_MODE="later")
    assert response.status_code == 400
    assert error_of(response)["param"] == "X-Batch-Mode"


def test_a_bad_deadline_is_400_in_anthropics_shape(client, api_key, fake_anthropic):
    body = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": []}
    response = client.post(
        "/v1/messages",
        json.dumps(body),
        content_type="application/json",
        HTTP_X_API_KEY=api_key[1],
        HTTP_X_BATCH_DEADLINE="tomorrow",
    )
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert not BatchRequest.objects.exists()


def test_a_bad_deadline_is_400_in_googles_shape(client, api_key, fake_gemini):
    response = client.post(
        "/v1beta/models/gemini-2.5-flash:generateContent",
        json.dumps({"contents": [{"parts": [{"text": "x"}]}]}),
        content_type="application/json",
        HTTP_X_GOOG_API_KEY=api_key[1],
        HTTP_X_BATCH_DEADLINE="tomorrow",
    )
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert not BatchRequest.objects.exists()


def test_seconds_count_from_the_first_call_and_a_time_is_taken_as_given(post, fake_openai):
    before = timezone.now()
    first = post("/v1/chat/completions", chat(PLAIN_MODEL, "a"), HTTP_X_BATCH_DEADLINE="1800")
    request = BatchRequest.objects.get(pk=first["X-Batch-Request-Id"])
    assert request.deadline == request.created_at + timedelta(seconds=1800)
    at = (before + timedelta(hours=2)).replace(microsecond=0)
    post(
        "/v1/chat/completions",
        chat(PLAIN_MODEL, "b"),
        HTTP_X_BATCH_DEADLINE=at.isoformat().replace("+00:00", "Z"),
    )
    assert BatchRequest.objects.get(body__contains='"b"').deadline == at


def test_the_header_is_not_identity_and_a_repeat_only_tightens(post, fake_openai):
    body = chat(PLAIN_MODEL, "same")
    first = post("/v1/chat/completions", body, HTTP_X_BATCH_DEADLINE="3600")
    request_id = first["X-Batch-Request-Id"]
    created = BatchRequest.objects.get().created_at
    assert post("/v1/chat/completions", body, HTTP_X_BATCH_DEADLINE="600")[
        "X-Batch-Request-Id"
    ] == (request_id)
    assert BatchRequest.objects.get().deadline == created + timedelta(seconds=600)
    post("/v1/chat/completions", body, HTTP_X_BATCH_DEADLINE="7200")  # later: ignored
    post("/v1/chat/completions", body)  # none: ignored
    assert BatchRequest.objects.count() == 1
    assert BatchRequest.objects.get().deadline == created + timedelta(seconds=600)


def test_a_keys_default_deadline_then_the_proxys_apply_to_calls_without_one(
    post, api_key, other_key, fake_openai, settings
):
    key, _ = api_key
    key.default_deadline = 900
    key.save()
    settings.DEFAULT_DEADLINE = 5000
    mine = post("/v1/chat/completions", chat(PLAIN_MODEL, "mine"))["X-Batch-Request-Id"]
    theirs = post("/v1/chat/completions", chat(PLAIN_MODEL, "theirs"), secret=other_key[1])
    named = post("/v1/chat/completions", chat(PLAIN_MODEL, "named"), HTTP_X_BATCH_DEADLINE="60")
    tiers.deadlines_default(now=timezone.now())
    by_id = {str(r.pk): r for r in BatchRequest.objects.all()}
    assert by_id[mine].deadline == by_id[mine].created_at + timedelta(seconds=900)
    other = by_id[theirs["X-Batch-Request-Id"]]
    assert other.deadline == other.created_at + timedelta(seconds=5000)
    named_row = by_id[named["X-Batch-Request-Id"]]
    assert named_row.deadline == named_row.created_at + timedelta(seconds=60)


def test_without_any_deadline_a_request_has_none(post, fake_openai):
    post("/v1/chat/completions", chat(PLAIN_MODEL, "x"))
    tiers.deadlines_default(now=timezone.now())
    assert BatchRequest.objects.get().deadline is None


def test_the_command_sets_and_clears_a_keys_default_deadline(api_key):
    key, _ = api_key
    call_command("set_key_deadline", str(key.pk), "1800")
    key.refresh_from_db()
    assert key.default_deadline == 1800
    call_command("set_key_deadline", str(key.pk), "none")
    key.refresh_from_db()
    assert key.default_deadline is None


def test_mode_now_answers_the_first_call_at_the_standard_tier(post, fake_openai):
    response = post("/v1/chat/completions", chat(FLEX_MODEL, "urgent"), HTTP_X_BATCH_MODE="now")
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: urgent"
    assert response["X-Batch-Tier"] == "standard"
    assert Decimal(response["X-Batch-Cost-USD"]) > 0
    [sent] = fake_openai.sync_calls
    assert sent["service_tier"] == "default"
    assert not fake_openai.submitted_lines()
    # The identical call again: the same stored answer, nothing sent again.
    again = post("/v1/chat/completions", chat(FLEX_MODEL, "urgent"))
    assert again.status_code == 200 and again.content == response.content
    assert len(fake_openai.sync_calls) == 1


def test_a_deadline_of_zero_is_mode_now(post, fake_openai):
    response = post("/v1/chat/completions", chat(PLAIN_MODEL, "zero"), HTTP_X_BATCH_DEADLINE="0")
    assert response.status_code == 200
    assert response["X-Batch-Tier"] == "standard"


def test_a_bodys_own_service_tier_is_replaced_by_the_tier_chosen(post, fake_openai):
    body = chat(PLAIN_MODEL, "own tier") | {"service_tier": "priority"}
    post("/v1/chat/completions", body, HTTP_X_BATCH_MODE="now")
    assert fake_openai.sync_calls[0]["service_tier"] == "default"
    stored = json.loads(BatchRequest.objects.get().body)
    assert stored["service_tier"] == "priority"  # part of the identity, as sent


# --- 2. The forecast --------------------------------------------------------------------------


def test_the_forecast_starts_from_stated_defaults_then_follows_history(db, settings):
    settings.FORECAST_MIN_SAMPLES = 3
    ask = {"upstream": "openai", "kind": "openai", "endpoint": "/v1/chat/completions"}
    default = forecast.forecast_get(**ask, model="gpt-5", tier="batch")
    assert (default.median, default.p90, default.samples) == (155.0, 2092.0, 0)
    assert forecast.forecast_get(**ask, model="gpt-5", tier="flex").p90 == 12.3
    for seconds in [10, 20, 30, 40, 50, 60, 70, 80, 90, 1000]:
        forecast.timing_record(
            upstream="openai",
            endpoint="/v1/chat/completions",
            model="gpt-5",
            tier="batch",
            seconds=seconds,
        )
    forecast.forecast_forget()
    measured = forecast.forecast_get(**ask, model="gpt-5", tier="batch")
    assert (measured.median, measured.p90, measured.samples) == (55.0, 1000, 10)


def test_a_completed_batch_is_measured(post, fake_openai):
    post("/v1/chat/completions", chat(PLAIN_MODEL, "measure me"))
    cycle()
    [timing] = TierTiming.objects.all()
    assert (timing.tier, timing.model, timing.upstream) == ("batch", PLAIN_MODEL, "openai")
    assert 0 <= timing.seconds < 60


def test_the_eta_is_in_the_status_and_the_422(post, client, api_key, fake_openai):
    response = post("/v1/chat/completions", chat(PLAIN_MODEL, "when?"))
    assert "Expected by" in error_of(response)["message"]
    status = client.get(
        f"/v1/batch_requests/{response['X-Batch-Request-Id']}",
        HTTP_AUTHORIZATION=f"Bearer {api_key[1]}",
    ).json()
    median = datetime.fromisoformat(status["eta"]["median"])
    p90 = datetime.fromisoformat(status["eta"]["p90"])
    assert timezone.now() < median <= p90
    assert status["eta"]["tier"] == "batch"


def test_retry_after_is_capped_by_the_deadline(post, fake_openai):
    response = post("/v1/chat/completions", chat(PLAIN_MODEL, "x"), HTTP_X_BATCH_DEADLINE="20")
    assert 1 <= int(response["Retry-After"]) <= 20


# --- 3. Choosing the tier ---------------------------------------------------------------------


def test_ten_calls_due_in_30_seconds_are_answered_through_flex_in_time(post, held):
    started = time.monotonic()
    texts = [f"flex {i}" for i in range(10)]
    for text in texts:
        assert (
            post(
                "/v1/chat/completions", chat(FLEX_MODEL, text), HTTP_X_BATCH_DEADLINE="30"
            ).status_code
            == 422
        )
    report = tick()
    assert report.routed == 10
    assert len(report.sent) == 8  # SYNC_CONCURRENCY; a finished send starts the next
    cycle(force=False)  # the flush: nothing is batched, the batch could not answer in time
    assert not Batch.objects.exists()
    assert len(tick().sent) == 2
    for text in texts:
        response = post("/v1/chat/completions", chat(FLEX_MODEL, text))
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == f"echo: {text}"
        assert response.json()["service_tier"] == "flex"
        assert response["X-Batch-Tier"] == "flex"
    assert time.monotonic() - started < 30
    assert [c["service_tier"] for c in held.sync_calls] == ["flex"] * 10
    assert not held.submitted_lines()
    assert all(r.finished_at <= r.deadline for r in BatchRequest.objects.all())


def test_flex_refused_falls_back_to_standard_in_time(post, held):
    held.configure(refuse_flex=True)
    texts = [f"refused {i}" for i in range(3)]
    for text in texts:
        post("/v1/chat/completions", chat(FLEX_MODEL, text), HTTP_X_BATCH_DEADLINE="30")
    for _ in range(3):
        tick()
    for text in texts:
        response = post("/v1/chat/completions", chat(FLEX_MODEL, text))
        assert response.status_code == 200
        assert response["X-Batch-Tier"] == "standard"
        assert response.json()["choices"][0]["message"]["content"] == f"echo: {text}"
    tiers_sent = [(c["service_tier"], c["refused"]) for c in held.sync_calls]
    assert tiers_sent.count(("flex", True)) == 3
    assert tiers_sent.count(("default", False)) == 3
    assert all(r.finished_at <= r.deadline for r in BatchRequest.objects.all())


def test_flex_refused_is_retried_while_the_deadline_allows(post, held, settings):
    settings.SYNC_BACKOFF = 1
    held.configure(refuse_flex=True)
    post("/v1/chat/completions", chat(FLEX_MODEL, "patient"), HTTP_X_BATCH_DEADLINE="900")
    now = timezone.now()
    tick(now=now)
    request = BatchRequest.objects.get()
    assert request.sync_tier == "flex"  # not yet given up: 900 s leave room
    assert request.sync_not_before > now
    held.configure(refuse_flex=False)
    tick(now=now + timedelta(seconds=2))
    request.refresh_from_db()
    assert (request.status, request.tier) == (Status.COMPLETED, "flex")


def test_a_model_without_flex_goes_to_standard(post, held):
    post("/v1/chat/completions", chat(PLAIN_MODEL, "no flex"), HTTP_X_BATCH_DEADLINE="30")
    tick()
    response = post("/v1/chat/completions", chat(PLAIN_MODEL, "no flex"))
    assert response.status_code == 200
    assert response["X-Batch-Tier"] == "standard"
    assert [c["service_tier"] for c in held.sync_calls] == ["default"]


def test_calls_without_a_deadline_wait_for_their_batch(post, held):
    post("/v1/chat/completions", chat(FLEX_MODEL, "patient"))
    cycle()
    tick(now=timezone.now() + timedelta(days=1))
    assert not held.sync_calls
    assert BatchRequest.objects.get().status == Status.SUBMITTED


def test_a_long_deadline_and_a_fast_batch_make_no_synchronous_call(post, fake_openai):
    body = chat(FLEX_MODEL, "plenty of time")
    post("/v1/chat/completions", body, HTTP_X_BATCH_DEADLINE="86400")
    tick()
    cycle()
    tick()
    response = post("/v1/chat/completions", body)
    assert response.status_code == 200
    assert response["X-Batch-Tier"] == "batch"
    assert not fake_openai.sync_calls


def test_a_deadline_the_batch_can_meet_only_if_flushed_now_flushes_its_group(
    post, fake_openai, settings
):
    settings.BATCH_MAX_WAIT = 3600
    settings.DEADLINE_MARGIN = 10
    # 2092 s (the batch p90) + 10 s margin + 3600 s wait > the deadline: flush now.
    post("/v1/chat/completions", chat(FLEX_MODEL, "soonish"), HTTP_X_BATCH_DEADLINE="4000")
    post("/v1/chat/completions", chat(PLAIN_MODEL, "not urgent"))
    tick()
    assert not fake_openai.sync_calls  # the batch can still make it
    cycle(force=False)
    assert [b.model for b in Batch.objects.all()] == [FLEX_MODEL]


def test_a_request_in_a_batch_is_escalated_and_its_late_line_is_not_served(
    post, fake_openai, settings
):
    """Deadline 60 s; batch p90 measured at 10 s: batched. The batch stalls past what the flex
    forecast still allows: escalated to flex, answered; the batch's line, when it comes, is
    billed too (paid twice) and never replaces the answer served."""
    settings.FORECAST_MIN_SAMPLES = 1
    settings.DEADLINE_MARGIN = 5
    forecast.timing_record(
        upstream="openai",
        endpoint="/v1/chat/completions",
        model=FLEX_MODEL,
        tier="batch",
        seconds=10,
    )
    fake_openai.configure(step_seconds=0.5)
    body = chat(FLEX_MODEL, "escalate me")
    post("/v1/chat/completions", body, HTTP_X_BATCH_DEADLINE="60")
    now = timezone.now()
    assert tick(now=now).routed == 0
    cycle()
    request = BatchRequest.objects.get()
    assert request.status == Status.SUBMITTED and request.batch_id
    assert tick(now=now + timedelta(seconds=20)).escalated == 0  # 12.3 + 5 s not yet reached
    report = tick(now=now + timedelta(seconds=45))
    assert report.escalated == 1
    served = post("/v1/chat/completions", body)
    assert served.status_code == 200 and served["X-Batch-Tier"] == "flex"
    time.sleep(1.6)  # the batch completes upstream
    cycle()
    request.refresh_from_db()
    assert request.paid_twice and request.escalated_at
    assert request.tier == "flex"
    assert post("/v1/chat/completions", body).content == served.content
    assert Batch.objects.get().state == Batch.State.DONE


def escalated_in_a_batch(post, fake, settings, text: str) -> tuple[dict, datetime]:
    """A request batched (batch p90 measured at 10 s, deadline 60 s), its batch running."""
    settings.FORECAST_MIN_SAMPLES = 1
    settings.DEADLINE_MARGIN = 5
    settings.DELETE_UPSTREAM_FILES = False  # its output file can be read again
    forecast.timing_record(
        upstream="openai",
        endpoint="/v1/chat/completions",
        model=FLEX_MODEL,
        tier="batch",
        seconds=10,
    )
    fake.configure(step_seconds=0.5)
    body = chat(FLEX_MODEL, text)
    post("/v1/chat/completions", body, HTTP_X_BATCH_DEADLINE="60")
    now = timezone.now()
    cycle()
    assert BatchRequest.objects.get().batch_id
    return body, now


def test_a_flex_answer_arriving_after_the_batchs_is_dropped_and_counted_once(
    post, client, fake_openai, settings, monkeypatch
):
    """The batch answers while the escalated send is on the wire: the batch's answer stays the
    one stored and served; the flex answer is dropped, counted (paid twice) and billed once."""
    from batches_app import outcomes, upstreams
    from batches_app.upstreams.openai import OpenAITransport

    from .test_metrics import scrape, value

    settings.METRICS_PUBLIC = True
    body, now = escalated_in_a_batch(post, fake_openai, settings, "batch wins")
    real_send = OpenAITransport.send

    def send_while_the_batch_answers(self, **kwargs):
        answer = real_send(self, **kwargs)
        time.sleep(1.6)  # the batch completes upstream
        cycle()  # and is ingested before the send's answer is recorded
        return answer

    monkeypatch.setattr(OpenAITransport, "send", send_while_the_batch_answers)
    [(request_id, token)] = tiers.deadlines_tick(
        now=now + timedelta(seconds=45), send=lambda pk, t: None
    ).sent
    assert tiers.request_send(str(request_id), token) == "answered first by its batch"
    [sent] = fake_openai.sync_calls
    assert sent["service_tier"] == "flex"
    request = BatchRequest.objects.get()
    assert (request.status, request.tier, request.paid_twice) == (Status.COMPLETED, "batch", True)
    served = post("/v1/chat/completions", body)
    assert served.status_code == 200 and served["X-Batch-Tier"] == "batch"
    assert served.json()["service_tier"] == "default"  # the batch line's answer, not flex's
    assert served.content.decode() == request.response_body
    # Both answers were billed at half price: together, the standard price, counted once.
    assert request.cost_usd == pytest.approx(request.standard_cost_usd, abs=CENT_MILLIONTH)
    assert request.standard_cost_usd > 0
    assert request.saving_usd == pytest.approx(0, abs=CENT_MILLIONTH)
    cycle()  # nothing left to ingest; the batch's lines read again change nothing
    batch = Batch.objects.get()
    lines = upstreams.transport("openai").iter_file_lines(batch.output_file_id)
    outcomes.lines_apply(batch=batch, lines=lines)
    request.refresh_from_db()
    assert request.cost_usd == pytest.approx(request.standard_cost_usd, abs=CENT_MILLIONTH)
    assert post("/v1/chat/completions", body).content == served.content
    samples = scrape(client)
    assert value(samples, "batchproxy_paid_twice_requests_total") == 1
    assert value(samples, "batchproxy_tier_requests_total", tier="batch") == 1
    assert value(samples, "batchproxy_tier_requests_total", tier="flex") == 0


def test_a_batch_line_arriving_after_the_flex_answer_is_dropped_and_counted_once(
    post, client, fake_openai, settings
):
    from batches_app import outcomes, upstreams

    from .test_metrics import scrape, value

    settings.METRICS_PUBLIC = True
    body, now = escalated_in_a_batch(post, fake_openai, settings, "flex wins")
    tick(now=now + timedelta(seconds=45))
    served = post("/v1/chat/completions", body)
    assert served.status_code == 200 and served["X-Batch-Tier"] == "flex"
    flexed = BatchRequest.objects.get()
    assert flexed.cost_usd * 2 == pytest.approx(flexed.standard_cost_usd, abs=CENT_MILLIONTH)
    time.sleep(1.6)
    cycle()
    batch = Batch.objects.get()
    assert batch.state == Batch.State.DONE
    lines = list(upstreams.transport("openai").iter_file_lines(batch.output_file_id))
    for _ in range(2):  # read twice, as after a crash in the middle of an ingest
        outcomes.lines_apply(batch=batch, lines=lines)
    request = BatchRequest.objects.get()
    assert (request.tier, request.paid_twice) == ("flex", True)
    assert request.response_body == flexed.response_body
    assert request.standard_cost_usd == flexed.standard_cost_usd  # counted once
    assert request.cost_usd == pytest.approx(flexed.cost_usd * 2, abs=CENT_MILLIONTH)
    again = post("/v1/chat/completions", body)
    assert again.content == served.content and again["X-Batch-Tier"] == "flex"
    assert json.loads(again.content)["service_tier"] == "flex"
    samples = scrape(client)
    assert value(samples, "batchproxy_paid_twice_requests_total") == 1
    assert value(samples, "batchproxy_tier_requests_total", tier="flex") == 1
    assert value(samples, "batchproxy_tier_requests_total", tier="batch") == 0


def test_sends_in_flight_per_upstream_are_limited(post, held, settings):
    settings.SYNC_CONCURRENCY = 2
    for i in range(5):
        post("/v1/chat/completions", chat(FLEX_MODEL, f"c{i}"), HTTP_X_BATCH_DEADLINE="30")
    started = []
    tiers.deadlines_tick(send=lambda pk, token: started.append(pk))
    assert len(started) == 2
    tiers.sends_dispatch(send=lambda pk, token: started.append(pk))
    assert len(started) == 2  # both still in flight


def test_an_upstream_429_is_honoured(post, held):
    held.inject("sync", 429)  # Retry-After: 1
    post("/v1/chat/completions", chat(PLAIN_MODEL, "busy"), HTTP_X_BATCH_DEADLINE="30")
    now = timezone.now()
    tick(now=now)
    request = BatchRequest.objects.get()
    assert request.status == Status.SUBMITTED
    assert request.sync_not_before >= now + timedelta(seconds=1)
    tiers.sends_dispatch(now=now, send=tiers.request_send)
    assert BatchRequest.objects.get().status == Status.SUBMITTED  # not before its time
    tiers.sends_dispatch(now=now + timedelta(seconds=2), send=tiers.request_send)
    assert BatchRequest.objects.get().status == Status.COMPLETED


# --- Crash safety -----------------------------------------------------------------------------


def test_a_claimed_send_that_never_ran_is_sent_after_its_lease(post, held, settings):
    post("/v1/chat/completions", chat(FLEX_MODEL, "lost task"), HTTP_X_BATCH_DEADLINE="30")
    now = timezone.now()
    tiers.deadlines_tick(now=now, send=lambda pk, token: None)  # the task is lost
    tick(now=now + timedelta(seconds=1))
    assert not held.sync_calls  # its lease holds: not sent twice without need
    later = now + timedelta(seconds=settings.SYNC_TIMEOUT + tiers.LEASE_SLACK + 1)
    tick(now=later)
    assert len(held.sync_calls) == 1
    assert BatchRequest.objects.get().status == Status.COMPLETED


def test_a_late_sender_after_its_lease_records_nothing(post, held, settings):
    post("/v1/chat/completions", chat(FLEX_MODEL, "slow worker"), HTTP_X_BATCH_DEADLINE="30")
    now = timezone.now()
    first = tiers.deadlines_tick(now=now, send=lambda pk, token: None).sent
    later = now + timedelta(seconds=settings.SYNC_TIMEOUT + tiers.LEASE_SLACK + 1)
    tick(now=later)
    answered = BatchRequest.objects.get()
    [(request_id, token)] = first
    assert tiers.request_send(str(request_id), token) == "no longer due"
    assert len(held.sync_calls) == 1
    assert BatchRequest.objects.get().response_body == answered.response_body


def test_a_claimed_send_of_a_request_answered_meanwhile_is_not_made(post, held):
    post("/v1/chat/completions", chat(FLEX_MODEL, "race"), HTTP_X_BATCH_DEADLINE="30")
    [(request_id, token)] = tiers.deadlines_tick(send=lambda pk, t: None).sent
    # Meanwhile something else answered it (its batch, in the escalation race).
    BatchRequest.objects.filter(pk=request_id).update(
        status=Status.COMPLETED, response_status=200, response_body='{"first": true}', tier="batch"
    )
    assert tiers.request_send(str(request_id), token) == "no longer due"
    assert not held.sync_calls  # read before sending: nothing is sent for a finished request


def test_receipts_in_status_and_finished_list(post, client, api_key, held, settings):
    settings.LIST_SETTLE_SECONDS = 0
    post("/v1/chat/completions", chat(FLEX_MODEL, "receipt"), HTTP_X_BATCH_DEADLINE="30")
    tick()
    request = BatchRequest.objects.get()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_key[1]}"}
    receipt = client.get(f"/v1/batch_requests/{request.pk}", **auth).json()["receipt"]
    assert receipt["tier"] == "flex" and receipt["deadline_met"] is True
    assert Decimal(receipt["cost_usd"]) * 2 == Decimal(receipt["standard_cost_usd"])
    assert Decimal(receipt["saving_usd"]) == Decimal(receipt["cost_usd"])
    assert receipt["paid_twice"] is False and receipt["escalated"] is False
    listed = client.get("/v1/batch_requests", **auth).json()["data"]
    assert listed[0]["receipt"] == receipt


# --- Through the official SDK, against a live proxy --------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_sdk_gets_200_at_once_with_mode_now(sdk, fake_openai):
    completion = sdk.chat.completions.with_raw_response.create(
        model=PLAIN_MODEL,
        messages=[{"role": "user", "content": "right now"}],
        extra_headers={"X-Batch-Mode": "now"},
    )
    assert completion.http_response.status_code == 200
    assert completion.headers["x-batch-tier"] == "standard"
    assert completion.parse().choices[0].message.content == "echo: right now"


@pytest.mark.django_db(transaction=True)
def test_the_sdk_gets_422_then_a_flex_answer_by_its_deadline(sdk, held):
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.chat.completions.create(
            model=FLEX_MODEL,
            messages=[{"role": "user", "content": "by deadline"}],
            extra_headers={
                "X-Batch-Deadline": (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
            },
        )
    tick()
    answer = sdk.chat.completions.create(
        model=FLEX_MODEL, messages=[{"role": "user", "content": "by deadline"}]
    )
    assert answer.choices[0].message.content == "echo: by deadline"
    assert answer.service_tier == "flex"


# --- Every provider kind ----------------------------------------------------------------------


def test_anthropic_has_no_flex_and_answers_at_the_standard_tier(
    client, api_key, fake_anthropic, settings
):
    fake_anthropic.step_seconds = 3600  # its batches held unfinished
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi claude"}],
    }

    def ask(**headers):
        return client.post(
            "/v1/messages",
            json.dumps(body),
            content_type="application/json",
            HTTP_X_API_KEY=api_key[1],
            **headers,
        )

    assert ask(HTTP_X_BATCH_DEADLINE="30").status_code == 422
    tick()
    response = ask()
    assert response.status_code == 200
    assert response.json()["content"][0]["text"] == "echo: hi claude"
    assert response["X-Batch-Tier"] == "standard"
    [sent] = fake_anthropic.sync_calls
    assert sent["messages"] == body["messages"] and "service_tier" not in sent
    assert not fake_anthropic.submitted()


@pytest.mark.parametrize("refuse", [False, True], ids=["flex", "flex-refused"])
def test_gemini_answers_through_its_flex_tier_or_standard_when_refused(
    client, api_key, fake_gemini, settings, refuse
):
    settings.SYNC_BACKOFF = 0.01
    fake_gemini.step_seconds = 3600
    fake_gemini.refuse_flex = refuse
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi gemini"}]}]})

    def ask(**headers):
        return client.post(
            path, body, content_type="application/json", HTTP_X_GOOG_API_KEY=api_key[1], **headers
        )

    assert ask(HTTP_X_BATCH_DEADLINE="30").status_code == 422
    for _ in range(2):
        tick()
    response = ask()
    assert response.status_code == 200
    assert response.json()["candidates"][0]["content"]["parts"][0]["text"] == "echo: hi gemini"
    assert response["X-Batch-Tier"] == ("standard" if refuse else "flex")
    tiers_sent = [c["service_tier"] for c in fake_gemini.sync_calls]
    assert tiers_sent == (["flex", "standard"] if refuse else ["flex"])
    assert not fake_gemini.submitted()


def steer(fake, path: str, body: dict | None = None) -> tuple[int, dict]:
    """A try-out's shell steering a fake from another process: plain HTTP, no key."""
    import requests

    method = "GET" if body is None else "POST"
    response = requests.request(method, fake.url + path, json=body, timeout=5)
    return response.status_code, response.json()


@pytest.mark.parametrize(
    ("fixture", "option"), [("fake_anthropic", "overloaded"), ("fake_gemini", "refuse_flex")]
)
def test_the_fake_anthropic_and_gemini_are_configured_over_http(request, fixture, option):
    fake = request.getfixturevalue(fixture)
    assert steer(fake, "/_fake/configure", {"step_seconds": 3600, option: True}) == (
        200,
        {"ok": True},
    )
    assert (fake.step_seconds, getattr(fake, option)) == (3600, True)
    status, state = steer(fake, "/_fake/state")
    assert status == 200 and state["options"][option] is True
    status, error = steer(fake, "/_fake/configure", {"no_such_option": 1})
    assert status == 400 and "no_such_option" in str(error)
    assert steer(fake, "/_fake/inject", {"operation": "nothing", "fault": 500})[0] == 400
    assert steer(fake, "/_fake/reset", {})[0] == 200
    assert (fake.step_seconds, getattr(fake, option)) == (0.0, False)


def test_the_fake_anthropic_refuses_its_messages_when_told_and_the_proxy_waits(
    client, api_key, fake_anthropic, settings
):
    settings.SYNC_BACKOFF = 1
    steer(fake_anthropic, "/_fake/configure", {"step_seconds": 3600, "overloaded": True})
    body = json.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "busy"}],
        }
    )
    ask = {"content_type": "application/json", "HTTP_X_API_KEY": api_key[1]}
    assert client.post("/v1/messages", body, HTTP_X_BATCH_DEADLINE="30", **ask).status_code == 422
    now = timezone.now()
    tick(now=now)
    assert client.post("/v1/messages", body, **ask).status_code == 422  # 529: not its answer
    waiting = BatchRequest.objects.get()
    assert waiting.sync_tier == "standard" and waiting.sync_not_before > now
    steer(fake_anthropic, "/_fake/configure", {"overloaded": False})
    tick(now=waiting.sync_not_before + timedelta(seconds=1))
    response = client.post("/v1/messages", body, **ask)
    assert response.status_code == 200 and response["X-Batch-Tier"] == "standard"
    assert len(fake_anthropic.sync_calls) == 2
    assert not fake_anthropic.submitted()


def test_gemini_flex_refused_through_the_http_configure_falls_back_to_standard(
    client, api_key, fake_gemini, settings
):
    settings.SYNC_BACKOFF = 0.01
    steer(fake_gemini, "/_fake/configure", {"step_seconds": 3600, "refuse_flex": True})
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "steered"}]}]})
    ask = {"content_type": "application/json", "HTTP_X_GOOG_API_KEY": api_key[1]}
    assert client.post(path, body, HTTP_X_BATCH_DEADLINE="30", **ask).status_code == 422
    for _ in range(2):
        tick()
    response = client.post(path, body, **ask)
    assert response.status_code == 200 and response["X-Batch-Tier"] == "standard"
    _, state = steer(fake_gemini, "/_fake/state")
    assert [c["service_tier"] for c in state["sync_calls"]] == ["flex", "standard"]


def test_azure_sends_flex_to_its_deployment(client, api_key, fake_openai, settings, monkeypatch):
    from batches_app.models import FlexModel

    from .kinds import Azure

    Azure(fake_openai).configure(settings, monkeypatch)
    FlexModel.objects.create(kind="azure", model=Azure.model)
    fake_openai.configure(stall_after_lines=0)
    body = chat(Azure.model, "hi azure")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_key[1]}"}
    client.post(
        "/v1/chat/completions",
        json.dumps(body),
        content_type="application/json",
        HTTP_X_BATCH_DEADLINE="30",
        **auth,
    )
    tick()
    response = client.post(
        "/v1/chat/completions", json.dumps(body), content_type="application/json", **auth
    )
    assert response.status_code == 200 and response["X-Batch-Tier"] == "flex"
    sync_paths = [path for op, path in fake_openai.calls if op == "sync"]
    assert sync_paths == [f"/openai/deployments/{Azure.model}/chat/completions"]


def test_azure_flex_on_a_deployment_without_flex_falls_back_to_standard_unseen(
    client, api_key, fake_openai, settings, monkeypatch
):
    """The deployment answers flex with 400 (param `service_tier`): that 400 is the tier's, not
    the request's; the caller gets the standard tier's answer, never the 400."""
    from batches_app.models import FlexModel

    from .kinds import Azure

    Azure(fake_openai).configure(settings, monkeypatch)
    FlexModel.objects.create(kind="azure", model=Azure.model)
    fake_openai.configure(stall_after_lines=0, flex_unsupported=True)
    body = json.dumps(chat(Azure.model, "no flex on this deployment"))
    ask = {"content_type": "application/json", "HTTP_AUTHORIZATION": f"Bearer {api_key[1]}"}
    assert (
        client.post("/v1/chat/completions", body, HTTP_X_BATCH_DEADLINE="30", **ask).status_code
        == 422
    )
    for _ in range(2):
        tick()
    response = client.post("/v1/chat/completions", body, **ask)
    assert response.status_code == 200, response.content
    assert response["X-Batch-Tier"] == "standard"
    content = response.json()["choices"][0]["message"]["content"]
    assert content == "echo: no flex on this deployment"
    assert [c["service_tier"] for c in fake_openai.sync_calls] == ["flex", "default"]
    assert BatchRequest.objects.get().tier == "standard"


def test_a_finished_send_starts_the_next_due_ones(post, held, settings, monkeypatch):
    from batches_app import tasks

    settings.SYNC_CONCURRENCY = 1
    started = []
    monkeypatch.setattr(tiers, "_enqueue", lambda pk, token: started.append((pk, token)))
    for i in range(2):
        post("/v1/chat/completions", chat(FLEX_MODEL, f"chain {i}"), HTTP_X_BATCH_DEADLINE="30")
    tiers.deadlines_tick()
    assert len(started) == 1
    assert tasks.sync_send(*started[0]) == "answered at flex"
    assert len(started) == 2  # the worker's send ended: the next one was started


# --- Crash points of a synchronous send, in a worker process killed there ----------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("point", "sent_before_restart"), [("after_sync_claim", 0), ("after_sync_send", 1)]
)
def test_a_worker_killed_around_a_send_loses_nothing_and_resends_only_after_its_lease(
    post, held, settings, point, sent_before_restart
):
    from .workers import CRASHED, run

    def deadlines(crash_at: str = "") -> None:
        done = run(held, "deadlines", crash_at=crash_at)
        assert done.returncode == (CRASHED if crash_at else 0), done.stderr[-3000:]

    post("/v1/chat/completions", chat(FLEX_MODEL, "crash"), HTTP_X_BATCH_DEADLINE="30")
    deadlines(crash_at=point)
    assert len(held.sync_calls) == sent_before_restart
    request = BatchRequest.objects.get()
    assert request.status == Status.SUBMITTED and request.sync_started_at  # its intent
    deadlines()  # at once: the lease of the dead worker's send still holds
    assert len(held.sync_calls) == sent_before_restart
    expired = timezone.now() - timedelta(seconds=settings.SYNC_TIMEOUT + tiers.LEASE_SLACK + 1)
    BatchRequest.objects.update(sync_started_at=expired)
    deadlines()
    assert len(held.sync_calls) == sent_before_restart + 1  # at-least-once, only after the lease
    request.refresh_from_db()
    assert request.status == Status.COMPLETED and request.tier == "flex"
    assert json.loads(request.response_body)["choices"][0]["message"]["content"] == "echo: crash"
    deadlines()
    assert len(held.sync_calls) == sent_before_restart + 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("point", ["after_sync_claim", "after_sync_send"])
def test_a_worker_killed_around_an_escalated_send_leaves_it_to_its_batch_not_sent_again(
    post, fake_openai, settings, point
):
    """Escalated out of its running batch, its worker dies before recording the send; the
    batch answers meanwhile: answered once, by the batch, and never sent again."""
    from .workers import CRASHED, run

    settings.FORECAST_MIN_SAMPLES = 1
    forecast.timing_record(
        upstream="openai",
        endpoint="/v1/chat/completions",
        model=FLEX_MODEL,
        tier="batch",
        seconds=10,
    )
    fake_openai.configure(step_seconds=1)
    body = chat(FLEX_MODEL, "escalated crash")
    post("/v1/chat/completions", body, HTTP_X_BATCH_DEADLINE="600")
    cycle()
    request = BatchRequest.objects.get()
    assert request.batch_id
    # Time runs on: its deadline is now within reach of the flex forecast only.
    BatchRequest.objects.update(deadline=timezone.now() + timedelta(seconds=10))
    options = {"FORECAST_MIN_SAMPLES": 1, "DEADLINE_MARGIN": 5}
    done = run(fake_openai, "deadlines", crash_at=point, **options)
    assert done.returncode == CRASHED, done.stderr[-3000:]
    request.refresh_from_db()
    assert request.escalated_at and request.sync_started_at  # its intent
    sent = len(fake_openai.sync_calls)
    assert sent == (1 if point == "after_sync_send" else 0)
    time.sleep(3.5)  # the batch completes upstream
    cycle()
    request.refresh_from_db()
    assert (request.status, request.tier) == (Status.COMPLETED, "batch")
    expired = timezone.now() - timedelta(seconds=settings.SYNC_TIMEOUT + tiers.LEASE_SLACK + 1)
    BatchRequest.objects.update(sync_started_at=expired)
    assert run(fake_openai, "deadlines", **options).returncode == 0
    assert len(fake_openai.sync_calls) == sent  # answered: not sent again
    served = post("/v1/chat/completions", body)
    assert served.status_code == 200 and served["X-Batch-Tier"] == "batch"


# --- Receipts for operators -------------------------------------------------------------------


def test_the_dashboard_metrics_and_admin_show_tiers_and_deadlines(
    post, client, admin_client, held, settings
):
    from .test_metrics import scrape, value

    settings.METRICS_PUBLIC = True
    post("/v1/chat/completions", chat(FLEX_MODEL, "by flex"), HTTP_X_BATCH_DEADLINE="30")
    post("/v1/chat/completions", chat(PLAIN_MODEL, "by standard"), HTTP_X_BATCH_DEADLINE="30")
    tick()
    flexed = BatchRequest.objects.get(tier="flex")
    samples = scrape(client)
    assert value(samples, "batchproxy_tier_requests_total", tier="flex") == 1
    assert value(samples, "batchproxy_tier_requests_total", tier="standard") == 1
    assert value(samples, "batchproxy_tier_saved_usd_total", tier="flex") == pytest.approx(
        float(flexed.cost_usd)
    )
    assert value(samples, "batchproxy_tier_saved_usd_total", tier="standard") == 0
    assert value(samples, "batchproxy_deadlines_total", outcome="met") == 2
    page = admin_client.get("/admin/dashboard/").content.decode()
    assert "Tiers and deadlines" in page and "Deadlines met: 2, missed: 0" in page
    detail = admin_client.get(f"/admin/requests_app/batchrequest/{flexed.pk}/change/")
    text = detail.content.decode()
    assert "Deadline and receipt" in text
    for label in ("Cost (USD)", "At standard price (USD)", "Saving (USD)", "Synchronous sends"):
        assert f"{label}:" in text
    assert "Cost usd" not in text and "Standard cost usd" not in text
    # In words, not Django's red cross for False, which reads as a fault.
    assert re.search(r'Paid twice:</label>\s*<div class="readonly">no</div>', text)
    assert "at standard price" in page


def test_the_admin_edits_a_keys_default_deadline_and_the_flex_table(admin_client, api_key):
    key, _ = api_key
    response = admin_client.post(
        f"/admin/requests_app/apikey/{key.pk}/change/",
        {"name": key.name, "default_deadline": "3600"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    key.refresh_from_db()
    assert key.default_deadline == 3600
    listing = admin_client.get("/admin/batches_app/flexmodel/").content.decode()
    assert "gpt-5-mini" in listing and "gemini-2.5-flash" in listing


def test_images_and_videos_wait_for_their_batch_whatever_their_deadline(post, held):
    body = {"model": "dall-e-3", "prompt": "a lighthouse"}
    post("/v1/images/generations", body, HTTP_X_BATCH_DEADLINE="30")
    tick()
    assert not held.sync_calls
    assert BatchRequest.objects.get().status == Status.QUEUED
    response = post("/v1/images/generations", body | {"n": 2}, HTTP_X_BATCH_MODE="now")
    assert response.status_code == 400
    assert error_of(response)["param"] == "X-Batch-Mode"


def test_an_escalated_request_its_batch_fails_for_good_is_still_answered_by_its_send(
    post, fake_openai, settings
):
    settings.FORECAST_MIN_SAMPLES = 1
    settings.DEADLINE_MARGIN = 5
    forecast.timing_record(
        upstream="openai",
        endpoint="/v1/chat/completions",
        model=FLEX_MODEL,
        tier="batch",
        seconds=10,
    )
    fake_openai.configure(stall_after_lines=0)
    body = chat(FLEX_MODEL, "rescued")
    post("/v1/chat/completions", body, HTTP_X_BATCH_DEADLINE="60")
    now = timezone.now()
    cycle()
    [(request_id, token)] = tiers.deadlines_tick(
        now=now + timedelta(seconds=45), send=lambda pk, t: None
    ).sent
    # Its batch ends without it, its attempts used up: failed for good, as outcomes.py does.
    BatchRequest.objects.filter(pk=request_id).update(
        status=Status.FAILED, error_code="batch_expired", finished_at=timezone.now()
    )
    assert tiers.request_send(str(request_id), token) == "answered at flex"
    response = post("/v1/chat/completions", body)
    assert response.status_code == 200 and response["X-Batch-Tier"] == "flex"


def test_a_send_timeout_past_django_q2s_retry_is_refused_at_start(settings):
    from ops_app.checks import deadlines_check

    assert deadlines_check(None) == []
    settings.SYNC_TIMEOUT = settings.Q_CLUSTER["retry"]
    assert [e.id for e in deadlines_check(None)] == ["ops_app.E212"]


@pytest.mark.parametrize("kind_name", ["Mistral", "Fireworks", "Together", "Groq"])
def test_kinds_without_flex_answer_a_deadline_at_the_standard_tier(
    client, api_key, fake_openai, settings, monkeypatch, request, kind_name
):
    """None has flex (listed): a call due before its batch could answer goes to the kind's own
    synchronous API (Mistral through its SDK), at full price, its batch never made."""
    from . import kinds

    kind_class = getattr(kinds, kind_name)
    fake = request.getfixturevalue(kind_class.fake_fixture)
    fake.reset()
    fake.configure(step_seconds=3600)  # its batches held unfinished
    kind = kind_class(fake, client=client, secret=api_key[1])
    kind.configure(settings, monkeypatch)
    body = json.dumps(chat(kind_class.model, f"hi {kind_name}"))
    ask = {"content_type": "application/json", "HTTP_AUTHORIZATION": f"Bearer {api_key[1]}"}
    response = client.post("/v1/chat/completions", body, HTTP_X_BATCH_DEADLINE="30", **ask)
    assert response.status_code == 422
    assert tick().routed == 1
    response = client.post("/v1/chat/completions", body, **ask)
    assert response.status_code == 200, response.content
    assert response["X-Batch-Tier"] == "standard"
    assert response.json()["choices"][0]["message"]["content"] == f"echo: hi {kind_name}"
    [sent] = fake.sync_calls
    sent = sent.get("body", sent)  # the fake OpenAI's (Groq's) keeps the body beside the tier
    assert sent["messages"] == [{"role": "user", "content": f"hi {kind_name}"}]
    assert sent.get("service_tier") in (None, "standard_only")  # never flex, never priority
    submitted = getattr(fake, "submitted_lines", None) or fake.submitted
    assert not submitted()
    now = client.post(
        "/v1/chat/completions",
        json.dumps(chat(kind_class.model, "at once")),
        HTTP_X_BATCH_MODE="now",
        **ask,
    )
    assert now.status_code == 200 and now["X-Batch-Tier"] == "standard"


# --- A cap on synchronous sends ---------------------------------------------------------------


def sync_sends(fake) -> int:
    """Synchronous calls that reached the fake, injected failures included."""
    return sum(1 for op, _ in fake.calls if op == "sync")


def ticks(times: int, *, every: float = 400.0) -> None:
    """Ticks far enough apart that each back-off has run out."""
    start = timezone.now()
    for n in range(times):
        tick(now=start + timedelta(seconds=n * every))


@pytest.mark.parametrize("fault", [500, "timeout"])
def test_a_send_that_keeps_failing_stops_at_the_cap_and_fails_clearly(post, held, settings, fault):
    settings.SYNC_MAX_ATTEMPTS = 3
    settings.SYNC_TIMEOUT = 0.5
    held.configure(timeout_sleep=1.5)
    held.inject("sync", fault, times=50)
    body = chat(PLAIN_MODEL, "never answered")
    post("/v1/chat/completions", body, HTTP_X_BATCH_DEADLINE="30")
    ticks(6)
    assert sync_sends(held) == 3
    request = BatchRequest.objects.get()
    assert (request.status, request.error_code) == (Status.FAILED, "sync_attempts_exhausted")
    assert request.sync_tier == "" and request.sync_started_at is None
    response = post("/v1/chat/completions", body)
    assert response.status_code == 502
    assert error_of(response)["code"] == "sync_attempts_exhausted"
    assert "3 synchronous sends failed" in error_of(response)["message"]
    assert not held.submitted_lines()


def test_flex_refused_again_and_again_leaves_the_last_send_to_the_standard_tier(
    post, held, settings
):
    """A long deadline lets flex be tried again and again; the cap never lets those refusals
    use up every send: the last one allowed goes to standard, and answers."""
    settings.SYNC_MAX_ATTEMPTS = 3
    held.configure(refuse_flex=True)
    body = chat(FLEX_MODEL, "patient but capped")
    post("/v1/chat/completions", body, HTTP_X_BATCH_DEADLINE="1800")
    ticks(4)
    assert [c["service_tier"] for c in held.sync_calls] == ["flex", "flex", "default"]
    response = post("/v1/chat/completions", body)
    assert response.status_code == 200 and response["X-Batch-Tier"] == "standard"


def test_a_send_that_keeps_failing_goes_back_to_its_batch_when_the_deadline_allows(
    post, fake_openai, settings
):
    settings.SYNC_MAX_ATTEMPTS = 2
    settings.SYNC_BACKOFF = 0.01
    settings.DEADLINE_MARGIN = 4000  # 2092 s (batch p90) + 4000 s > 5000 s: routed
    fake_openai.inject("sync", 503, times=50)
    body = chat(PLAIN_MODEL, "batch after all")
    post("/v1/chat/completions", body, HTTP_X_BATCH_DEADLINE="5000")
    tick()
    assert BatchRequest.objects.get().sync_tier == "standard"
    settings.DEADLINE_MARGIN = 60  # the batch can make it now
    ticks(3)
    assert sync_sends(fake_openai) == 2
    request = BatchRequest.objects.get()
    assert (request.status, request.sync_tier) == (Status.QUEUED, "")
    cycle()
    response = post("/v1/chat/completions", body)
    assert response.status_code == 200 and response["X-Batch-Tier"] == "batch"
    assert sync_sends(fake_openai) == 2


def test_an_escalated_request_whose_sends_keep_failing_is_left_to_its_batch(
    post, fake_openai, settings
):
    settings.SYNC_MAX_ATTEMPTS = 2
    settings.FORECAST_MIN_SAMPLES = 1
    settings.DEADLINE_MARGIN = 5
    forecast.timing_record(
        upstream="openai",
        endpoint="/v1/chat/completions",
        model=FLEX_MODEL,
        tier="batch",
        seconds=10,
    )
    fake_openai.configure(stall_after_lines=0)
    fake_openai.inject("sync", 500, times=50)
    body = chat(FLEX_MODEL, "back to my batch")
    post("/v1/chat/completions", body, HTTP_X_BATCH_DEADLINE="60")
    now = timezone.now()
    cycle()
    tick(now=now + timedelta(seconds=45))
    for n in range(1, 4):
        tick(now=now + timedelta(seconds=45 + n * 400))
    assert sync_sends(fake_openai) == 2
    request = BatchRequest.objects.get()
    assert (request.status, request.sync_tier) == (Status.SUBMITTED, "")
    assert request.batch_id and request.escalated_at


def test_a_send_whose_worker_never_recorded_it_is_not_sent_past_the_cap(post, held, settings):
    settings.SYNC_MAX_ATTEMPTS = 1
    post("/v1/chat/completions", chat(FLEX_MODEL, "lost worker"), HTTP_X_BATCH_DEADLINE="30")
    now = timezone.now()
    tiers.deadlines_tick(now=now, send=lambda pk, token: None)  # claimed; its worker is lost
    later = now + timedelta(seconds=settings.SYNC_TIMEOUT + tiers.LEASE_SLACK + 1)
    tick(now=later)
    assert not held.sync_calls
    request = BatchRequest.objects.get()
    assert (request.status, request.error_code) == (Status.FAILED, "sync_attempts_exhausted")
    assert "never recorded" in request.error_message


def test_mistral_sends_embeddings_through_its_sdk_and_a_body_it_cannot_take_to_the_batch(
    client, api_key, fake_openai, settings, monkeypatch, mistral_server
):
    from .kinds import Mistral

    mistral_server.reset()
    Mistral(mistral_server, client=client, secret=api_key[1]).configure(settings, monkeypatch)
    ask = {"content_type": "application/json", "HTTP_AUTHORIZATION": f"Bearer {api_key[1]}"}
    body = json.dumps({"model": "mistral-embed", "input": ["one", "two"]})
    client.post("/v1/embeddings", body, HTTP_X_BATCH_DEADLINE="30", **ask)
    tick()
    response = client.post("/v1/embeddings", body, **ask)
    assert response.status_code == 200, response.content
    assert len(response.json()["data"]) == 2 and response["X-Batch-Tier"] == "standard"
    assert mistral_server.sync_calls[0]["input"] == ["one", "two"]
    # A field Mistral's SDK has no argument for: not sent this way; left to fail clearly, as
    # no batch can meet a 30 s deadline.
    odd = json.dumps(chat(Mistral.model, "odd") | {"logit_bias": {"1": 2}})
    client.post("/v1/chat/completions", odd, HTTP_X_BATCH_DEADLINE="30", **ask)
    tick()
    failed = BatchRequest.objects.get(body__contains="logit_bias")
    assert (failed.status, failed.error_code) == (Status.FAILED, "sync_attempts_exhausted")
    assert "cannot send this body" in failed.error_message
    assert len(mistral_server.sync_calls) == 1
