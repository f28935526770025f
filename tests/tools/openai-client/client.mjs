// Drives an IlgpuMedusa server with OpenAI's official JavaScript SDK and prints what it got as one JSON object.
// Usage: node client.mjs BASE_URL MODEL PROMPT   (BASE_URL like http://127.0.0.1:8080/v1)
import OpenAI from "openai";
import { zodFunction, zodResponseFormat } from "openai/helpers/zod";
import { z } from "zod";

const [baseURL, model, prompt] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "not-checked", maxRetries: 0, timeout: 120_000 });
const messages = [{ role: "user", content: prompt }];
const result = {};

result.models = (await client.models.list()).data.map((m) => m.id);

const chat = await client.chat.completions.create({ model, messages, max_tokens: 30 });
result.chat = { text: chat.choices[0].message.content, finish: chat.choices[0].finish_reason, usage: chat.usage };

const stream = await client.chat.completions.create({ model, messages, max_tokens: 30, stream: true, stream_options: { include_usage: true } });
let text = "", chunks = 0, usage = null, finish = null;
for await (const chunk of stream) {
  chunks++;
  if (chunk.choices.length > 0) {
    text += chunk.choices[0].delta.content ?? "";
    finish = chunk.choices[0].finish_reason ?? finish;
  }
  if (chunk.usage) usage = chunk.usage;
}
result.chatStream = { text, chunks, finish, usage };

const completion = await client.completions.create({ model, prompt, max_tokens: 30 });
result.completion = { text: completion.choices[0].text, finish: completion.choices[0].finish_reason, usage: completion.usage };

const completionStream = await client.completions.create({ model, prompt, max_tokens: 30, stream: true });
text = "";
for await (const chunk of completionStream) text += chunk.choices[0]?.text ?? "";
result.completionStream = { text };

const scored = await client.chat.completions.create({ model, messages, max_tokens: 10, logprobs: true, top_logprobs: 2 });
result.chatLogprobs = {
  text: scored.choices[0].message.content,
  content: scored.choices[0].logprobs.content.map((t) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes, top: t.top_logprobs.map((a) => a.token) })),
};

const echoed = await client.completions.create({ model, prompt, max_tokens: 0, echo: true, logprobs: 1 });
result.promptScores = {
  text: echoed.choices[0].text,
  tokens: echoed.choices[0].logprobs.tokens,
  tokenLogprobs: echoed.choices[0].logprobs.token_logprobs,
  usage: echoed.usage,
};

const schema = {
  type: "object",
  properties: { mood: { enum: ["happy", "sad"] }, age: { type: "integer" } },
  required: ["mood", "age"],
  additionalProperties: false,
};
const structured = await client.chat.completions.create({
  model, messages, max_tokens: 12, response_format: { type: "json_schema", json_schema: { name: "card", strict: true, schema } },
});
result.structured = { text: structured.choices[0].message.content, finish: structured.choices[0].finish_reason };
const jsonMode = await client.chat.completions.create({ model, messages, max_tokens: 12, response_format: { type: "json_object" } });
result.jsonMode = { text: jsonMode.choices[0].message.content };

// The SDK's own structured-output helper: a zod schema becomes the request's JSON schema (anyOf with null for nullable
// fields), and parse() checks the reply against the zod schema itself.
const Card = z.object({ ok: z.boolean().nullable(), size: z.enum(["S", "M"]), extra: z.object({ tag: z.enum(["a", "b"]) }).nullable() });
const parsed = await client.chat.completions.parse({ model, messages, max_tokens: 40, response_format: zodResponseFormat(Card, "card") });
result.zod = {
  text: parsed.choices[0].message.content,
  finish: parsed.choices[0].finish_reason,
  parsed: parsed.choices[0].message.parsed,
  schema: zodResponseFormat(Card, "card").json_schema.schema,
};

// A required tool call: the SDK's zod function helper declares the tool, and parse() checks the call's arguments
// against the zod schema (it throws otherwise).
const Weather = z.object({ city: z.enum(["Paris", "Oslo"]), celsius: z.boolean() });
const toolReply = await client.chat.completions.parse({
  model, messages, max_tokens: 100, tools: [zodFunction({ name: "get_weather", parameters: Weather })], tool_choice: "required",
});
const toolCall = toolReply.choices[0].message.tool_calls?.[0];
result.tool = {
  finish: toolReply.choices[0].finish_reason,
  content: toolReply.choices[0].message.content,
  name: toolCall?.function?.name ?? null,
  parsed: toolCall?.function?.parsed_arguments ?? null,
};

for (const [name, request] of [
  ["badTemperature", { model, messages, temperature: 3 }],
  ["otherModel", { model: "gpt-4o", messages }],
  ["badSchema", { model, messages, response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "object", properties: { a: { not: { type: "string" } } } } } } }],
]) {
  try {
    await client.chat.completions.create(request);
    result[name] = { status: 0 };
  } catch (e) {
    result[name] = { status: e.status ?? -1, param: e.param ?? null, code: e.code ?? null, message: e.message };
  }
}

console.log(JSON.stringify(result));
