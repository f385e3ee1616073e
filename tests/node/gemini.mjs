// Asks the proxy's generateContent twice with Google's TypeScript SDK (@google/genai), once
// for an answer and once for a request the fake Gemini fails ([[status:400]]), and prints, as
// JSON, what came back: the status (422 while pending), the error body, or the answer's text.
// Usage: node gemini.mjs BASE_URL API_KEY WHO
import { ApiError, GoogleGenAI } from "@google/genai";

const [baseUrl, apiKey, who] = process.argv.slice(2);
const client = new GoogleGenAI({ apiKey, httpOptions: { baseUrl } }); // v1beta, its default

const ask = async (text) =>
  (await client.models.generateContent({ model: "gemini-2.5-flash", contents: text })).text;

const calls = {
  answer: () => ask(`answer for ${who}`),
  refused: () => ask(`refused for ${who} [[status:400]]`),
};

const results = {};
for (const [name, call] of Object.entries(calls)) {
  try {
    results[name] = { status: 200, answer: await call() };
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    results[name] = { status: err.status, body: JSON.parse(err.message) };
  }
}
console.log(JSON.stringify(results));
