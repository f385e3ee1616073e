from django.conf import settings
from rest_framework.authentication import BaseAuthentication

from .models import ApiKey, hash_key


def bearer_token(request) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 256:
        return None
    return token


def api_key_for_hash(key_hash: str, token: str = "") -> ApiKey | None:
    """The active key with this hash; a BATCH_SERVER_API_KEY key gets its row on first use.

    Keys are found by the SHA-256 of the secret through a unique index, so no secret is ever
    compared byte by byte.
    """
    key = ApiKey.objects.filter(key_hash=key_hash).first()
    if key is None and key_hash in settings.ENV_API_KEY_HASHES:
        key, _ = ApiKey.objects.get_or_create(
            key_hash=key_hash,
            defaults={"name": "BATCH_SERVER_API_KEY", "prefix": token[:8], "from_env": True},
        )
    return key if key is not None and key.is_active else None


class ProxyKeyAuthentication(BaseAuthentication):
    """DRF authentication by proxy key; the key itself stands in as the `user`."""

    def authenticate(self, request):
        token = bearer_token(request)
        key = api_key_for_hash(hash_key(token), token) if token else None
        if key is None:
            return None
        return (key, key)

    def authenticate_header(self, request) -> str:
        return "Bearer"
