"""Dashboard figures against hand-computed values from the usage the fake OpenAI reports.

The fake counts a token per four characters, rounded up: a chat message of N characters costs
N/4 tokens in, and its answer "echo: <message>" (N + 6 characters) costs (N + 9) // 4 tokens out.
"""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from batches_app import dashboard, spend
from batches_app.models import Batch, ModelPrice
from batches_app.prices import prices_ensure
from batches_app.usage import usage_tokens
from requests_app.models import BatchRequest

from .cockpit import chat, send
from .conftest import make_key
from .engine import cycle

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status
MILLION = Decimal(1_000_000)


@pytest.fixture
def traffic(client, fake_openai):
    """Two keys' answered requests: three models, one of them without a price."""
    team_a, secret_a = make_key("team a")
    team_b, secret_b = make_key("team b")
    send(client, secret_a, chat("a" * 4000))  # 1000 in, 1002 out
    send(client, secret_a, chat("b" * 8000))  # 2000 in, 2002 out
    send(client, secret_b, chat("c" * 4000))  # 1000 in, 1002 out
    send(client, secret_b, {"model": "text-embedding-3-small", "input": "d" * 40000}, "embeddings")
    send(client, secret_b, chat("e" * 400, model="mystery-model"))  # 100 in, 102 out
    cycle()
    assert BatchRequest.objects.filter(status=Status.COMPLETED).count() == 5
    return team_a, team_b


def test_prices_for_current_models_are_installed_by_migration():
    price = ModelPrice.objects.get(model="gpt-4o-mini")
    assert (price.input_per_million, price.output_per_million) == (Decimal("0.15"), Decimal("0.6"))
    assert ModelPrice.objects.filter(model="text-embedding-3-small").exists()


def test_claude_and_gemini_models_are_priced_and_migration_keeps_edited_rows():
    from django.apps import apps

    from batches_app.prices import CLAUDE_PRICES, prices_add

    sonnet = ModelPrice.objects.get(model="claude-sonnet-4")
    assert (sonnet.input_per_million, sonnet.output_per_million) == (Decimal(3), Decimal(15))
    assert ModelPrice.objects.get(model="gemini-2.5-flash").input_per_million == Decimal("0.3")
    assert spend.PriceBook().find("claude-sonnet-4-20250514").model == "claude-sonnet-4"

    ModelPrice.objects.filter(model="claude-sonnet-4").update(input_per_million=Decimal(2))
    ModelPrice.objects.filter(model="claude-3-haiku").delete()
    added = prices_add(apps.get_model("batches_app", "ModelPrice"), list(CLAUDE_PRICES))
    assert added == 1  # the deleted row came back; the edited one stayed
    assert ModelPrice.objects.get(model="claude-sonnet-4").input_per_million == Decimal(2)


def test_dated_snapshot_is_priced_as_its_model_and_unknown_model_is_not_priced():
    book = spend.PriceBook()
    assert book.find("gpt-4o-mini-2024-07-18").model == "gpt-4o-mini"
    assert book.find("gpt-4o-mini-tts") is None
    assert book.find("mystery-model") is None


def test_tokens_per_model_come_from_upstream_usage(traffic):
    figures = {s.label: s for s in dashboard.dashboard_figures()["by_model_month"]}

    mini = figures["gpt-4o-mini"]
    assert (mini.tokens_in, mini.tokens_out, mini.requests) == (4000, 4006, 3)
    sync = (4000 * Decimal("0.15") + 4006 * Decimal("0.60")) / MILLION
    assert mini.synchronous == sync == Decimal("0.0030036")
    assert mini.spent == Decimal("0.0015018")
    assert mini.saved == Decimal("0.0015018")

    embeddings = figures["text-embedding-3-small"]
    assert (embeddings.tokens_in, embeddings.tokens_out) == (10000, 0)
    assert embeddings.spent == embeddings.saved == Decimal("0.0001")

    mystery = figures["mystery-model"]
    assert (mystery.tokens_in, mystery.tokens_out) == (100, 102)
    assert not mystery.priced and mystery.unpriced_tokens == 202
    assert mystery.synchronous == 0  # unknown, not free: `priced` is False


def test_totals_leave_out_unpriced_tokens_and_say_so(traffic):
    figures = dashboard.dashboard_figures()
    month = figures["total_month"]
    assert month.spent == Decimal("0.0015018") + Decimal("0.0001")
    assert month.saved == month.spent
    assert month.unpriced_tokens == 202
    assert (month.tokens_in, month.tokens_out) == (4000 + 10000 + 100, 4006 + 102)


def test_tokens_and_money_per_key_come_from_each_answer(traffic):
    team_a, team_b = traffic
    by_key = {s.label: s for s in dashboard.dashboard_figures()["by_key_month"]}

    a = by_key[str(team_a)]
    assert (a.tokens_in, a.tokens_out, a.requests) == (3000, 3004, 2)
    assert a.priced
    assert a.spent == (3000 * Decimal("0.15") + 3004 * Decimal("0.60")) / MILLION / 2
    assert a.spent == Decimal("0.0011262")

    b = by_key[str(team_b)]
    assert (b.tokens_in, b.tokens_out, b.requests) == (1000 + 10000 + 100, 1002 + 102, 3)
    assert not b.priced  # one of its models has no price


def test_token_counts_are_recorded_at_ingest(traffic):
    assert BatchRequest.objects.filter(input_tokens=None, status=Status.COMPLETED).count() == 0
    row = BatchRequest.objects.get(body__contains="a" * 4000)
    assert (row.input_tokens, row.output_tokens) == (1000, 1002)


def test_per_model_figures_fall_back_to_answers_when_batch_has_no_usage(traffic):
    Batch.objects.update(usage=None)  # an OpenAI-compatible API that reports no batch usage
    by_model = {s.label: s for s in dashboard.dashboard_figures()["by_model_month"]}
    assert (by_model["gpt-4o-mini"].tokens_in, by_model["gpt-4o-mini"].tokens_out) == (4000, 4006)


def test_queue_depth_and_oldest_wait(client, api_key, fake_openai):
    send(client, api_key[1], chat("one"))
    send(client, api_key[1], chat("two"))
    send(client, api_key[1], chat("three", model="gpt-4o"))
    BatchRequest.objects.filter(body__contains="one").update(
        created_at=timezone.now() - timedelta(minutes=10)
    )

    figures = dashboard.dashboard_figures()

    depth = {
        (r["upstream"], r["endpoint"], r["model"]): (r["queued"], r["submitted"])
        for r in figures["queue"]
    }
    assert depth == {
        ("openai", "/v1/chat/completions", "gpt-4o-mini"): (2, 0),
        ("openai", "/v1/chat/completions", "gpt-4o"): (1, 0),
    }
    assert figures["waiting_total"] == 3
    assert timedelta(minutes=10) <= figures["oldest_wait"] < timedelta(minutes=11)


def test_completed_and_failed_counts_and_error_codes(client, api_key, fake_openai, settings):
    settings.MAX_ATTEMPTS = 1
    send(client, api_key[1], chat("fine"))
    send(client, api_key[1], chat("boom [[error:server_error]]"))
    cycle()

    figures = dashboard.dashboard_figures()

    assert figures["last_hour"] == {"completed": 1, "failed": 1, "cancelled": 0}
    assert figures["last_day"] == {"completed": 1, "failed": 1, "cancelled": 0}
    codes = figures["errors"]["codes"]
    assert codes == [{"error_code": "server_error", "upstream": "openai", "n": 1}]
    assert figures["failed_total"] == 1
    assert sum(p["completed"] for p in figures["hourly"]) == 1
    assert sum(p["failed"] for p in figures["hourly"]) == 1


def test_batches_retrying_upstream_are_listed(client, api_key, fake_openai):
    send(client, api_key[1], chat("slow"))
    fake_openai.inject("create", 500, times=5)
    cycle()

    retrying = dashboard.dashboard_figures()["errors"]["retrying"]

    assert len(retrying) == 1
    assert retrying[0]["upstream_failures"] >= 1


def test_daily_money_chart_puts_spend_on_the_day_the_batch_ended(traffic):
    Batch.objects.update(finished_at=timezone.now() - timedelta(days=3))
    daily = dashboard.dashboard_figures()["daily"]
    assert len(daily) == 30
    spent = [p["spent"] for p in daily]
    assert spent[-4] == Decimal("0.0015018") + Decimal("0.0001")
    assert sum(spent) == spent[-4]
    # Stacked bars: the tallest day, spent plus saved, is the full height.
    assert daily[-4]["spent_pct"] + daily[-4]["saved_pct"] == pytest.approx(100)


def test_figures_take_a_fixed_number_of_queries(traffic, django_assert_max_num_queries):
    dashboard.dashboard_figures()
    with django_assert_max_num_queries(25):
        dashboard.dashboard_figures()


def test_an_edited_price_table_is_left_alone():
    ModelPrice.objects.filter(model="gpt-4o").update(input_per_million=Decimal("9"))
    ModelPrice.objects.filter(model="o1").delete()
    prices_ensure()
    assert ModelPrice.objects.get(model="gpt-4o").input_per_million == Decimal("9")
    assert not ModelPrice.objects.filter(model="o1").exists()


@pytest.mark.django_db(transaction=True)
def test_default_prices_come_back_after_the_database_is_flushed():
    # Transactional tests empty every table between tests; post_migrate refills the prices.
    assert ModelPrice.objects.filter(model="gpt-4o-mini").exists()


def test_usage_of_every_endpoint_is_read():
    assert usage_tokens({"prompt_tokens": 3, "completion_tokens": 4}) == (3, 4)  # chat
    assert usage_tokens({"input_tokens": 5, "output_tokens": 6}) == (5, 6)  # responses, batch
    assert usage_tokens({"prompt_tokens": 7, "total_tokens": 7}) == (7, 0)  # embeddings
    assert usage_tokens(None) == (0, 0)  # moderations report none


def test_each_upstream_shows_its_own_queue_spend_and_errors(
    admin_client, client, api_key, second_org, fake_openai, settings
):
    """gpt-4o goes to a second organisation, gpt-4o-mini to the default one: the tables say
    which upstream each figure belongs to, and never add the two together."""
    settings.MAX_ATTEMPTS = 1
    send(client, api_key[1], chat("a" * 4000, model="gpt-4o"))  # 1000 in, 1002 out
    send(client, api_key[1], chat("b" * 8000))  # 2000 in, 2002 out
    send(client, api_key[1], chat("boom [[error:server_error]]", model="gpt-4o"))
    cycle()
    send(client, api_key[1], chat("queued", model="gpt-4o"))
    Batch.objects.filter(upstream="openai").update(model="gpt-4o")  # the same model on both

    figures = dashboard.dashboard_figures()

    spends = {(s.upstream, s.label): (s.tokens_in, s.tokens_out) for s in figures["by_model_month"]}
    assert spends == {
        ("openai-2", "gpt-4o"): (1000, 1002),  # the failed line used none
        ("openai", "gpt-4o"): (2000, 2002),
    }
    assert [(r["upstream"], r["model"], r["queued"]) for r in figures["queue"]] == [
        ("openai-2", "gpt-4o", 1)
    ]
    codes = figures["errors"]["codes"]
    assert codes == [{"error_code": "server_error", "upstream": "openai-2", "n": 1}]
    page = admin_client.get("/admin/dashboard/").content.decode()
    by_model = page[page.index('id="bp-by-model"') : page.index('id="bp-by-key"')]
    assert "<th>upstream</th><th>model</th>" in by_model
    assert "<td>openai-2</td><td>gpt-4o</td><td" in by_model
    assert "<td>openai</td><td>gpt-4o</td><td" in by_model
    queue = page[page.index('id="bp-queue"') : page.index('id="bp-capacity"')]
    assert "<td>openai-2</td><td>/v1/chat/completions</td><td>gpt-4o</td>" in queue


def test_per_model_per_key_and_completed_counts_agree(client, fake_openai, settings):
    """A line the upstream answered with a 500 (retried, then answered) counts once, as the
    proxy's answered request, in every table."""
    _, secret = make_key("team")
    settings.MAX_ATTEMPTS = 2
    send(client, secret, chat("fine"))
    send(client, secret, chat("once [[error:server_error]]"))
    cycle()
    BatchRequest.objects.filter(status=Status.QUEUED).update(
        body=BatchRequest.objects.get(status=Status.COMPLETED).body.replace("fine", "again")
    )
    cycle()
    figures = dashboard.dashboard_figures()
    answered = BatchRequest.objects.filter(status=Status.COMPLETED).count()
    assert answered == 2
    assert figures["total_month"].requests == answered
    assert figures["total_key_month"].requests == answered
    assert figures["last_day"]["completed"] == answered
    assert figures["total_requests_day"] == answered


def test_money_is_never_shown_as_zero_for_a_real_cost():
    from batches_app.templatetags.money import usd

    assert usd(Decimal("0.00002")) == "$0.000020"
    assert usd(Decimal("0.000425")) == "$0.00042"
    assert usd(Decimal("12345.678")) == "$12,345.68"
    assert usd(0) == "$0"


def test_spend_rows_come_dearest_first(traffic):
    rows = spend.spend_by_model(since=timezone.now() - timedelta(days=1), book=spend.PriceBook())
    spent = [row.spent for row in rows]
    assert spent == sorted(spent, reverse=True)


@pytest.mark.parametrize(
    ("failed", "text"),
    [
        (0, "No failed request to retry"),
        (1, "Retry the 1 failed request"),
        (2, "Retry all 2 failed requests"),
    ],
)
def test_retry_button_counts_in_words(admin_client, api_key, failed, text):
    for i in range(failed):
        BatchRequest.objects.create(
            api_key=api_key[0],
            endpoint="/v1/chat/completions",
            model="m",
            body="{}",
            body_bytes=2,
            fingerprint=f"f{i}",
            status=Status.FAILED,
        )
    assert f'value="{text}"' in admin_client.get("/admin/dashboard/").content.decode()


def test_upstreams_table_tells_the_truth_in_try_out_mode(admin_client, settings):
    settings.TRY_OUT = {"fakes": {"openai": "http://127.0.0.1:9/v1"}}
    page = admin_client.get("/admin/dashboard/").content.decode()
    table = page[page.index('id="bp-upstreams"') : page.index('id="bp-chart-hours"')]
    assert "a placeholder (try-out)" in table and "OPENAI_API_KEY" not in table
    assert "built-in fake (OpenAI, Anthropic, Gemini)" in table


def test_upstreams_table_names_an_unset_key_and_every_providers_variables(admin_client, settings):
    settings.TRY_OUT, settings.OPENAI_API_KEY = None, ""
    page = admin_client.get("/admin/dashboard/").content.decode()
    table = page[page.index('id="bp-upstreams"') : page.index('id="bp-chart-hours"')]
    assert "OPENAI_API_KEY (not set: nothing is sent here)" in table
    for variables in ("ANTHROPIC_*", "GEMINI_*", "AZURE_OPENAI_*", "UPSTREAMS"):
        assert variables in table


def test_charts_have_a_scale_dates_and_say_their_window(admin_client, traffic):
    page = admin_client.get("/admin/dashboard/").content.decode()
    hours = page[page.index('id="bp-chart-hours"') : page.index('id="bp-chart-days"')]
    assert "last 24 hours, UTC" in hours
    assert '<div class="bp-yaxis"><span>5</span><span>0</span></div>' in hours
    assert timezone.now().strftime("%m-%d %H:00") in hours
    days = page[page.index('id="bp-chart-days"') : page.index('id="bp-by-model"')]
    assert timezone.now().strftime("%m-%d") in days and "last 30 days" in days
