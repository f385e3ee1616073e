"""Admin lists stay fast with 100,000 requests: a fixed number of queries, whatever the rows.

The rows are written with bulk_create straight into the tables (the point is the size of the
tables, not how the rows got there); a page shows 100 of them.
"""

import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from batches_app.models import Batch, UpstreamFile
from requests_app.models import BatchRequest

from .conftest import make_key

pytestmark = pytest.mark.django_db
ROWS = 100_000
BATCHES = 200
# Session, user, count(s), the page's rows, and the filters' choices; none of it per row.
MAX_QUERIES = 12


@pytest.fixture
def many_rows(db):
    keys = [make_key(f"team {i}")[0] for i in range(5)]
    now = timezone.now()
    batches = Batch.objects.bulk_create(
        Batch(
            endpoint="/v1/chat/completions",
            model=f"gpt-4o-mini-{i % 3}",
            state=Batch.State.DONE,
            upstream_id=f"batch_{i}",
            request_counts={"total": 500, "completed": 490, "failed": 10},
            usage={"input_tokens": 1000, "output_tokens": 2000},
        )
        for i in range(BATCHES)
    )
    UpstreamFile.objects.bulk_create(
        UpstreamFile(file_id=f"file-{b.pk}", batch=b, purpose="input") for b in batches
    )
    statuses = list(BatchRequest.Status)
    BatchRequest.objects.bulk_create(
        (
            BatchRequest(
                id=uuid.uuid4(),
                api_key=keys[i % len(keys)],
                endpoint="/v1/chat/completions",
                model=f"gpt-4o-mini-{i % 3}",
                body='{"messages":[{"content":"' + "x" * 300 + '","role":"user"}]}',
                body_bytes=330,
                fingerprint=f"{i:064x}",
                status=statuses[i % len(statuses)],
                batch=batches[i % BATCHES],
                response_body='{"usage":{"prompt_tokens":5}}',
                error_code="server_error" if i % 7 == 0 else "",
                created_at=now,
            )
            for i in range(ROWS)
        ),
        batch_size=5000,
    )


def test_changelists_take_a_fixed_number_of_queries(
    admin_client, many_rows, django_assert_max_num_queries
):
    """One test for every list, so that the 100,000 rows are written once."""
    pages = [
        (reverse("admin:requests_app_batchrequest_changelist"), {}),
        # Batch 7's requests are all completed (request i is in batch i % 200, status i % 5).
        (
            reverse("admin:requests_app_batchrequest_changelist"),
            {"status__exact": "completed", "q": "batch_7"},
        ),
        (reverse("admin:requests_app_batchrequest_changelist"), {"model": "gpt-4o-mini-1"}),
        (reverse("admin:batches_app_batch_changelist"), {}),
        (reverse("admin:batches_app_upstreamfile_changelist"), {}),
        (reverse("admin:requests_app_apikey_changelist"), {}),
    ]
    for url, query in pages:
        with django_assert_max_num_queries(MAX_QUERIES):
            response = admin_client.get(url, query)
        assert response.status_code == 200
        assert len(response.context["cl"].result_list) > 0, (url, query)
