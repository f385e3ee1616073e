"""The models the proxy knows, for `GET /v1/models`: the deployment's catalogue, not a tenant's.

A model is known when the operator priced it (ModelPrice), gave it a queue limit (QueueLimit),
or a batch of it went upstream (Batch). Batches are few (one per up to 50,000 requests), so
the list costs three small queries however many requests there are. No key's own requests
are read: the list is the same for every key.
"""

from datetime import datetime

from django.db.models import Min

from .models import Batch, ModelPrice, QueueLimit, base_model

OWNER = "openai"  # the proxy serves OpenAI's models; it owns none of its own


def models_known() -> dict[str, datetime | None]:
    """Every known model, with when the proxy first sent a batch of it (None: not yet)."""
    known: dict[str, datetime | None] = dict.fromkeys(
        ModelPrice.objects.values_list("model", flat=True)
    )
    known.update(dict.fromkeys(QueueLimit.objects.values_list("model", flat=True)))
    for model, first in Batch.objects.values_list("model").annotate(first=Min("created_at")):
        known[model] = first
    return dict(sorted(known.items()))


def model_object(model: str, first: datetime | None) -> dict:
    """A model in OpenAI's shape (openai.types.Model); `created` is 0 when never sent."""
    created = int(first.timestamp()) if first else 0
    return {"id": model, "object": "model", "created": created, "owned_by": OWNER}


def model_find(model: str) -> dict | None:
    """The model by its id; a dated snapshot (name-YYYY-MM-DD) of a known model is known."""
    known = models_known()
    for name in (model, base_model(model)):
        if name in known:
            return model_object(model, known[name])
    return None
