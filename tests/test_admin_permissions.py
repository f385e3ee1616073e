"""Who may change what in the admin: every action and dashboard button that changes state asks
for the model's change permission, and is written to the admin's history with who did it.

A view-only staff user is offered none of them, and changes nothing by posting them anyway.
"""

from datetime import timedelta

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse
from django.utils import timezone

from batches_app.models import Batch, QueueLimit
from requests_app.models import ApiKey, BatchRequest, WebhookDelivery, WebhookEndpoint

from .cockpit import chat, send
from .engine import cycle

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status

MODELS = {
    "batch": Batch,
    "batchrequest": BatchRequest,
    "apikey": ApiKey,
    "webhookdelivery": WebhookDelivery,
    "queuelimit": QueueLimit,
}
ACTIONS = {
    "batch": ("cancel_requeue", "cancel_requests", "poll_now"),
    "batchrequest": ("requeue", "retry_failed"),
    "apikey": ("revoke", "rotate"),
    "webhookdelivery": ("resend",),
    "queuelimit": ("forget_learned",),
}
EVERY_ACTION = [(model, action) for model, actions in ACTIONS.items() for action in actions]
BUTTONS = {
    "batchproxy-flush": Batch,
    "batchproxy-poll": Batch,
    "batchproxy-retry-failed": BatchRequest,
}


def changelist(model: str) -> str:
    return reverse(f"admin:{MODELS[model]._meta.app_label}_{model}_changelist")


def staff(django_user_model, name: str, *verbs: str):
    """A staff user (not a superuser) with these permissions on every model above."""
    user = django_user_model.objects.create_user(name, password="unused-pw", is_staff=True)
    codenames = [f"{verb}_{model}" for verb in verbs for model in MODELS]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def viewer(client, django_user_model):
    client.force_login(staff(django_user_model, "viewer", "view"))
    return client


@pytest.fixture
def operator(client, django_user_model):
    client.force_login(staff(django_user_model, "operator", "view", "change"))
    return client


@pytest.fixture
def scene(client, api_key, fake_openai, settings):
    """One row or more of each model an action changes: a request failed for good, a batch
    running upstream, a webhook delivery given up, a learned queue budget."""
    settings.MAX_ATTEMPTS = 1
    send(client, api_key[1], chat("boom [[error:server_error]]"))
    cycle()
    fake_openai.configure(step_seconds=60)
    send(client, api_key[1], chat("still running"))
    cycle()
    assert Batch.objects.filter(state=Batch.State.RUNNING).count() == 1
    endpoint = WebhookEndpoint.objects.create(url="https://example.com/hook", secret="whsec_x")
    WebhookDelivery.objects.create(
        endpoint=endpoint,
        status=WebhookDelivery.Status.FAILED,
        give_up_at=timezone.now() - timedelta(days=1),
    )
    QueueLimit.objects.create(model="gpt-4o-mini", learned_tokens=1000, learned_at=timezone.now())


def state() -> dict:
    """Everything an action could change, to compare before and after."""
    return {
        "batches": list(
            Batch.objects.order_by("pk").values_list("state", "cancel_mode", "next_attempt_at")
        ),
        "requests": list(
            BatchRequest.objects.order_by("pk").values_list("status", "attempts", "batch_id")
        ),
        "keys": list(ApiKey.objects.order_by("pk").values_list("key_hash", "revoked_at")),
        "deliveries": list(WebhookDelivery.objects.values_list("status", "next_attempt_at")),
        "limits": list(QueueLimit.objects.values_list("learned_tokens", flat=True)),
    }


def offered(client, model: str) -> set[str]:
    response = client.get(changelist(model))
    assert response.status_code == 200
    form = response.context["action_form"]  # None when no action at all is offered
    return {name for name, _ in form.fields["action"].choices} if form else set()


def post_action(client, model: str, action: str):
    pks = [str(pk) for pk in MODELS[model].objects.values_list("pk", flat=True)]
    return client.post(changelist(model), {"action": action, "_selected_action": pks})


@pytest.mark.parametrize("model", ACTIONS)
def test_view_only_staff_are_offered_no_action_that_changes_state(scene, viewer, model):
    assert offered(viewer, model).isdisjoint(ACTIONS[model])


@pytest.mark.parametrize("model", ACTIONS)
def test_staff_with_change_permission_are_offered_every_action(scene, operator, model):
    assert offered(operator, model) >= set(ACTIONS[model])


@pytest.mark.parametrize(("model", "action"), EVERY_ACTION)
def test_view_only_staff_posting_an_action_change_nothing(scene, viewer, api_key, model, action):
    before = state()
    response = post_action(viewer, model, action)
    assert response.status_code in (200, 302, 403)
    assert b"copy its secret" not in response.content
    assert state() == before
    assert not LogEntry.objects.exists()


@pytest.mark.parametrize(("model", "action"), EVERY_ACTION)
def test_each_action_by_an_operator_changes_rows_and_is_in_the_history(
    scene, operator, model, action
):
    before = state()
    response = post_action(operator, model, action)
    if action == "rotate":
        assert b"copy its secret" in response.content
    else:
        assert response.status_code == 302
    assert state() != before
    entries = LogEntry.objects.filter(
        user__username="operator",
        content_type=ContentType.objects.get_for_model(MODELS[model]),
        action_flag=CHANGE,
    )
    assert entries.exists()
    assert {e.object_id for e in entries} <= {
        str(pk) for pk in MODELS[model].objects.values_list("pk", flat=True)
    }


def test_dashboard_shows_view_only_staff_no_button(scene, viewer):
    page = viewer.get(reverse("batchproxy-dashboard")).content.decode()
    for marker in ("bp-flush-all", "bp-poll", "bp-retry-failed", "bp-flush-group"):
        assert marker not in page


def test_dashboard_shows_operators_their_buttons(scene, operator):
    page = operator.get(reverse("batchproxy-dashboard")).content.decode()
    for marker in ("bp-flush-all", "bp-poll", "bp-retry-failed"):
        assert marker in page


def test_dashboard_shows_only_the_buttons_of_the_models_one_may_change(
    scene, client, django_user_model
):
    user = staff(django_user_model, "batches-only", "view")
    user.user_permissions.add(Permission.objects.get(codename="change_batch"))
    client.force_login(user)
    page = client.get(reverse("batchproxy-dashboard")).content.decode()
    assert "bp-flush-all" in page
    assert "bp-retry-failed" not in page
    assert client.post(reverse("batchproxy-retry-failed")).status_code == 403


@pytest.mark.parametrize("button", BUTTONS)
def test_view_only_staff_pressing_a_dashboard_button_are_refused(
    scene, client, api_key, viewer, button
):
    send(client, api_key[1], chat("waiting for a flush"))
    before = state()
    assert viewer.post(reverse(button)).status_code == 403
    assert state() == before
    assert not LogEntry.objects.exists()


@pytest.mark.parametrize("button", BUTTONS)
def test_dashboard_buttons_by_an_operator_are_in_the_history(
    scene, client, api_key, operator, button
):
    send(client, api_key[1], chat("waiting for a flush"))
    assert operator.post(reverse(button)).status_code == 302
    entry = LogEntry.objects.get()
    assert entry.user.username == "operator"
    assert entry.content_type == ContentType.objects.get_for_model(BUTTONS[button])
    assert entry.change_message.startswith("Dashboard: ")


# --- django-q2's pages: code execution, for superusers only -------------------------------------


def test_staff_with_every_django_q_permission_cannot_see_or_add_schedules(
    client, django_user_model
):
    from django_q.models import Schedule

    user = django_user_model.objects.create_user("scheduler", password="unused-pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="django_q"))
    client.force_login(user)
    assert "django_q" not in client.get(reverse("admin:index")).content.decode()
    for page in ("schedule", "success", "failure", "ormq"):
        assert client.get(reverse(f"admin:django_q_{page}_changelist")).status_code == 403
    before = Schedule.objects.count()
    response = client.post(
        reverse("admin:django_q_schedule_add"),
        {"func": "builtins.print", "args": "'owned'", "schedule_type": "O", "repeats": "-1"},
    )
    assert response.status_code == 403
    assert Schedule.objects.count() == before


def test_superusers_see_django_q_pages(admin_client):
    for page in ("schedule", "success", "failure"):
        assert admin_client.get(reverse(f"admin:django_q_{page}_changelist")).status_code == 200
