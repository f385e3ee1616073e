from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularJSONAPIView

from batches_app import views as batches_views
from batches_app.admin import dashboard_urls
from ops_app import views as ops_views
from requests_app import errors, limits, views, views_bedrock
from requests_app.models import ENDPOINTS

intake = views.holding(views.Intake.as_view())
anthropic_intake = views.holding(views.AnthropicIntake.as_view())
gemini = {"endpoint": "/v1beta/models:generateContent"}

# Every endpoint is served with and without /v1: clients of the original proxy set a base URL
# without it.
client_urls = (
    [
        path(f"{prefix}{endpoint}", intake, {"endpoint": f"/v1/{endpoint}"})
        for prefix in ("v1/", "")
        for endpoint in ENDPOINTS
    ]
    + [
        path(f"{prefix}messages", anthropic_intake, {"endpoint": "/v1/messages"})
        for prefix in ("v1/", "")
    ]
    # google-genai puts its API version in every path: v1 by default, v1beta in Google's docs.
    + [
        route
        for version in ("v1", "v1beta")
        for route in (
            path(
                f"{version}/models/<str:model>:generateContent",
                views.holding(views.GeminiIntake.as_view()),
                gemini,
            ),
            path(
                f"{version}/models/<str:model>:streamGenerateContent",
                views.holding(views.GeminiStreamIntake.as_view()),
                gemini,
            ),
        )
    ]
    + [
        route
        for prefix in ("v1/", "")
        for route in (
            path(f"{prefix}batch_requests", views.BatchRequestList.as_view()),
            path(f"{prefix}batch_requests/<uuid:pk>", views.BatchRequestDetail.as_view()),
            path(f"{prefix}models", views.ModelList.as_view()),
            path(f"{prefix}models/<path:model>", views.ModelDetail.as_view()),
            path(f"{prefix}videos/<str:video_id>/content", views.VideoContent.as_view()),
        )
    ]
)

# boto3's bedrock-runtime, with the proxy as its endpoint_url (requests_app/views_bedrock.py).
bedrock_urls = [
    path(f"model/<path:model>/{action}", view.as_view(), {"endpoint": endpoint})
    for action, view, endpoint in (
        ("converse", views_bedrock.BedrockIntake, "/model/converse"),
        ("invoke", views_bedrock.BedrockIntake, "/model/invoke"),
        ("converse-stream", views_bedrock.BedrockStreamRefused, "/model/converse"),
        ("invoke-with-response-stream", views_bedrock.BedrockStreamRefused, "/model/invoke"),
    )
]

# google-genai with vertexai=True posts to `{v1,v1beta1}/publishers/google/models/{model}:
# generateContent` with an API key (Vertex AI express mode), and to `{v}/projects/{project}/
# locations/{location}/publishers/google/models/{model}:generateContent` with a project,
# location and credentials (their bearer token the proxy key; the project and location are the
# caller's and unused). Sent by the first upstream of kind vertex (batch prediction jobs) or
# gemini that lists the model (docs/providers.md).
vertex_urls = [
    re_path(
        rf"^{version}/{place}publishers/google/models/(?P<model>[^/]+):generateContent$",
        views.GeminiIntake.as_view(),
        gemini,
    )
    for version in ("v1", "v1beta1")
    for place in ("", "projects/[^/]+/locations/[^/]+/")
]

urlpatterns = [
    path("", ops_views.front_page, name="front-page"),
    # Ahead of the admin's own login route, which it shadows: sign-ins are throttled.
    path(f"{settings.ADMIN_URL}login/", limits.login_throttled(admin.site.login)),
    # The operator's dashboard, ahead of the admin's catch-all route.
    path(f"{settings.ADMIN_URL}dashboard/", include(dashboard_urls)),
    path(settings.ADMIN_URL, admin.site.urls),
    *client_urls,
    *bedrock_urls,
    *vertex_urls,
    path("webhooks/openai", batches_views.openai_webhook),
    path("healthz", ops_views.healthz),
    path("readyz", ops_views.readyz),
    path("metrics", ops_views.metrics),
    path("v1/openapi.json", SpectacularJSONAPIView.as_view(), name="openapi"),
    re_path(r"^(?!static/).*$", errors.not_found),
]

handler404 = errors.not_found
handler500 = errors.server_error
