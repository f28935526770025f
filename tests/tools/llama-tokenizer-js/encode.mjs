// Reads a JSON array of strings from stdin and prints a JSON array with, for each string, the Llama 2 token ids
// that llama-tokenizer-js gives it. No BOS is added (so the caller compares against Encode(text, addBos: false));
// the SentencePiece dummy prefix (one space before the text) is added, as Llama 2's tokenizer.model does.
import llamaTokenizer from 'llama-tokenizer-js';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const texts = JSON.parse(Buffer.concat(chunks).toString('utf8'));
if (!Array.isArray(texts) || texts.some(t => typeof t !== 'string')) {
  process.stderr.write('expected a JSON array of strings on stdin\n');
  process.exit(2);
}

const addBos = false;
const addDummyPrefix = true;
const ids = texts.map(text => llamaTokenizer.encode(text, addBos, addDummyPrefix));
process.stdout.write(JSON.stringify(ids) + '\n');
