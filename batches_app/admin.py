"""Admin for batches, upstream files and prices, and the operator's dashboard page."""

import json

from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from batchproxy.audit import ChangedByActions, admin_log, may_change
from requests_app.admin import age, duration, id_prefix_range, plural, pretty_json
from requests_app.models import BatchRequest

from . import capacity, dashboard, services, webhooks
from .models import Batch, ModelPrice, OpenAIWebhook, QueueLimit, UpstreamFile
from .usage import usage_tokens

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
class BatchAdmin(ChangedByActions, admin.ModelAdmin):
    # At a glance, each row one line at 1366 px (tests/test_admin_browser.py); upstream ids,
    # files, cancel mode and times are on the batch's page.
    list_display = (
        "short_id",
        "state_shown",
        "upstream",
        "endpoint_shown",
        "model",
        "requests_shown",
        "upstream_counts",
        "age",
        "error_preview",
    )
    list_filter = ("state", "upstream", "upstream_status", "endpoint", "model", "cancel_mode")
    search_fields = ("upstream_id",)  # the real search is get_search_results
    search_help_text = (
        "The start of a proxy batch id, an upstream batch id (batch_…) or a file id (file-…)."
    )
    ordering = ("-created_at",)
    show_full_result_count = False
    list_per_page = 100
    inlines = (UpstreamFileInline,)
    actions = ("cancel_requeue", "cancel_requests", "poll_now")
    readonly_fields = (*(f.name for f in Batch._meta.fields), "requests_link", "usage_tokens")
    readonly_fields += ("errors_pretty", "counts_shown", "took", "outcomes", "times_out_at")

    def get_fields(self, request, obj=None):
        """What applies to this batch's state, in the order an operator reads it."""
        fields = [("id", "state"), ("upstream", "endpoint", "model")]
        fields.append(("request_count", "input_bytes", "counted_tokens"))
        fields.append(("requests_link", "outcomes"))
        if obj.upstream_id or obj.upstream_status:
            fields.append(("upstream_id", "upstream_status", "upstream_created_at"))
        files = [f for f in ("input_file_id", "output_file_id", "error_file_id") if getattr(obj, f)]
        if files:
            fields.append(tuple(files))
        if obj.request_counts:
            fields.append("counts_shown")
        if obj.usage:
            fields.append("usage_tokens")
        if obj.errors:
            fields.append("errors_pretty")
        if obj.cancel_mode:
            fields.append("cancel_mode")
        if obj.upstream_failures and not obj.is_terminal:
            fields.append(("upstream_failures", "next_attempt_at"))
        elif obj.upstream_failures:
            fields.append("upstream_failures")
        if obj.last_error:
            fields.append("last_error")
        if not obj.is_terminal:
            fields.append(("state_since", "times_out_at"))
        if obj.finished_at:
            fields.append(("created_at", "finished_at", "took"))
        else:
            fields.append(("created_at", "updated_at"))
        return fields

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
        found = Q(upstream_id__startswith=term)
        for field in ("input_file_id", "output_file_id", "error_file_id"):
            found |= Q(**{f"{field}__startswith": term})
        if (ids := id_prefix_range(term)) is not None:
            found |= Q(pk__range=ids)
        return queryset.filter(found), False

    @admin.display(description="times out at")
    def times_out_at(self, batch: Batch):
        """When the engine ends the batch if it is still in this state (Batch.times_out_at)."""
        return batch.times_out_at or "-"

    @admin.display(description="id", ordering="id")
    def short_id(self, batch: Batch) -> str:
        return str(batch.id)[:8]

    @admin.display(description="age", ordering="created_at")
    def age(self, batch: Batch) -> str:
        return age(batch.created_at)

    @admin.display(description="state", ordering="state")
    def state_shown(self, batch: Batch) -> str:
        """The proxy's state, and the upstream's where it says more (cancelling, expired)."""
        shown = batch.get_state_display()
        if batch.upstream_status and batch.upstream_status not in ("completed", batch.state):
            shown += f" ({batch.upstream_status})"
        return shown

    @admin.display(description="endpoint", ordering="endpoint")
    def endpoint_shown(self, batch: Batch) -> str:
        return batch.endpoint.removeprefix("/v1/").removeprefix("/v1beta/")

    @admin.display(description="requests", ordering="request_count")
    def requests_shown(self, batch: Batch) -> int:
        return batch.request_count

    @admin.display(description="done/failed")
    def upstream_counts(self, batch: Batch) -> str:
        counts = batch.request_counts or {}
        if not counts:
            return "-"
        return f"{counts.get('completed', 0)}/{counts.get('failed', 0)}"

    @admin.display(description="upstream's counts")
    def counts_shown(self, batch: Batch) -> str:
        counts = batch.request_counts or {}
        parts = [f"{counts[k]} {k}" for k in ("completed", "failed") if k in counts]
        return ", ".join(parts) + f" of {counts.get('total', 0)}"

    @admin.display(description="last error")
    def error_preview(self, batch: Batch) -> str:
        text = batch.last_error
        if not text:
            return "-"
        failures = (
            f"{plural(batch.upstream_failures, 'failure')}: " if batch.upstream_failures else ""
        )
        return failures + text[:ERROR_PREVIEW] + ("…" if len(text) > ERROR_PREVIEW else "")

    @admin.display(description="requests")
    def requests_link(self, batch: Batch):
        url = (
            reverse("admin:requests_app_batchrequest_changelist") + f"?batch__id__exact={batch.pk}"
        )
        now = BatchRequest.objects.filter(batch=batch).count()
        return format_html('<a href="{}">{} in this batch now</a>', url, plural(now, "request"))

    @admin.display(description="their outcomes")
    def outcomes(self, batch: Batch) -> str:
        """The requests' own outcomes here: a batch Done upstream may hold failed requests."""
        rows = (
            BatchRequest.objects.filter(batch=batch)
            .values("status", "error_code")
            .annotate(n=Count("pk"))
            .order_by("status", "error_code")
        )
        parts = [
            f"{row['n']} {row['status']}" + (f" ({row['error_code']})" if row["error_code"] else "")
            for row in rows
        ]
        return ", ".join(parts) or "-"

    @admin.display(description="took")
    def took(self, batch: Batch) -> str:
        return duration(batch.created_at, batch.finished_at)

    @admin.display(description="tokens (upstream usage)")
    def usage_tokens(self, batch: Batch) -> str:
        if not batch.usage:
            return "-"
        tokens_in, tokens_out = usage_tokens(batch.usage)
        return f"{tokens_in} in, {tokens_out} out"

    @admin.display(description="errors")
    def errors_pretty(self, batch: Batch):
        return pretty_json(None if batch.errors is None else json.dumps(batch.errors))

    def _cancel(self, request, queryset, *, requeue: bool) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        cancelled = [pk for pk in ids if services.batch_cancel(batch_id=pk, requeue=requeue)]
        then = "requeued" if requeue else "cancelled"
        rows = Batch.objects.filter(pk__in=cancelled).defer("usage", "errors")
        admin_log(user=request.user, message=f"Cancelled; unfinished requests {then}.", rows=rows)
        self.message_user(
            request,
            f"{len(cancelled)} batches cancelled upstream (their unfinished requests are {then}); "
            f"{len(ids) - len(cancelled)} had already ended.",
        )

    @admin.action(
        description="Cancel selected batches, requeue their unfinished requests",
        permissions=["operate"],
    )
    def cancel_requeue(self, request, queryset) -> None:
        self._cancel(request, queryset, requeue=True)

    @admin.action(
        description="Cancel selected batches and their unfinished requests", permissions=["operate"]
    )
    def cancel_requests(self, request, queryset) -> None:
        self._cancel(request, queryset, requeue=False)

    @admin.action(description="Poll selected batches now", permissions=["operate"])
    def poll_now(self, request, queryset) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        report = dashboard.batches_poll_now(batch_ids=ids)
        rows = Batch.objects.filter(pk__in=ids).defer("usage", "errors")
        admin_log(user=request.user, message="Polled now.", rows=rows)
        level, text = _poll_text(report)
        self.message_user(request, text, level)


def _poll_text(report: services.AdvanceReport) -> tuple[int, str]:
    level = messages.WARNING if report.failures else messages.SUCCESS
    text = (
        f"{report.stepped} running batches polled; {len(report.failures)} upstream errors "
        "(retried later)."
    )
    return level, text


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


class DeletedUpstreamFilter(admin.SimpleListFilter):
    title = "deleted upstream"
    parameter_name = "deleted"

    def lookups(self, request, model_admin):
        return (("yes", "yes"), ("no", "no, still there"))

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        return queryset.filter(deleted_at__isnull=self.value() == "no")


@admin.register(UpstreamFile)
class UpstreamFileAdmin(admin.ModelAdmin):
    # One line a row: ages and a state in words; the exact times are on the file's page.
    list_display = ("file_id", "purpose", "upstream", "batch_link", "size", "age", "file_state")
    list_filter = ("purpose", "batch__upstream", DeletedUpstreamFilter)
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

    @admin.display(description="size", ordering="bytes")
    def size(self, upstream_file: UpstreamFile) -> str:
        return "-" if upstream_file.bytes is None else filesizeformat(upstream_file.bytes)

    @admin.display(description="age", ordering="created_at")
    def age(self, upstream_file: UpstreamFile) -> str:
        return age(upstream_file.created_at)

    @admin.display(description="state")
    def file_state(self, upstream_file: UpstreamFile) -> str:
        if upstream_file.deleted_at:
            return "deleted upstream"
        return "read, still upstream" if upstream_file.ingested_at else "upstream"

    @admin.display(description="batch")
    def batch_link(self, upstream_file: UpstreamFile):
        """The batch's short id and model; its page has the rest."""
        batch = upstream_file.batch
        url = reverse("admin:batches_app_batch_change", args=[upstream_file.batch_id])
        return format_html('<a href="{}">{} {}</a>', url, str(batch.pk)[:8], batch.model)


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

    @admin.action(
        description="Forget the learned budget of selected models", permissions=["change"]
    )
    def forget_learned(self, request, queryset) -> None:
        forgotten = []
        for limit in queryset.exclude(learned_tokens=None):
            capacity.queue_limit_set(
                model=limit.model,
                upstream=limit.upstream,
                tokens=None,
                requests=None,
                forget_learned=True,
            )
            forgotten.append(limit.pk)
        rows = QueueLimit.objects.filter(pk__in=forgotten)
        admin_log(user=request.user, message="Learned budget forgotten.", rows=rows)
        self.message_user(request, f"{len(forgotten)} learned budgets forgotten.", messages.SUCCESS)


# --- The dashboard ----------------------------------------------------------------------------


@staff_member_required
def dashboard_view(request):
    figures = dashboard.dashboard_figures()
    figures["oldest_text"] = age(figures["oldest_queued"])
    for row in figures["queue"]:
        row["age_text"] = age(row["oldest"])
    # Buttons only for those who may press them (the views check again).
    may = {
        "may_change_batches": may_change(request.user, Batch),
        "may_change_requests": may_change(request.user, BatchRequest),
    }
    return TemplateResponse(
        request,
        "admin/batchproxy/dashboard.html",
        {**admin.site.each_context(request), "title": "Dashboard", **figures, **may},
    )


def _operator_action(model):
    """A POST-only dashboard action for staff allowed to change `model`; what it did (the text
    it returns) is told to the operator and written to the admin's history."""

    def decorator(view):
        @staff_member_required
        @require_POST
        def wrapped(request):
            if not may_change(request.user, model):
                raise PermissionDenied
            level, text = view(request)
            messages.add_message(request, level, text)
            admin_log(user=request.user, message=f"Dashboard: {text}", model=model)
            return HttpResponseRedirect(reverse("batchproxy-dashboard"))

        return wrapped

    return decorator


@_operator_action(Batch)
def flush_view(request) -> tuple[int, str]:
    endpoint, model = request.POST.get("endpoint", ""), request.POST.get("model", "")
    report = dashboard.queue_flush_now(endpoint=endpoint, model=model)
    scope = " ".join(filter(None, (endpoint, model))) or "all groups"
    return (
        messages.WARNING if report.failures else messages.SUCCESS,
        f"Flushed {scope}: {report.batches} batches with {report.requests} requests; "
        f"{report.submitted} batches submitted, {len(report.failures)} upstream errors "
        "(retried later).",
    )


@_operator_action(Batch)
def poll_view(request) -> tuple[int, str]:
    return _poll_text(dashboard.batches_poll_now())


@_operator_action(BatchRequest)
def retry_failed_view(request) -> tuple[int, str]:
    retried = dashboard.requests_retry_failed()
    return messages.SUCCESS, f"{retried} failed requests requeued with fresh attempts."


dashboard_urls = [
    path("", dashboard_view, name="batchproxy-dashboard"),
    path("flush", flush_view, name="batchproxy-flush"),
    path("poll", poll_view, name="batchproxy-poll"),
    path("retry-failed", retry_failed_view, name="batchproxy-retry-failed"),
]
