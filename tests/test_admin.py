"""The admin as the operator's product: lists, search, read-only pages, and actions.

`admin_client` is pytest-django's: a logged-in superuser.
"""

import html

import pytest
from django.apps import apps
from django.contrib import admin
from django.urls import reverse

from batches_app.models import Batch, QueueLimit, UpstreamFile
from requests_app.models import BatchRequest

from .cockpit import chat, send
from .engine import cycle

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status
ACTION = "django.contrib.admin.helpers.ACTION_CHECKBOX_NAME"


def changelist(model: str) -> str:
    ours = ("batch", "upstreamfile", "modelprice", "queuelimit")
    app = "batches_app" if model in ours else "requests_app"
    return reverse(f"admin:{app}_{model}_changelist")


def act(admin_client, model: str, action: str, pks) -> list[str]:
    """Run an admin action on the given rows; return the messages it reported."""
    response = admin_client.post(
        changelist(model),
        {"action": action, "_selected_action": [str(pk) for pk in pks]},
        follow=True,
    )
    assert response.status_code == 200
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def answered(client, api_key, fake_openai, settings):
    """One answered request and one failed for good, in ended batches with their files."""
    settings.MAX_ATTEMPTS = 1
    ok = send(client, api_key[1], chat("hello admin"))
    bad = send(client, api_key[1], chat("boom [[error:server_error]]"))
    cycle()
    return BatchRequest.objects.get(pk=ok), BatchRequest.objects.get(pk=bad)


@pytest.mark.parametrize("model", ["batchrequest", "batch", "upstreamfile", "apikey", "modelprice"])
def test_every_model_has_a_list_page(admin_client, answered, model):
    assert admin_client.get(changelist(model)).status_code == 200


@pytest.mark.parametrize("model", ["batchrequest", "batch", "upstreamfile"])
def test_rows_the_system_owns_cannot_be_added_or_deleted(admin_client, rf, admin_user, model):
    app = "requests_app" if model == "batchrequest" else "batches_app"
    assert admin_client.get(reverse(f"admin:{app}_{model}_add")).status_code == 403
    request = rf.get("/")
    request.user = admin_user
    model_admin = admin.site._registry[apps.get_model(app, model)]
    assert not model_admin.has_delete_permission(request)


def test_request_list_shows_status_model_key_attempts_and_error_the_body_on_its_page(
    admin_client, answered
):
    page = admin_client.get(changelist("batchrequest")).content.decode()
    for text in ("completed", "failed", "gpt-4o-mini", "team", "server_error", "API key"):
        assert text in page
    assert "hello admin" not in page  # the body, cut mid-word in a list, is on its page


def test_requests_are_found_by_id_fingerprint_and_upstream_batch_id(admin_client, answered):
    ok, _ = answered
    batch = ok.batch
    for term, expected in (
        (str(ok.pk), {ok.pk}),
        (ok.fingerprint, {ok.pk}),
        (batch.upstream_id, {ok.pk}),  # the failed one left the batch? no: both stay in it
        ("no-such-thing", set()),
    ):
        response = admin_client.get(changelist("batchrequest"), {"q": term})
        found = {row.pk for row in response.context["cl"].result_list}
        assert expected <= found and (expected or not found), term


def test_batches_are_found_by_upstream_id_and_file_id(admin_client, answered):
    batch = answered[0].batch
    for term in (batch.upstream_id, batch.input_file_id, str(batch.pk)):
        response = admin_client.get(changelist("batch"), {"q": term})
        assert [b.pk for b in response.context["cl"].result_list] == [batch.pk], term


def test_any_prefix_of_an_id_finds_what_the_lists_show(admin_client, answered):
    """The lists show 8 characters of an id: those (or more, or fewer) find the row."""
    ok, _ = answered
    batch = ok.batch
    for term in (str(batch.pk)[:8], str(batch.pk)[:13], batch.upstream_id[:10]):
        response = admin_client.get(changelist("batch"), {"q": term})
        assert [b.pk for b in response.context["cl"].result_list] == [batch.pk], term
    response = admin_client.get(changelist("batch"), {"q": batch.output_file_id[:12]})
    assert [b.pk for b in response.context["cl"].result_list] == [batch.pk]
    for term in (str(ok.pk)[:8], str(ok.pk)[:20].upper(), ok.fingerprint[:12]):
        response = admin_client.get(changelist("batchrequest"), {"q": term})
        assert [r.pk for r in response.context["cl"].result_list] == [ok.pk], term
    response = admin_client.get(changelist("batchrequest"), {"q": str(batch.pk)[:8]})
    assert {r.pk for r in response.context["cl"].result_list} == {r.pk for r in answered}
    response = admin_client.get(changelist("batch"), {"q": "zz-not-hex"})
    assert list(response.context["cl"].result_list) == []


def test_batch_page_says_what_applies_to_a_finished_batch(admin_client, answered):
    """Counts in words, the requests' own outcomes, seconds and the time it took; no next
    attempt on a finished batch."""
    batch = answered[0].batch
    page = html.unescape(
        admin_client.get(
            reverse("admin:batches_app_batch_change", args=[batch.pk])
        ).content.decode()
    )
    assert "2 requests in this batch now" in page
    assert "1 completed, 1 failed of 2" in page and '{"total"' not in page
    assert "1 completed, 1 failed (server_error)" in page
    assert "Next attempt at" not in page and "Cancel mode" not in page
    assert batch.created_at.strftime("%Y-%m-%d %H:%M:%S") in page
    assert "Took:" in page
    assert " in, " in page[page.index("Tokens (upstream usage)") :][:200]  # not "-"


def test_request_page_shows_its_attempts_its_key_in_plain_words_and_a_requeue_button(
    admin_client, answered
):
    _, bad = answered
    url = reverse("admin:requests_app_batchrequest_change", args=[bad.pk])
    page = html.unescape(admin_client.get(url).content.decode())
    assert "API key:" in page and "Api key" not in page
    assert "Attempt history:" in page and bad.batch.upstream_id in page
    assert "Failed" in page and "server_error" in page
    assert "Requeue with fresh attempts" in page
    response = admin_client.post(
        reverse("admin:requests_app_batchrequest_requeue", args=[bad.pk]), follow=True
    )
    assert "1 requests requeued" in str(next(iter(response.context["messages"])))
    assert BatchRequest.objects.get(pk=bad.pk).status == Status.QUEUED
    page = admin_client.get(url).content.decode()
    assert "Requeue with fresh attempts" not in page  # queued: nothing to requeue


def test_key_page_says_in_words_where_a_key_comes_from(admin_client):
    from requests_app.models import ApiKey

    key = ApiKey.objects.create(name="env key", prefix="bp-env", key_hash="0" * 64, from_env=True)
    page = admin_client.get(reverse("admin:requests_app_apikey_change", args=[key.pk])).content
    text = html.unescape(page.decode())
    assert "From env" not in text and "Defined by BATCH_SERVER_API_KEY" not in text
    assert "Made by:" in text and "the environment (BATCH_SERVER_API_KEY)" in text
    assert "Revoked at" not in text  # an active key has no revocation time to show


def test_admin_index_lists_the_proxys_pages_before_the_others(admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert page.index("Client requests") < page.index("Authentication")
    assert page.index("Upstream batches") < page.index("Authentication")


def test_request_page_shows_body_and_answer_pretty_printed_and_read_only(admin_client, answered):
    ok, _ = answered
    url = reverse("admin:requests_app_batchrequest_change", args=[ok.pk])
    response = admin_client.get(url)
    page = html.unescape(response.content.decode())
    assert '"content": "hello admin"' in page  # indented JSON, not the canonical one-liner
    assert "echo: hello admin" in page
    assert response.context["adminform"].form.fields == {}  # every field read-only


def test_batch_page_links_to_its_requests_and_files(admin_client, answered):
    batch = answered[0].batch
    page = admin_client.get(reverse("admin:batches_app_batch_change", args=[batch.pk]))
    text = page.content.decode()
    assert f"?batch__id__exact={batch.pk}" in text
    assert batch.input_file_id in text
    listed = admin_client.get(changelist("batchrequest") + f"?batch__id__exact={batch.pk}")
    assert {r.pk for r in listed.context["cl"].result_list} == set(
        BatchRequest.objects.filter(batch=batch).values_list("pk", flat=True)
    )


def test_requeue_action_requeues_failed_requests_and_is_safe_twice(admin_client, answered):
    ok, bad = answered
    first = act(admin_client, "batchrequest", "requeue", [ok.pk, bad.pk])
    assert first == ["1 requests requeued; 1 were not failed or cancelled."]
    bad.refresh_from_db()
    assert (bad.status, bad.attempts, bad.error_code) == (Status.QUEUED, 0, "")
    ok.refresh_from_db()
    assert ok.status == Status.COMPLETED

    again = act(admin_client, "batchrequest", "requeue", [ok.pk, bad.pk])
    assert again == ["0 requests requeued; 2 were not failed or cancelled."]


def test_retry_failed_action_touches_only_failed_requests(admin_client, answered):
    ok, bad = answered
    assert act(admin_client, "batchrequest", "retry_failed", [ok.pk, bad.pk]) == [
        "1 failed requests requeued; 1 were not failed."
    ]
    assert BatchRequest.objects.get(pk=bad.pk).status == Status.QUEUED


@pytest.fixture
def running(client, api_key, fake_openai):
    """A batch of two requests, running upstream (the fake takes a minute per step)."""
    fake_openai.configure(step_seconds=60)
    ids = [send(client, api_key[1], chat(text)) for text in ("one", "two")]
    cycle()
    batch = Batch.objects.get()
    assert batch.state == Batch.State.RUNNING
    return batch, ids


@pytest.mark.parametrize(
    ("action", "then"), [("cancel_requeue", Status.QUEUED), ("cancel_requests", Status.CANCELLED)]
)
def test_cancel_actions_cancel_upstream_and_settle_requests(
    admin_client, running, fake_openai, action, then
):
    batch, ids = running
    first = act(admin_client, "batch", action, [batch.pk])
    assert first[0].startswith("1 batches cancelled upstream")
    for _ in range(5):  # the fake moves from cancelling to cancelled on a later poll
        act(admin_client, "batch", "poll_now", [batch.pk])
        if Batch.objects.get(pk=batch.pk).state == Batch.State.DONE:
            break
    assert Batch.objects.get(pk=batch.pk).upstream_status == "cancelled"
    assert set(BatchRequest.objects.filter(pk__in=ids).values_list("status", flat=True)) == {then}

    again = act(admin_client, "batch", action, [batch.pk])
    assert again == [
        "0 batches cancelled upstream (their unfinished requests are "
        f"{'requeued' if then == Status.QUEUED else 'cancelled'}); 1 had already ended."
    ]


def test_poll_now_action_reports_counts(admin_client, running):
    batch, _ = running
    assert act(admin_client, "batch", "poll_now", [batch.pk]) == [
        "1 running batches polled; 0 upstream errors (retried later)."
    ]


def test_files_list_links_to_batches(admin_client, answered):
    page = admin_client.get(changelist("upstreamfile")).content.decode()
    upstream_file = UpstreamFile.objects.first()
    assert upstream_file.file_id in page
    assert reverse("admin:batches_app_batch_change", args=[upstream_file.batch_id]) in page


@pytest.fixture
def two_upstreams(client, api_key, second_org, fake_openai):
    """Answered requests of gpt-4o on the second organisation and gpt-4o-mini on the default."""
    second = send(client, api_key[1], chat("to openai-2", model="gpt-4o"))
    first = send(client, api_key[1], chat("to openai"))
    cycle()
    return BatchRequest.objects.get(pk=first), BatchRequest.objects.get(pk=second)


def listed(admin_client, model: str, query: str = "") -> set:
    return {row.pk for row in admin_client.get(changelist(model) + query).context["cl"].result_list}


def test_batches_requests_and_files_are_filtered_by_upstream(admin_client, two_upstreams):
    first, second = two_upstreams
    assert listed(admin_client, "batch", "?upstream__exact=openai-2") == {second.batch_id}
    assert listed(admin_client, "batchrequest", "?batch__upstream=openai-2") == {second.pk}
    assert listed(admin_client, "batchrequest", "?batch__upstream=openai") == {first.pk}
    files = listed(admin_client, "upstreamfile", "?batch__upstream=openai-2")
    assert files == set(
        UpstreamFile.objects.filter(batch=second.batch).values_list("pk", flat=True)
    )
    assert files and not files & set(first.batch.files.values_list("pk", flat=True))
    page = admin_client.get(changelist("upstreamfile")).content.decode()
    assert '<td class="field-upstream">openai-2</td>' in page
    assert '<td class="field-upstream">openai</td>' in page


def test_queue_limits_list_and_filter_by_upstream(admin_client, second_org):
    QueueLimit.objects.create(upstream="openai", model="gpt-4o", enqueued_tokens=90_000)
    other = QueueLimit.objects.create(upstream="openai-2", model="gpt-4o", enqueued_tokens=7_000)
    assert listed(admin_client, "queuelimit", "?upstream__exact=openai-2") == {other.pk}
    page = admin_client.get(changelist("queuelimit")).content.decode()
    assert page.count('class="field-upstream"') == 2  # the first column, each row's link
    assert f'/{other.pk}/change/">openai-2</a>' in page


def test_admin_index_links_to_the_dashboard(admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert reverse("batchproxy-dashboard") in page


def test_dashboard_shows_real_figures(admin_client, answered):
    page = admin_client.get(reverse("batchproxy-dashboard")).content.decode()
    assert 'id="bp-completed-day">1<' in page
    assert 'id="bp-failed-day">1<' in page
    assert "gpt-4o-mini" in page
    assert "server_error" in page


def test_dashboard_needs_a_staff_login(client):
    response = client.get(reverse("batchproxy-dashboard"))
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_flush_now_flushes_one_group_or_all_and_is_safe_twice(
    admin_client, client, api_key, fake_openai
):
    send(client, api_key[1], chat("a"))
    send(client, api_key[1], chat("b", model="gpt-4o"))
    flush = reverse("batchproxy-flush")

    one = admin_client.post(
        flush, {"endpoint": "/v1/chat/completions", "model": "gpt-4o"}, follow=True
    )
    assert [str(m) for m in one.context["messages"]] == [
        "Flushed /v1/chat/completions gpt-4o: 1 batches with 1 requests; 1 batches submitted, "
        "0 upstream errors (retried later)."
    ]
    assert BatchRequest.objects.filter(status=Status.QUEUED).count() == 1

    everything = admin_client.post(flush, follow=True)
    assert "Flushed all groups: 1 batches with 1 requests" in str(
        next(iter(everything.context["messages"]))
    )
    twice = admin_client.post(flush, follow=True)
    assert "Flushed all groups: 0 batches with 0 requests" in str(
        next(iter(twice.context["messages"]))
    )
    assert BatchRequest.objects.filter(status=Status.QUEUED).count() == 0


def test_retry_all_failed_from_the_dashboard(admin_client, answered):
    response = admin_client.post(reverse("batchproxy-retry-failed"), follow=True)
    assert [str(m) for m in response.context["messages"]] == [
        "1 failed requests requeued with fresh attempts."
    ]
    assert not BatchRequest.objects.filter(status=Status.FAILED).exists()


def test_dashboard_actions_refuse_get(admin_client):
    assert admin_client.get(reverse("batchproxy-flush")).status_code == 405


def test_prices_are_editable_and_show_batch_prices(admin_client):
    page = admin_client.get(changelist("modelprice")).content.decode()
    assert "gpt-4o-mini" in page
    assert "0.075, 0.3" in page  # half of 0.15 and 0.60


def test_a_batch_whose_only_request_failed_says_so_not_errors_dash(
    admin_client, client, api_key, fake_openai, settings
):
    settings.MAX_ATTEMPTS = 1
    send(client, api_key[1], chat("boom [[error:server_error]]"))
    cycle()
    batch = Batch.objects.get()
    page = html.unescape(
        admin_client.get(
            reverse("admin:batches_app_batch_change", args=[batch.pk])
        ).content.decode()
    )
    assert "1 request in this batch now" in page
    assert "1 failed (server_error)" in page
    assert "Errors:" not in page and "Last error:" not in page
    assert "Next attempt at" not in page
