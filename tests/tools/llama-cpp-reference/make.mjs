// Golden logits for the Qwen2 / Qwen3 support, from an independent implementation: llama.cpp (through node-llama-cpp).
//
//   npm ci --prefix tests/tools/llama-cpp-reference && node tests/tools/llama-cpp-reference/make.mjs
//
// 1. Calibration: converts the transformers-made tiny Llama in Models/Reference/tiny/ to GGUF, evaluates it with
//    llama.cpp and compares with transformers' logits (tiny-logits.json); exits non-zero above CALIBRATION_TOLERANCE.
// 2. Writes tiny random Qwen2 and Qwen3 models in Hugging Face format (config.json + one F32 model.safetensors),
//    converts what was written to GGUF, evaluates them with llama.cpp and writes tiny-qwen{2,3}-logits.json.
// Every step is deterministic (mulberry32 + Box-Muller with fixed seeds, F32 everywhere, one thread).
//
// Raw logits: node-llama-cpp only hands out next-token probabilities (a float32 softmax of llama.cpp's logits over
// the whole vocabulary, greedy sampler, nothing else in the chain). The GGUF given to llama.cpp therefore carries one
// extra vocabulary entry (id V) whose output-matrix row is all zeros, so its logit is exactly 0 at every position;
// logit_i = ln p_i - ln p_V recovers llama.cpp's raw logits (error ~1e-7, float32 rounding of the probabilities).
// The extra row exists only in the temporary GGUF; the Hugging Face files keep vocab_size V.
//
// A small float64 forward pass written here from the Hugging Face definitions (forward64) is run as a third opinion:
// it must agree with llama.cpp too, which shows that the GGUF mapping means what the Hugging Face files mean.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "../../..");
const REF = path.join(REPO, "tests/IlgpuMedusa.Tests/Models/Reference");
const NLC_VERSION = JSON.parse(fs.readFileSync(path.join(HERE, "node_modules/node-llama-cpp/package.json"), "utf8")).version;
const LLAMA_CPP_RELEASE = JSON.parse(fs.readFileSync(
    path.join(HERE, "node_modules/node-llama-cpp/llama/binariesGithubRelease.json"), "utf8")).release;
const TOKENS = [1, 17, 42, 99, 200, 3, 250, 7, 7, 128];

// Both sides compute in float32 (F32 weights, F32 KV cache, no flash attention). Logits here are O(1..5) and each
// one is the end of ~10^3-10^4 float32 multiply-adds through RMSNorm, softmax, SiLU and two layers, accumulated in a
// different order by torch and by ggml (SIMD dot products, its own exp/SiLU approximations): the expected gap is a
// few 1e-6. 1e-4 leaves an order of magnitude of headroom for another CPU's SIMD path, yet a real mistake (RoPE
// layout, a swapped or missing tensor, F16 rounding of the KV cache: ~1e-3) is at least 10x larger.
const CALIBRATION_TOLERANCE = 1e-4;

if (os.endianness() !== "LE") throw new Error("little-endian host expected (safetensors and GGUF are little-endian)");

// ---------------------------------------------------------------- deterministic random numbers

function mulberry32(seed) {
    let state = seed >>> 0;
    return () => {
        state = (state + 0x6d2b79f5) >>> 0;
        let t = state;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}

function gaussianSource(seed) {
    const uniform = mulberry32(seed);
    let spare = null;
    return () => {
        if (spare !== null) { const z = spare; spare = null; return z; }
        const u1 = 1 - uniform(); // (0, 1]
        const u2 = uniform();
        const r = Math.sqrt(-2 * Math.log(u1));
        spare = r * Math.sin(2 * Math.PI * u2);
        return r * Math.cos(2 * Math.PI * u2);
    };
}

function randomTensor(gauss, shape, mean, std) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = mean + std * gauss();
    return { shape, data };
}

// ---------------------------------------------------------------- safetensors

function readSafetensors(file) {
    const buf = fs.readFileSync(file);
    const headerLength = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + headerLength).toString("utf8"));
    const base = 8 + headerLength;
    const tensors = new Map();
    for (const [name, info] of Object.entries(header)) {
        if (name === "__metadata__") continue;
        if (info.dtype !== "F32") throw new Error(`${file}: ${name} is ${info.dtype}, only F32 is handled`);
        const [begin, end] = info.data_offsets;
        const bytes = new Uint8Array(end - begin);
        bytes.set(buf.subarray(base + begin, base + end));
        const data = new Float32Array(bytes.buffer);
        if (data.length !== info.shape.reduce((a, b) => a * b, 1)) throw new Error(`${file}: ${name} size mismatch`);
        tensors.set(name, { shape: info.shape, data });
    }
    return tensors;
}

function readHfModel(dir) {
    const index = path.join(dir, "model.safetensors.index.json");
    const tensors = new Map();
    const files = fs.existsSync(index)
        ? [...new Set(Object.values(JSON.parse(fs.readFileSync(index, "utf8")).weight_map))]
        : ["model.safetensors"];
    for (const f of files) for (const [k, v] of readSafetensors(path.join(dir, f))) tensors.set(k, v);
    return { config: JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")), tensors };
}

function writeSafetensors(file, tensors) {
    const names = [...tensors.keys()].sort();
    const header = { __metadata__: { format: "pt" } };
    let offset = 0;
    for (const name of names) {
        const { shape, data } = tensors.get(name);
        header[name] = { dtype: "F32", shape, data_offsets: [offset, offset + data.byteLength] };
        offset += data.byteLength;
    }
    let json = JSON.stringify(header);
    json += " ".repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8); // data starts 8-aligned
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
    const parts = [length, Buffer.from(json, "utf8")];
    for (const name of names) {
        const { data } = tensors.get(name);
        parts.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    }
    fs.writeFileSync(file, Buffer.concat(parts));
}

// config.json as Python's json.dump(indent=2) writes it, floats included ("1e-06", "1000000.0").
function pyFloat(text) { return `@@PYFLOAT@@${text}`; }
function writeConfig(file, config) {
    fs.writeFileSync(file, JSON.stringify(config, null, 2).replace(/"@@PYFLOAT@@([^"]*)"/g, "$1") + "\n");
}

// ---------------------------------------------------------------- GGUF v3 writer

const GGUF = { UINT32: 4, INT32: 5, FLOAT32: 6, BOOL: 7, STRING: 8, ARRAY: 9 };
const GGML_TYPE_F32 = 0;
const ALIGNMENT = 32;

class ByteWriter {
    constructor() { this.parts = []; this.length = 0; }
    push(b) { this.parts.push(b); this.length += b.length; }
    u32(v) { const b = Buffer.alloc(4); b.writeUInt32LE(v); this.push(b); }
    i32(v) { const b = Buffer.alloc(4); b.writeInt32LE(v); this.push(b); }
    u64(v) { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); this.push(b); }
    f32(v) { const b = Buffer.alloc(4); b.writeFloatLE(v); this.push(b); }
    str(s) { const b = Buffer.from(s, "utf8"); this.u64(b.length); this.push(b); }
    pad(alignment) { const n = (alignment - (this.length % alignment)) % alignment; if (n) this.push(Buffer.alloc(n)); }
}

// kv: [key, type, value] where value is a number, string, boolean or, for ARRAY, {type, items}.
function writeGguf(file, kv, tensors) {
    const w = new ByteWriter();
    w.push(Buffer.from("GGUF", "ascii"));
    w.u32(3);
    w.u64(tensors.length);
    w.u64(kv.length);
    const value = (type, v) => {
        switch (type) {
            case GGUF.UINT32: w.u32(v); break;
            case GGUF.INT32: w.i32(v); break;
            case GGUF.FLOAT32: w.f32(v); break;
            case GGUF.BOOL: w.push(Buffer.from([v ? 1 : 0])); break;
            case GGUF.STRING: w.str(v); break;
            default: throw new Error(`GGUF type ${type} not handled`);
        }
    };
    for (const [key, type, v] of kv) {
        w.str(key);
        w.u32(type);
        if (type === GGUF.ARRAY) {
            w.u32(v.type);
            w.u64(v.items.length);
            for (const item of v.items) value(v.type, item);
        } else value(type, v);
    }
    let offset = 0;
    for (const t of tensors) {
        w.str(t.name);
        w.u32(t.dims.length);
        for (const d of t.dims) w.u64(d);
        w.u32(GGML_TYPE_F32);
        w.u64(offset);
        offset += t.data.byteLength;
        offset += (ALIGNMENT - (offset % ALIGNMENT)) % ALIGNMENT;
    }
    w.pad(ALIGNMENT);
    for (const t of tensors) {
        w.push(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
        w.pad(ALIGNMENT);
    }
    fs.writeFileSync(file, Buffer.concat(w.parts));
}

// ---------------------------------------------------------------- Hugging Face -> GGUF

function hfHyper(config) {
    const D = config.hidden_size, H = config.num_attention_heads;
    return {
        D, H, F: config.intermediate_size, L: config.num_hidden_layers, V: config.vocab_size,
        Hkv: config.num_key_value_heads ?? H,
        Dh: config.head_dim ?? D / H,
        eps: config.rms_norm_eps,
        theta: config.rope_theta ?? config.rope_parameters?.rope_theta,
        ctx: config.max_position_embeddings,
        tied: !!config.tie_word_embeddings,
        bos: config.bos_token_id, eos: config.eos_token_id,
    };
}

// llama.cpp's `llama` graph rotates interleaved pairs (2i, 2i+1) of each head by angle i; Hugging Face rotates
// (i, i + Dh/2) ("rotate_half"). Reordering the rows of q_proj / k_proj inside each head so that GGUF row 2i+j is HF
// row i + j*Dh/2 (j = 0, 1) makes the interleaved rotation act on exactly the pairs HF rotates, with the same angle;
// q and k get the same reordering, so q·k is unchanged. Rows of [rows, cols] (cols = 1 for a bias).
function interleaveRopeRows(t, heads, Dh) {
    const cols = t.shape.length === 2 ? t.shape[1] : 1;
    const out = new Float32Array(t.data.length);
    const half = Dh / 2;
    for (let h = 0; h < heads; h++)
        for (let i = 0; i < half; i++)
            for (let j = 0; j < 2; j++) {
                const src = h * Dh + i + j * half, dst = h * Dh + 2 * i + j;
                out.set(t.data.subarray(src * cols, (src + 1) * cols), dst * cols);
            }
    return { shape: t.shape, data: out };
}

// Appends one all-zero row to a [V, D] matrix: the reference token whose logit is exactly 0 (see the header).
function withZeroRow(t) {
    const [rows, cols] = t.shape;
    const data = new Float32Array((rows + 1) * cols);
    data.set(t.data);
    return { shape: [rows + 1, cols], data };
}

const LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
};

function hfToGguf(file, arch, { config, tensors }) {
    const p = hfHyper(config);
    const out = [];
    for (const [name, t0] of tensors) {
        let t = t0, gguf;
        if (name === "model.embed_tokens.weight") { gguf = "token_embd.weight"; t = withZeroRow(t); }
        else if (name === "lm_head.weight") { gguf = "output.weight"; t = withZeroRow(t); }
        else if (name === "model.norm.weight") gguf = "output_norm.weight";
        else {
            const m = /^model\.layers\.(\d+)\.(.+)$/.exec(name);
            if (!m || !LAYER_NAMES[m[2]]) throw new Error(`no GGUF name for ${name}`);
            gguf = `blk.${m[1]}.${LAYER_NAMES[m[2]]}`;
            if (arch === "llama" && /self_attn\.[qk]_proj\./.test(m[2]))
                t = interleaveRopeRows(t, m[2].startsWith("self_attn.q") ? p.H : p.Hkv, p.Dh);
        }
        out.push({ name: gguf, dims: [...t.shape].reverse(), data: t.data });
    }
    if (p.tied === tensors.has("lm_head.weight")) throw new Error("tie_word_embeddings disagrees with lm_head.weight");
    out.sort((a, b) => a.name.localeCompare(b.name, "en"));

    const nVocab = p.V + 1; // + the zero-logit reference token
    const tokens = [], types = [];
    for (let i = 0; i < nVocab; i++) {
        // SentencePiece-style vocabulary, the simplest llama.cpp loads: <unk> <s> </s>, byte tokens, and the extra one.
        // The contents are irrelevant (token ids are fed directly), only the count must match the embedding rows.
        if (i === 0) { tokens.push("<unk>"); types.push(2); }
        else if (i === 1) { tokens.push("<s>"); types.push(3); }
        else if (i === 2) { tokens.push("</s>"); types.push(3); }
        else if (i < p.V) { tokens.push(`<0x${i.toString(16).toUpperCase().padStart(2, "0")}>`); types.push(6); }
        else { tokens.push(`<zero-logit-${i}>`); types.push(5); }
    }
    const a = (k) => `${arch}.${k}`;
    const kv = [
        ["general.architecture", GGUF.STRING, arch],
        ["general.name", GGUF.STRING, `tiny-${arch}`],
        ["general.alignment", GGUF.UINT32, ALIGNMENT],
        ["general.file_type", GGUF.UINT32, 0], // all F32
        [a("context_length"), GGUF.UINT32, p.ctx],
        [a("embedding_length"), GGUF.UINT32, p.D],
        [a("feed_forward_length"), GGUF.UINT32, p.F],
        [a("block_count"), GGUF.UINT32, p.L],
        [a("attention.head_count"), GGUF.UINT32, p.H],
        [a("attention.head_count_kv"), GGUF.UINT32, p.Hkv],
        [a("attention.key_length"), GGUF.UINT32, p.Dh],
        [a("attention.value_length"), GGUF.UINT32, p.Dh],
        [a("rope.dimension_count"), GGUF.UINT32, p.Dh],
        [a("rope.freq_base"), GGUF.FLOAT32, p.theta],
        [a("attention.layer_norm_rms_epsilon"), GGUF.FLOAT32, p.eps],
        [a("vocab_size"), GGUF.UINT32, nVocab],
        ["tokenizer.ggml.model", GGUF.STRING, "llama"],
        ["tokenizer.ggml.tokens", GGUF.ARRAY, { type: GGUF.STRING, items: tokens }],
        ["tokenizer.ggml.scores", GGUF.ARRAY, { type: GGUF.FLOAT32, items: tokens.map(() => 0) }],
        ["tokenizer.ggml.token_type", GGUF.ARRAY, { type: GGUF.INT32, items: types }],
        ["tokenizer.ggml.unknown_token_id", GGUF.UINT32, 0],
        ["tokenizer.ggml.bos_token_id", GGUF.UINT32, p.bos],
        ["tokenizer.ggml.eos_token_id", GGUF.UINT32, p.eos],
        ["tokenizer.ggml.add_bos_token", GGUF.BOOL, false],
    ];
    writeGguf(file, kv, out);
    return p;
}

// ---------------------------------------------------------------- llama.cpp evaluation

async function llamaCppLogits(llama, ggufFile, V, tokens, kvType) {
    const model = await llama.loadModel({ modelPath: ggufFile, gpuLayers: 0, useMmap: false });
    try {
        const context = await model.createContext({
            contextSize: 256, batchSize: tokens.length, sequences: 1, threads: 1, flashAttention: false,
            experimentalKvCacheKeyType: kvType, experimentalKvCacheValueType: kvType,
        });
        try {
            const sequence = context.getSequence();
            // temperature 0 (greedy), no penalties, no token bias: the probabilities are the plain softmax of the logits.
            const results = await sequence.controlledEvaluate(tokens.map((t) => [t, { generateNext: { probabilities: true } }]));
            return results.map((r, pos) => {
                const probs = r?.next?.probabilities;
                if (!probs || probs.size !== V + 1) throw new Error(`position ${pos}: expected ${V + 1} probabilities`);
                const ref = probs.get(V);
                if (!(ref > 1e-30)) throw new Error(`position ${pos}: reference probability ${ref}`);
                const logits = new Array(V);
                for (let i = 0; i < V; i++) {
                    const q = probs.get(i);
                    if (!(q > 0)) throw new Error(`position ${pos}: probability of ${i} is ${q}`);
                    logits[i] = Math.log(q) - Math.log(ref);
                }
                return logits;
            });
        } finally { await context.dispose(); }
    } finally { await model.dispose(); }
}

// ---------------------------------------------------------------- float64 forward pass from the Hugging Face definitions

function forward64({ config, tensors }, tokens) {
    const p = hfHyper(config);
    const get = (n) => tensors.get(n)?.data;
    const matvec = (w, x, rows, cols, bias) => {
        const y = new Float64Array(rows);
        for (let r = 0; r < rows; r++) {
            let s = bias ? bias[r] : 0;
            for (let c = 0; c < cols; c++) s += w[r * cols + c] * x[c];
            y[r] = s;
        }
        return y;
    };
    const rmsNorm = (x, w, off = 0, n = x.length) => {
        let ss = 0;
        for (let i = 0; i < n; i++) ss += x[off + i] * x[off + i];
        const k = 1 / Math.sqrt(ss / n + p.eps);
        for (let i = 0; i < n; i++) x[off + i] = x[off + i] * k * w[i];
    };
    const rope = (x, heads, pos) => { // rotate_half
        const half = p.Dh / 2;
        for (let h = 0; h < heads; h++)
            for (let i = 0; i < half; i++) {
                const angle = pos / Math.pow(p.theta, (2 * i) / p.Dh);
                const c = Math.cos(angle), s = Math.sin(angle);
                const a = x[h * p.Dh + i], b = x[h * p.Dh + i + half];
                x[h * p.Dh + i] = a * c - b * s;
                x[h * p.Dh + i + half] = b * c + a * s;
            }
    };
    const T = tokens.length;
    const emb = get("model.embed_tokens.weight");
    let hs = tokens.map((t) => Float64Array.from(emb.subarray(t * p.D, (t + 1) * p.D)));
    for (let l = 0; l < p.L; l++) {
        const n = (s) => get(`model.layers.${l}.${s}`);
        const qs = [], ks = [], vs = [];
        for (let t = 0; t < T; t++) {
            const x = Float64Array.from(hs[t]);
            rmsNorm(x, n("input_layernorm.weight"));
            const q = matvec(n("self_attn.q_proj.weight"), x, p.H * p.Dh, p.D, n("self_attn.q_proj.bias"));
            const k = matvec(n("self_attn.k_proj.weight"), x, p.Hkv * p.Dh, p.D, n("self_attn.k_proj.bias"));
            const v = matvec(n("self_attn.v_proj.weight"), x, p.Hkv * p.Dh, p.D, n("self_attn.v_proj.bias"));
            if (n("self_attn.q_norm.weight")) {
                for (let h = 0; h < p.H; h++) rmsNorm(q, n("self_attn.q_norm.weight"), h * p.Dh, p.Dh);
                for (let h = 0; h < p.Hkv; h++) rmsNorm(k, n("self_attn.k_norm.weight"), h * p.Dh, p.Dh);
            }
            rope(q, p.H, t);
            rope(k, p.Hkv, t);
            qs.push(q); ks.push(k); vs.push(v);
        }
        const next = [];
        for (let t = 0; t < T; t++) {
            const att = new Float64Array(p.H * p.Dh);
            for (let h = 0; h < p.H; h++) {
                const g = Math.floor(h / (p.H / p.Hkv));
                const scores = [];
                for (let u = 0; u <= t; u++) {
                    let s = 0;
                    for (let i = 0; i < p.Dh; i++) s += qs[t][h * p.Dh + i] * ks[u][g * p.Dh + i];
                    scores.push(s / Math.sqrt(p.Dh));
                }
                const m = Math.max(...scores);
                const e = scores.map((s) => Math.exp(s - m));
                const z = e.reduce((a, b) => a + b, 0);
                for (let u = 0; u <= t; u++)
                    for (let i = 0; i < p.Dh; i++) att[h * p.Dh + i] += (e[u] / z) * vs[u][g * p.Dh + i];
            }
            const o = matvec(n("self_attn.o_proj.weight"), att, p.D, p.H * p.Dh);
            const h1 = hs[t].map((v, i) => v + o[i]);
            const x = Float64Array.from(h1);
            rmsNorm(x, n("post_attention_layernorm.weight"));
            const gate = matvec(n("mlp.gate_proj.weight"), x, p.F, p.D);
            const up = matvec(n("mlp.up_proj.weight"), x, p.F, p.D);
            const act = gate.map((gv, i) => (gv / (1 + Math.exp(-gv))) * up[i]);
            const down = matvec(n("mlp.down_proj.weight"), act, p.D, p.F);
            next.push(h1.map((v, i) => v + down[i]));
        }
        hs = next;
    }
    const head = get("lm_head.weight") ?? emb;
    return hs.map((h) => {
        const x = Float64Array.from(h);
        rmsNorm(x, get("model.norm.weight"));
        return Array.from(matvec(head, x, p.V, p.D));
    });
}

function maxAbsDiff(a, b) {
    let m = 0;
    for (let t = 0; t < a.length; t++) for (let i = 0; i < a[t].length; i++) m = Math.max(m, Math.abs(a[t][i] - b[t][i]));
    return m;
}
function maxAbs(a) { return Math.max(...a.map((row) => Math.max(...row.map(Math.abs)))); }
function rms(a) { const f = a.flat(); return Math.sqrt(f.reduce((s, v) => s + v * v, 0) / f.length); }

// ---------------------------------------------------------------- the tiny Qwen models

const QWEN_SHAPE = { D: 64, F: 160, L: 2, H: 4, Hkv: 2, V: 256 };

function makeQwen(kind) {
    const { D, F, L, H, Hkv, V } = QWEN_SHAPE;
    const qwen3 = kind === "qwen3";
    const Dh = qwen3 ? 32 : D / H;
    const gauss = gaussianSource(qwen3 ? 0x5157_0003 : 0x5157_0002);
    const tensors = new Map();
    const add = (name, shape, mean, std) => tensors.set(name, randomTensor(gauss, shape, mean, std));
    add("model.embed_tokens.weight", [V, D], 0, 0.15);
    for (let l = 0; l < L; l++) {
        const n = (s) => `model.layers.${l}.${s}`;
        add(n("input_layernorm.weight"), [D], 1, 0.2);
        for (const [proj, rows] of [["q_proj", H * Dh], ["k_proj", Hkv * Dh], ["v_proj", Hkv * Dh]]) {
            add(n(`self_attn.${proj}.weight`), [rows, D], 0, 0.15);
            if (!qwen3) add(n(`self_attn.${proj}.bias`), [rows], 0, 0.5);
        }
        if (qwen3) {
            add(n("self_attn.q_norm.weight"), [Dh], 1, 0.3);
            add(n("self_attn.k_norm.weight"), [Dh], 1, 0.3);
        }
        add(n("self_attn.o_proj.weight"), [D, H * Dh], 0, 0.15);
        add(n("post_attention_layernorm.weight"), [D], 1, 0.2);
        add(n("mlp.gate_proj.weight"), [F, D], 0, 0.15);
        add(n("mlp.up_proj.weight"), [F, D], 0, 0.15);
        add(n("mlp.down_proj.weight"), [D, F], 0, 0.15);
    }
    add("model.norm.weight", [D], 1, 0.2);
    if (!qwen3) add("lm_head.weight", [V, D], 0, 0.15);

    // Laid out as the released Qwen2.5 / Qwen3 configs are (Qwen3 writes rope_theta as an integer, Qwen2.5 as a float).
    const config = qwen3 ? {
        architectures: ["Qwen3ForCausalLM"],
        attention_bias: false,
        attention_dropout: pyFloat("0.0"),
        bos_token_id: 1,
        eos_token_id: 2,
        head_dim: Dh,
        hidden_act: "silu",
        hidden_size: D,
        initializer_range: pyFloat("0.02"),
        intermediate_size: F,
        max_position_embeddings: 128,
        max_window_layers: L,
        model_type: "qwen3",
        num_attention_heads: H,
        num_hidden_layers: L,
        num_key_value_heads: Hkv,
        rms_norm_eps: pyFloat("1e-06"),
        rope_scaling: null,
        rope_theta: 1000000,
        sliding_window: null,
        tie_word_embeddings: true,
        torch_dtype: "float32",
        use_cache: true,
        use_sliding_window: false,
        vocab_size: V,
    } : {
        architectures: ["Qwen2ForCausalLM"],
        attention_dropout: pyFloat("0.0"),
        bos_token_id: 1,
        eos_token_id: 2,
        hidden_act: "silu",
        hidden_size: D,
        initializer_range: pyFloat("0.02"),
        intermediate_size: F,
        max_position_embeddings: 128,
        max_window_layers: L,
        model_type: "qwen2",
        num_attention_heads: H,
        num_hidden_layers: L,
        num_key_value_heads: Hkv,
        rms_norm_eps: pyFloat("1e-06"),
        rope_scaling: null,
        rope_theta: pyFloat("1000000.0"),
        sliding_window: 32,
        tie_word_embeddings: false,
        torch_dtype: "float32",
        use_cache: true,
        use_sliding_window: false,
        vocab_size: V,
    };
    const dir = path.join(REF, `tiny-${kind}`);
    fs.mkdirSync(dir, { recursive: true });
    writeConfig(path.join(dir, "config.json"), config);
    writeSafetensors(path.join(dir, "model.safetensors"), tensors);
    return dir;
}

function roundedLogits(logits) { return logits.map((row) => row.map((v) => Number(v.toPrecision(9)))); }

// ---------------------------------------------------------------- main

const started = Date.now();
const work = fs.mkdtempSync(path.join(os.tmpdir(), "llama-cpp-reference-"));
const llamaLog = [];
const llama = await getLlama({
    gpu: false, build: "never", usePrebuiltBinaries: true, progressLogs: false, maxThreads: 1,
    logLevel: LlamaLogLevel.warn, logger: (level, message) => llamaLog.push(`${level}: ${message.trimEnd()}`),
});
const KV = "F32";
let failed = false;
try {
    console.log(`llama.cpp ${LLAMA_CPP_RELEASE} through node-llama-cpp ${NLC_VERSION}, CPU, 1 thread`);

    // 1. calibration on the transformers-made Llama
    const tiny = readHfModel(path.join(REF, "tiny"));
    const expected = JSON.parse(fs.readFileSync(path.join(REF, "tiny-logits.json"), "utf8"));
    const tinyGguf = path.join(work, "tiny-llama.gguf");
    const tp = hfToGguf(tinyGguf, "llama", tiny);
    const got = await llamaCppLogits(llama, tinyGguf, tp.V, expected.tokens, KV);
    const gotF16 = await llamaCppLogits(llama, tinyGguf, tp.V, expected.tokens, "F16");
    const calibration = maxAbsDiff(got, expected.logits);
    console.log(`calibration (tiny Llama, ${expected.tokens.length} positions x ${tp.V}, |logit| <= ${maxAbs(expected.logits).toFixed(2)}):`);
    console.log(`  max |llama.cpp - transformers| = ${calibration.toExponential(2)} with an F32 KV cache` +
        ` (tolerance ${CALIBRATION_TOLERANCE}); with the default F16 KV cache: ${maxAbsDiff(gotF16, expected.logits).toExponential(2)}`);
    console.log(`  max |float64 forward - transformers| = ${maxAbsDiff(forward64(tiny, expected.tokens), expected.logits).toExponential(2)}`);
    if (!(calibration <= CALIBRATION_TOLERANCE)) {
        failed = true;
        throw new Error(`calibration failed: ${calibration} > ${CALIBRATION_TOLERANCE}`);
    }

    // 2. the Qwen models
    for (const kind of ["qwen2", "qwen3"]) {
        const dir = makeQwen(kind);
        const hf = readHfModel(dir); // convert what was written, not what is in memory
        const gguf = path.join(work, `tiny-${kind}.gguf`);
        const p = hfToGguf(gguf, kind, hf);
        const logits = await llamaCppLogits(llama, gguf, p.V, TOKENS, KV);
        const check = maxAbsDiff(logits, forward64(hf, TOKENS));
        console.log(`tiny-${kind}: ${fs.statSync(path.join(dir, "model.safetensors")).size} bytes of weights;` +
            ` llama.cpp logits rms ${rms(logits).toFixed(3)}, max |logit| ${maxAbs(logits).toFixed(3)};` +
            ` max |llama.cpp - float64 forward| = ${check.toExponential(2)}`);
        if (!(check <= CALIBRATION_TOLERANCE)) {
            failed = true;
            throw new Error(`tiny-${kind}: llama.cpp and the float64 forward pass disagree by ${check}`);
        }
        const source = `llama.cpp ${LLAMA_CPP_RELEASE} (CPU, 1 thread) through node-llama-cpp ${NLC_VERSION}, ` +
            `tests/tools/llama-cpp-reference/make.mjs: tiny-${kind}/ converted to an F32 GGUF (architecture ${kind}), ` +
            `all ${TOKENS.length} positions in one batch, KV cache ${KV} (experimentalKvCacheKeyType/ValueType), ` +
            `flash attention off, greedy sampler without penalties or biases; logits recovered from llama.cpp's softmax as ` +
            `ln p_i - ln p_ref, where p_ref belongs to an extra GGUF-only vocabulary entry whose output row is zero ` +
            `(logit exactly 0); calibrated against transformers on tiny/: max |delta logit| ${calibration.toExponential(1)}`;
        fs.writeFileSync(path.join(REF, `tiny-${kind}-logits.json`),
            JSON.stringify({ source, tokens: TOKENS, logits: roundedLogits(logits) }) + "\n");
    }
} catch (e) {
    failed = true;
    console.error(String(e?.stack ?? e));
    if (llamaLog.length) console.error("llama.cpp log:\n" + llamaLog.join("\n"));
} finally {
    await llama.dispose();
    fs.rmSync(work, { recursive: true, force: true });
}
console.log(`${failed ? "FAILED" : "done"} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
process.exit(failed ? 1 : 0);
