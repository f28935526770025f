// Renders chat templates with @huggingface/jinja (Hugging Face's JavaScript Jinja, written for chat templates), the
// reference the IlgpuMedusa tests hold their own Jinja interpreter to. Input on stdin:
//   {"now": "2026-12-08T10:00:00", "cases": [{"template": "...", "context": {...}}, ...]}
// Output on stdout: {"results": [{"text": "..."} or {"error": "..."}, ...]}, one per case, in order.
// The clock is pinned to "now" (local time) so that strftime_now prints the date the test expects; raise_exception
// throws, and the case's result is its error.
import { Template } from '@huggingface/jinja';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const input = JSON.parse(Buffer.concat(chunks).toString('utf8'));

const RealDate = Date;
const fixed = new RealDate(input.now ?? '2026-12-08T10:00:00').getTime();
globalThis.Date = class extends RealDate {
  constructor(...args) {
    if (args.length === 0) super(fixed);
    else super(...args);
  }
  static now() { return fixed; }
};

const results = input.cases.map(({ template, context }) => {
  try {
    return { text: new Template(template).render(context) };
  } catch (e) {
    return { error: String(e && e.message ? e.message : e) };
  }
});
process.stdout.write(JSON.stringify({ results }));
