"""The dashboard's figures agree with /metrics when both cover the same requests and batches:
here everything happened in the last hour, so the dashboard's hour, 24 hours and 30 days and
/metrics' totals (all stored, all tallied) must say the same."""

import pytest
from django.urls import reverse

from batches_app.dashboard import dashboard_figures

from .cockpit import chat, send
from .engine import cycle
from .test_metrics import scrape

pytestmark = pytest.mark.django_db


def summed(samples: dict, name: str, **labels) -> float:
    """A metric summed over every label not given (upstreams and models)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def test_the_dashboard_and_metrics_agree_on_one_window(
    admin_client, client, api_key, other_key, fake_openai, settings
):
    settings.MAX_ATTEMPTS, settings.METRICS_PUBLIC = 1, True
    send(client, api_key[1], chat("a" * 400))
    send(client, api_key[1], chat("b" * 40, model="gpt-4o"))
    send(client, other_key[1], chat("c" * 4000))
    send(client, other_key[1], chat("boom [[error:server_error]]"))
    send(client, other_key[1], chat("no price", model="ft:gpt-4o-mini:acme::x1"))
    cycle()

    figures = dashboard_figures()
    samples = scrape(client)
    completed = summed(samples, "batchproxy_requests", status="completed")
    failed = summed(samples, "batchproxy_requests", status="failed")
    assert (completed, failed) == (4, 1)
    for window in ("last_hour", "last_day"):
        assert (figures[window]["completed"], figures[window]["failed"]) == (completed, failed)
    month = figures["total_month"]
    assert month.requests == figures["total_key_month"].requests == completed
    assert figures["total_requests_day"] == completed

    assert month.tokens_in == summed(samples, "batchproxy_tokens_total", direction="input") > 0
    assert month.tokens_out == summed(samples, "batchproxy_tokens_total", direction="output") > 0
    assert float(month.spent) == pytest.approx(summed(samples, "batchproxy_spent_usd_total"))
    assert float(month.saved) == pytest.approx(summed(samples, "batchproxy_saved_usd_total"))
    assert month.spent > 0 and month.unpriced_tokens > 0  # the fine-tune has no price
    day = figures["total_day"]
    assert (day.tokens_in, day.tokens_out, day.spent) == (
        month.tokens_in,
        month.tokens_out,
        month.spent,
    )
    # The per-key table (from each answer's usage) sums to the same tokens.
    keys = figures["total_key_month"]
    assert (keys.tokens_in, keys.tokens_out) == (month.tokens_in, month.tokens_out)

    page = admin_client.get(reverse("batchproxy-dashboard")).content.decode()
    assert f'id="bp-answered-month">{completed:.0f}<' in page
    assert f'id="bp-failed-day">{failed:.0f}<' in page
