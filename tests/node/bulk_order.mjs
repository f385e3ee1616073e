// The Node helper's bulk against a stub proxy (no network): each input is pending on its first
// ask only. Prints the order of the asks and the answers, as JSON.
import OpenAI from "openai";
import { bulk, waitingFetch } from "../../clients/node/index.js";

const asked = [];
async function stub(url, init) {
  const input = JSON.parse(init.body).input;
  const first = !asked.includes(input);
  asked.push(input);
  if (first) {
    return new Response(JSON.stringify({ error: { message: "pending", type: "batch_pending", code: "batch_pending" } }), {
      status: 422,
      headers: { "content-type": "application/json", "retry-after": "0", "x-batch-request-id": input },
    });
  }
  const body = { id: "resp_1", object: "response", output: [{ type: "message", role: "assistant", content: [{ type: "output_text", text: input }] }] };
  return new Response(JSON.stringify(body), { status: 200, headers: { "content-type": "application/json" } });
}

const client = new OpenAI({ baseURL: "http://proxy/v1", apiKey: "k", maxRetries: 0, fetch: waitingFetch({ fetch: stub, minWaitMs: 0 }) });
const inputs = Array.from({ length: 8 }, (_, i) => `n${i}`);
const answers = await bulk(inputs.map((input) => () => client.responses.create({ model: "m", input })), { concurrency: 2, onProgress: null });
console.log(JSON.stringify({ asked, answers: answers.map((a) => a.output_text) }));
