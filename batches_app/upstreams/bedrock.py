"""AWS Bedrock's batch inference jobs over S3, through boto3.

From the Bedrock API reference (CreateModelInvocationJob, GetModelInvocationJob,
ListModelInvocationJobs, StopModelInvocationJob; botocore's `bedrock` service model) and the
user guide's "Process multiple prompts with batch inference":
- the input is a JSONL file in S3 of `{"recordId", "modelInput"}` records; a job runs one
  `modelId` over it (`inputDataConfig.s3InputDataConfig.s3Uri`) with an IAM role Bedrock
  assumes (`roleArn`), in the Converse shape (`modelInvocationType: Converse`, for the
  `converse` calls) or the model's own (`InvokeModel`, for `invoke_model`);
- the job writes `<output s3Uri>/<job id>/<input file name>.out`, each record with its
  `modelOutput` or `error` (`errorCode`, `errorMessage`), and a `manifest.json.out`;
- a job's `status`: `Submitted`, `Validating`, `Scheduled`, `InProgress`, then `Completed`,
  `PartiallyCompleted`, `Failed` (with `message`), `Stopping`, `Stopped` or `Expired` (after
  `timeoutDurationInHours`, the records answered so far written);
- `clientRequestToken` makes a create idempotent, and the job is named after the proxy's batch
  (`nameContains` finds it), so an interrupted create is never made twice.
An upstream names its S3 place and role in UPSTREAM_<NAME>_S3_URI (`s3://bucket/prefix`) and
UPSTREAM_<NAME>_ROLE_ARN; its base URL is Bedrock's control plane
(`https://bedrock.<region>.amazonaws.com`, the region read from it), and
UPSTREAM_<NAME>_S3_ENDPOINT_URL an S3-compatible endpoint, if not AWS's. Credentials are
boto3's own (environment, profile, instance role); in a try-out, placeholders for the fake.
Input and output objects are deleted once the batch is read; a job cannot be deleted.

Synchronous sends (batches_app/tiers.py) go through boto3's `bedrock-runtime` client: `converse`
or `invoke_model` (botocore's `bedrock-runtime` service model, 2023-09-30) with the body the
caller sent, at Bedrock's `serviceTier` `default` (the standard tier) or `flex` (Converse's
`serviceTier: {"type"}`, InvokeModel's `X-Amzn-Bedrock-Service-Tier` header; the model's enum
`priority | default | flex | reserved`; docs.aws.amazon.com/bedrock, "Service tiers for
optimizing performance and cost"). The runtime's endpoint is
`https://bedrock-runtime.<region>.amazonaws.com`, the region read from the base URL, or
UPSTREAM_<NAME>_RUNTIME_ENDPOINT_URL (a fake, a VPC endpoint); a base URL that is not AWS's
serves both. The answer is Bedrock's own JSON, unchanged; a request's own error (400, 404,
424) is its answer as `{"message", "__type"}`, which boto3 reads as a runtime error; a 429
(ThrottlingException, ModelNotReadyException), 408, 5xx, 401/403 or a quota answer is
transient. Which models Bedrock serves at flex is not listed by default (batches_app/flex.py).
"""

import os
import re
from collections.abc import Iterator
from datetime import datetime
from functools import cached_property
from pathlib import Path

import orjson
from django.conf import settings

from ops_app.metrics import upstream_observed
from requests_app.models import Endpoint

from .base import (
    METADATA_KEY,
    SyncAnswer,
    Transport,
    Upstream,
    UpstreamError,
    retry_after_of,
    unreadable_line,
)

STATUSES = {
    "Submitted": "validating",
    "Validating": "validating",
    "Scheduled": "validating",
    "InProgress": "in_progress",
    "Completed": "completed",
    "PartiallyCompleted": "completed",  # each record says how it ended
    "Failed": "failed",
    "Stopping": "cancelling",
    "Stopped": "cancelled",
    "Expired": "expired",
}
WITH_OUTPUT = ("completed", "cancelled", "expired")
# A try-out's fake Bedrock (batchproxy/fakes/bedrock.py): its bucket, its S3, any role.
TRY_OUT_PLACE = {
    "S3_URI": "s3://batchproxy-fake/batches",
    "S3_ENDPOINT_URL": "{url}/s3",
    "ROLE_ARN": "arn:aws:iam::123456789012:role/batchproxy-try-out",
    "RUNTIME_ENDPOINT_URL": "{url}",
}
INVOCATION_TYPES = {Endpoint.BEDROCK_CONVERSE: "Converse", Endpoint.BEDROCK_INVOKE: "InvokeModel"}
REGION = re.compile(r"bedrock[.-]([a-z0-9-]+)\.amazonaws\.com")
# A failure of Bedrock's own, retried as OpenAI's server_error; other codes are the record's.
TRANSIENT_CODES = (408, 429)
# A synchronous answer that is not the request's own: Bedrock's quota or a model not ready.
TRANSIENT_ERRORS = ("ServiceQuotaExceededException", "ModelNotReadyException")
# Bedrock runtime's exception names, by HTTP status, for a record's error a caller's boto3 reads.
EXCEPTIONS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    424: "ModelErrorException",
}


def _unix(value) -> int | None:
    if isinstance(value, datetime):
        return int(value.timestamp())
    return None


def _job_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def result_line(raw: str) -> str | None:
    """A record of the output in OpenAI's output line shape."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return unreadable_line(raw, id_field="recordId")
    custom_id = record.get("recordId") if isinstance(record, dict) else None
    if not isinstance(custom_id, str):
        return unreadable_line(raw, id_field="recordId")
    output, error = record.get("modelOutput"), record.get("error")
    if isinstance(output, dict):
        line = {"custom_id": custom_id, "response": {"status_code": 200, "body": output}}
    elif isinstance(error, dict):
        status = int(error.get("errorCode") or 500)
        message = str(error.get("errorMessage") or "the record failed")
        if status >= 500 or status in TRANSIENT_CODES:
            failure = {"code": "server_error", "message": message}
            line = {"custom_id": custom_id, "response": None, "error": failure}
        else:
            kind = EXCEPTIONS.get(status, "ValidationException")
            body = {"message": message, "__type": kind}
            line = {"custom_id": custom_id, "response": {"status_code": status, "body": body}}
    else:
        return unreadable_line(raw, id_field="recordId")
    line.setdefault("error", None)
    return orjson.dumps(line).decode()


class BedrockTransport(Transport):
    def __init__(self, upstream: Upstream, api_key: str):
        super().__init__(upstream)
        self._api_key = api_key

    # -- configuration ---------------------------------------------------------------------------

    def _setting(self, name: str, *, required: bool = True) -> str:
        variable = f"UPSTREAM_{self.upstream.name.upper().replace('-', '_')}_{name}"
        value = os.environ.get(variable, "")
        if settings.TRY_OUT is not None:  # the fake's bucket, its S3 and a role it takes
            value = TRY_OUT_PLACE[name].format(url=self.upstream.base_url.rstrip("/"))
        if required and not value:
            # The operator's to fix: the batch waits and is sent once it is set.
            message = f"upstream {self.upstream.name}: {variable} is not set"
            raise UpstreamError(message, permanent=False, code="not_configured")
        return value

    @property
    def _place(self) -> tuple[str, str]:
        """The bucket and key prefix of UPSTREAM_<NAME>_S3_URI."""
        uri = self._setting("S3_URI")
        if not uri.startswith("s3://"):
            message = f"upstream {self.upstream.name}: S3_URI must be s3://bucket/prefix"
            raise UpstreamError(message, permanent=False, code="not_configured")
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        return bucket, prefix.strip("/")

    def _key(self, name: str) -> str:
        prefix = self._place[1]
        return f"{prefix}/{name}" if prefix else name

    def _uri(self, name: str) -> str:
        return f"s3://{self._place[0]}/{self._key(name)}"

    @cached_property
    def _session(self):
        import boto3

        match = REGION.search(self.upstream.base_url)
        region = match[1] if match else os.environ.get("AWS_REGION", "us-east-1")
        if settings.TRY_OUT is not None:  # a fake: never the machine's real credentials
            return boto3.Session(
                aws_access_key_id="fake-bedrock",
                aws_secret_access_key=self._api_key or "fake-bedrock",
                region_name=region,
            )
        return boto3.Session(region_name=region)

    @property
    def runtime_url(self) -> str | None:
        """bedrock-runtime's endpoint: the setting, else the control plane's region's, else
        (a base URL that is not AWS's) the base URL itself."""
        if override := self._setting("RUNTIME_ENDPOINT_URL", required=False):
            return override
        if match := REGION.search(self.upstream.base_url):
            return f"https://bedrock-runtime.{match[1]}.amazonaws.com"
        return self.upstream.base_url or None

    def _client(self, service: str, *, retries: bool = True, timeout: float | None = None):
        from botocore.config import Config

        config = Config(
            connect_timeout=min(timeout or settings.OPENAI_TIMEOUT, settings.OPENAI_TIMEOUT),
            read_timeout=timeout or settings.OPENAI_TIMEOUT,
            retries={
                "mode": "standard",
                "total_max_attempts": 1 + (settings.OPENAI_MAX_RETRIES if retries else 0),
            },
        )
        if service == "bedrock":
            endpoint = self.upstream.base_url or None
        elif service == "bedrock-runtime":
            endpoint = self.runtime_url
        else:
            endpoint = self._setting("S3_ENDPOINT_URL", required=False) or None
        return self._session.client(service, endpoint_url=endpoint, config=config)

    def _call(self, operation: str, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        with upstream_observed(operation, upstream=self.upstream.name):
            try:
                return fn(**kwargs)
            except ClientError as exc:
                raise _error(exc) from exc
            except BotoCoreError as exc:  # no credentials, a timeout, a broken connection
                message = f"{type(exc).__name__}: {exc}"
                raise UpstreamError(message, permanent=False, code="connection_error") from exc

    # -- synchronous sends ---------------------------------------------------------------------

    SYNC = True

    @classmethod
    def offers_sync(cls, endpoint: str) -> bool:
        return endpoint in INVOCATION_TYPES

    def offers_flex(self) -> bool:
        return True

    def send(self, *, endpoint: str, body: str, tier: str, timeout: float) -> SyncAnswer:
        """`converse` or `invoke_model` with the caller's body at the tier the proxy chose (the
        body's own `serviceTier` is replaced: the receipt prices the tier sent); Bedrock's
        answer as it came over the wire."""
        from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

        if endpoint not in INVOCATION_TYPES:
            raise UpstreamError(f"no synchronous {endpoint} on Bedrock", permanent=True)
        request = orjson.loads(body)
        model = request.pop("model")
        service_tier = "flex" if tier == self.FLEX else "default"
        runtime = self._client("bedrock-runtime", retries=False, timeout=timeout)
        raw: list[bytes] = []
        runtime.meta.events.register(
            "after-call.bedrock-runtime.Converse",
            lambda http_response, **_: raw.append(http_response.content),
        )
        try:
            with upstream_observed(f"sync.{tier}", upstream=self.upstream.name):
                if endpoint == Endpoint.BEDROCK_CONVERSE:
                    request["serviceTier"] = {"type": service_tier}
                    runtime.converse(modelId=model, **request)
                    return SyncAnswer(200, raw[-1].decode())
                answer = runtime.invoke_model(
                    modelId=model,
                    body=orjson.dumps(request),
                    contentType="application/json",
                    accept="application/json",
                    serviceTier=service_tier,
                )
                return SyncAnswer(200, answer["body"].read().decode())
        except ClientError as exc:
            return _sync_error(exc, tier=tier)
        except ParamValidationError as exc:  # a body this botocore cannot send as it is
            raise UpstreamError(str(exc), permanent=True, code="invalid_request") from exc
        except BotoCoreError as exc:  # a timeout, a broken connection, no credentials
            message = f"{type(exc).__name__}: {exc}"
            raise UpstreamError(message, permanent=False, code="connection_error") from exc

    # -- the interface -------------------------------------------------------------------------

    def input_line(self, custom_id, endpoint: str, body: str) -> str:
        """Bedrock's record: `{"recordId", "modelInput"}`; the job names the model."""
        request = orjson.loads(body)
        request.pop("model", None)
        return orjson.dumps({"recordId": str(custom_id), "modelInput": request}).decode() + "\n"

    def upload_file(self, path: Path, filename: str) -> str:
        name = f"input/{filename}"
        s3 = self._client("s3", retries=False)
        with path.open("rb") as fh:  # one PutObject (up to 5 GB): never a multipart upload
            self._call("s3.put", s3.put_object, Bucket=self._place[0], Key=self._key(name), Body=fh)
        return name

    def create_batch(
        self, *, input_file_id: str, endpoint: str, model: str, metadata: dict[str, str]
    ) -> dict:
        if endpoint not in INVOCATION_TYPES:
            message = f"Bedrock batch inference runs converse and invoke_model, not {endpoint}"
            raise UpstreamError(message, permanent=True, code="unsupported_endpoint")
        token = metadata[METADATA_KEY]
        bedrock = self._client("bedrock", retries=False)
        created = self._call(
            "jobs.create",
            bedrock.create_model_invocation_job,
            jobName=f"batchproxy-{token}",
            clientRequestToken=token,
            roleArn=self._setting("ROLE_ARN"),
            modelId=model,
            modelInvocationType=INVOCATION_TYPES[endpoint],
            inputDataConfig={"s3InputDataConfig": {"s3Uri": self._uri(input_file_id)}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": self._uri("output/")}},
            timeoutDurationInHours=24,
        )
        # Only the ARN comes back: the job as just submitted (a poll reads the rest).
        job = {"jobArn": created["jobArn"], "status": "Submitted", "modelId": model}
        source = {"s3InputDataConfig": {"s3Uri": self._uri(input_file_id)}}
        return self._batch(job | {"inputDataConfig": source})

    def _batch(self, job: dict) -> dict:
        """A job in OpenAI's Batch shape, as the engine reads it."""
        status = STATUSES.get(job.get("status", ""), "in_progress")
        job_id = _job_id(job["jobArn"])
        source = job["inputDataConfig"]["s3InputDataConfig"]["s3Uri"]
        filename = source.rsplit("/", 1)[-1]
        output = f"output/{job_id}/{filename}.out" if status in WITH_OUTPUT else None
        message = job.get("message") or "the job failed"
        return {
            "id": job_id,
            "object": "batch",
            "status": status,
            "model": job.get("modelId"),
            "input_file_id": f"input/{filename}",
            "output_file_id": output,
            "error_file_id": None,
            "created_at": _unix(job.get("submitTime")),
            "completed_at": _unix(job.get("endTime")),
            "request_counts": {
                "total": int(job.get("totalRecordCount") or 0),
                "completed": int(job.get("successRecordCount") or 0),
                "failed": int(job.get("errorRecordCount") or 0),
            },
            "errors": {"data": [{"code": "batch_failed", "message": message}]}
            if status == "failed"
            else None,
            "usage": None,
        }

    def retrieve_batch(self, batch_id: str) -> dict:
        bedrock = self._client("bedrock")
        job = self._call("jobs.get", bedrock.get_model_invocation_job, jobIdentifier=batch_id)
        return self._batch(job)

    def cancel_batch(self, batch_id: str) -> dict:
        # The engine retries a cancel that failed (and sees it fail); botocore's own retries
        # would hide it, and a held stop that lands late is the engine's case to handle.
        bedrock = self._client("bedrock", retries=False)
        self._call("jobs.stop", bedrock.stop_model_invocation_job, jobIdentifier=batch_id)
        return self.retrieve_batch(batch_id)

    def find_batch(self, *, value: str, **_) -> dict | None:
        """The job named after this proxy batch, if an interrupted create made it."""
        wanted = f"batchproxy-{value}"
        bedrock = self._client("bedrock")
        listed = self._call(
            "jobs.list", bedrock.list_model_invocation_jobs, nameContains=wanted, maxResults=10
        )
        for summary in listed.get("invocationJobSummaries") or []:
            if summary.get("jobName") == wanted:
                return self.retrieve_batch(_job_id(summary["jobArn"]))
        return None

    def find_files(self, *, filename: str) -> Iterator[str]:
        name = f"input/{filename}"
        s3 = self._client("s3")
        listed = self._call(
            "s3.list", s3.list_objects_v2, Bucket=self._place[0], Prefix=self._key(name)
        )
        if any(found["Key"] == self._key(name) for found in listed.get("Contents") or []):
            yield name

    def iter_file_lines(self, file_id: str) -> Iterator[str]:
        s3 = self._client("s3")
        got = self._call("s3.get", s3.get_object, Bucket=self._place[0], Key=self._key(file_id))
        from botocore.exceptions import BotoCoreError

        with upstream_observed("s3.read", upstream=self.upstream.name):
            try:
                for raw in got["Body"].iter_lines():
                    if raw.strip() and (line := result_line(raw.decode())):
                        yield line
            except BotoCoreError as exc:
                message = f"reading results: {exc!r}"
                raise UpstreamError(message, permanent=False, code="connection_error") from exc

    def delete_file(self, file_id: str) -> None:
        """Delete an input object, or a job's whole output folder (its records and manifest).
        S3 deletes of what is gone succeed."""
        s3, bucket = self._client("s3"), self._place[0]
        if not file_id.startswith("output/"):
            self._call("s3.delete", s3.delete_object, Bucket=bucket, Key=self._key(file_id))
            return
        folder = self._key(file_id.rsplit("/", 1)[0] + "/")
        listed = self._call("s3.list", s3.list_objects_v2, Bucket=bucket, Prefix=folder)
        for found in listed.get("Contents") or []:
            self._call("s3.delete", s3.delete_object, Bucket=bucket, Key=found["Key"])


def _error(exc) -> UpstreamError:
    meta = exc.response.get("ResponseMetadata") or {}
    status = int(meta.get("HTTPStatusCode") or 0)
    error = exc.response.get("Error") or {}
    code = error.get("Code") or f"http_{status}"
    transient = status in (0, 401, 403, 408, 409, 429) or status >= 500
    return UpstreamError(
        f"HTTP {status}: {code}: {error.get('Message') or ''}"[:600],
        permanent=not transient,
        code=code if code.startswith("http_") else f"http_{status}",
        status=status,
    )


def _sync_error(exc, *, tier: str) -> SyncAnswer:
    """A ClientError of a synchronous send: the request's own answer (a 4xx of its own, in the
    `{"message", "__type"}` body boto3 reads), or a transient UpstreamError."""
    meta = exc.response.get("ResponseMetadata") or {}
    status = int(meta.get("HTTPStatusCode") or 0)
    error = exc.response.get("Error") or {}
    code, message = error.get("Code") or "", error.get("Message") or ""
    if status in (0, 401, 403, 408, 429) or status >= 500 or code in TRANSIENT_ERRORS:
        raise UpstreamError(
            f"HTTP {status}: {code}: {message}"[:600],
            permanent=False,
            code=f"http_{status}",
            status=status,
            retry_after=retry_after_of(meta.get("HTTPHeaders")) if status == 429 else None,
        ) from exc
    if tier == Transport.FLEX and status == 400 and "tier" in message.lower():
        # The tier's refusal, not the request's: the request goes on at the standard tier.
        # (Unverified: how Bedrock refuses flex for a model without it is not documented in
        # what could be read here; a 400 naming the tier is taken as that refusal.)
        raise UpstreamError(
            f"flex is not offered here: {message}", permanent=True, code="flex_unsupported"
        ) from exc
    body = {"message": message, "__type": code or EXCEPTIONS.get(status, "ValidationException")}
    return SyncAnswer(status, orjson.dumps(body).decode())
