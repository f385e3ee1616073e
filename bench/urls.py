from django.urls import path

from batchproxy.urls import urlpatterns as proxy_urlpatterns

from . import views

urlpatterns = [
    path("bare/insert", views.bare_insert),
    path("bare/fetch", views.bare_fetch),
    *proxy_urlpatterns,
]
