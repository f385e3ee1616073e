"""GET /v1/batch_requests: the key's finished requests by cursor, each exactly once."""

import json
import subprocess
from datetime import timedelta

import openai
import pytest
from django.utils import timezone

from batches_app import services
from requests_app.models import BatchRequest

from .engine import cycle
from .test_node_sdk import NODE_DIR, node_modules_ensure

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status


def chat(text: str) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


@pytest.fixture
def listing(client, api_key, settings):
    settings.LIST_SETTLE_SECONDS = 0

    def _get(query: str = "", *, secret: str | None = None, path="/v1/batch_requests"):
        headers = {"HTTP_AUTHORIZATION": f"Bearer {secret or api_key[1]}"}
        return client.get(f"{path}{'?' if query else ''}{query}", **headers)

    return _get


@pytest.fixture
def finished(post, fake_openai):
    """Finish `n` requests of one key in one ingest chunk: they share one `finished_at`."""

    def _finished(n: int, prefix: str, secret: str | None = None) -> list[str]:
        ids = []
        for i in range(n):
            response = post("/v1/chat/completions", chat(f"{prefix} {i}"), secret=secret)
            ids.append(response["X-Batch-Request-Id"])
        cycle()
        return ids

    return _finished


def all_pages(listing, query: str) -> tuple[list[str], str | None, int]:
    seen, cursor, pages = [], None, 0
    while True:
        page = listing(query + (f"&after={cursor}" if cursor else "")).json()
        pages += 1
        seen += [row["id"] for row in page["data"]]
        cursor = page["next_cursor"] or cursor
        if not page["has_more"]:
            return seen, cursor, pages


def test_each_finished_request_comes_exactly_once_across_pages_though_all_share_a_time(
    listing, finished, other_key
):
    mine = finished(25, "mine")
    finished(5, "theirs", secret=other_key[1])
    assert len(set(BatchRequest.objects.values_list("finished_at", flat=True))) <= 2

    seen, _, pages = all_pages(listing, "status=completed&limit=10")

    assert sorted(seen) == sorted(mine) and len(seen) == 25
    assert pages == 3


def test_the_last_cursor_gives_what_finished_since_and_nothing_twice(listing, finished):
    first = finished(4, "first")
    seen, cursor, _ = all_pages(listing, "limit=3")
    assert sorted(seen) == sorted(first)
    empty = listing(f"after={cursor}").json()
    assert (empty["data"], empty["has_more"], empty["next_cursor"]) == ([], False, cursor)

    later = finished(2, "later")
    page = listing(f"after={cursor}").json()

    assert sorted(row["id"] for row in page["data"]) == sorted(later)


def test_another_keys_requests_are_never_listed(listing, finished, other_key):
    finished(3, "mine")
    theirs = finished(3, "theirs", secret=other_key[1])
    seen, _, _ = all_pages(listing, "limit=2")
    assert not set(seen) & set(theirs) and len(seen) == 3
    their_view, _, _ = all_pages(lambda q: listing(q, secret=other_key[1]), "limit=2")
    assert sorted(their_view) == sorted(theirs)


def test_pending_requests_are_not_listed_and_status_filters(listing, finished, post, settings):
    settings.MAX_ATTEMPTS = 1
    done = finished(2, "done")
    waiting = post("/v1/chat/completions", chat("still waiting"))["X-Batch-Request-Id"]
    failed = BatchRequest.objects.get(pk=done[0])
    failed.status, failed.error_code = Status.FAILED, "server_error"
    failed.save()

    everything = [r["id"] for r in listing().json()["data"]]
    completed = listing("status=completed").json()["data"]
    failures = listing("status=failed,cancelled").json()["data"]

    assert sorted(everything) == sorted(done) and waiting not in everything
    assert [r["id"] for r in completed] == [done[1]]
    assert [(r["id"], r["status"], r["error"]["code"]) for r in failures] == [
        (done[0], "failed", "server_error")
    ]


def test_include_body_adds_the_answers(listing, finished):
    [request_id] = finished(1, "with body")
    plain = listing().json()["data"][0]
    assert plain["response"] is None and plain["response_status"] == 200
    row = listing("include=body").json()["data"][0]
    assert row["id"] == request_id
    assert row["response"]["choices"][0]["message"]["content"] == "echo: with body 0"


def test_newest_last_by_finish_time(listing, finished):
    early = finished(1, "early")
    later = finished(1, "later")
    BatchRequest.objects.filter(pk=early[0]).update(
        finished_at=timezone.now() - timedelta(minutes=5)
    )
    assert [r["id"] for r in listing().json()["data"]] == early + later


def test_a_request_is_listed_once_it_has_settled(listing, finished, settings):
    finished(1, "fresh")
    settings.LIST_SETTLE_SECONDS = 60
    assert listing().json()["data"] == []
    BatchRequest.objects.update(finished_at=timezone.now() - timedelta(seconds=61))
    assert len(listing().json()["data"]) == 1


@pytest.mark.parametrize(
    "query, param",
    [
        ("after=bm9wZQ", "after"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("status=queued", "status"),
        ("after=00000000-0000-4000-8000-000000000000", "after"),  # no such request
    ],
)
def test_bad_query_is_a_400_in_the_openai_shape(listing, query, param):
    response = listing(query)
    assert response.status_code == 400
    error = response.json()["error"]
    assert param in error["message"] or "Invalid cursor" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def listed_by_last_id(listing, query: str) -> tuple[list[str], int]:
    """Every page as OpenAI's lists are walked: `after` is the previous page's `last_id`."""
    seen, after, pages = [], None, 0
    while True:
        page = listing(query + (f"&after={after}" if after else "")).json()
        pages += 1
        seen += [row["id"] for row in page["data"]]
        assert page["last_id"] == (page["data"][-1]["id"] if page["data"] else None)
        after = page["last_id"]
        if not page["has_more"]:
            return seen, pages


def test_after_takes_the_last_id_as_openais_lists_do(listing, finished):
    mine = finished(7, "by id")

    by_id, pages = listed_by_last_id(listing, "limit=3")
    by_cursor, _, _ = all_pages(listing, "limit=3")

    assert by_id == by_cursor and sorted(by_id) == sorted(mine) and pages == 3


def test_rows_finishing_at_one_instant_are_listed_in_one_order_by_id(listing, finished):
    mine = finished(6, "one instant")
    BatchRequest.objects.update(finished_at=timezone.now() - timedelta(seconds=1))

    first, _ = listed_by_last_id(listing, "limit=4")
    again, _ = listed_by_last_id(listing, "limit=5")

    assert first == again == sorted(mine)


def test_after_an_id_of_another_key_is_a_400_not_a_peek(listing, finished, other_key):
    finished(2, "mine")
    [theirs] = finished(1, "theirs", secret=other_key[1])
    response = listing(f"after={theirs}")
    assert response.status_code == 400
    assert theirs in response.json()["error"]["message"]


def test_without_a_valid_key_401(listing):
    response = listing(secret="bp-wrong")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_served_without_v1_too(listing, finished):
    finished(1, "no v1")
    assert len(listing(path="/batch_requests").json()["data"]) == 1


def test_requeued_request_is_listed_again_when_it_finishes_again(listing, finished):
    [request_id] = finished(1, "again")
    _, cursor, _ = all_pages(listing, "")
    # An operator requeues it (only failed or cancelled requests can be).
    BatchRequest.objects.filter(pk=request_id).update(status=Status.FAILED)
    assert services.requests_requeue(request_ids=[request_id]) == 1
    cycle()
    assert [r["id"] for r in listing(f"after={cursor}").json()["data"]] == [request_id]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_sdk_pages_through_the_list_as_the_readme_shows(sdk, settings):
    settings.LIST_SETTLE_SECONDS = 0
    asked = set()
    for i in range(3):
        with pytest.raises(openai.UnprocessableEntityError) as pending:
            sdk.responses.create(model="gpt-4.1-mini", input=f"listed {i}")
        asked.add(pending.value.response.headers["x-batch-request-id"])
    cycle()

    seen = []
    page = sdk.get("/batch_requests", cast_to=object, options={"params": {"limit": 2}})
    while page["data"]:
        seen += [row["id"] for row in page["data"]]
        params = {"limit": 2, "after": page["next_cursor"]}
        page = sdk.get("/batch_requests", cast_to=object, options={"params": params})

    assert sorted(seen) == sorted(asked)


class Listed(openai.BaseModel):
    id: str
    status: str


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_sdks_auto_pagination_walks_every_page_once(sdk, settings):
    settings.LIST_SETTLE_SECONDS = 0
    asked = set()
    for i in range(5):
        with pytest.raises(openai.UnprocessableEntityError) as pending:
            sdk.chat.completions.create(**chat(f"auto-paged {i}"))
        asked.add(pending.value.response.headers["x-batch-request-id"])
    cycle()  # one ingest: all five finish at one instant

    first = sdk.get_api_list(
        "/batch_requests",
        model=Listed,
        page=openai.pagination.SyncCursorPage[Listed],
        options={"params": {"limit": 2}},
    )
    walked = [row.id for row in first]
    pages = list(first.iter_pages())

    assert sorted(walked) == sorted(asked) and len(walked) == 5
    assert [len(page.data) for page in pages] == [2, 2, 1]
    assert {row.status for row in first} == {"completed"}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_node_sdks_auto_pagination_walks_every_page_once(sdk, live_server, api_key, settings):
    node_modules_ensure()
    settings.LIST_SETTLE_SECONDS = 0
    asked = []
    for i in range(5):
        with pytest.raises(openai.UnprocessableEntityError) as pending:
            sdk.chat.completions.create(**chat(f"node auto-paged {i}"))
        asked.append(pending.value.response.headers["x-batch-request-id"])
    cycle()  # one ingest: all five finish at one instant

    out = subprocess.run(
        ["node", "listing.mjs", f"{live_server.url}/v1", api_key[1], "2"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == sorted(asked)  # ties in id order, each once


def test_a_large_answer_in_pieces_is_omitted_from_the_list(
    listing, finished, monkeypatch, settings
):
    from batches_app import outcomes

    settings.RESPONSE_INLINE_BYTES = 100  # every answer is "large"
    monkeypatch.setattr(outcomes, "RESPONSE_CHUNK_CHARS", 64)
    finished(1, "big")
    row = listing("include=body").json()["data"][0]
    assert (row["response"], row["response_omitted"]) == (None, True)
    assert listing().json()["data"][0]["response_omitted"] is False


# An Anthropic or a Gemini caller holds its SDK's own key header only.
KEY_HEADERS = {
    "bearer": lambda secret: {"HTTP_AUTHORIZATION": f"Bearer {secret}"},
    "x-api-key": lambda secret: {"HTTP_X_API_KEY": secret},
    "x-goog-api-key": lambda secret: {"HTTP_X_GOOG_API_KEY": secret},
}


@pytest.mark.parametrize("header", KEY_HEADERS)
def test_the_read_endpoints_take_the_key_in_each_sdks_header(
    client, api_key, other_key, finished, settings, header
):
    settings.LIST_SETTLE_SECONDS = 0
    [mine] = finished(1, "by header")
    finished(1, "not mine", secret=other_key[1])
    auth = KEY_HEADERS[header]

    listed = client.get("/v1/batch_requests", **auth(api_key[1]))
    assert listed.status_code == 200
    assert [row["id"] for row in listed.json()["data"]] == [mine]  # this key's only
    detail = client.get(f"/v1/batch_requests/{mine}", **auth(api_key[1]))
    assert (detail.status_code, detail.json()["id"]) == (200, mine)
    assert client.get(f"/v1/batch_requests/{mine}", **auth(other_key[1])).status_code == 404
    models = client.get("/v1/models", **auth(api_key[1]))
    assert models.status_code == 200 and "gpt-4o-mini" in {m["id"] for m in models.json()["data"]}
    model = client.get("/v1/models/gpt-4o-mini", **auth(api_key[1]))
    assert (model.status_code, model.json()["id"]) == (200, "gpt-4o-mini")

    for path in ("/v1/batch_requests", f"/v1/batch_requests/{mine}", "/v1/models"):
        refused = client.get(path, **auth("bp-wrong"))
        assert refused.status_code == 401, path
        assert refused.json()["error"]["code"] == "invalid_api_key"


def test_the_openai_intake_still_takes_only_a_bearer(post, client, api_key):
    body = json.dumps(chat("bearer only"))
    sent = client.post(
        "/v1/chat/completions", body, content_type="application/json", HTTP_X_API_KEY=api_key[1]
    )
    assert sent.status_code == 401
    assert post("/v1/chat/completions", chat("bearer only")).status_code == 422
