"""Admin for client requests and proxy keys: find any request fast, act through the services."""

import json
import uuid
from datetime import timedelta

from django.contrib import admin, messages
from django.db.models import Count, Q
from django.db.models.functions import Substr
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from batches_app import dashboard, services
from batches_app.spend import PriceBook, Spend, spend_by_key

from .keys import api_key_create, api_key_revoke, api_key_rotate
from .models import ApiKey, BatchRequest

PREVIEW_CHARS = 80
DETAIL_CHARS = 100_000


def age(since) -> str:
    """A short human age: 42s, 7m, 3h, 2d."""
    if since is None:
        return "-"
    seconds = max(int((timezone.now() - since).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def pretty_json(text: str | None):
    """JSON text indented in a <pre>, cut at DETAIL_CHARS so a huge body cannot stall the page."""
    if text is None:
        return "-"
    try:
        shown = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        shown = text
    if len(shown) > DETAIL_CHARS:
        shown = shown[:DETAIL_CHARS] + f"\n… ({len(shown) - DETAIL_CHARS} more characters)"
    return format_html('<pre style="white-space: pre-wrap; max-height: 40em">{}</pre>', shown)


def secret_page(request, key: ApiKey, secret: str, verb: str) -> TemplateResponse:
    """The one page that ever shows a secret; never cached."""
    response = TemplateResponse(
        request,
        "admin/requests_app/apikey/secret.html",
        {
            **admin.site.each_context(request),
            "key": key,
            "secret": secret,
            "verb": verb,
            "title": f"Key {verb}: copy its secret now",
            "opts": ApiKey._meta,
        },
    )
    response["Cache-Control"] = "no-store"
    return response


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix_shown", "state", "from_env", "created_at", "revoked_at")
    list_filter = ("from_env", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "prefix")
    readonly_fields = ("prefix_shown", "state", "from_env", "created_at", "revoked_at", "usage")
    actions = ("revoke", "rotate")

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("name", "default_deadline")
        return (
            *("name", "default_deadline", "prefix_shown", "state", "from_env"),
            *("created_at", "revoked_at", "usage"),
        )

    def has_delete_permission(self, request, obj=None) -> bool:
        # A key owns its requests (PROTECT); revoking is how a key is retired.
        return False

    @admin.display(description="key")
    def prefix_shown(self, key: ApiKey) -> str:
        return key.hint

    @admin.display(description="state")
    def state(self, key: ApiKey) -> str:
        if key.revoked_at:
            return "revoked"
        return "active" if key.is_active else "inactive (no longer in BATCH_SERVER_API_KEY)"

    @admin.display(description="usage")
    def usage(self, key: ApiKey):
        figures = BatchRequest.objects.filter(api_key=key).aggregate(
            total=Count("pk"),
            waiting=Count("pk", filter=Q(status__in=BatchRequest.PENDING)),
            completed=Count("pk", filter=Q(status=BatchRequest.Status.COMPLETED)),
            failed=Count("pk", filter=Q(status=BatchRequest.Status.FAILED)),
        )
        month = timezone.now() - timedelta(days=30)
        spends = spend_by_key(since=month, book=PriceBook(), api_key_id=key.pk)
        spend = spends[0] if spends else Spend(str(key))
        money = (
            f"${spend.spent:.4f} spent, ${spend.saved:.4f} saved"
            if spend.priced
            else f"unknown (no price for some of {', '.join(sorted(spend.models))})"
        )
        link = (
            reverse("admin:requests_app_batchrequest_changelist") + f"?api_key__id__exact={key.pk}"
        )
        return format_html(
            '{} requests stored (<a href="{}">see them</a>): {} waiting, {} completed, {} failed.'
            "<br>Last 30 days: {} tokens in, {} tokens out; {}.",
            figures["total"],
            link,
            figures["waiting"],
            figures["completed"],
            figures["failed"],
            spend.tokens_in,
            spend.tokens_out,
            money,
        )

    def save_model(self, request, obj: ApiKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        issued = api_key_create(name=obj.name)
        obj.pk, obj.prefix, obj.key_hash = issued.key.pk, issued.key.prefix, issued.key.key_hash
        obj.created_at = issued.key.created_at
        request._issued_secret = issued.secret

    def response_add(self, request, obj: ApiKey, post_url_continue=None):
        return secret_page(request, obj, request._issued_secret, "created")

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset) -> None:
        revoked = sum(api_key_revoke(key_id=pk) for pk in queryset.values_list("pk", flat=True))
        already = queryset.count() - revoked
        self.message_user(request, f"{revoked} keys revoked; {already} were already revoked.")

    @admin.action(description="Rotate the selected key (new secret, shown once)")
    def rotate(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one key to rotate.", messages.WARNING)
            return None
        try:
            issued = api_key_rotate(key_id=queryset.get().pk)
        except ValueError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return None
        return secret_page(request, issued.key, issued.secret, "rotated")


@admin.register(BatchRequest)
class BatchRequestAdmin(admin.ModelAdmin):
    # What an operator looks for first comes first: at 1366 px these fit without scrolling
    # (tests/test_admin_browser.py); the rest may scroll.
    list_display = (
        "short_id",
        "status",
        "model",
        "api_key",
        "age",
        "error_code",
        "batch_link",
        "attempts",
        "response_status",
        "endpoint",
        "body_preview",
    )
    # The upstream is its batch's: a request not yet in a batch has none.
    list_filter = ("status", "batch__upstream", "endpoint", "model", "api_key")
    list_select_related = ("api_key", "batch")
    search_fields = ("fingerprint",)  # the real search is get_search_results
    search_help_text = "A request id (= custom_id), fingerprint, or upstream batch id (batch_…)."
    ordering = ("-created_at",)
    show_full_result_count = False
    list_per_page = 100
    actions = ("requeue", "retry_failed")
    main_fields = (
        ("id", "status"),
        ("api_key", "endpoint", "model"),
        ("attempts", "deferrals", "not_before"),
        ("batch_link", "upstream_batch"),
        ("response_status", "error_code"),
        "error_message",
        ("input_tokens", "output_tokens"),
        ("created_at", "updated_at", "finished_at"),
        "fingerprint",
        "body_bytes",
        "body_pretty",
        "response_pretty",
    )
    # The receipt (batches_app.receipts) and the deadline's course (batches_app.tiers).
    receipt_fields = (
        ("tier", "cost_usd", "standard_cost_usd", "paid_twice"),
        ("deadline", "sync_tier", "sync_attempts", "escalated_at"),
    )
    fieldsets = (
        (None, {"fields": main_fields}),
        ("Deadline and receipt", {"fields": receipt_fields}),
    )
    readonly_fields = (*(f.name for f in BatchRequest._meta.fields), "batch_link", "upstream_batch")
    readonly_fields += ("body_pretty", "response_pretty")

    def has_add_permission(self, request) -> bool:
        return False  # requests come from clients only

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # the engine's record: shown read-only, changed by the actions only

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # answers are purged after RESULT_RETENTION; requeue or cancel instead

    def get_queryset(self, request):
        # Bodies and answers can be megabytes: lists read only their first characters.
        return (
            super()
            .get_queryset(request)
            .defer("body", "response_body", "error_message")
            .annotate(body_head=Substr("body", 1, PREVIEW_CHARS))
        )

    def get_search_results(self, request, queryset, search_term: str):
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            pk = uuid.UUID(term)
        except ValueError:
            return queryset.filter(Q(fingerprint=term) | Q(batch__upstream_id=term)), False
        return queryset.filter(Q(pk=pk) | Q(batch_id=pk)), False

    @admin.display(description="id", ordering="id")
    def short_id(self, obj: BatchRequest) -> str:
        return str(obj.id)[:8]

    @admin.display(description="age", ordering="created_at")
    def age(self, obj: BatchRequest) -> str:
        return age(obj.created_at)

    @admin.display(description="batch")
    def batch_link(self, obj: BatchRequest):
        if obj.batch_id is None:
            return "-"
        url = reverse("admin:batches_app_batch_change", args=[obj.batch_id])
        return format_html('<a href="{}">{}</a>', url, obj.batch.upstream_id or obj.batch.state)

    @admin.display(description="upstream batch")
    def upstream_batch(self, obj: BatchRequest) -> str:
        return obj.batch.upstream_id if obj.batch_id else "-"

    @admin.display(description="body")
    def body_preview(self, obj: BatchRequest) -> str:
        head = getattr(obj, "body_head", "") or ""
        return head + ("…" if obj.body_bytes > len(head) else "")

    @admin.display(description="body")
    def body_pretty(self, obj: BatchRequest):
        return pretty_json(obj.body)

    @admin.display(description="answer")
    def response_pretty(self, obj: BatchRequest):
        if obj.response_chunks:
            # An image answer of megabytes: not rendered in a page.
            return f"{obj.response_bytes} bytes, stored in {obj.response_chunks} pieces"
        return pretty_json(obj.response_body)

    @admin.action(description="Requeue selected failed or cancelled requests")
    def requeue(self, request, queryset) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        requeued = services.requests_requeue(request_ids=ids)
        self.message_user(
            request,
            f"{requeued} requests requeued; {len(ids) - requeued} were not failed or cancelled.",
        )

    @admin.action(description="Retry failed requests among the selected")
    def retry_failed(self, request, queryset) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        retried = dashboard.requests_retry_failed(request_ids=ids)
        self.message_user(
            request, f"{retried} failed requests requeued; {len(ids) - retried} were not failed."
        )


admin.site.site_header = "batchproxy"
admin.site.site_title = "batchproxy admin"
admin.site.index_title = "Operator's cockpit"
admin.site.index_template = "admin/batchproxy/index.html"
# The index lists every model already; the sidebar took a fifth of a 1366 px screen.
admin.site.enable_nav_sidebar = False
admin.site.site_url = "/"  # "View site": the front page (ops_app.views.front_page)

# Completion webhooks have an admin module of their own.
from . import webhook_admin  # noqa: E402, F401
