// Asks the proxy for images and a video with the official Node SDK and prints, as JSON, what came back:
// the status (422 while pending) and the answer's image text (what the fake OpenAI drew).
// images.edit in the SDK always sends multipart, which the Batch API does not take: the JSON
// form goes through the SDK's own client.post (videos.create likewise). The video's content is
// downloaded through the proxy. Usage: node images.mjs BASE_URL API_KEY WHO
import OpenAI, { toFile } from "openai";

const [baseURL, apiKey, who] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const PNG_MAGIC_LENGTH = 8;
const MP4_MAGIC_LENGTH = 12;
const drawn = (image) =>
  Buffer.from(image.b64_json, "base64").subarray(PNG_MAGIC_LENGTH).toString().replace(/\0+$/, "");

const calls = {
  gptImage: async () =>
    drawn((await client.images.generate({ model: "gpt-image-1", prompt: `a fox for ${who}` })).data[0]),
  dallE: async () =>
    (await client.images.generate({ model: "dall-e-3", prompt: `a lake for ${who}`, quality: "standard" })).data[0]
      .revised_prompt,
  edit: async () =>
    drawn(
      (
        await client.post("/images/edits", {
          body: {
            model: "gpt-image-1",
            prompt: `a hat for ${who}`,
            images: [{ image_url: "https://example.com/cat.png" }],
          },
        })
      ).data[0],
    ),
  video: async () => {
    const video = await client.post("/videos", { body: { model: "sora-2", prompt: `a film for ${who}` } });
    const content = await client.videos.downloadContent(video.id);
    return Buffer.from(await content.arrayBuffer()).subarray(MP4_MAGIC_LENGTH).toString();
  },
  multipartEdit: async () =>
    (await client.images.edit({ model: "gpt-image-1", prompt: "a hat", image: await toFile(Buffer.from("x"), "cat.png") }))
      .created,
};

const results = {};
for (const [name, call] of Object.entries(calls)) {
  try {
    results[name] = { status: 200, answer: await call() };
  } catch (err) {
    if (!(err instanceof OpenAI.APIError)) throw err;
    results[name] = { status: err.status, code: err.code, message: err.message };
  }
}
console.log(JSON.stringify(results));
