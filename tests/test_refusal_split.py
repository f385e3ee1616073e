"""One tenant's bad request does not fail another's (issue 20, item 11): a batch refused
whole at create is bisected until the offending requests stand alone, for every kind of
upstream (tests/kinds.py); the innocent ones are sent once and answered."""

import orjson
import pytest

from batches_app import services
from batches_app.models import Batch
from requests_app.models import BatchRequest

from .test_faults import ticks_until_done

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status


@pytest.fixture
def upstream(kind, settings):
    settings.OPENAI_MAX_RETRIES = 0
    return kind


def test_a_batch_refused_for_one_request_fails_that_request_alone(upstream):
    texts = [f"tenant a {i}" for i in range(6)] + ["tenant b [[refuse]]"]
    for text in texts:
        assert upstream.queue(text).status_code == 422

    ticks_until_done(limit=20)

    requests = {upstream.text_of(orjson.loads(r.body)): r for r in BatchRequest.objects.all()}
    bad = requests.pop("tenant b [[refuse]]")
    assert bad.status == Status.FAILED
    assert "[[refuse]]" in bad.error_message  # the upstream's own words
    for text, request in requests.items():
        assert request.status == Status.COMPLETED, text
        assert upstream.answer_of(orjson.loads(request.response_body)) == f"echo: {text}"
        assert request.attempts == 1  # a refused batch spends no attempt of the innocent
    sent = [custom_id for custom_id, _ in upstream.submissions()]
    assert sorted(sent) == sorted(str(r.pk) for r in requests.values())  # each once, bad never
    assert not Batch.objects.exclude(state=Batch.State.DONE).exists()
    services.files_sweep()  # the refused batches' input files (the poll task's sweep)
    assert not upstream.left_upstream()


def test_a_refusal_that_concerns_every_request_is_not_split(upstream):
    for text in ("a", "b", "c"):
        assert upstream.queue(text).status_code == 422
    upstream.inject("create", 404)  # an unknown model or deployment: no half would fare better
    services.batch_flush(force=True)
    services.batches_advance(force=True)

    assert list(Batch.objects.values_list("state", flat=True)) == [Batch.State.DONE]
    assert set(BatchRequest.objects.values_list("status", "batch", "attempts")) == {
        (Status.QUEUED, None, 1)  # requeued by the usual rules: an attempt spent
    }
    ticks_until_done()
    assert set(BatchRequest.objects.values_list("status", flat=True)) == {Status.COMPLETED}
