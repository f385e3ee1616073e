"""A fake of Anthropic's Message Batches API, served over real HTTP.

The shapes are the `anthropic` SDK's (types/messages/message_batch*.py): a batch is created
with its requests inline, `processing_status` goes `in_progress` then `ended` after
`step_seconds`, and its results are JSONL at `results_url`, one `{"custom_id", "result"}` per
request, in an order that is not the input's. Standard library only; state in memory.

Markers in a request's text ask for per-request outcomes:
    [[status:400]]   the request is `errored` with that status's Anthropic error type
    [[truncate]]     its result line is cut in half
    [[refuse]]       the create of a batch holding it is refused (HTTP 400)
With `expire=True` a batch ends with its requests after the first `expire_after` `expired`.
Synchronous calls (`POST /v1/messages`, the standard tier: Anthropic has no flex) are answered
at once with the Message a batch would give (`sync_calls` lists their bodies); with `overloaded`
set they are refused, 529 `overloaded_error`, as Anthropic refuses them when short of capacity;
a large `step_seconds` holds batches unfinished meanwhile. `configure(...)` or
`POST /_fake/configure` sets `step_seconds`, `expire_after`, `overloaded`, `timeout_sleep`
(fakes/http.py).
Faults: `inject(operation, 500 | 429 | "timeout" | "disconnect" | "lost_response", times)`
(fakes/http.py).
"""

from __future__ import annotations

import copy
import re
import time
import uuid
from datetime import UTC, datetime

from .http import REFUSAL, REFUSE_MARKER, Call, FakeServer, Reply

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
STATUS_MARKER = re.compile(r"\[\[status:(\d{3})\]\]")


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z") if ts else None


def _error(status: int, message: str) -> dict:
    kind = ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}


def _text(params: dict) -> str:
    parts = []
    for message in params.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [b.get("text", "") for b in content if isinstance(b, dict)]
    return " ".join(parts)


def _result(params: dict) -> dict:
    text = _text(params)
    if marker := STATUS_MARKER.search(text):
        status = int(marker.group(1))
        return {"type": "errored", "error": _error(status, f"Injected {status} for this request.")}
    answer = f"echo: {text}"
    message = {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": params.get("model"),
        "content": [{"type": "text", "text": answer}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": -(-len(text) // 4), "output_tokens": -(-len(answer) // 4)},
    }
    return {"type": "succeeded", "message": message}


class FakeAnthropic(FakeServer):
    routes = (
        ("POST", re.compile(r"/v1/messages/batches"), "create"),
        ("GET", re.compile(r"/v1/messages/batches"), "list"),
        ("GET", re.compile(r"/v1/messages/batches/([^/]+)"), "retrieve"),
        ("POST", re.compile(r"/v1/messages/batches/([^/]+)/cancel"), "cancel"),
        ("GET", re.compile(r"/v1/messages/batches/([^/]+)/results"), "results"),
        ("DELETE", re.compile(r"/v1/messages/batches/([^/]+)"), "delete"),
        ("POST", re.compile(r"/v1/messages"), "message"),
    )

    options = (*FakeServer.options, "expire_after", "overloaded")

    def reset(self) -> None:
        with self._lock:
            super().reset()
            self.overloaded = False
            self._batches: dict[str, dict] = {}
            self._deleted: dict[str, dict] = {}
            self._requests: dict[str, list[dict]] = {}
            self.expire_after: int | None = None
            self.sync_calls: list[dict] = []

    @property
    def batches(self) -> list[dict]:
        with self._lock:
            return [self._view(batch) for batch in self._batches.values()]

    @property
    def history(self) -> list[dict]:
        """Every batch created, deleted ones too, as a client would see it now."""
        with self._lock:
            return [self._view(b) for b in (*self._batches.values(), *self._deleted.values())]

    def submitted(self) -> list[dict]:
        """Every request of every batch created (deleted ones too), in order, each with its
        `batch_id`."""
        with self._lock:
            return [
                copy.deepcopy(r) | {"batch_id": batch_id}
                for batch_id, rs in self._requests.items()
                for r in rs
            ]

    def key_of(self, headers: dict[str, str], query: dict[str, str]) -> str:
        key = headers.get("x-api-key") or headers.get("authorization", "")
        return key.removeprefix("Bearer ")

    def error(self, status: int, message: str) -> Reply:
        return Reply(status, _error(status, message), {"request-id": "req_fake"})

    # -- requests ------------------------------------------------------------------------------

    def _view(self, batch: dict) -> dict:
        """The batch as observed now: ended once `step_seconds` have passed."""
        now = time.time()
        if batch["processing_status"] != "ended" and now - batch["_created"] >= batch["_step"]:
            self._end(batch, now, canceled=batch["processing_status"] == "canceling")
        view = {k: v for k, v in batch.items() if not k.startswith("_")}
        return copy.deepcopy(view)

    def _end(self, batch: dict, now: float, *, canceled: bool) -> None:
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        for number, request in enumerate(self._requests[batch["id"]]):
            if canceled:
                request["result"] = {"type": "canceled"}
            elif batch["_expire_after"] is not None and number >= batch["_expire_after"]:
                request["result"] = {"type": "expired"}
            counts[request["result"]["type"]] += 1
        batch.update(
            processing_status="ended",
            request_counts=counts,
            ended_at=_iso(now),
            results_url=f"{self.url}/v1/messages/batches/{batch['id']}/results",
        )

    def _create(self, body: dict) -> tuple[int, dict]:
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return 400, _error(400, "requests: a non-empty list is required")
        ids = [r.get("custom_id") for r in requests if isinstance(r, dict)]
        if len(set(ids)) != len(requests) or not all(
            isinstance(i, str) and re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i) for i in ids
        ):
            return 400, _error(400, "requests: custom_id must be unique, ^[a-zA-Z0-9_-]{1,64}$")
        if any(REFUSE_MARKER in _text(r.get("params") or {}) for r in requests):
            return 400, _error(400, REFUSAL)
        now = time.time()
        batch_id = f"msgbatch_{uuid.uuid4().hex[:24]}"
        self._requests[batch_id] = [
            {"custom_id": r["custom_id"], "params": r.get("params"), "result": _result(r["params"])}
            for r in requests
        ]
        self._batches[batch_id] = {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "in_progress",
            "request_counts": dict.fromkeys(
                ("processing", "succeeded", "errored", "canceled", "expired"), 0
            )
            | {"processing": len(requests)},
            "created_at": _iso(now),
            "expires_at": _iso(now + 86400),
            "ended_at": None,
            "cancel_initiated_at": None,
            "archived_at": None,
            "results_url": None,
            "_created": now,
            "_step": self.step_seconds,
            "_expire_after": self.expire_after,
        }
        return 200, self._view(self._batches[batch_id])

    def respond(self, call: Call) -> Reply:
        with self._lock:
            status, body = self._answer(call)
        if isinstance(body, list):
            return Reply(status, body, {"request-id": "req_fake"}, "application/binary")
        return Reply(status, body, {"request-id": "req_fake"})

    def _answer(self, call: Call) -> tuple[int, dict | list]:
        operation, query = call.operation, call.query
        if operation == "create":
            return self._create(call.json() or {})
        if operation == "message":
            params = call.json() or {}
            self.sync_calls.append(params)
            if self.overloaded:
                return 529, _error(529, "Overloaded.")
            result = _result(params)
            if result["type"] == "errored":
                error = result["error"]
                status = next(
                    (s for s, t in ERROR_TYPES.items() if t == error["error"]["type"]), 500
                )
                return status, error
            return 200, result["message"]
        if operation == "list":
            found = sorted(self._batches.values(), key=lambda b: -b["_created"])
            if after := query.get("after_id"):
                ids = [b["id"] for b in found]
                found = found[ids.index(after) + 1 :] if after in ids else []
            limit = int(query.get("limit", 20))
            page = [self._view(b) for b in found[:limit]]
            return 200, {
                "data": page,
                "has_more": len(found) > limit,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
            }
        batch = self._batches.get(call.args[0])
        if batch is None:
            return 404, _error(404, f"No batch {call.args[0]}.")
        view = self._view(batch)
        if operation == "retrieve":
            return 200, view
        if operation == "cancel":
            if batch["processing_status"] == "in_progress":
                now = time.time()
                batch.update(processing_status="canceling", cancel_initiated_at=_iso(now))
                self._end(batch, now, canceled=True)
            return 200, self._view(batch)
        if view["processing_status"] != "ended":
            return 400, _error(400, "The batch has not ended yet.")
        if operation == "delete":
            self._deleted[batch["id"]] = self._batches.pop(batch["id"])
            return 200, {"id": batch["id"], "type": "message_batch_deleted"}
        return 200, [
            {"custom_id": r["custom_id"], "result": r["result"]}
            for r in reversed(self._requests[batch["id"]])  # never the input's order
        ]
