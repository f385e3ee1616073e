"""Proxy keys made by operators: create, revoke, rotate.

A secret is returned once, to be shown once; only its SHA-256 is stored. Keys from
BATCH_SERVER_API_KEY live in the environment: they can be revoked here but not rotated.
"""

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from .models import ApiKey, BatchRequest, WebhookEndpoint, hash_key
from .webhooks import webhook_events_record

PREFIX_LENGTH = 8


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: ApiKey
    secret: str


def api_key_create(*, name: str) -> IssuedKey:
    secret = ApiKey.new_secret()
    key = ApiKey.objects.create(
        name=name.strip() or "unnamed",
        prefix=secret[:PREFIX_LENGTH],
        key_hash=hash_key(secret),
    )
    return IssuedKey(key, secret)


@dataclass(frozen=True, slots=True)
class Revocation:
    revoked: bool  # False when it was already revoked (or does not exist)
    cancelled: int  # its queued requests cancelled now

    def __bool__(self) -> bool:
        return self.revoked


REVOKED_MESSAGE = "The proxy key was revoked before this request was sent to the Batch API."


def api_key_revoke(*, key_id: int) -> Revocation:
    """Revoke a key at once, and cancel what it still has queued.

    In one transaction:
    1. Mark the key revoked: its callers get 401 from now on, for old requests too.
    2. Turn off the webhook endpoints of this key: nothing more of it reaches its receivers.
    3. Cancel its queued requests (not yet in a batch): they are never sent upstream. Those
       already sent run to their end upstream (cancelling their batch would cancel other keys'
       requests too); their answers are stored but served to no one, the key being revoked,
       and purged with the other answers after RESULT_RETENTION.
    Revoking again revokes nothing but cancels any request queued since.
    """
    now = timezone.now()
    with transaction.atomic():
        revoked = ApiKey.objects.filter(pk=key_id, revoked_at=None).update(revoked_at=now)
        WebhookEndpoint.objects.filter(api_key_id=key_id).update(is_active=False)
        # Compare-and-set on the status: a flush that claimed a request first keeps it.
        cancelled = BatchRequest.objects.filter(
            api_key_id=key_id, status=BatchRequest.Status.QUEUED
        ).update(
            status=BatchRequest.Status.CANCELLED,
            error_code="key_revoked",
            error_message=REVOKED_MESSAGE,
            finished_at=now,
            updated_at=now,
        )
        if cancelled:
            # Endpoints of every key (the operator's) hear of it, like any other cancel.
            webhook_events_record(
                requests=BatchRequest.objects.filter(
                    api_key_id=key_id, error_code="key_revoked", finished_at=now
                )
            )
    return Revocation(bool(revoked), cancelled)


def api_key_rotate(*, key_id: int) -> IssuedKey:
    """Give a key a new secret; the old one stops working now.

    The key row (the tenant) stays, so its requests, answers and figures stay with it.
    """
    with transaction.atomic():
        key = ApiKey.objects.select_for_update().get(pk=key_id)
        if key.from_env:
            raise ValueError(
                "A BATCH_SERVER_API_KEY key lives in the environment: change it there."
            )
        if key.revoked_at is not None:
            raise ValueError("A revoked key cannot be rotated: create a new key.")
        secret = ApiKey.new_secret()
        key.prefix, key.key_hash = secret[:PREFIX_LENGTH], hash_key(secret)
        key.save(update_fields=["prefix", "key_hash"])
    return IssuedKey(key, secret)
