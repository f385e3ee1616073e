// The Node helper: the official SDK with the proxy's waiting fetch, no loop of our own.
// Usage: node waiting.mjs BASE_URL API_KEY WHO
import OpenAI from "openai";
import { bulk, waitingOptions } from "../../clients/node/index.js";

const [baseURL, apiKey, who] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, ...waitingOptions({ deadlineMs: 120_000 }) });

const single = await client.responses.create({ model: "gpt-4.1-mini", input: `node single for ${who}` });
const many = await bulk(
  [0, 1, 2, 3].map((i) => () =>
    client.chat.completions.create({ model: "gpt-4o-mini", messages: [{ role: "user", content: `node bulk ${i} for ${who}` }] }),
  ),
  { concurrency: 4, onProgress: null },
);
console.log(JSON.stringify({ single: single.output_text, bulk: many.map((a) => a.choices[0].message.content) }));
