// A `fetch` for `new OpenAI({ fetch })` that waits for a batchproxy's answer: while the proxy
// answers 422 with X-Batch-Request-Id (the call waits for its batch), it sleeps the Retry-After
// the proxy sent and repeats the identical call, so every SDK call simply resolves with its
// answer. After `deadlineMs` the 422 goes to the SDK, which throws UnprocessableEntityError.
//
// The SDK's own `timeout` covers the whole fetch, waits included: give the client a timeout
// above the deadline (`waitingOptions` does both).

import { AsyncLocalStorage } from "node:async_hooks";

const DEFAULT_DEADLINE_MS = 26 * 3600 * 1000;
// Set while `bulk` makes every call once, so that all are queued before any of them waits.
const submitting = new AsyncLocalStorage();

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    function onAbort() {
      clearTimeout(timer);
      reject(signal.reason);
    }
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export function waitingFetch({
  fetch: inner = globalThis.fetch,
  deadlineMs = DEFAULT_DEADLINE_MS,
  minWaitMs = 1000,
  maxWaitMs = 300_000,
} = {}) {
  return async function fetchWaiting(url, init = {}) {
    const until = Date.now() + deadlineMs;
    for (;;) {
      const response = await inner(url, init);
      if (response.status !== 422 || !response.headers.has("x-batch-request-id")) return response;
      if (submitting.getStore()) return response;
      const left = until - Date.now();
      if (left <= 0) return response;
      const seconds = Number(response.headers.get("retry-after") ?? 60);
      const wait = Math.min(Math.max((Number.isFinite(seconds) ? seconds : 60) * 1000, minWaitMs), maxWaitMs, left);
      await response.body?.cancel();
      await sleep(wait, init.signal);
    }
  };
}

// Client options in one: `new OpenAI({ baseURL, apiKey, ...waitingOptions({ deadlineMs }) })`.
export function waitingOptions(options = {}) {
  const deadlineMs = options.deadlineMs ?? DEFAULT_DEADLINE_MS;
  return { fetch: waitingFetch({ ...options, deadlineMs }), timeout: deadlineMs + 60_000 };
}

// Run zero-argument async calls (`() => client.responses.create(...)`), results in the order of
// `calls`: first every call once without waiting, so that all are queued at the proxy (and go
// into the same batches), then the pending ones again, each waiting for its answer, at most
// `concurrency` at a time. `onProgress(done, total)` after each answer; by default a line on
// stderr. The first error, if any, is thrown once every call has ended.
export async function bulk(calls, { concurrency = 64, onProgress = stderrProgress } = {}) {
  const results = new Array(calls.length);
  const errors = new Array(calls.length);
  let done = 0;
  async function pool(indexes, wait) {
    const pending = [];
    let next = 0;
    async function worker() {
      while (next < indexes.length) {
        const index = indexes[next++];
        try {
          results[index] = await (wait ? calls[index]() : submitting.run(true, calls[index]));
        } catch (err) {
          if (!wait && err?.status === 422 && err.headers?.get?.("x-batch-request-id")) {
            pending.push(index);
            continue;
          }
          errors[index] = err ?? new Error("call failed");
        }
        done += 1;
        onProgress?.(done, calls.length);
      }
    }
    await Promise.all(Array.from({ length: Math.min(concurrency, indexes.length) }, worker));
    return pending.sort((a, b) => a - b);
  }
  const pending = await pool([...calls.keys()], false);
  await pool(pending, true);
  const failed = errors.findIndex((e) => e !== undefined);
  if (failed !== -1) throw errors[failed];
  return results;
}

function stderrProgress(done, total) {
  if (process.stderr.isTTY) process.stderr.write(`\r${done}/${total} calls answered${done === total ? "\n" : ""}`);
}
