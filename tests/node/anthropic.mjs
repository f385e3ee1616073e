// Asks the proxy's /v1/messages twice with the official Anthropic TypeScript SDK, once for an
// answer and once for a request the fake Anthropic errors ([[status:400]]), and prints, as
// JSON, what came back: the status (422 while pending), the error body, or the answer's text.
// Usage: node anthropic.mjs BASE_URL API_KEY WHO
import Anthropic from "@anthropic-ai/sdk";

const [baseURL, apiKey, who] = process.argv.slice(2);
// A timeout, as the README says: without one the SDK refuses a large max_tokens unstreamed.
const client = new Anthropic({ baseURL, apiKey, maxRetries: 0, timeout: 600 * 1000 });

const ask = (text) =>
  client.messages.create({
    model: "claude-sonnet-4-20250514",
    max_tokens: 256,
    messages: [{ role: "user", content: text }],
  });

const calls = {
  message: async () => (await ask(`message for ${who}`)).content[0].text,
  refused: async () => (await ask(`refused for ${who} [[status:400]]`)).content[0].text,
};

const results = {};
for (const [name, call] of Object.entries(calls)) {
  try {
    results[name] = { status: 200, answer: await call() };
  } catch (err) {
    if (!(err instanceof Anthropic.APIError)) throw err;
    results[name] = {
      status: err.status,
      body: err.error,
      retryAfter: err.headers?.get?.("retry-after") ?? null,
      requestId: err.headers?.get?.("x-batch-request-id") ?? null,
    };
  }
}
console.log(JSON.stringify(results));
