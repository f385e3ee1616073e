// Reads a stream of the proxy's with the official Node SDK, as a caller's unchanged code would,
// and prints, as JSON, what the SDK assembled.
// Usage: node stream.mjs BASE_URL CASE, CASE one of:
//   chat           `stream: true` chat completions with usage: each choice's text and finish, the usage
//   responses      `responses.stream`: the output_text deltas and the final response
//   failed         a chat stream that ends in an error: the error's class and message
//   claude         Anthropic's `messages.stream`: the text deltas and the final message
//   claudeFailed   the same ending in an error
//   gemini         @google/genai's `generateContentStream`: each chunk's text
//   geminiFailed   the same ending in an error
import Anthropic from "@anthropic-ai/sdk";
import { ApiError, GoogleGenAI } from "@google/genai";
import OpenAI from "openai";

const [baseURL, which] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${baseURL}/v1`, apiKey: "k", maxRetries: 0 });
const claude = new Anthropic({ baseURL, apiKey: "k", maxRetries: 0 });
const gemini = new GoogleGenAI({ apiKey: "k", httpOptions: { baseUrl: baseURL } });
const ask = { model: "gpt-4o", messages: [{ role: "user", content: "Hi" }] };

async function chat() {
  const stream = await client.chat.completions.create({ ...ask, stream: true, stream_options: { include_usage: true } });
  const texts = {};
  const finish = {};
  let usage = null;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      texts[choice.index] = (texts[choice.index] ?? "") + (choice.delta.content ?? "");
      finish[choice.index] = finish[choice.index] ?? choice.finish_reason;
    }
    usage = chunk.usage ?? usage;
  }
  return { texts, finish, usage };
}

async function responses() {
  const stream = client.responses.stream({ model: "o4-mini", input: "Hi" });
  let text = "";
  stream.on("response.output_text.delta", (event) => { text += event.delta; });
  const final = await stream.finalResponse();
  return { text, final };
}

async function failed() {
  try {
    for await (const _ of await client.chat.completions.create({ ...ask, stream: true }));
  } catch (err) {
    return { error: err.constructor.name, message: err.message };
  }
  return { error: null };
}

async function claudeStream() {
  const stream = claude.messages.stream({
    model: "claude-sonnet-4-20250514",
    max_tokens: 1024,
    messages: [{ role: "user", content: "Weather?" }],
  });
  let text = "";
  stream.on("text", (delta) => { text += delta; });
  const final = await stream.finalMessage();
  return { text, final };
}

async function claudeFailed() {
  try {
    await claudeStream();
  } catch (err) {
    return { error: err.constructor.name, message: err.message, body: err.error ?? null };
  }
  return { error: null };
}

async function geminiStream() {
  const stream = await gemini.models.generateContentStream({ model: "gemini-2.5-flash", contents: "Hi" });
  const texts = [];
  for await (const chunk of stream) texts.push(chunk.text ?? null);
  return { texts };
}

async function geminiFailed() {
  try {
    await geminiStream();
  } catch (err) {
    return { error: err.constructor.name, status: err instanceof ApiError ? err.status : null, message: err.message };
  }
  return { error: null };
}

const cases = { chat, responses, failed, claude: claudeStream, claudeFailed, gemini: geminiStream, geminiFailed };
const result = await cases[which]();
console.log(JSON.stringify(result));
