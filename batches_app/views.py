"""The inbound webhook endpoint: a thin caller of `webhooks.webhook_receive`."""

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from requests_app.errors import error_response, json_response

from .webhooks import WebhookRefused, webhook_receive


@csrf_exempt  # signed by OpenAI, not by a browser session
@require_POST
def openai_webhook(request: HttpRequest) -> HttpResponse:
    try:
        done = webhook_receive(payload=request.body, headers=request.headers)
    except WebhookRefused as exc:
        return error_response(400, str(exc), code="invalid_webhook")
    return json_response({"ok": True, "done": done})
