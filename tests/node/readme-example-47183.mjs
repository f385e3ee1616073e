import OpenAI from "openai";
import { bulk, waitingOptions } from "file:///work/wt/hf/clients/node/index.js"; // npm install PATH/TO/batchproxy/clients/node

const client = new OpenAI({
  baseURL: "http://localhost:47183/v1",
  apiKey: "my-proxy-key",
  ...waitingOptions({ deadlineMs: 6 * 3600 * 1000 }), // a waiting fetch, and a timeout above it
});
const answer = await client.responses.create({ model: "gpt-4.1-mini", input: "Summarise the Batch API in one line." });
console.log(answer.output_text);
