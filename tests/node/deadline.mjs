// The Node helper's deadline against a stub proxy that never answers: the SDK gets the 422.
import OpenAI from "openai";
import { waitingFetch } from "../../clients/node/index.js";

let asks = 0;
async function neverReady() {
  asks += 1;
  return new Response(JSON.stringify({ error: { message: "pending", type: "batch_pending", code: "batch_pending" } }), {
    status: 422,
    headers: { "content-type": "application/json", "retry-after": "1", "x-batch-request-id": "r1" },
  });
}

const fetch = waitingFetch({ fetch: neverReady, deadlineMs: 300, minWaitMs: 50, maxWaitMs: 50 });
const client = new OpenAI({ baseURL: "http://proxy/v1", apiKey: "k", maxRetries: 0, fetch });
const started = Date.now();
try {
  await client.responses.create({ model: "m", input: "x" });
  console.log(JSON.stringify({ answered: true }));
} catch (err) {
  console.log(JSON.stringify({ status: err.status, code: err.code, asks, ms: Date.now() - started }));
}
