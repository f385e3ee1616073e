"""The bare-Django baselines: what Django alone does for the same kind of call.

`bare_insert` parses the body, hashes it and inserts one row; `bare_fetch` hashes the body and
fetches one row by a unique index. No authentication, no validation, no answer logic.
"""

import hashlib

import orjson
from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt

from .models import BareRow


@csrf_exempt
def bare_insert(request):
    body = orjson.loads(request.body)
    row = BareRow.objects.create(
        fingerprint=hashlib.sha256(request.body).hexdigest(),
        model=body["model"],
        body=request.body.decode(),
    )
    return HttpResponse(orjson.dumps({"id": row.pk}), content_type="application/json")


@csrf_exempt
def bare_fetch(request):
    fingerprint = hashlib.sha256(request.body).hexdigest()
    row = BareRow.objects.filter(fingerprint=fingerprint).values("id", "model").first()
    return HttpResponse(orjson.dumps(row), content_type="application/json")
