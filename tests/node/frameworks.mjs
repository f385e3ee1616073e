// The Vercel AI SDK (`ai` with `@ai-sdk/openai`) as its users write it, but for the base URL, the
// key, a timeout and `Prefer: wait=N` where it does not stream. Prints, as JSON, what
// generateText and streamText gave; any error (streamText reports them to onError) exits 1.
// Usage: node frameworks.mjs BASE_URL API_KEY HOLD_HEADERS_JSON
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";

const [baseURL, apiKey, hold] = process.argv.slice(2);
const timeout = () => AbortSignal.timeout(60_000);
const held = createOpenAI({ baseURL, apiKey, headers: JSON.parse(hold) });
const streaming = createOpenAI({ baseURL, apiKey });

// maxRetries 0: no second call of the SDK's own can hide an error of the first.
const generated = await generateText({
  model: held("gpt-4o-mini"),
  prompt: "Vercel AI SDK, generateText",
  maxRetries: 0,
  abortSignal: timeout(),
});

const streamed = streamText({
  model: streaming("gpt-4o-mini"),
  prompt: "Vercel AI SDK, streamText",
  maxRetries: 0,
  abortSignal: timeout(),
  onError: ({ error }) => {
    console.error(error);
    process.exit(1);
  },
});
let text = "";
for await (const delta of streamed.textStream) text += delta;

console.log(JSON.stringify({ generateText: generated.text, streamText: text }));
