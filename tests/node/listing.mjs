// The official OpenAI Node SDK's auto-pagination over the proxy's GET /batch_requests, as over
// OpenAI's own lists: each page asks `after` the last id of the one before. Prints the ids.
// Usage: node listing.mjs BASE_URL API_KEY LIMIT
import OpenAI from "openai";
import { CursorPage } from "openai/pagination";

const [baseURL, apiKey, limit] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });

const ids = [];
for await (const row of client.getAPIList("/batch_requests", CursorPage, { query: { limit: Number(limit) } })) {
  ids.push(row.id);
}
console.log(JSON.stringify(ids));
