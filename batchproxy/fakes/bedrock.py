"""A fake of Bedrock's batch inference jobs, with S3 from moto, served over real HTTP.

Built from the Bedrock API reference and botocore's `bedrock` service model
(CreateModelInvocationJob, GetModelInvocationJob, ListModelInvocationJobs,
StopModelInvocationJob) and the user guide's batch inference pages: `POST
/model-invocation-job` takes `jobName`, `roleArn`, `modelId`, `inputDataConfig.
s3InputDataConfig.s3Uri`, `outputDataConfig.s3OutputDataConfig.s3Uri`, `clientRequestToken`
(a create repeated with the same token answers the same job) and `modelInvocationType`
(`Converse` or `InvokeModel`); the input object holds `{"recordId", "modelInput"}` records;
a job's `status` goes `Submitted`, `InProgress`, then `Completed` (one `step_seconds` each),
and it writes `<output s3Uri><job id>/<input name>.out` (each record with `modelOutput` or
`error: {errorCode, errorMessage}`, in an order that is not the input's) and
`manifest.json.out`. Errors: `{"message"}` with the exception's name in `x-amzn-ErrorType`.

S3 is moto's (`ThreadedMotoServer` on loopback), reached through this server under `/s3`
(`s3_url`), so S3 calls can be failed like the others (`s3_put`, `s3_get`, `s3_list`,
`s3_delete`). Answers echo the request ("echo: <text>") and honour the fake OpenAI's markers
(`[[status:400]]`, `[[error:server_error]]` a 500 record, `[[truncate]]`, `[[refuse]]`). With
`expire_after` set, jobs end `Expired` with only their first N records answered. Faults:
`inject(operation, 500 | 429 | "timeout" | "disconnect" | "lost_response", times)`.
The key recorded for a call is its SigV4 access key id.

The runtime (botocore's `bedrock-runtime` service model): `POST /model/{modelId}/converse`
answers Converse's output (`output.message`, `stopReason`, `usage`, `metrics`, and the
`serviceTier` asked), `POST /model/{modelId}/invoke` the model's own body (Anthropic's on
Bedrock), its tier in `X-Amzn-Bedrock-Service-Tier`. Errors as Bedrock's: `{"message"}` with
`x-amzn-ErrorType` (`[[status:400]]` ValidationException, `[[error:...]]` a 500
InternalServerException). `refuse_flex` (`/_fake/configure`) answers a flex call 429
ThrottlingException; `inject("converse" | "invoke", 429)` throttles any. `sync_calls` lists
{"operation", "model", "service_tier", "body"}.

Run `python -m batchproxy.fakes.bedrock --port 9495` to serve in the foreground (moto needed:
`pip install 'moto[server]'`).
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import logging
import random
import re
import secrets
import time
from datetime import UTC, datetime
from urllib.parse import unquote, urlencode

from . import openai as fake_openai
from .http import (
    REFUSAL,
    REFUSE_MARKER,
    Call,
    JobServer,
    Refused,
    Reply,
    fake_main,
    jsonl,
)

ACCOUNT = "123456789012"  # moto's
REGION = "us-east-1"
BUCKET = "batchproxy-fake"
CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")
EXCEPTIONS = {400: "ValidationException", 404: "ResourceNotFoundException"}
JOB = r"([a-z0-9]{12})"


def _time(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z") if ts else None


def _text(request: dict) -> str:
    parts = []
    for message in request.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [b.get("text", "") for b in content if isinstance(b, dict)]
    return " ".join(parts) or str(request.get("inputText") or "")


def _output(invocation: str, text: str) -> dict:
    """The model's answer: Converse's shape, or (InvokeModel) Anthropic's on Bedrock."""
    answer = f"echo: {text}"
    tokens_in, tokens_out = -(-len(text) // 4), -(-len(answer) // 4)
    if invocation == "Converse":
        return {
            "output": {"message": {"role": "assistant", "content": [{"text": answer}]}},
            "stopReason": "end_turn",
            "usage": {
                "inputTokens": tokens_in,
                "outputTokens": tokens_out,
                "totalTokens": tokens_in + tokens_out,
            },
            "metrics": {"latencyMs": 1},
        }
    return {
        "id": f"msg_bdrk_{secrets.token_hex(8)}",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": answer}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out},
    }


class FakeBedrock(JobServer):
    routes = (
        ("POST", re.compile(r"/model-invocation-job"), "create"),
        ("GET", re.compile(r"/model-invocation-jobs"), "list"),
        ("GET", re.compile(rf"/model-invocation-job/{JOB}"), "retrieve"),
        ("POST", re.compile(rf"/model-invocation-job/{JOB}/stop"), "cancel"),
        ("PUT", re.compile(r"/s3/([^/]+)/(.+)"), "s3_put"),
        ("GET", re.compile(r"/s3/([^/]+)/?"), "s3_list"),
        ("GET", re.compile(r"/s3/([^/]+)/(.+)"), "s3_get"),
        ("DELETE", re.compile(r"/s3/([^/]+)/(.+)"), "s3_delete"),
        ("POST", re.compile(r"/model/([^/]+)/converse"), "converse"),
        ("POST", re.compile(r"/model/([^/]+)/invoke"), "invoke"),
    )
    options = (*JobServer.options, "expire_after", "refuse_flex")

    def __init__(self, *args, **kwargs):
        self._moto = None
        super().__init__(*args, **kwargs)

    def start(self):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs each call
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        super().start()
        self.reset()
        return self

    def stop(self) -> None:
        super().stop()
        self._moto.stop()

    def reset(self) -> None:
        with self._lock:
            super().reset()
            self._jobs: dict[str, dict] = {}
            self._lines: dict[str, list[dict]] = {}
            self._tokens: dict[str, str] = {}
            self.expire_after: int | None = None
            self.refuse_flex = False
            if self._moto is not None:
                self._empty_bucket()

    @property
    def url(self) -> str:
        return super().url

    @property
    def s3_url(self) -> str:
        return f"{super().url}/s3"

    # -- S3, moto's ----------------------------------------------------------------------------

    def _s3(self):
        import boto3

        host, port = self._moto.get_host_and_port()
        return boto3.client(
            "s3",
            endpoint_url=f"http://{host}:{port}",
            region_name=REGION,
            aws_access_key_id="fake",
            aws_secret_access_key="fake",  # noqa: S106 (moto takes any)
        )

    def _empty_bucket(self) -> None:
        s3 = self._s3()
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=BUCKET)
        for found in s3.list_objects_v2(Bucket=BUCKET).get("Contents") or []:
            s3.delete_object(Bucket=BUCKET, Key=found["Key"])

    @property
    def objects(self) -> list[str]:
        """The keys in the bucket now."""
        listed = self._s3().list_objects_v2(Bucket=BUCKET).get("Contents") or []
        return [found["Key"] for found in listed]

    def _forward(self, call: Call) -> Reply:
        """An S3 call, passed on to moto as it came (its path less `/s3`)."""
        host, port = self._moto.get_host_and_port()
        connection = http.client.HTTPConnection(host, port, timeout=30)
        query = urlencode(call.query)
        path = call.path.removeprefix("/s3") + (f"?{query}" if query else "")
        headers = {k: v for k, v in call.headers.items() if k not in ("host", "transfer-encoding")}
        headers["content-length"] = str(len(call.raw))
        try:
            connection.request(call.method, path, body=call.raw, headers=headers)
            answer = connection.getresponse()
            body = answer.read()
        finally:
            connection.close()
        kept = {k: v for k, v in answer.getheaders() if k.lower() in ("etag", "x-amz-request-id")}
        content_type = answer.getheader("content-type") or "application/xml"
        return Reply(answer.status, body, headers=kept, content_type=content_type)

    def _read(self, uri: str) -> bytes:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        try:
            return self._s3().get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:  # moto's NoSuchKey, NoSuchBucket
            raise Refused(400, f"The input {uri} cannot be read: {exc}") from exc

    def _write(self, uri: str, content: bytes) -> None:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        self._s3().put_object(Bucket=bucket, Key=key, Body=content)

    # -- the server's own ----------------------------------------------------------------------

    def key_of(self, headers: dict[str, str], query: dict[str, str]) -> str:
        match = CREDENTIAL.search(headers.get("authorization", ""))
        return match[1] if match else ""

    def error(self, status: int, message: str) -> Reply:
        name = EXCEPTIONS.get(status, "InternalServerException" if status >= 500 else None)
        name = name or ("ThrottlingException" if status == 429 else "ValidationException")
        return Reply(status, {"message": message}, headers={"x-amzn-ErrorType": name})

    def respond(self, call: Call) -> Reply:
        if call.operation.startswith("s3_"):
            return self._forward(call)
        if call.operation in ("converse", "invoke"):
            with self._lock:
                return self._runtime(call, unquote(call.args[0]))
        with self._lock:
            try:
                status, body = getattr(self, f"_{call.operation}")(call, *call.args)
            except Refused as exc:
                return self.error(exc.status, str(exc))
        return Reply(status, json.dumps(body).encode())

    # -- the runtime ---------------------------------------------------------------------------

    def _runtime(self, call: Call, model: str) -> Reply:
        """One converse or invoke_model call, answered as its batch record would be."""
        try:
            request = call.json() or {}
        except ValueError:
            return self.error(400, "The body is not JSON.")
        if call.operation == "converse":
            tier = (request.get("serviceTier") or {}).get("type") or "default"
        else:
            tier = call.headers.get("x-amzn-bedrock-service-tier") or "default"
        body = {k: v for k, v in request.items() if k != "serviceTier"}
        self.sync_calls.append(
            {"operation": call.operation, "model": model, "service_tier": tier, "body": body}
        )
        if tier == "flex" and self.refuse_flex:
            return self.error(429, "Flex capacity is not available now; retry or use default.")
        raw = json.dumps(body)
        if match := fake_openai.ERROR_MARK.search(raw):
            return self.error(500, f"The request failed with {match[1]}.")
        if (match := fake_openai.STATUS_MARK.search(raw)) and match[1] != "200":
            return self.error(int(match[1]), f"The request failed with status {match[1]}.")
        if call.operation == "converse":
            return Reply(200, _output("Converse", _text(body)) | {"serviceTier": {"type": tier}})
        answer = _output("InvokeModel", _text(body))
        return Reply(200, answer, headers={"X-Amzn-Bedrock-Service-Tier": tier})

    # -- jobs ----------------------------------------------------------------------------------

    @staticmethod
    def _records(content: bytes) -> list[dict]:
        records, seen = [], set()
        for number, raw in enumerate(content.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError as exc:
                raise Refused(400, f"Record {number} is not JSON.") from exc
            record_id = record.get("recordId") if isinstance(record, dict) else None
            if not isinstance(record_id, str) or record_id in seen:
                raise Refused(400, f"Record {number}: recordId must be unique.")
            if not isinstance(record.get("modelInput"), dict) or set(record) - {
                "recordId",
                "modelInput",
            }:
                raise Refused(400, f"Record {number}: a record is {{recordId, modelInput}}.")
            seen.add(record_id)
            records.append(record)
        if not records:
            raise Refused(400, "The input holds no records.")
        return records

    def _create(self, call: Call):
        try:
            params = call.json() or {}
        except ValueError as exc:
            raise Refused(400, "The body is not JSON.") from exc
        required = ("jobName", "roleArn", "modelId", "inputDataConfig", "outputDataConfig")
        if missing := [name for name in required if not params.get(name)]:
            raise Refused(400, f"Missing: {', '.join(missing)}")
        token = params.get("clientRequestToken")
        if token and token in self._tokens:  # idempotent: the job this token made
            return 200, {"jobArn": self._jobs[self._tokens[token]]["jobArn"]}
        if any(job["jobName"] == params["jobName"] for job in self._jobs.values()):
            raise Refused(400, f"A job named {params['jobName']} already exists.")
        invocation = params.get("modelInvocationType") or "InvokeModel"
        if invocation not in ("Converse", "InvokeModel"):
            raise Refused(400, f"modelInvocationType: {invocation}")
        source = params["inputDataConfig"]["s3InputDataConfig"]["s3Uri"]
        target = params["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"]
        records = self._records(self._read(source))
        if any(REFUSE_MARKER in json.dumps(record) for record in records):
            raise Refused(400, REFUSAL)
        now = time.time()
        job_id = secrets.token_hex(6)
        job = {
            "jobArn": f"arn:aws:bedrock:{REGION}:{ACCOUNT}:model-invocation-job/{job_id}",
            "jobName": params["jobName"],
            "modelId": params["modelId"],
            "clientRequestToken": token,
            "roleArn": params["roleArn"],
            "status": "Submitted",
            "submitTime": _time(now),
            "lastModifiedTime": _time(now),
            "inputDataConfig": params["inputDataConfig"],
            "outputDataConfig": params["outputDataConfig"],
            "timeoutDurationInHours": params.get("timeoutDurationInHours", 24),
            "jobExpirationTime": _time(now + 86_400),
            "modelInvocationType": invocation,
            "_created": now,
            "_step": self.step_seconds,
            "_expire_after": self.expire_after,
            "_output": f"{target.rstrip('/')}/{job_id}/{source.rsplit('/', 1)[-1]}.out",
        }
        self._jobs[job_id] = job
        self._lines[job_id] = records
        if token:
            self._tokens[token] = job_id
        return 200, {"jobArn": job["jobArn"]}

    def _job(self, job_id: str) -> dict:
        if job_id not in self._jobs:
            raise Refused(404, f"Job {job_id} not found.")
        return self._jobs[job_id]

    def _view(self, job: dict) -> dict:
        """The job as observed now: it moves on one `step_seconds` at a time."""
        elapsed = time.time() - job["_created"]
        job_id = job["jobArn"].rsplit("/", 1)[-1]
        if job["status"] == "Submitted" and elapsed >= job["_step"]:
            job["status"] = "InProgress"
        if job["status"] == "InProgress" and elapsed >= 2 * job["_step"]:
            cap = job["_expire_after"]
            if cap is not None and cap < len(self._lines[job_id]):
                self._end(job, "Expired", cap)
            else:
                self._end(job, "Completed", None)
        return {k: v for k, v in copy.deepcopy(job).items() if not k.startswith("_")}

    def _end(self, job: dict, status: str, done: int | None) -> None:
        """Write the output of the first `done` records (all: None) and the manifest."""
        job_id = job["jobArn"].rsplit("/", 1)[-1]
        out, failed = [], 0
        for record in self._lines[job_id][:done]:
            raw = json.dumps(record["modelInput"])
            line = {"recordId": record["recordId"], "modelInput": record["modelInput"]}
            if match := fake_openai.ERROR_MARK.search(raw):
                error = {"errorCode": 500, "errorMessage": f"The record failed with {match[1]}."}
                line["error"], failed = error, failed + 1
            elif (match := fake_openai.STATUS_MARK.search(raw)) and match[1] != "200":
                message = f"The record failed with status {match[1]}."
                line["error"], failed = (
                    {"errorCode": int(match[1]), "errorMessage": message},
                    failed + 1,
                )
            else:
                text = _text(record["modelInput"])
                line["modelOutput"] = _output(job["modelInvocationType"], text)
            out.append(line)
        random.Random(job_id).shuffle(out)  # never the input's order
        self._write(job["_output"], jsonl(out).encode())
        manifest = {"totalRecordCount": len(self._lines[job_id]), "processedRecordCount": len(out)}
        self._write(
            job["_output"].rsplit("/", 1)[0] + "/manifest.json.out", json.dumps(manifest).encode()
        )
        job.update(
            status="PartiallyCompleted" if failed and status == "Completed" else status,
            endTime=_time(time.time()),
            lastModifiedTime=_time(time.time()),
            totalRecordCount=len(self._lines[job_id]),
            processedRecordCount=len(out),
            successRecordCount=len(out) - failed,
            errorRecordCount=failed,
        )

    def _list(self, call: Call):
        wanted = call.query.get("nameContains", "")
        summaries = [
            self._view(job) for job in reversed(self._jobs.values()) if wanted in job["jobName"]
        ]
        size = int(call.query.get("maxResults") or 100)
        return 200, {"invocationJobSummaries": summaries[:size]}

    def _retrieve(self, call: Call, job_id: str):
        return 200, self._view(self._job(job_id))

    def _cancel(self, call: Call, job_id: str):
        job = self._job(job_id)
        if self._view(job)["status"] in ("Submitted", "InProgress"):
            self._end(job, "Stopped", 0)
        return 200, {}


def main(argv=None) -> None:
    fake_main(FakeBedrock, name="bedrock", what="Bedrock API, S3 at /s3", port=9495, argv=argv)


if __name__ == "__main__":
    main()
