"""Videos made by the Batch API: their content stays upstream (for a day), and the proxy streams
it from there to the key whose call made the video, and to no other key."""

import re
from collections.abc import Iterator

from batches_app import upstream

from .errors import ClientError
from .models import BatchRequest, Endpoint

VIDEO_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
VARIANTS = ("video", "thumbnail", "spritesheet")


def _not_found(video_id: str) -> ClientError:
    # The same answer whether the video is another key's or no one's: nothing leaks.
    return ClientError(404, f"No video '{video_id[:100]}' for this key.", code="not_found")


def video_owned(*, api_key_id: int, video_id: str) -> bool:
    """Whether one of this key's answered /v1/videos calls made this video."""
    if not VIDEO_ID.fullmatch(video_id):
        return False
    return BatchRequest.objects.filter(
        api_key_id=api_key_id,
        endpoint=Endpoint.VIDEOS,
        status=BatchRequest.Status.COMPLETED,
        response_status=200,
        response_body__contains=f'"id":"{video_id}"',
    ).exists()


def video_content_stream(
    *, api_key_id: int, video_id: str, variant: str
) -> tuple[str, Iterator[bytes]]:
    """The content of a video this key made, as (media type, bytes streamed from upstream).

    Raises ClientError: 404 for a video the key did not make or whose content has expired
    upstream, 400 for an unknown variant, 502 when the upstream fails.
    """
    if variant not in VARIANTS:
        message = f"'variant' is one of {', '.join(VARIANTS)}."
        raise ClientError(400, message, code="invalid_value", param="variant")
    if not video_owned(api_key_id=api_key_id, video_id=video_id):
        raise _not_found(video_id)
    try:
        return upstream.video_content(video_id, variant=variant)
    except upstream.UpstreamError as exc:
        if str(exc).startswith("HTTP 404"):
            message = f"The content of video '{video_id}' is no longer kept upstream (a day)."
            raise ClientError(404, message, code="video_expired") from exc
        message = "The upstream failed to send the video's content; try again."
        raise ClientError(502, message, code="upstream_error") from exc
