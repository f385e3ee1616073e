"""Admin for client requests and proxy keys: find any request fast, act through the services."""

import json
import uuid
from datetime import timedelta

from django.contrib import admin, messages
from django.contrib.admin.models import DELETION, LogEntry
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from batches_app import catalog, dashboard, services
from batches_app.retention import key_purge
from batches_app.spend import PriceBook, Spend, spend_by_key
from batches_app.templatetags.money import usd
from batchproxy.audit import ChangedByActions, admin_log

from .keys import api_key_create, api_key_revoke, api_key_rotate
from .models import ApiKey, BatchRequest

Status = BatchRequest.Status
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


def id_prefix_range(term: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The ids that start with `term` (as shown: 8 characters, or more, hyphens or not), as a
    range of the primary key, which its index serves on PostgreSQL and SQLite alike."""
    digits = term.lower().replace("-", "")
    if not 0 < len(digits) <= 32 or any(c not in "0123456789abcdef" for c in digits):
        return None
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def duration(start, end) -> str:
    """A duration to the second: 42s, 7m 05s, 3h 02m, 2d 04h."""
    if start is None or end is None:
        return "-"
    seconds = max(int((end - start).total_seconds()), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600:02d}h"


def plural(count: int, noun: str, nouns: str = "") -> str:
    """'1 request', '3 requests'; `nouns` for a plural not made with an s ('batches')."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def left_alone(count: int, why: str) -> str:
    """The end of an action's message: how many selected rows it did not touch, and why."""
    return f"; {count} left alone ({why})." if count else "."


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


def attempts_table(obj: BatchRequest):
    """Each batch the request went in (RequestAttempt rows, oldest first): its upstream id and
    state, and how the request left it. The row of the request's current or last batch takes
    the request's own outcome. Attempts made before rows were kept are only counted."""
    attempts = list(obj.attempt_rows.select_related("batch").order_by("started_at", "pk"))
    rows = [
        _attempt_row(obj, number, attempt.batch, attempt, last=number == len(attempts))
        for number, attempt in enumerate(attempts, 1)
    ]
    if obj.batch_id is not None and obj.batch_id not in {a.batch_id for a in attempts}:
        rows.append(_attempt_row(obj, len(rows) + 1, obj.batch, None, last=True))
    if not rows:
        return "Not sent yet." if obj.attempts == 0 else f"{plural(obj.attempts, 'attempt')}."
    head = (
        "<thead><tr><th>#</th><th>batch</th><th>upstream batch id</th><th>batch state</th>"
        "<th>taken at</th><th>outcome</th><th>error</th></tr></thead>"
    )
    # Every piece is format_html's already: joining them keeps them safe.
    return format_html(
        '<table class="bp-attempts">{}<tbody>{}</tbody></table>',
        mark_safe(head),  # noqa: S308  (a constant)
        mark_safe("".join(rows)),  # noqa: S308
    )


def _attempt_row(obj: BatchRequest, number: int, batch, attempt, *, last: bool) -> str:
    if attempt is not None and attempt.outcome:
        outcome, code, message = attempt.outcome, attempt.error_code, attempt.error_message
        outcome = outcome.capitalize()
    elif last and obj.status != BatchRequest.Status.QUEUED:  # its batch now, or its last one
        outcome, code, message = obj.get_status_display(), obj.error_code, obj.error_message
        if obj.response_status is not None:
            outcome += f" ({obj.response_status})"
    else:  # left that batch, and is queued again (its error says why) or ended since
        queued = obj.status == BatchRequest.Status.QUEUED
        outcome = "Requeued"
        code, message = (obj.error_code, obj.error_message) if queued else ("", "")
    error = f"{code}: {message}" if code else "-"
    if batch is None:  # pruned after BATCH_RETENTION
        link, upstream_id, state = "(deleted)", "-", "-"
    else:
        url = reverse("admin:batches_app_batch_change", args=[batch.pk])
        link = format_html("<a href='{}'>{}</a>", url, str(batch.pk)[:8])
        upstream_id, state = batch.upstream_id or "-", batch.get_state_display()
    taken = attempt.started_at.strftime("%Y-%m-%d %H:%M:%S") if attempt else "-"
    return format_html(
        "<tr>" + "<td>{}</td>" * 7 + "</tr>",
        number,
        link,
        upstream_id,
        state,
        taken,
        outcome,
        error,
    )


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


class ModelFilter(admin.SimpleListFilter):
    """The operator's models that rows use, and `other` for every name a caller chose: a caller
    inventing model names cannot grow this list (issue 20, item 4)."""

    title = "model"
    parameter_name = "model"
    OTHER = "__other__"

    def lookups(self, request, model_admin):
        rows = model_admin.get_queryset(request).filter(model__in=catalog.models_configured())
        used = rows.order_by().values_list("model", flat=True).distinct()
        return [(m, m) for m in sorted(used)] + [(self.OTHER, "other")]

    def queryset(self, request, queryset):
        if self.value() == self.OTHER:
            return queryset.exclude(model__in=catalog.models_configured())
        if self.value():
            return queryset.filter(model=self.value())
        return queryset


class MadeByFilter(admin.SimpleListFilter):
    title = "made by"
    parameter_name = "made_by"

    def lookups(self, request, model_admin):
        return (("env", "the environment"), ("operator", "an operator"))

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        return queryset.filter(from_env=self.value() == "env")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix_shown", "state", "source", "created_at", "revoked_at")
    list_filter = (MadeByFilter, ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "prefix")
    readonly_fields = ("prefix_shown", "state", "source", "created_at", "revoked_at", "usage")
    actions = ("revoke", "rotate", "purge")

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("name", "default_deadline", "hold_seconds")
        fields = [
            "name",
            "default_deadline",
            "hold_seconds",
            "prefix_shown",
            "state",
            "source",
            "created_at",
        ]
        fields += ["revoked_at", "usage"]
        if obj.revoked_at is None:
            fields.remove("revoked_at")
        return fields

    def has_delete_permission(self, request, obj=None) -> bool:
        # A key owns its requests (PROTECT); revoking is how a key is retired.
        return False

    @admin.display(description="key")
    def prefix_shown(self, key: ApiKey) -> str:
        return key.hint

    @admin.display(description="made by", ordering="from_env")
    def source(self, key: ApiKey) -> str:
        if key.from_env:
            return "the environment (BATCH_SERVER_API_KEY)"
        return "an operator (admin or create_api_key)"

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
            f"{usd(spend.spent)} spent, {usd(spend.saved)} saved"
            if spend.priced
            else f"unknown (no price for some of {', '.join(sorted(spend.models))})"
        )
        link = (
            reverse("admin:requests_app_batchrequest_changelist") + f"?api_key__id__exact={key.pk}"
        )
        return format_html(
            '{} stored (<a href="{}">see them</a>): {} waiting, {} completed, {} failed.'
            "<br>Last 30 days: {} tokens in, {} tokens out; {}.",
            plural(figures["total"], "request"),
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

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request, queryset) -> None:
        done = {pk: api_key_revoke(key_id=pk) for pk in queryset.values_list("pk", flat=True)}
        revoked = [pk for pk, one in done.items() if one.revoked]
        cancelled = sum(one.cancelled for one in done.values())
        admin_log(
            user=request.user,
            message="Revoked; its queued requests cancelled.",
            rows=ApiKey.objects.filter(pk__in=revoked),
        )
        again = len(done) - len(revoked)
        self.message_user(
            request,
            f"{plural(len(revoked), 'key')} revoked, "
            f"{plural(cancelled, 'queued request')} cancelled"
            + left_alone(again, "already revoked"),
        )

    @admin.action(
        description="Rotate the selected key (new secret, shown once)", permissions=["change"]
    )
    def rotate(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one key to rotate.", messages.WARNING)
            return None
        try:
            issued = api_key_rotate(key_id=queryset.get().pk)
        except ValueError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return None
        self.log_change(request, issued.key, "Rotated: new secret issued.")
        return secret_page(request, issued.key, issued.secret, "rotated")

    def has_purge_permission(self, request) -> bool:
        # The admin's delete stays off (a key owns its requests); erasing needs the right to
        # delete keys all the same.
        return request.user.has_perm("requests_app.delete_apikey")

    @admin.action(description="Erase selected keys and all their data", permissions=("purge",))
    def purge(self, request, queryset):
        keys = list(queryset)
        if request.POST.get("confirmed") != "yes":
            context = {**self.admin_site.each_context(request), "keys": keys, "title": "Erase"}
            return TemplateResponse(
                request, "admin/requests_app/apikey/purge_confirm.html", context
            )
        for key in keys:
            # Written before the row goes: the history keeps who erased which key.
            LogEntry.objects.log_actions(
                request.user.pk, [key], DELETION, change_message="Erased with all its data."
            )
            report = key_purge(key_id=key.pk)
            level = messages.WARNING if report.files_failed else messages.SUCCESS
            self.message_user(request, " ".join(report.lines()), level)
        return None


@admin.register(BatchRequest)
class BatchRequestAdmin(ChangedByActions, admin.ModelAdmin):
    # What an operator looks for at a glance, each row one line at 1366 px
    # (tests/test_admin_browser.py); endpoint, body and answer are on the request's page.
    list_display = (
        "short_id",
        "status_shown",
        "model",
        "key_name",
        "age",
        "attempts",
        "error_code",
        "batch_link",
    )
    # The upstream is its batch's: a request not yet in a batch has none.
    list_filter = ("status", "batch__upstream", "endpoint", ModelFilter, "api_key")
    list_select_related = ("api_key", "batch")
    search_fields = ("fingerprint",)  # the real search is get_search_results
    search_help_text = (
        "The start of a request id (= custom_id), a fingerprint, a proxy batch id or an upstream "
        "batch id (batch_…)."
    )
    ordering = ("-created_at",)
    show_full_result_count = False
    list_per_page = 100
    actions = ("requeue", "retry_failed")
    change_form_template = "admin/requests_app/batchrequest/change_form.html"
    # The receipt (batches_app.receipts) and the deadline's course (batches_app.tiers).
    receipt_fields = (
        ("tier", "cost_usd", "standard_cost_usd", "saving", "paid_twice_shown"),
        ("deadline", "sync_tier", "sync_attempts", "escalated_at"),
    )
    readonly_fields = (*(f.name for f in BatchRequest._meta.fields), "batch_link", "upstream_batch")
    readonly_fields += ("body_pretty", "response_pretty", "key_link", "waited", "attempt_history")
    readonly_fields += ("saving", "paid_twice_shown")

    def get_fields(self, request, obj=None):
        """What applies to this request's state, in the order an operator reads it."""
        fields = [("id", "status"), ("key_link", "endpoint", "model")]
        fields.append(("attempts", "deferrals", "not_before") if obj.deferrals else "attempts")
        fields.append("attempt_history")
        if obj.response_status is not None:
            fields.append(
                ("response_status", "error_code") if obj.error_code else "response_status"
            )
        elif obj.error_code:
            fields.append("error_code")
        if obj.error_message:
            fields.append("error_message")
        if obj.input_tokens is not None:
            fields.append(("input_tokens", "output_tokens"))
        times = ("created_at", "finished_at", "waited") if obj.finished_at else ("created_at",)
        fields += [times, "fingerprint", "body_bytes", "body_pretty"]
        if obj.response_status is not None:
            fields.append("response_pretty")
        return fields

    def get_fieldsets(self, request, obj=None):
        """The request's fields, then its deadline and receipt when it has either."""
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and (obj.tier or obj.deadline):
            fieldsets = [*fieldsets, ("Deadline and receipt", {"fields": self.receipt_fields})]
        return fieldsets

    def has_add_permission(self, request) -> bool:
        return False  # requests come from clients only

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # the engine's record: shown read-only, changed by the actions only

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # answers are purged after RESULT_RETENTION; requeue or cancel instead

    def get_queryset(self, request):
        # Bodies and answers can be megabytes: lists read only their first characters.
        return super().get_queryset(request).defer("body", "response_body", "error_message")

    def get_urls(self):
        requeue = self.admin_site.admin_view(self.requeue_view)
        name = "requests_app_batchrequest_requeue"
        return [path("<uuid:pk>/requeue/", requeue, name=name), *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        ended = self.get_queryset(request).filter(
            pk=object_id, status__in=(Status.FAILED, Status.CANCELLED)
        )
        may = self.has_operate_permission(request) and ended.exists()
        extra = (extra_context or {}) | {"may_requeue": may}
        return super().change_view(request, object_id, form_url, extra)

    def requeue_view(self, request, pk):
        """The request page's button: the list's requeue action, on this one request."""
        if request.method != "POST" or not self.has_operate_permission(request):
            raise PermissionDenied
        self.requeue(request, self.get_queryset(request).filter(pk=pk))
        return HttpResponseRedirect(reverse("admin:requests_app_batchrequest_change", args=[pk]))

    def get_search_results(self, request, queryset, search_term: str):
        term = search_term.strip()
        if not term:
            return queryset, False
        found = Q(fingerprint__startswith=term) | Q(batch__upstream_id__startswith=term)
        if (ids := id_prefix_range(term)) is not None:
            found |= Q(pk__range=ids) | Q(batch__id__range=ids)
        return queryset.filter(found), False

    @admin.display(description="id", ordering="id")
    def short_id(self, obj: BatchRequest) -> str:
        return str(obj.id)[:8]

    @admin.display(description="age", ordering="created_at")
    def age(self, obj: BatchRequest) -> str:
        return age(obj.created_at)

    @admin.display(description="API key", ordering="api_key__name")
    def key_name(self, obj: BatchRequest) -> str:
        return obj.api_key.name

    @admin.display(description="API key")
    def key_link(self, obj: BatchRequest):
        url = reverse("admin:requests_app_apikey_change", args=[obj.api_key_id])
        return format_html('<a href="{}">{}</a>', url, obj.api_key)

    @admin.display(description="status", ordering="status")
    def status_shown(self, obj: BatchRequest) -> str:
        """The status, with the upstream's HTTP status of the answer when there is one."""
        shown = obj.get_status_display()
        return shown if obj.response_status is None else f"{shown} ({obj.response_status})"

    @admin.display(description="saving (USD)")
    def saving(self, obj: BatchRequest):
        """Against the standard price; negative when paid twice; none for a model with no
        price (never shown as free)."""
        return "-" if obj.saving_usd is None else obj.saving_usd

    @admin.display(description="paid twice")
    def paid_twice_shown(self, obj: BatchRequest) -> str:
        """In words: Django's boolean icon shows a red cross for "no", which reads as a fault."""
        if obj.paid_twice:
            return "yes: its batch line and a synchronous send were both billed"
        return "no"

    @admin.display(description="waited")
    def waited(self, obj: BatchRequest) -> str:
        return duration(obj.created_at, obj.finished_at)

    @admin.display(description="batch")
    def batch_link(self, obj: BatchRequest):
        if obj.batch_id is None:
            return "-"
        url = reverse("admin:batches_app_batch_change", args=[obj.batch_id])
        whole = obj.batch.upstream_id or f"{str(obj.batch_id)[:8]} ({obj.batch.state})"
        # Long upstream ids (batch_ and 32 characters) are cut; the link's title has it whole.
        shown = whole if len(whole) <= 16 else whole[:15] + "…"
        return format_html('<a href="{}" title="{}">{}</a>', url, whole, shown)

    @admin.display(description="upstream batch")
    def upstream_batch(self, obj: BatchRequest) -> str:
        return obj.batch.upstream_id if obj.batch_id else "-"

    @admin.display(description="attempt history")
    def attempt_history(self, obj: BatchRequest):
        return attempts_table(obj)

    @admin.display(description="body")
    def body_pretty(self, obj: BatchRequest):
        return pretty_json(obj.body)

    @admin.display(description="answer")
    def response_pretty(self, obj: BatchRequest):
        if obj.response_chunks:
            # An image answer of megabytes: not rendered in a page.
            return f"{obj.response_bytes} bytes, stored in {obj.response_chunks} pieces"
        return pretty_json(obj.response_body)

    @admin.action(
        description="Requeue selected failed or cancelled requests", permissions=["operate"]
    )
    def requeue(self, request, queryset) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        # What requests_requeue takes: failed or cancelled, of a key not revoked.
        ended = queryset.filter(
            status__in=(Status.FAILED, Status.CANCELLED), api_key__revoked_at=None
        )
        ended = list(ended.values_list("pk", flat=True))
        requeued = services.requests_requeue(request_ids=ended)
        self._log(request, "Requeued with fresh attempts.", ended)
        self.message_user(
            request,
            f"{plural(requeued, 'request')} requeued"
            + left_alone(len(ids) - requeued, "not failed or cancelled, or of a revoked key"),
        )

    @admin.action(description="Retry failed requests among the selected", permissions=["operate"])
    def retry_failed(self, request, queryset) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        failed = queryset.filter(status=Status.FAILED, api_key__revoked_at=None)
        failed = list(failed.values_list("pk", flat=True))
        retried = dashboard.requests_retry_failed(request_ids=failed)
        self._log(request, "Failed request retried with fresh attempts.", failed)
        self.message_user(
            request,
            f"{plural(retried, 'failed request')} requeued"
            + left_alone(len(ids) - retried, "not failed, or of a revoked key"),
        )

    @staticmethod
    def _log(request, message: str, ids) -> None:
        rows = BatchRequest.objects.filter(pk__in=ids).only("id", "endpoint", "model")
        admin_log(user=request.user, message=message, rows=rows)


admin.site.site_header = "batchproxy"
admin.site.site_title = "batchproxy admin"
admin.site.index_title = "Operator's cockpit"
admin.site.index_template = "admin/batchproxy/index.html"
# The index lists every model already; the sidebar took a fifth of a 1366 px screen.
admin.site.enable_nav_sidebar = False
admin.site.site_url = "/"  # "View site": the front page (ops_app.views.front_page)

# The proxy's own pages first, then the rest (users, django-q2's internals), each in Django's
# alphabetical order.
PROXY_APPS = ("requests_app", "batches_app")
_django_app_list = admin.site.get_app_list


def _proxy_apps_first(request, app_label=None):
    apps = _django_app_list(request, app_label)
    return sorted(apps, key=lambda app: app["app_label"] not in PROXY_APPS)


admin.site.get_app_list = _proxy_apps_first

# Completion webhooks have an admin module of their own.
from . import webhook_admin  # noqa: E402, F401
