"""Admin for completion webhooks: endpoints (secret shown once), deliveries with their attempts,
and a resend action."""

from django import forms
from django.contrib import admin
from django.db.models import Count, Q
from django.template.response import TemplateResponse
from django.utils.html import format_html_join

from batchproxy.audit import admin_log

from .models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from .webhooks import WebhookURLError, webhook_deliveries_resend, webhook_url_check


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https")

    class Meta:
        model = WebhookEndpoint
        fields = ("url", "api_key", "include_body", "is_active")

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        try:
            webhook_url_check(url)
        except WebhookURLError as exc:
            raise forms.ValidationError(str(exc)) from None
        return url


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ("url_shown", "api_key", "include_body", "is_active", "pending", "created_at")
    list_filter = ("is_active", "include_body")
    list_select_related = ("api_key",)
    search_fields = ("url", "api_key__name")

    def get_fields(self, request, obj=None):
        # Once made, the URL is shown without its query string (often a token), and not
        # editable: a new URL is a new endpoint, with its own secret.
        if obj is None:
            return super().get_fields(request, obj)
        return ("url_shown", "api_key", "include_body", "is_active")

    def get_readonly_fields(self, request, obj=None):
        return ("url_shown",) if obj is not None else ()

    @admin.display(description="URL", ordering="url")
    def url_shown(self, endpoint: WebhookEndpoint) -> str:
        return endpoint.url_shown

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                pending_count=Count(
                    "deliveries", filter=Q(deliveries__status=WebhookDelivery.Status.PENDING)
                )
            )
        )

    @admin.display(description="deliveries waiting", ordering="pending_count")
    def pending(self, endpoint: WebhookEndpoint) -> int:
        return endpoint.pending_count

    def save_model(self, request, obj: WebhookEndpoint, form, change: bool) -> None:
        if not change:
            obj.secret = WebhookEndpoint.new_secret()
            request._issued_secret = obj.secret
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj: WebhookEndpoint, post_url_continue=None):
        response = TemplateResponse(
            request,
            "admin/requests_app/webhookendpoint/secret.html",
            {
                **admin.site.each_context(request),
                "endpoint": obj,
                "secret": request._issued_secret,
                "title": "Webhook added: copy its signing secret now",
                "opts": WebhookEndpoint._meta,
            },
        )
        response["Cache-Control"] = "no-store"
        return response


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    fields = ("started_at", "duration_ms", "response_status", "error", "response_body")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("-started_at",)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "message_id",
        "endpoint",
        "status",
        "event_count",
        "attempts",
        "next_attempt_at",
        "delivered_at",
        "short_error",
    )
    list_filter = ("status", "endpoint")
    list_select_related = ("endpoint",)
    search_fields = ("id", "endpoint__url", "events__request__id")
    readonly_fields = (
        "message_id",
        "endpoint",
        "status",
        "attempts",
        "created_at",
        "next_attempt_at",
        "give_up_at",
        "delivered_at",
        "last_error",
        "requests",
    )
    fields = readonly_fields
    inlines = (WebhookAttemptInline,)
    actions = ("resend",)

    def has_add_permission(self, request) -> bool:
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(event_count=Count("events"))

    def get_search_results(self, request, queryset, search_term: str):
        # A delivery is found by its webhook-id as the receiver saw it.
        return super().get_search_results(request, queryset, search_term.removeprefix("msg_"))

    @admin.display(description="events", ordering="event_count")
    def event_count(self, delivery: WebhookDelivery) -> int:
        return delivery.event_count

    @admin.display(description="last error")
    def short_error(self, delivery: WebhookDelivery) -> str:
        return delivery.last_error[:80]

    @admin.display(description="events (request: type)")
    def requests(self, delivery: WebhookDelivery):
        rows = delivery.events.order_by("pk").values_list("request_id", "type")[:200]
        return format_html_join("\n", "<div>{}: {}</div>", rows) or "-"

    @admin.action(description="Resend selected deliveries now", permissions=["change"])
    def resend(self, request, queryset) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        count = webhook_deliveries_resend(delivery_ids=ids)
        rows = WebhookDelivery.objects.filter(pk__in=ids)
        admin_log(user=request.user, message="Resend asked for.", rows=rows)
        self.message_user(request, f"{count} deliveries will be sent again on the next run.")
