"""Admin for batches, upstream files and prices, and the operator's dashboard page."""

import json
import uuid

from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from requests_app.admin import age, pretty_json
from requests_app.models import BatchRequest

from . import capacity, dashboard, services, webhooks
from .models import Batch, FlexModel, ModelPrice, OpenAIWebhook, QueueLimit, UpstreamFile

ERROR_PREVIEW = 80


class UpstreamFileInline(admin.TabularInline):
    model = UpstreamFile
    extra = 0
    can_delete = False
    fields = readonly_fields = ("file_id", "purpose", "bytes", "created_at", "ingested_at")
    readonly_fields += ("deleted_at",)
    fields += ("deleted_at",)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = (
        "short_id",
        "state",
        "upstream",
        "upstream_status",
        "endpoint",
        "model",
        "request_count",
        "upstream_counts",
        "age",
        "upstream_failures",
        "error_preview",
        "cancel_mode",
        "upstream_id",
    )
    list_filter = ("state", "upstream", "upstream_status", "endpoint", "model", "cancel_mode")
    search_fields = ("upstream_id",)  # the real search is get_search_results
    search_help_text = "A proxy batch id, an upstream batch id (batch_…) or a file id (file-…)."
    ordering = ("-created_at",)
    show_full_result_count = False
    list_per_page = 100
    inlines = (UpstreamFileInline,)
    actions = ("cancel_requeue", "cancel_requests", "poll_now")
    readonly_fields = (*(f.name for f in Batch._meta.fields), "requests_link", "usage_tokens")
    readonly_fields += ("errors_pretty",)
    fields = (
        ("id", "state", "cancel_mode"),
        ("upstream", "endpoint", "model"),
        ("request_count", "input_bytes", "counted_tokens", "requests_link"),
        ("upstream_id", "upstream_status", "upstream_created_at"),
        ("input_file_id", "output_file_id", "error_file_id"),
        ("request_counts", "usage_tokens"),
        "errors_pretty",
        ("upstream_failures", "next_attempt_at"),
        "last_error",
        ("create_attempted_at", "created_at", "updated_at", "finished_at"),
    )

    def has_add_permission(self, request) -> bool:
        return False  # batches are made by the flush

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # the engine's record: shown read-only, changed by the actions only

    def changelist_view(self, request, extra_context=None):
        # Whether OpenAI's webhooks arrive, at a glance: without them results wait for a poll.
        last = webhooks.last_webhook_at()
        subtitle = f"Last webhook from OpenAI: {age(last)} ago" if last else "No webhook yet"
        return super().changelist_view(request, (extra_context or {}) | {"subtitle": subtitle})

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # a deleted batch would strand its requests; cancel it instead

    def get_queryset(self, request):
        return super().get_queryset(request).defer("usage", "errors")

    def get_search_results(self, request, queryset, search_term: str):
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(pk=uuid.UUID(term)), False
        except ValueError:
            pass
        files = Q(input_file_id=term) | Q(output_file_id=term) | Q(error_file_id=term)
        return queryset.filter(Q(upstream_id=term) | files), False

    @admin.display(description="id", ordering="id")
    def short_id(self, batch: Batch) -> str:
        return str(batch.id)[:8]

    @admin.display(description="age", ordering="created_at")
    def age(self, batch: Batch) -> str:
        return age(batch.created_at)

    @admin.display(description="upstream done/failed/total")
    def upstream_counts(self, batch: Batch) -> str:
        counts = batch.request_counts or {}
        if not counts:
            return "-"
        return f"{counts.get('completed', 0)}/{counts.get('failed', 0)}/{counts.get('total', 0)}"

    @admin.display(description="last error")
    def error_preview(self, batch: Batch) -> str:
        text = batch.last_error
        return text[:ERROR_PREVIEW] + ("…" if len(text) > ERROR_PREVIEW else "")

    @admin.display(description="requests")
    def requests_link(self, batch: Batch):
        url = (
            reverse("admin:requests_app_batchrequest_changelist") + f"?batch__id__exact={batch.pk}"
        )
        now = BatchRequest.objects.filter(batch=batch).count()
        return format_html('<a href="{}">{} requests in this batch now</a>', url, now)

    @admin.display(description="tokens (upstream usage)")
    def usage_tokens(self, batch: Batch) -> str:
        if not batch.usage:
            return "-"
        tokens_in, tokens_out = dashboard.usage_tokens(batch.usage)
        return f"{tokens_in} in, {tokens_out} out"

    @admin.display(description="errors")
    def errors_pretty(self, batch: Batch):
        return pretty_json(None if batch.errors is None else json.dumps(batch.errors))

    def _cancel(self, request, queryset, *, requeue: bool) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        cancelled = sum(services.batch_cancel(batch_id=pk, requeue=requeue) for pk in ids)
        then = "requeued" if requeue else "cancelled"
        self.message_user(
            request,
            f"{cancelled} batches cancelled upstream (their unfinished requests are {then}); "
            f"{len(ids) - cancelled} had already ended.",
        )

    @admin.action(description="Cancel selected batches, requeue their unfinished requests")
    def cancel_requeue(self, request, queryset) -> None:
        self._cancel(request, queryset, requeue=True)

    @admin.action(description="Cancel selected batches and their unfinished requests")
    def cancel_requests(self, request, queryset) -> None:
        self._cancel(request, queryset, requeue=False)

    @admin.action(description="Poll selected batches now")
    def poll_now(self, request, queryset) -> None:
        report = dashboard.batches_poll_now(batch_ids=list(queryset.values_list("pk", flat=True)))
        _report_poll(self.message_user, request, report)


def _report_poll(message_user, request, report: services.AdvanceReport) -> None:
    level = messages.WARNING if report.failures else messages.SUCCESS
    message_user(
        request,
        f"{report.stepped} running batches polled; {len(report.failures)} upstream errors "
        "(retried later).",
        level,
    )


@admin.register(OpenAIWebhook)
class OpenAIWebhookAdmin(admin.ModelAdmin):
    list_display = ("received_at", "type", "upstream_id", "event_id")
    list_filter = ("type",)
    search_fields = ("upstream_id", "event_id")
    readonly_fields = ("event_id", "type", "upstream_id", "received_at")

    def has_add_permission(self, request) -> bool:
        return False  # recorded as OpenAI sends them

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(UpstreamFile)
class UpstreamFileAdmin(admin.ModelAdmin):
    list_display = ("file_id", "purpose", "upstream", "batch_link", "bytes", "created_at")
    list_display += ("ingested_at", "deleted_at")
    list_filter = ("purpose", "batch__upstream", ("deleted_at", admin.EmptyFieldListFilter))
    list_select_related = ("batch",)
    search_fields = ("=file_id", "=batch__upstream_id")
    ordering = ("-created_at",)
    readonly_fields = ("file_id", "batch", "purpose", "bytes", "created_at", "ingested_at")
    readonly_fields += ("deleted_at",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # what the proxy knows of a file upstream: nothing to edit

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # the row is how the proxy knows a file still exists upstream

    @admin.display(description="upstream", ordering="batch__upstream")
    def upstream(self, upstream_file: UpstreamFile) -> str:
        return upstream_file.batch.upstream

    @admin.display(description="batch")
    def batch_link(self, upstream_file: UpstreamFile):
        url = reverse("admin:batches_app_batch_change", args=[upstream_file.batch_id])
        return format_html('<a href="{}">{}</a>', url, upstream_file.batch)


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ("model", "input_per_million", "output_per_million", "per_image")
    list_display += ("batch_prices", "updated_at")
    list_editable = ("input_per_million", "output_per_million", "per_image")
    search_fields = ("model",)

    @admin.display(description="batch $ / 1M in, out (/ image)")
    def batch_prices(self, price: ModelPrice) -> str:
        half = ModelPrice.BATCH_DISCOUNT
        prices = (price.input_per_million * half, price.output_per_million * half)
        text = ", ".join(f"{p.normalize():f}" for p in prices)
        if price.per_image is not None:
            text += f" ({(price.per_image * half).normalize():f})"
        return text


@admin.register(FlexModel)
class FlexModelAdmin(admin.ModelAdmin):
    """The models each upstream kind serves at its flex tier (batches_app.flex): a request whose
    deadline a batch cannot meet goes to flex only for these, else to the standard tier."""

    list_display = ("model", "kind")
    list_filter = ("kind",)
    search_fields = ("model",)


@admin.register(QueueLimit)
class QueueLimitAdmin(admin.ModelAdmin):
    """Each upstream's enqueued-token limit per model, beside the prices (batches_app.capacity)."""

    list_display = ("upstream", "model", "enqueued_tokens", "queued_requests", "learned")
    list_display += ("tokens_upstream", "waiting")
    list_editable = ("enqueued_tokens", "queued_requests")
    list_filter = ("upstream",)
    search_fields = ("model", "upstream")
    readonly_fields = ("learned", "tokens_upstream", "waiting", "waiting_since", "updated_at")
    actions = ("forget_learned",)

    @admin.display(description="learned budget")
    def learned(self, limit: QueueLimit) -> str:
        if limit.learned_tokens is None:
            return "-"
        stated = f", the upstream said {limit.stated_tokens:,}" if limit.stated_tokens else ""
        return f"{limit.learned_tokens:,} ({age(limit.learned_at)} ago{stated})"

    @admin.display(description="tokens upstream")
    def tokens_upstream(self, limit: QueueLimit) -> str:
        return f"{capacity.queued_upstream(limit.model, limit.upstream)[0]:,}"

    @admin.display(description="tokens waiting")
    def waiting(self, limit: QueueLimit) -> str:
        tokens = capacity.tokens_waiting(limit.model, limit.upstream)
        since = f" (waiting for queue capacity for {age(limit.waiting_since)})"
        return f"{tokens:,}" + (since if limit.waiting_since else "")

    @admin.action(description="Forget the learned budget of selected models")
    def forget_learned(self, request, queryset) -> None:
        forgotten = 0
        for limit in queryset.exclude(learned_tokens=None):
            capacity.queue_limit_set(
                model=limit.model,
                upstream=limit.upstream,
                tokens=None,
                requests=None,
                forget_learned=True,
            )
            forgotten += 1
        self.message_user(request, f"{forgotten} learned budgets forgotten.", messages.SUCCESS)


# --- The dashboard ----------------------------------------------------------------------------


@staff_member_required
def dashboard_view(request):
    figures = dashboard.dashboard_figures()
    figures["oldest_text"] = age(figures["oldest_queued"])
    for row in figures["queue"]:
        row["age_text"] = age(row["oldest"])
    return TemplateResponse(
        request,
        "admin/batchproxy/dashboard.html",
        {**admin.site.each_context(request), "title": "Dashboard", **figures},
    )


def _operator_action(view):
    """A POST-only dashboard action for staff allowed to change batches."""

    @staff_member_required
    @require_POST
    def wrapped(request):
        if not request.user.has_perm("batches_app.change_batch"):
            raise PermissionDenied
        view(request)
        return HttpResponseRedirect(reverse("batchproxy-dashboard"))

    return wrapped


@_operator_action
def flush_view(request) -> None:
    endpoint, model = request.POST.get("endpoint", ""), request.POST.get("model", "")
    report = dashboard.queue_flush_now(endpoint=endpoint, model=model)
    scope = " ".join(filter(None, (endpoint, model))) or "all groups"
    messages.add_message(
        request,
        messages.WARNING if report.failures else messages.SUCCESS,
        f"Flushed {scope}: {report.batches} batches with {report.requests} requests; "
        f"{report.submitted} batches submitted, {len(report.failures)} upstream errors "
        "(retried later).",
    )


@_operator_action
def poll_view(request) -> None:
    report = dashboard.batches_poll_now()
    _report_poll(lambda r, m, level: messages.add_message(r, level, m), request, report)


@_operator_action
def retry_failed_view(request) -> None:
    retried = dashboard.requests_retry_failed()
    messages.success(request, f"{retried} failed requests requeued with fresh attempts.")


dashboard_urls = [
    path("", dashboard_view, name="batchproxy-dashboard"),
    path("flush", flush_view, name="batchproxy-flush"),
    path("poll", poll_view, name="batchproxy-poll"),
    path("retry-failed", retry_failed_view, name="batchproxy-retry-failed"),
]
