"""HTTP transports that wait for a batchproxy's answer, and bulk helpers.

The proxy answers 422 with `Retry-After` and `X-Batch-Request-Id` while a call waits for its
batch; repeating the identical call is how a client asks again. These transports do that below
the SDK, so SDK code needs no loop: a call returns when the answer is there.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import openai

try:  # openai 3 sends through httpx2; earlier versions through httpx.
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the installed SDK
    import httpx  # type: ignore[no-redef]

__all__ = [
    "AsyncWaitingTransport",
    "WaitingTransport",
    "abulk",
    "async_http_client",
    "bulk",
    "http_client",
]

DEFAULT_DEADLINE = 26 * 3600  # a batch's 24-hour window, the proxy's flush wait and polls
T = TypeVar("T")
# Off while `bulk` submits every call once, so that all of them are queued before any waits.
_waiting: contextvars.ContextVar[bool] = contextvars.ContextVar("batchproxy_wait", default=True)


def _wait(response: Any, waited_until: float, *, min_wait: float, max_wait: float) -> float | None:
    """Seconds to sleep before asking again, or None to hand the response to the SDK."""
    if response.status_code != 422 or "x-batch-request-id" not in response.headers:
        return None
    if not _waiting.get():
        return None
    try:
        seconds = float(response.headers.get("retry-after", "60"))
    except ValueError:
        seconds = 60.0
    seconds = min(max(seconds, min_wait), max_wait)
    left = waited_until - time.monotonic()
    if left <= 0:
        return None
    return min(seconds, left)


class WaitingTransport(httpx.BaseTransport):
    """Repeats a call while the proxy says it is pending, honouring Retry-After.

    `deadline`: seconds a call may wait in all, after which the 422 goes to the SDK (which
    raises `openai.UnprocessableEntityError`). `max_wait` caps one sleep, so a long estimate
    is re-checked sooner.
    """

    def __init__(
        self,
        transport: Any = None,
        *,
        deadline: float = DEFAULT_DEADLINE,
        min_wait: float = 1.0,
        max_wait: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._transport = transport or httpx.HTTPTransport()
        self.deadline, self.min_wait, self.max_wait = deadline, min_wait, max_wait
        self._sleep = sleep

    def handle_request(self, request: Any) -> Any:
        request.read()  # the body is sent again on every ask
        until = time.monotonic() + self.deadline
        while True:
            response = self._transport.handle_request(request)
            wait = _wait(response, until, min_wait=self.min_wait, max_wait=self.max_wait)
            if wait is None:
                return response
            response.close()
            self._sleep(wait)

    def close(self) -> None:
        self._transport.close()


class AsyncWaitingTransport(httpx.AsyncBaseTransport):
    """`WaitingTransport` for `AsyncOpenAI`: the wait is an `asyncio` sleep, not a thread's."""

    def __init__(
        self,
        transport: Any = None,
        *,
        deadline: float = DEFAULT_DEADLINE,
        min_wait: float = 1.0,
        max_wait: float = 300.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._transport = transport or httpx.AsyncHTTPTransport()
        self.deadline, self.min_wait, self.max_wait = deadline, min_wait, max_wait
        self._sleep = sleep

    async def handle_async_request(self, request: Any) -> Any:
        await request.aread()
        until = time.monotonic() + self.deadline
        while True:
            response = await self._transport.handle_async_request(request)
            wait = _wait(response, until, min_wait=self.min_wait, max_wait=self.max_wait)
            if wait is None:
                return response
            await response.aclose()
            await self._sleep(wait)

    async def aclose(self) -> None:
        await self._transport.aclose()


def http_client(*, deadline: float = DEFAULT_DEADLINE, **transport_options: Any) -> Any:
    """An httpx Client for `openai.OpenAI(http_client=...)` that waits for answers.

    Its read timeout applies to each ask, not to the wait between asks.
    """
    return httpx.Client(
        transport=WaitingTransport(deadline=deadline, **transport_options),
        timeout=httpx.Timeout(600.0, connect=10.0),
    )


def async_http_client(*, deadline: float = DEFAULT_DEADLINE, **transport_options: Any) -> Any:
    """An httpx AsyncClient for `openai.AsyncOpenAI(http_client=...)` that waits for answers."""
    return httpx.AsyncClient(
        transport=AsyncWaitingTransport(deadline=deadline, **transport_options),
        timeout=httpx.Timeout(600.0, connect=10.0),
    )


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        # Said once per place that asks (Python's default warning filter), never an error.
        warnings.warn(
            "batchproxy_client: no progress bar without tqdm: "
            "pip install 'batchproxy-client[progress]' (or tqdm), or pass progress=False",
            stacklevel=4,
        )
        return None
    return tqdm(total=total, unit="call")


def _is_pending(exc: BaseException) -> bool:
    return (
        isinstance(exc, openai.UnprocessableEntityError)
        and "x-batch-request-id" in exc.response.headers
    )


class _Results:
    """Results in the order of the calls, with the progress bar and the first error."""

    def __init__(self, total: int, progress: bool, return_exceptions: bool) -> None:
        self.values: list[Any] = [None] * total
        self.bar = _progress(total, progress)
        self.return_exceptions = return_exceptions

    def settle(self, index: int, wait: bool, outcome: Any, error: BaseException | None) -> bool:
        """Record a call's outcome; False when it is pending and should be asked again."""
        if error is not None and not wait and _is_pending(error):
            return False
        self.values[index] = error if error is not None else outcome
        if self.bar is not None:
            self.bar.update(1)
        return True

    def final(self) -> list[Any]:
        if self.bar is not None:
            self.bar.close()
        if not self.return_exceptions:
            for value in self.values:
                if isinstance(value, BaseException):
                    raise value
        return self.values


def bulk(
    calls: Iterable[Callable[[], T]],
    *,
    concurrency: int = 32,
    progress: bool = True,
    return_exceptions: bool = False,
) -> list[T]:
    """Run zero-argument calls (e.g. `lambda: client.responses.create(...)`) in threads and
    return their results in the order of `calls`; a progress bar with tqdm installed (a
    warning says so without it).

    1. Every call is made once without waiting, so that all are queued at the proxy (and go
       into the same batches) before any of them waits.
    2. The pending ones are made again, each waiting for its answer (the client's waiting
       transport), `concurrency` at a time.
    With `return_exceptions`, a call that raised gives its exception in its place; otherwise
    the first exception (in call order) is raised once every call has ended.
    """
    calls = list(calls)
    results = _Results(len(calls), progress, return_exceptions)

    def run(index: int, wait: bool) -> bool:
        token = _waiting.set(wait)
        try:
            return results.settle(index, wait, calls[index](), None)
        except Exception as exc:
            return results.settle(index, wait, None, exc)
        finally:
            _waiting.reset(token)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        settled = list(pool.map(lambda i: run(i, False), range(len(calls))))
        pending = [i for i, done in enumerate(settled) if not done]
        list(pool.map(lambda i: run(i, True), pending))
    return results.final()


async def abulk(
    calls: Iterable[Callable[[], Awaitable[T]]],
    *,
    concurrency: int = 256,
    progress: bool = True,
    return_exceptions: bool = False,
) -> list[T]:
    """`bulk` for coroutines (`lambda: client.responses.create(...)` on an AsyncOpenAI):
    every call once without waiting, then the pending ones waiting, at most `concurrency`
    at a time; results in order."""
    calls = list(calls)
    results = _Results(len(calls), progress, return_exceptions)
    gate = asyncio.Semaphore(max(1, concurrency))

    async def run(index: int, wait: bool) -> bool:
        async with gate:
            _waiting.set(wait)  # each task has its own copy of the context
            try:
                return results.settle(index, wait, await calls[index](), None)
            except Exception as exc:
                return results.settle(index, wait, None, exc)

    settled = await asyncio.gather(*(run(i, False) for i in range(len(calls))))
    pending = [i for i, done in enumerate(settled) if not done]
    await asyncio.gather(*(run(i, True) for i in pending))
    return results.final()
