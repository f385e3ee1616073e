"""django-q2's admin pages (schedules, tasks, failures, queue), for superusers only.

A Schedule names any importable function, with any arguments, and the scheduler runs it: whoever
may add or edit one runs code on the server, and the failure list's "resubmit" runs a task again.
A tick in a group's permissions must not hand that out, so these pages answer to superusers only,
whatever permissions a staff user holds. They are kept, not removed, because a failed task's
traceback is where an operator looks first. The proxy's own schedules are declared in code and
re-made after every migrate (batches_app/schedules.py).
"""

import django_q.admin  # noqa: F401  (registers django-q2's pages, replaced below)
from django.apps import apps
from django.contrib import admin


class SuperuserOnly:
    """ModelAdmin mixin: nobody but an active superuser sees or touches these pages."""

    def has_module_permission(self, request) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None) -> bool:
        return self.has_module_permission(request)

    def has_add_permission(self, request, *args) -> bool:
        return self.has_module_permission(request) and super().has_add_permission(request, *args)

    def has_change_permission(self, request, obj=None) -> bool:
        return self.has_module_permission(request) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return self.has_module_permission(request) and super().has_delete_permission(request, obj)


for model in apps.get_app_config("django_q").get_models():
    if admin.site.is_registered(model):
        original = type(admin.site.get_model_admin(model))
        admin.site.unregister(model)
        admin.site.register(
            model, type(original.__name__, (SuperuserOnly, original), {"__module__": __name__})
        )
