"""The models a key may see, for `GET /v1/models`: the operator's models and the key's own.

A model is listed for a key when the operator priced it (ModelPrice), gave it a queue limit
(QueueLimit) or named it in an upstream's model list (not a pattern such as `claude-*`), or when
this key has had a batch of it (KeyModel, written by the flush). Another key's model names (a
fine-tuned `ft:...` name says whose it is) are never listed. The list reads those small tables
only: never a request and never a batch, however many there are.
"""

from datetime import datetime

from django.conf import settings

from requests_app.models import BatchRequest

from .models import Batch, KeyModel, ModelPrice, QueueLimit, base_model

# Who `owned_by` names, per upstream kind (Azure serves OpenAI's models).
OWNERS = {"openai": "openai", "azure": "openai", "anthropic": "anthropic", "gemini": "google"}
# A model no configured upstream names is judged by its name: the default upstream serves any.
NAME_OWNERS = (("claude-", "anthropic"), ("gemini-", "google"))
PATTERN = set("*?[")


def models_configured() -> set[str]:
    """The operator's model names: upstreams' lists (not patterns), prices and queue limits."""
    names = {
        name
        for upstream in settings.UPSTREAMS
        for name in upstream.get("models", [])
        if not PATTERN & set(name)
    }
    names.update(ModelPrice.objects.values_list("model", flat=True))
    names.update(QueueLimit.objects.values_list("model", flat=True))
    return names


def models_known(*, api_key_id: int) -> dict[str, datetime | None]:
    """The key's models, with when the key first had a batch of each (None: not yet)."""
    known: dict[str, datetime | None] = dict.fromkeys(models_configured())
    used = KeyModel.objects.filter(api_key_id=api_key_id).values_list("model", "first_used_at")
    known.update(used)
    return dict(sorted(known.items()))


def model_owner(model: str) -> str:
    """`owned_by`: the kind of the configured upstream that names the model, else by name."""
    from .upstreams import upstreams_all  # the upstreams import the SDKs' modules lazily

    for upstream in upstreams_all()[:-1]:  # the last one, the default, serves every name
        if upstream.serves(model):
            return OWNERS.get(upstream.kind, upstream.kind)
    for prefix, owner in NAME_OWNERS:
        if model.startswith(prefix):
            return owner
    return "openai"


def model_object(model: str, first: datetime | None) -> dict:
    """A model in OpenAI's shape (openai.types.Model); `created` is 0 when never sent."""
    created = int(first.timestamp()) if first else 0
    return {"id": model, "object": "model", "created": created, "owned_by": model_owner(model)}


def model_find(model: str, *, api_key_id: int) -> dict | None:
    """The model by its id; a dated snapshot (name-YYYY-MM-DD) of a known model is known."""
    known = models_known(api_key_id=api_key_id)
    for name in (model, base_model(model)):
        if name in known:
            return model_object(model, known[name])
    return None


def key_models_record(*, batch: Batch) -> int:
    """Note, for each key with a request in the new batch, that it has used the batch's model.

    Called when the batch is created upstream (not in the claim, which it would slow).
    """
    keys = BatchRequest.objects.filter(batch=batch).values_list("api_key_id", flat=True)
    # In key order: two flushers of one model insert in the same order, so neither waits for
    # the other's row while holding one the other waits for.
    rows = [
        KeyModel(api_key_id=key_id, model=batch.model, first_used_at=batch.created_at)
        for key_id in sorted(set(keys.distinct().order_by()))
    ]
    return len(KeyModel.objects.bulk_create(rows, ignore_conflicts=True))
