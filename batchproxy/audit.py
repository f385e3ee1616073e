"""Who may act in the admin, and the admin's history (Django's LogEntry) of what they did.

Engine records (batches, requests) are shown read-only: their change form is closed to everyone,
and they change only through actions and dashboard buttons. Those are for users holding the
model's *change* permission ("Can change batch", "Can change batch request"); a view-only
operator sees neither the actions nor the buttons, and is refused if they post them anyway.
"""

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_permission_codename
from django.contrib.contenttypes.models import ContentType
from django.db.models import Model, QuerySet

from batchproxy.utils import batched

LOG_CHUNK = 1000


def may_change(user, model: type[Model]) -> bool:
    """Whether `user` holds `model`'s change permission (what its actions and buttons need)."""
    opts = model._meta
    return user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")


class ChangedByActions:
    """ModelAdmin mixin: actions with `allowed_permissions=("operate",)` are for users who may
    change the model, though its change form stays read-only for all."""

    def has_operate_permission(self, request) -> bool:
        return may_change(request.user, self.model)


def admin_log(*, user, message: str, rows: QuerySet | None = None, model=None) -> int:
    """Write the operator's action to the admin's history; return the entries written.

    Each of `rows` gets an entry, shown on its History page. With no rows (a dashboard button
    acting on no row in particular), one entry on `model`, shown in the admin's recent actions.
    """
    if rows is None:
        LogEntry.objects.create(
            user_id=user.pk,
            content_type=ContentType.objects.get_for_model(model),
            object_repr=message[:200],
            action_flag=CHANGE,
            change_message=message,
        )
        return 1
    written = 0
    for chunk in batched(rows.iterator(chunk_size=LOG_CHUNK), LOG_CHUNK):
        written += len(LogEntry.objects.log_actions(user.pk, chunk, CHANGE, message))
    return written
