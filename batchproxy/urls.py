from django.conf import settings
from django.contrib import admin
from django.urls import path, re_path

from requests_app import errors, views
from requests_app.models import ENDPOINTS

# Every endpoint is served with and without /v1: clients of the original proxy set a base URL
# without it.
client_urls = [
    path(f"{prefix}{endpoint}", views.intake, {"endpoint": f"/v1/{endpoint}"})
    for prefix in ("v1/", "")
    for endpoint in ENDPOINTS
] + [
    path(f"{prefix}batch_requests/<uuid:pk>", views.BatchRequestDetail.as_view())
    for prefix in ("v1/", "")
]

urlpatterns = [
    path(settings.ADMIN_URL, admin.site.urls),
    *client_urls,
    re_path(r"^(?!static/).*$", errors.not_found),
]

handler404 = errors.not_found
handler500 = errors.server_error
