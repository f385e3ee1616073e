import time
from functools import cached_property

from django.conf import settings
from django.utils.functional import SimpleLazyObject
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import NotAuthenticated
from rest_framework.permissions import BasePermission

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
            # An operator chose this secret, maybe a short one: only its last 4 characters are
            # kept to recognise it (a made key's 8 first are a small part of its 46).
            defaults={"name": "BATCH_SERVER_API_KEY", "prefix": token[-4:], "from_env": True},
        )
    return key if key is not None and key.is_active else None


# Key hashes found active lately, with the monotonic time until which they are trusted
# without a lookup. Only the intake's gate reads this (whether the body is worth reading):
# the statement that answers the call checks the key again, so a key revoked meanwhile is still
# refused, at most KEY_TRUST_SECONDS late in reading its bodies. Per process, never negative:
# a wrong key pays one indexed lookup per call, and a key just made works at once. With the
# time, the key's hold_seconds (a change to it applies within KEY_TRUST_SECONDS too).
KEY_TRUST_SECONDS = 60.0
KEY_TRUST_MAX = 10_000
_trusted: dict[str, tuple[float, int | None]] = {}


class ProxyKey:
    """The proxy key a call presents: hashed once, its row looked up at most once, when needed.

    The intake's hot path never needs the row: its one query finds the request joined with its
    key by this hash (`accepts` reads the key's state from that row), and a new call's insert
    selects the key in the same statement. Everything else asks `key` (or `is_authenticated`,
    which DRF's `IsAuthenticated` reads) and pays one indexed lookup.
    """

    def __init__(self, token: str):
        self.token = token
        self.key_hash = hash_key(token)
        self.hold_seconds: int | None = None  # the key's, once `is_trusted` has been asked

    @cached_property
    def key(self) -> ApiKey | None:
        return api_key_for_hash(self.key_hash, self.token)

    @property
    def is_authenticated(self) -> bool:
        return self.key is not None

    def is_trusted(self) -> bool:
        """Whether the key was active at most KEY_TRUST_SECONDS ago: free while it is in this
        process's memory, else one indexed lookup. The intake asks it before reading a byte
        of the body."""
        now = time.monotonic()
        until, self.hold_seconds = _trusted.get(self.key_hash, (0.0, None))
        if until > now:
            return True
        if not self.is_authenticated:
            return False
        if len(_trusted) >= KEY_TRUST_MAX:
            _trusted.clear()  # rare, and only costs each key one lookup again
        self.hold_seconds = self.key.hold_seconds
        _trusted[self.key_hash] = (now + KEY_TRUST_SECONDS, self.hold_seconds)
        return True

    def remembered(self) -> bool:
        """Whether `is_trusted` answers from this process's memory, without a query."""
        return _trusted.get(self.key_hash, (0.0, None))[0] > time.monotonic()

    def accepts(self, row: dict) -> bool:
        """Whether the key's state joined to a request (`api_key__revoked_at`,
        `api_key__from_env`) still lets this caller in."""
        if row["api_key__revoked_at"] is not None:
            return False
        return not row["api_key__from_env"] or self.key_hash in settings.ENV_API_KEY_HASHES


class ProxyKeyAuthentication(BaseAuthentication):
    """DRF authentication by proxy key (`Authorization: Bearer <key>`).

    `request.user` is the `ProxyKey` presented; `request.auth` is its `ApiKey` row, looked up
    lazily (on first use, like Django's own `request.user`), None-like when the key is wrong,
    revoked or gone. No header, no lookup: the permission check answers 401 (`HasActiveKey`,
    or `PresentsKey` where the view checks the key in its own query).
    """

    def authenticate(self, request):
        token = bearer_token(request)
        if token is None:
            return None
        return self.presented(token)

    @staticmethod
    def presented(token: str) -> tuple:
        caller = ProxyKey(token)
        return (caller, SimpleLazyObject(lambda: caller.key))

    def authenticate_header(self, request) -> str:
        return "Bearer"


class ProviderKeyAuthentication(ProxyKeyAuthentication):
    """A provider SDK's own key header (`key_headers`, as in request.META), else a bearer.

    The Anthropic SDK sends `x-api-key` (recent ones a bearer), google-genai `x-goog-api-key`.
    """

    key_headers: tuple[str, ...] = ("HTTP_X_API_KEY", "HTTP_X_GOOG_API_KEY")

    def authenticate(self, request):
        for header in self.key_headers:
            token = request.META.get(header, "").strip()
            if token and len(token) <= 256:
                return self.presented(token)
        return super().authenticate(request)


class AnthropicKeyAuthentication(ProviderKeyAuthentication):
    key_headers = ("HTTP_X_API_KEY",)


class GeminiKeyAuthentication(ProviderKeyAuthentication):
    """`x-goog-api-key` (the Gemini API, Vertex AI express mode), else a bearer: google-genai
    with vertexai=True, a project and credentials sends their access token, which for the
    proxy is the proxy key (`Credentials(token=<proxy key>)`). Either is checked the same way."""

    key_headers = ("HTTP_X_GOOG_API_KEY",)


class HasActiveKey(BasePermission):
    """The default for client endpoints: the key presented is active (one lookup).

    A wrong, revoked or unknown key is 401 exactly like a missing one; DRF would say 403,
    because a key was presented.
    """

    def has_permission(self, request, view) -> bool:
        if request.user is None or not request.user.is_authenticated:
            raise NotAuthenticated
        return True


class PresentsKey(BasePermission):
    """A key was presented; the view checks it itself, in the query that answers the call."""

    def has_permission(self, request, view) -> bool:
        return request.user is not None
