"""The kinds of upstream, as the engine's reliability tests drive them (issue 16).

The engine is one for every kind (STYLE.md rule 6), so tests/test_crash.py and
tests/test_faults.py run once per kind: the `kind` fixture (tests/conftest.py) hands a test one
`Kind`, which knows how a caller queues a request of that kind through the proxy, which fake
answers it, the fake's name for each of the engine's upstream calls, and what exists upstream.

The engine's upstream calls (`base.Transport`), by the names the tests use:
    upload      upload_file                 create      create_batch, create_inline
    retrieve    retrieve_batch (a poll)     read        iter_file_lines (the results)
    delete      delete_file (the results)   cancel      cancel_batch
    find_batch  find_batch (after an interrupted create)
    find_files  find_files (after an interrupted upload)
A kind whose upstream never makes a call (Anthropic uploads nothing) has no name for it, and a
test of that call is not generated for it (`cases`).
"""

import json
from collections.abc import Callable, Iterable

Operations = dict[str, str]  # the engine's call -> the fake's operation

OPENAI_OPERATIONS: Operations = {
    "upload": "upload",
    "create": "create",
    "retrieve": "retrieve",
    "read": "content",
    "delete": "delete",
    "cancel": "cancel",
    "find_batch": "list",
    "find_files": "list_files",
}


class Kind:
    """One kind of upstream behind its fake. Subclasses say how; see the module's docstring."""

    name: str
    upstream: str  # its name in settings.UPSTREAMS; "openai" is the default upstream
    model: str
    operations: Operations
    fake_fixture: str  # the fixture (tests/conftest.py) of its fake

    def __init__(self, fake, *, client=None, secret: str = ""):
        self.fake = fake
        self.client, self.secret = client, secret

    def env(self) -> dict[str, str]:
        """The UPSTREAM_* variables that route this kind's model to its fake."""
        return {}

    def configure(self, settings, monkeypatch) -> None:
        """Route the model to the fake, in this process and (through the environment) in
        worker processes."""
        configure_upstreams([self], settings, monkeypatch)

    # -- the caller's side ---------------------------------------------------------------------

    def queue(self, text: str):
        """The caller's call for this text, through the proxy (the Django test client)."""
        raise NotImplementedError

    def text_of(self, body: dict) -> str:
        """The prompt of a stored request body."""
        raise NotImplementedError

    def answer_of(self, response: dict) -> str:
        """The answer's text in a stored response body."""
        raise NotImplementedError

    # -- the fake's side -----------------------------------------------------------------------

    def inject(self, operation: str, fault, times: int = 1) -> None:
        self.fake.inject(self.operations[operation], fault, times=times)

    def calls(self, operation: str) -> list[str]:
        """The paths of the fake's calls of one of the engine's calls, in order."""
        return [path for op, path in self.fake.calls if op == self.operations[operation]]

    def called(self, operation: str, upstream_id: str) -> bool:
        """Whether the engine made this call for this upstream batch or file."""
        return any(upstream_id.rsplit("/", 1)[-1] in path for path in self.calls(operation))

    def hold_timeouts(self, seconds: float) -> None:
        """How long an injected "timeout" holds a call before doing it."""
        self.fake.timeout_sleep = seconds

    def run_for(self, seconds: float) -> None:
        """Batches created from now on take this long upstream."""
        self.fake.step_seconds = seconds

    def expire_after(self, requests: int | None) -> None:
        """Batches created from now on expire with only their first `requests` answered."""
        self.fake.expire_after = requests

    def upstream_batches(self) -> dict[str, str]:
        """Every batch created upstream (deleted ones too): its id -> its status, in OpenAI's
        words (`in_progress`, `completed`, `cancelled`, `expired`, `failed`)."""
        raise NotImplementedError

    def submissions(self) -> list[tuple[str, str]]:
        """(custom id, upstream batch id) of every request sent upstream, in order."""
        raise NotImplementedError

    def sent(self) -> list[dict]:
        """The body of every request sent upstream, in order."""
        raise NotImplementedError

    def files(self) -> list[str]:
        """The ids of the files upstream now."""
        return []

    def left_upstream(self) -> list[str]:
        """What the proxy should have deleted upstream and has not."""
        return self.files()

    def assert_exercised(self) -> None:
        """The test really drove this kind: its fake got the engine's calls."""
        assert any(op in self.operations.values() for op, _ in self.fake.calls), (
            f"no call reached the {self.name} fake"
        )


class OpenAI(Kind):
    name = upstream = "openai"
    model = "gpt-4o-mini"
    key = "sk-upstream-test-secret"
    operations = OPENAI_OPERATIONS
    fake_fixture = "fake_openai"
    prefix = "/v1"

    def queue(self, text: str):
        body = {"model": self.model, "messages": [{"role": "user", "content": text}]}
        return self.client.post(
            "/v1/chat/completions",
            json.dumps(body),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {self.secret}",
        )

    def text_of(self, body: dict) -> str:
        return body["messages"][0]["content"]

    def answer_of(self, response: dict) -> str:
        return response["choices"][0]["message"]["content"]

    def hold_timeouts(self, seconds: float) -> None:
        self.fake.configure(timeout_sleep=seconds, retry_after=0)

    def run_for(self, seconds: float) -> None:
        self.fake.configure(step_seconds=seconds)

    def expire_after(self, requests: int | None) -> None:
        self.fake.configure(expire_after_lines=requests)

    def upstream_batches(self) -> dict[str, str]:
        return {batch_id: batch["status"] for batch_id, batch in self.fake.batches.items()}

    def submissions(self) -> list[tuple[str, str]]:
        return [(line["custom_id"], line["batch_id"]) for line in self.fake.submitted_lines()]

    def sent(self) -> list[dict]:
        return [line["body"] for line in self.fake.submitted_lines()]

    def files(self) -> list[str]:
        return list(self.fake.files)

    def assert_exercised(self) -> None:
        super().assert_exercised()
        paths = [path for _, path in self.fake.calls if not path.startswith("/_fake")]
        assert all(path.startswith(self.prefix) for path in paths), (
            f"a call missed the {self.name} upstream"
        )


class Azure(OpenAI):
    """The fake OpenAI serves Azure's `/openai/...` form too; the model is the name of a
    Global-Batch deployment."""

    name, upstream = "azure", "azure-test"
    model = "gpt-4o-mini-global-batch"
    key = "azure-upstream-test-secret"
    prefix = "/openai"

    def env(self) -> dict[str, str]:
        return {
            "UPSTREAM_AZURE_TEST_KIND": "azure",
            "UPSTREAM_AZURE_TEST_BASE_URL": self.fake.azure_endpoint,
            "UPSTREAM_AZURE_TEST_MODELS": f"{self.model},gpt-4.1-*-batch",
            "UPSTREAM_AZURE_TEST_API_VERSION": "2025-04-01-preview",
            "UPSTREAM_AZURE_TEST_API_KEY": self.key,
        }


class Groq(OpenAI):
    """Groq's OpenAI-shaped Batch API under /openai/v1, with its own windows and limits."""

    name, upstream = "groq", "groq-test"
    model = "llama-3.1-8b-instant"
    key = "gsk-upstream-test-secret"
    fake_fixture = "groq_server"
    prefix = "/openai/v1"

    def env(self) -> dict[str, str]:
        return {
            "UPSTREAM_GROQ_TEST_KIND": "groq",
            "UPSTREAM_GROQ_TEST_BASE_URL": self.fake.url,
            "UPSTREAM_GROQ_TEST_MODELS": "llama-*",
            "UPSTREAM_GROQ_TEST_API_KEY": self.key,
        }


class Together(Kind):
    """Together's Batch API: OpenAI-shaped lines and files, its own upload, create and job."""

    name, upstream = "together", "together-test"
    model = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    key = "together-upstream-test-secret"
    fake_fixture = "together_server"
    operations = OPENAI_OPERATIONS

    def env(self) -> dict[str, str]:
        return {
            "UPSTREAM_TOGETHER_TEST_KIND": "together",
            "UPSTREAM_TOGETHER_TEST_BASE_URL": self.fake.url,
            "UPSTREAM_TOGETHER_TEST_MODELS": "meta-llama/*",
            "UPSTREAM_TOGETHER_TEST_API_KEY": self.key,
        }

    queue, text_of, answer_of = OpenAI.queue, OpenAI.text_of, OpenAI.answer_of

    def upstream_batches(self) -> dict[str, str]:
        return {job["id"]: job["status"].lower() for job in self.fake.jobs}

    def submissions(self) -> list[tuple[str, str]]:
        return [(line["custom_id"], line["batch_id"]) for line in self.fake.submitted()]

    def sent(self) -> list[dict]:
        return [line["body"] for line in self.fake.submitted()]

    def files(self) -> list[str]:
        return list(self.fake.files)


class Mistral(Together):
    """Mistral's batch jobs: files of `{"custom_id", "body"}` lines, jobs over them."""

    name, upstream = "mistral", "mistral-test"
    model = "mistral-small-latest"
    key = "mistral-upstream-test-secret"
    fake_fixture = "mistral_server"
    operations = OPENAI_OPERATIONS | {"read": "download"}

    def env(self) -> dict[str, str]:
        return {
            "UPSTREAM_MISTRAL_TEST_KIND": "mistral",
            "UPSTREAM_MISTRAL_TEST_BASE_URL": self.fake.url,
            "UPSTREAM_MISTRAL_TEST_MODELS": "mistral-*,ministral-*",
            "UPSTREAM_MISTRAL_TEST_API_KEY": self.key,
        }

    def upstream_batches(self) -> dict[str, str]:
        statuses = {"SUCCESS": "completed", "TIMEOUT_EXCEEDED": "expired"}
        return {
            job["id"]: statuses.get(job["status"], job["status"].lower()) for job in self.fake.jobs
        }


class Fireworks(Together):
    """Fireworks' batch inference jobs over datasets of `{"custom_id", "body"}` lines."""

    name, upstream = "fireworks", "fireworks-test"
    model = "accounts/fireworks/models/llama-v3p1-8b-instruct"
    key = "fw-upstream-test-secret"
    fake_fixture = "fireworks_server"
    operations = {
        "upload": "upload",
        "create": "create",
        "retrieve": "retrieve",
        "read": "download",
        "delete": "delete",
        "cancel": "cancel",
        "find_batch": "list",
        "find_files": "get_dataset",
    }

    def env(self) -> dict[str, str]:
        return {
            "UPSTREAM_FIREWORKS_TEST_KIND": "fireworks",
            "UPSTREAM_FIREWORKS_TEST_BASE_URL": self.fake.url,
            "UPSTREAM_FIREWORKS_TEST_MODELS": "accounts/fireworks/models/*",
            "UPSTREAM_FIREWORKS_TEST_API_KEY": self.key,
        }

    def upstream_batches(self) -> dict[str, str]:
        return {
            job["name"].rsplit("/", 1)[-1]: job["state"].removeprefix("JOB_STATE_").lower()
            for job in self.fake.jobs
        }

    def files(self) -> list[str]:
        return list(self.fake.datasets)


class Xai(Together):
    """xAI's Batch API: a JSONL file of OpenAI's lines, a batch named after the proxy's, its
    results paged from the batch (no output file; batches are never deleted)."""

    name, upstream = "xai", "xai-test"
    model = "grok-4-1-fast-non-reasoning"
    key = "xai-upstream-test-secret"
    fake_fixture = "xai_server"
    operations = OPENAI_OPERATIONS | {"read": "results"}

    def env(self) -> dict[str, str]:
        return {
            "UPSTREAM_XAI_TEST_KIND": "xai",
            "UPSTREAM_XAI_TEST_BASE_URL": self.fake.url,
            "UPSTREAM_XAI_TEST_MODELS": "grok-*",
            "UPSTREAM_XAI_TEST_API_KEY": self.key,
        }

    def upstream_batches(self) -> dict[str, str]:
        return {batch["batch_id"]: self.fake.status(batch) for batch in self.fake.jobs}


class Bedrock(Kind):
    """Bedrock's batch inference jobs over S3 (moto's, through the fake): boto3's `converse`
    calls, records of `{"recordId", "modelInput"}`, the output read from S3 and deleted."""

    name, upstream = "bedrock", "bedrock-test"
    model = "anthropic.claude-3-haiku-20240307-v1:0"
    key = "AKIABEDROCKTEST"  # the proxy's AWS access key id, as the fake sees it
    fake_fixture = "bedrock_server"
    operations = {
        "upload": "s3_put",
        "create": "create",
        "retrieve": "retrieve",
        "read": "s3_get",
        "delete": "s3_delete",
        "cancel": "cancel",
        "find_batch": "list",
        "find_files": "s3_list",
    }

    def env(self) -> dict[str, str]:
        from batchproxy.fakes.bedrock import BUCKET

        return {
            "UPSTREAM_BEDROCK_TEST_KIND": "bedrock",
            "UPSTREAM_BEDROCK_TEST_BASE_URL": self.fake.url,
            "UPSTREAM_BEDROCK_TEST_MODELS": "anthropic.*,amazon.*",
            "UPSTREAM_BEDROCK_TEST_KEY_ENV": "AWS_SECRET_ACCESS_KEY",
            "UPSTREAM_BEDROCK_TEST_S3_URI": f"s3://{BUCKET}/batches",
            "UPSTREAM_BEDROCK_TEST_S3_ENDPOINT_URL": self.fake.s3_url,
            "UPSTREAM_BEDROCK_TEST_ROLE_ARN": "arn:aws:iam::123456789012:role/bedrock-batch",
            # The engine's shared tests batch a request or two: no minimum of 100 (the kind's
            # default; tests/test_bedrock_sync.py tests it).
            "UPSTREAM_BEDROCK_TEST_MIN_REQUESTS": "1",
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": "bedrock-upstream-test-secret",
        }

    def queue(self, text: str):
        body = {"messages": [{"role": "user", "content": [{"text": text}]}]}
        return self.client.post(
            f"/model/{self.model}/converse",
            json.dumps(body),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {self.secret}",
        )

    def text_of(self, body: dict) -> str:
        return body["messages"][0]["content"][0]["text"]

    def answer_of(self, response: dict) -> str:
        return response["output"]["message"]["content"][0]["text"]

    def upstream_batches(self) -> dict[str, str]:
        statuses = {
            "Submitted": "in_progress",
            "InProgress": "in_progress",
            "Stopped": "cancelled",
            "PartiallyCompleted": "completed",
        }
        return {
            job["jobArn"].rsplit("/", 1)[-1]: statuses.get(job["status"], job["status"].lower())
            for job in self.fake.jobs
        }

    def submissions(self) -> list[tuple[str, str]]:
        return [(r["recordId"], r["batch_id"]) for r in self.fake.submitted()]

    def sent(self) -> list[dict]:
        return [r["modelInput"] for r in self.fake.submitted()]

    def files(self) -> list[str]:
        return self.fake.objects


class Vertex(Kind):
    """Vertex AI's batch prediction jobs over Cloud Storage (the fake's own): google-genai's
    Vertex calls, `{"request"}` lines labelled with the request id, the predictions read from
    Cloud Storage and deleted with the input and the job."""

    name, upstream = "vertex", "vertex-test"
    model = "gemini-2.5-flash"
    key = "ya29.vertex-upstream-test-token"  # the proxy's OAuth access token, as the fake sees it
    fake_fixture = "vertex_server"
    operations = {
        "upload": "gcs_put",
        "create": "create",
        "retrieve": "retrieve",
        "read": "gcs_get",
        "delete": "gcs_delete",
        "cancel": "cancel",
        "find_batch": "list",
        "find_files": "gcs_list",
    }

    def env(self) -> dict[str, str]:
        return {
            "UPSTREAM_VERTEX_TEST_KIND": "vertex",
            "UPSTREAM_VERTEX_TEST_BASE_URL": self.fake.url,
            "UPSTREAM_VERTEX_TEST_MODELS": "gemini-*",
            "UPSTREAM_VERTEX_TEST_PROJECT": "batchproxy-test",
            "UPSTREAM_VERTEX_TEST_LOCATION": "us-central1",
            "UPSTREAM_VERTEX_TEST_GCS_URI": "gs://batchproxy-test/batches",
            "UPSTREAM_VERTEX_TEST_STORAGE_URL": self.fake.url,
            "UPSTREAM_VERTEX_TEST_KEY_ENV": "UPSTREAM_VERTEX_TEST_ACCESS_TOKEN",
            "UPSTREAM_VERTEX_TEST_ACCESS_TOKEN": self.key,
        }

    def queue(self, text: str):
        body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
        return self.client.post(
            f"/v1beta1/publishers/google/models/{self.model}:generateContent",
            json.dumps(body),
            content_type="application/json",
            HTTP_X_GOOG_API_KEY=self.secret,
        )

    def text_of(self, body: dict) -> str:
        return body["contents"][0]["parts"][0]["text"]

    def answer_of(self, response: dict) -> str:
        return response["candidates"][0]["content"]["parts"][0]["text"]

    def upstream_batches(self) -> dict[str, str]:
        statuses = {
            "JOB_STATE_SUCCEEDED": "completed",
            "JOB_STATE_PARTIALLY_SUCCEEDED": "completed",
            "JOB_STATE_CANCELLED": "cancelled",
            "JOB_STATE_EXPIRED": "expired",
            "JOB_STATE_FAILED": "failed",
        }
        return {job["name"]: statuses.get(job["state"], "in_progress") for job in self.fake.history}

    def submissions(self) -> list[tuple[str, str]]:
        return [
            (line["request"]["labels"]["batchproxy_request"], line["job"])
            for line in self.fake.submitted()
        ]

    def sent(self) -> list[dict]:
        return [line["request"] for line in self.fake.submitted()]

    def files(self) -> list[str]:
        return self.fake.objects

    def left_upstream(self) -> list[str]:
        """Objects and jobs: an ended job is deleted with its predictions."""
        return self.files() + [job["name"] for job in self.fake.jobs]


class Anthropic(Kind):
    """Message Batches: requests inline, results read from the batch, the batch deleted."""

    name, upstream = "anthropic", "claude"
    model = "claude-sonnet-4-20250514"
    key = "sk-ant-upstream-test-secret"
    fake_fixture = "anthropic_server"
    operations = {
        "create": "create",
        "retrieve": "retrieve",
        "read": "results",
        "delete": "delete",
        "cancel": "cancel",
        "find_batch": "list",
    }

    def env(self) -> dict[str, str]:
        return {
            "UPSTREAM_CLAUDE_KIND": "anthropic",
            "UPSTREAM_CLAUDE_BASE_URL": self.fake.url,
            "UPSTREAM_CLAUDE_MODELS": "claude-*",
            "UPSTREAM_CLAUDE_API_KEY": self.key,
        }

    def queue(self, text: str):
        body = {
            "model": self.model,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": text}],
        }
        return self.client.post(
            "/v1/messages",
            json.dumps(body),
            content_type="application/json",
            HTTP_X_API_KEY=self.secret,
        )

    def text_of(self, body: dict) -> str:
        return body["messages"][0]["content"]

    def answer_of(self, response: dict) -> str:
        return response["content"][0]["text"]

    def upstream_batches(self) -> dict[str, str]:
        def status(batch: dict) -> str:
            if batch["processing_status"] != "ended":
                return {"canceling": "cancelling"}.get(batch["processing_status"], "in_progress")
            if batch["cancel_initiated_at"]:
                return "cancelled"
            return "expired" if batch["request_counts"]["expired"] else "completed"

        return {batch["id"]: status(batch) for batch in self.fake.history}

    def submissions(self) -> list[tuple[str, str]]:
        return [(r["custom_id"], r["batch_id"]) for r in self.fake.submitted()]

    def sent(self) -> list[dict]:
        return [r["params"] for r in self.fake.submitted()]

    def left_upstream(self) -> list[str]:
        return [batch["id"] for batch in self.fake.batches]  # each holds its results


GEMINI_STATUS = {
    "BATCH_STATE_SUCCEEDED": "completed",
    "BATCH_STATE_CANCELLED": "cancelled",
    "BATCH_STATE_EXPIRED": "expired",
    "BATCH_STATE_FAILED": "failed",
}


class GeminiInline(Kind):
    """Batch jobs with their requests inline; the results are read from the job itself."""

    name, upstream = "gemini-inline", "google"
    model = "gemini-2.5-flash"
    key = "gemini-upstream-test-secret"
    fake_fixture = "gemini_server"
    inline = True
    operations = {
        "create": "create",
        "retrieve": "retrieve",
        "read": "retrieve",  # the job again, once a poll has seen it end (`inject`)
        "delete": "delete",
        "cancel": "cancel",
        "find_batch": "list",
    }

    def env(self) -> dict[str, str]:
        return {
            "UPSTREAM_GOOGLE_KIND": "gemini",
            "UPSTREAM_GOOGLE_BASE_URL": self.fake.url,
            "UPSTREAM_GOOGLE_MODELS": "gemini-*",
            "UPSTREAM_GOOGLE_API_KEY": self.key,
            "GEMINI_INLINE_MAX_BYTES": "10000000" if self.inline else "0",
        }

    def configure(self, settings, monkeypatch) -> None:
        super().configure(settings, monkeypatch)
        settings.GEMINI_INLINE_MAX_BYTES = int(self.env()["GEMINI_INLINE_MAX_BYTES"])

    def queue(self, text: str):
        body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
        return self.client.post(
            f"/v1beta/models/{self.model}:generateContent",
            json.dumps(body),
            content_type="application/json",
            HTTP_X_GOOG_API_KEY=self.secret,
        )

    def text_of(self, body: dict) -> str:
        return body["contents"][0]["parts"][0]["text"]

    def answer_of(self, response: dict) -> str:
        return response["candidates"][0]["content"]["parts"][0]["text"]

    def inject(self, operation: str, fault, times: int = 1) -> None:
        if operation == "read" and self.inline:
            # Reading the results is getting the job again, after the poll that saw it end.
            self.fake.inject("retrieve", fault, times=times, after=1)
            return
        super().inject(operation, fault, times)

    def upstream_batches(self) -> dict[str, str]:
        return {
            job["name"]: GEMINI_STATUS.get(job["metadata"]["state"], "in_progress")
            for job in self.fake.history
        }

    def submissions(self) -> list[tuple[str, str]]:
        return [(r["key"], r["job"]) for r in self.fake.submitted()]

    def sent(self) -> list[dict]:
        return [r["request"] for r in self.fake.submitted()]

    def files(self) -> list[str]:
        return [found["name"] for found in self.fake.files]

    def left_upstream(self) -> list[str]:
        """Files and jobs: an ended job is deleted with its results, whatever its end."""
        return self.files() + [job["name"] for job in self.fake.jobs]

    def assert_exercised(self) -> None:
        super().assert_exercised()
        routes = {r["inline"] for r in self.fake.submitted()}
        assert routes <= {self.inline}, f"a job missed the {self.name} route"


class GeminiFile(GeminiInline):
    """Batch jobs whose requests go as a JSONL file through the File API
    (GEMINI_INLINE_MAX_BYTES=0); the results come back as a file."""

    name = "gemini-file"
    inline = False
    operations = {
        "upload": "upload_start",  # every attempt starts a session; `inject` explains
        "create": "create",
        "retrieve": "retrieve",
        "read": "download",
        "delete": "file_delete",
        "cancel": "cancel",
        "find_batch": "list",
        "find_files": "files_list",
    }

    def inject(self, operation: str, fault, times: int = 1) -> None:
        if operation == "upload" and not isinstance(fault, int):
            # The bytes make the file: a timeout or a lost answer there leaves one behind.
            # An HTTP error there is resent by google-genai itself (the resumable protocol
            # makes that safe), so an HTTP error reaches the engine from the session's start.
            self.fake.inject("upload", fault, times=times)
            return
        super().inject(operation, fault, times)


KINDS: dict[str, type[Kind]] = {
    kind.name: kind
    for kind in (
        OpenAI,
        Azure,
        Groq,
        Together,
        Mistral,
        Fireworks,
        Xai,
        Bedrock,
        Vertex,
        Anthropic,
        GeminiInline,
        GeminiFile,
    )
}


def cases(rows: Iterable[tuple], needs: Callable[[tuple], Iterable[str]]) -> list[tuple]:
    """(kind, *row) for every kind and row that applies to it: its upstream makes every one
    of the calls `needs(row)` names."""
    return [
        (name, *row)
        for name, kind in KINDS.items()
        for row in rows
        if set(needs(row)) <= kind.operations.keys()
    ]


def configure_upstreams(kinds: list[Kind], settings, monkeypatch) -> None:
    """Route each kind's model to its fake, all at once (the default upstream needs none)."""
    from batchproxy.settings import upstream_from_env

    env = {name: value for kind in kinds for name, value in kind.env().items()}
    named = [kind.upstream for kind in kinds if kind.upstream != OpenAI.upstream]
    env["UPSTREAMS"] = ",".join(named)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings.UPSTREAMS = [upstream_from_env(name) for name in named]


def assert_each_answered_once(kind: Kind) -> None:
    """Every request answered with its own echo, from exactly one upstream batch that completed,
    and nothing left behind upstream."""
    import orjson

    from requests_app.models import BatchRequest

    requests = list(BatchRequest.objects.values_list("pk", "status", "body", "response_body"))
    assert requests
    seen: dict[str, set] = {}
    for custom_id, batch_id in kind.submissions():
        seen.setdefault(custom_id, set()).add(batch_id)
    statuses = kind.upstream_batches()
    for pk, status, body, response in requests:
        assert status == BatchRequest.Status.COMPLETED, (pk, status)
        text = kind.text_of(orjson.loads(body))
        assert kind.answer_of(orjson.loads(response)) == f"echo: {text}"
        [batch_id] = seen.pop(str(pk))  # submitted in exactly one upstream batch
        assert statuses[batch_id] == "completed"
    assert not seen, f"lines that are no request: {seen}"
    assert not kind.left_upstream(), f"left upstream: {kind.left_upstream()}"
