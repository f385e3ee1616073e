// Asks the proxy each of the five endpoints once with the official Node SDK and prints, as JSON,
// what came back: the status (422 while pending) and the answer's text.
// Usage: node client.mjs BASE_URL API_KEY WHO
import OpenAI from "openai";

const [baseURL, apiKey, who] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });

const calls = {
  responses: async () => (await client.responses.create({ model: "gpt-4.1-mini", input: `responses for ${who}` })).output_text,
  chat: async () => (await client.chat.completions.create({ model: "gpt-4o-mini", messages: [{ role: "user", content: `chat for ${who}` }] })).choices[0].message.content,
  completions: async () => (await client.completions.create({ model: "gpt-3.5-turbo-instruct", prompt: `completions for ${who}` })).choices[0].text,
  embeddings: async () => (await client.embeddings.create({ model: "text-embedding-3-small", input: `embeddings for ${who}` })).data[0].embedding.length,
  moderations: async () => (await client.moderations.create({ model: "omni-moderation-latest", input: `moderations for ${who}` })).results.length,
};

const results = {};
for (const [name, call] of Object.entries(calls)) {
  try {
    results[name] = { status: 200, answer: await call() };
  } catch (err) {
    if (!(err instanceof OpenAI.APIError)) throw err;
    results[name] = { status: err.status, code: err.code, retryAfter: err.headers?.get?.("retry-after") ?? null };
  }
}
console.log(JSON.stringify(results));
