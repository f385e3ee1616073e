// A `fetch` for `new OpenAI({ fetch })` that waits for a batchproxy's answer: while the proxy
// answers 422 with X-Batch-Request-Id (the call waits for its batch), it sleeps the Retry-After
// the proxy sent and repeats the identical call, so every SDK call simply resolves with its
// answer. After `deadlineMs` the 422 goes to the SDK, which throws UnprocessableEntityError.
//
// The SDK's own `timeout` covers the whole fetch, waits included: give the client a timeout
// above the deadline (`waitingOptions` does both).

const DEFAULT_DEADLINE_MS = 26 * 3600 * 1000;

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

// Run zero-argument async calls, at most `concurrency` at a time; results in the order of
// `calls`. `onProgress(done, total)` is called after each; by default a line on stderr.
export async function bulk(calls, { concurrency = 64, onProgress = stderrProgress } = {}) {
  const results = new Array(calls.length);
  let next = 0;
  let done = 0;
  async function worker() {
    while (next < calls.length) {
      const index = next++;
      try {
        results[index] = await calls[index]();
      } finally {
        done += 1;
        onProgress?.(done, calls.length);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, calls.length) }, worker));
  return results;
}

function stderrProgress(done, total) {
  if (process.stderr.isTTY) process.stderr.write(`\r${done}/${total} calls answered${done === total ? "\n" : ""}`);
}
