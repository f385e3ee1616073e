"""Memory bounded in bytes, not only in rows (issue 20, item 9): token counting, the flush's
reads of request bodies and the list of answers hold a bounded number of bytes at once,
however large the bodies, measured with tracemalloc."""

import json
import tracemalloc

import pytest
from django.utils import timezone

from batches_app import services
from batchproxy.tokens import tokens_count
from requests_app.models import BatchRequest

from .engine import cycle

pytestmark = pytest.mark.django_db
MB = 1024 * 1024
BODY_MB = 2
BODIES = 12  # 24 MB of bodies in all


def peak_of(work) -> tuple[int, object]:
    """The peak of Python's allocations while `work` runs, above what was held before."""
    tracemalloc.start()
    try:
        result = work()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


@pytest.fixture
def large_queued(post, fake_openai):
    """Twelve queued requests of 2 MB each, of a model tiktoken does not know (counted by
    bytes, so that only the reading of the bodies is measured)."""
    for i in range(BODIES):
        text = f"{i} " + "x" * (BODY_MB * MB)
        body = {"model": "house-model", "messages": [{"role": "user", "content": text}]}
        assert post("/v1/chat/completions", body).status_code == 422
    return BatchRequest.objects.filter(status=BatchRequest.Status.QUEUED)


def test_token_counting_holds_a_few_bodies_at_a_time(large_queued, monkeypatch):
    monkeypatch.setattr(services, "PIECE_BYTES", 3 * MB)
    tokens_count(model="house-model", body={})  # loads what it needs once, before measuring

    peak, counted = peak_of(
        lambda: services.tokens_fill(endpoint="/v1/chat/completions", model="house-model")
    )

    assert counted == BODIES
    assert not large_queued.filter(counted_tokens=None).exists()
    # One piece (a body or two) and one body's parse: nothing like the 24 MB of all of them.
    print(f"token counting peak {peak / MB:.1f} MB")
    assert peak < 12 * MB, f"peak {peak / MB:.1f} MB"


def test_bodies_are_read_in_pieces_bounded_in_bytes(large_queued, monkeypatch):
    monkeypatch.setattr(services, "PIECE_BYTES", 5 * MB)

    pieces = list(services.bodies_in_pieces(large_queued))

    assert [pk for piece in pieces for pk, _ in piece] == sorted(
        large_queued.values_list("pk", flat=True)
    )
    assert all(sum(len(body) for _, body in piece) <= 5 * MB for piece in pieces)
    assert len(pieces) == BODIES // 2  # two 2 MB bodies a piece


@pytest.fixture
def large_answers(post, fake_openai, settings):
    """Sixty finished requests of the key, each answered with a 250 KB body (15 MB in all)."""
    settings.LIST_SETTLE_SECONDS = 0
    for i in range(60):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"big {i}"}]}
        assert post("/v1/chat/completions", body).status_code == 422
    cycle()
    answer = json.dumps({"object": "chat.completion", "text": "y" * 250_000})
    done = BatchRequest.objects.filter(status=BatchRequest.Status.COMPLETED)
    assert done.count() == 60
    done.update(response_body=answer, response_bytes=len(answer), finished_at=timezone.now())
    return answer


def test_the_list_with_answers_ends_its_page_at_a_byte_bound(
    client, api_key, large_answers, settings
):
    settings.LIST_MAX_BYTES = 2 * MB
    headers = {"HTTP_AUTHORIZATION": f"Bearer {api_key[1]}"}

    def page(after: str = ""):
        query = "include=body&limit=1000" + (f"&after={after}" if after else "")
        return client.get(f"/v1/batch_requests?{query}", **headers).json()

    peak, first = peak_of(page)
    assert len(first["data"]) == 8  # 8 x 250 KB fit in 2 MB
    assert first["has_more"]
    assert first["data"][0]["response"]["text"] == "y" * 250_000
    print(f"list page peak {peak / MB:.1f} MB")
    assert peak < 16 * MB, f"peak {peak / MB:.1f} MB"  # the page, not the 15 MB of all 60

    seen, cursor = [row["id"] for row in first["data"]], first["next_cursor"]
    while True:
        more = page(cursor)
        seen += [row["id"] for row in more["data"]]
        cursor = more["next_cursor"]
        if not more["has_more"]:
            break
    assert sorted(seen) == sorted(
        str(pk) for pk in BatchRequest.objects.values_list("pk", flat=True)
    )
