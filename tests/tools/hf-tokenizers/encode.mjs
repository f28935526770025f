// Reads a JSON array of strings from stdin and prints, for each, the ids Tokenizers.js (@huggingface/tokenizers, an
// independent JavaScript implementation of Hugging Face tokenizer.json) gives it, without special tokens added.
// Usage: node encode.mjs DIR, where DIR holds tokenizer.json and tokenizer_config.json.
// With --decode, reads a JSON array of id arrays and prints their decoded texts (special tokens skipped, no clean-up of
// spaces before punctuation: decoding here is lossless).
import { Tokenizer } from '@huggingface/tokenizers';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2];
const decode = process.argv.includes('--decode');
if (!dir) {
  process.stderr.write('usage: node encode.mjs DIR [--decode] < input.json\n');
  process.exit(2);
}
const json = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8'));
const config = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'));
const tokenizer = new Tokenizer(json, config);

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const input = JSON.parse(Buffer.concat(chunks).toString('utf8'));
if (!Array.isArray(input)) {
  process.stderr.write('expected a JSON array on stdin\n');
  process.exit(2);
}
const output = decode
  ? input.map(ids => tokenizer.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false }))
  : input.map(text => tokenizer.encode(text, { add_special_tokens: false }).ids);
process.stdout.write(JSON.stringify(output) + '\n');
