using IlgpuMedusa.Models;

namespace IlgpuMedusa.Compute;

/// <summary>Which kind of device a backend runs on.</summary>
public enum DeviceKind
{
    /// <summary>Pick the best available: CUDA, then an OpenCL GPU ILGPU accepts, then the host backend.</summary>
    Auto,
    /// <summary>The SIMD CPU backend (System.Numerics.Tensors + Parallel.For).</summary>
    Host,
    /// <summary>An NVIDIA GPU through ILGPU's CUDA backend (PTX).</summary>
    Cuda,
    /// <summary>An OpenCL device through ILGPU's OpenCL backend.</summary>
    OpenCL,
    /// <summary>ILGPU's CPU accelerator, an emulator of GPU semantics. For tests only: slow.</summary>
    CpuEmulator,
}

/// <summary>
/// The op set of the runtime: small and model-shaped. Shapes use the glossary of the README:
/// T tokens in the step, S committed sequence length, D model dim, H heads, Hkv kv heads, Dh head dim,
/// F FFN dim, V vocab, B KV block size. Every op exists on the host backend (the reference) and on the ILGPU
/// backend; conformance tests hold the kernels to the host results. Ops are asynchronous on accelerators;
/// downloads synchronise.
/// </summary>
public interface IComputeBackend : IDisposable
{
    /// <summary>The device kind.</summary>
    DeviceKind Kind { get; }

    /// <summary>Human-readable device name.</summary>
    string DeviceName { get; }

    /// <summary>Allocates a zero-filled tensor.</summary>
    DeviceTensor Allocate(DType type, int rows, int columns);

    /// <summary>
    /// Uploads a weight matrix made of the row blocks <paramref name="parts"/> stacked in order (all with the same
    /// column count), stored as <paramref name="storeAs"/> (F32, F16 or BF16). One-dimensional parts become one row.
    /// The result never refers to the parts' memory (every backend copies), so the checkpoint may be closed afterwards.
    /// </summary>
    DeviceTensor UploadWeight(IReadOnlyList<TensorData> parts, DType storeAs);

    /// <summary>
    /// Uploads the output classifier (lm_head) [V, D] like <see cref="UploadWeight"/>. A backend may store it in a form
    /// that serves <see cref="ProductArgMax"/> better; it stays a valid weight for MatMul and Embedding (a tied table).
    /// </summary>
    DeviceTensor UploadClassifier(IReadOnlyList<TensorData> parts, DType storeAs) => UploadWeight(parts, storeAs);

    /// <summary>Copies host floats into an F32 tensor (lengths must match).</summary>
    void Upload(DeviceTensor destination, ReadOnlySpan<float> source);

    /// <summary>Copies host ints into an I32 tensor (lengths must match).</summary>
    void Upload(DeviceTensor destination, ReadOnlySpan<int> source);

    /// <summary>Copies an F32 tensor to the host (waits for pending work).</summary>
    void Download(DeviceTensor source, Span<float> destination);

    /// <summary>Copies an I32 tensor to the host (waits for pending work).</summary>
    void Download(DeviceTensor source, Span<int> destination);

    /// <summary>
    /// Allocates a zero-filled KV cache of the layout's element type (F32, or F16: keys and values stored as binary16).
    /// </summary>
    KvCache AllocateKvCache(KvCacheLayout layout);

    /// <summary>Waits for all queued work.</summary>
    void Synchronize();

    /// <summary>output[t, :] = table[tokens[t], :]. output F32[T, D], tokens I32[T, 1], table [V, D] of any float dtype.</summary>
    void Embedding(DeviceTensor output, DeviceTensor tokens, DeviceTensor table);

    /// <summary>output[t] = input[t] / sqrt(mean(input[t]²) + eps) ⊙ weight. output, input F32[T, D]; weight [1, D].</summary>
    void RmsNorm(DeviceTensor output, DeviceTensor input, DeviceTensor weight, float eps);

    /// <summary>
    /// Per-head RMSNorm of queries and keys in place (Qwen3's q_norm and k_norm): in each row of qkv F32[T, W], each of the
    /// first <paramref name="queryHeads"/> + <paramref name="kvHeads"/> slices of <paramref name="headDim"/> columns becomes
    /// slice / sqrt(mean(slice²) + eps) ⊙ weight, with <paramref name="queryWeight"/> [1, Dh] for the query heads and
    /// <paramref name="keyWeight"/> [1, Dh] for the key heads (both F32); the values after them are left alone.
    /// </summary>
    void HeadRmsNorm(DeviceTensor qkv, int queryHeads, int kvHeads, int headDim, DeviceTensor queryWeight, DeviceTensor keyWeight, float eps);

    /// <summary>
    /// output[T, N] = (accumulate ? output : 0) + input[T, K] · weight[N, K]ᵀ. weight in F32, F16 or BF16.
    /// With <paramref name="accumulate"/> the residual add is fused into the projection.
    /// </summary>
    void MatMul(DeviceTensor output, DeviceTensor input, DeviceTensor weight, bool accumulate);

    /// <summary>
    /// output[T, N] = (accumulate ? output : 0) + RmsNorm(input, normWeight, eps) · weight[N, K]ᵀ: a transformer block's
    /// norm and its first projection. <paramref name="normed"/> F32[T, K] is scratch: this default writes the normalised
    /// input there and multiplies; a backend may fuse the two and leave it untouched (the ILGPU backend does for small T,
    /// saving a launch per norm).
    /// </summary>
    void NormMatMul(DeviceTensor output, DeviceTensor input, DeviceTensor normWeight, float eps, DeviceTensor weight, DeviceTensor normed, bool accumulate)
    {
        RmsNorm(normed, input, normWeight, eps);
        MatMul(output, normed, weight, accumulate);
    }

    /// <summary>
    /// Uploads a feed-forward block's gate and up matrices (each [F, D]) as the one weight <see cref="FfnGateUp"/> reads,
    /// in the row order that backend wants. This default stacks them, gate rows then up rows (what <see cref="SwiGlu"/>
    /// reads after a <see cref="MatMul"/>); the ILGPU backend interleaves them (gate i, up i) for its fused kernel.
    /// </summary>
    DeviceTensor UploadGateUp(TensorData gate, TensorData up, DType storeAs) => UploadWeight([gate, up], storeAs);

    /// <summary>
    /// The first half of a feed-forward block: ffn[T, F] = silu(g) ⊙ u with [g, u] = RmsNorm(input, normWeight, eps) ·
    /// W_gate/upᵀ, for a weight from <see cref="UploadGateUp"/>. <paramref name="normed"/> F32[T, D] and
    /// <paramref name="gateUpOut"/> F32[T, 2F] are scratch. This default is <see cref="NormMatMul"/> then
    /// <see cref="SwiGlu"/>; the ILGPU backend does all of it in one launch for small T.
    /// </summary>
    void FfnGateUp(DeviceTensor ffn, DeviceTensor input, DeviceTensor normWeight, float eps, DeviceTensor gateUp, DeviceTensor normed, DeviceTensor gateUpOut)
    {
        NormMatMul(gateUpOut, input, normWeight, eps, gateUp, normed, accumulate: false);
        SwiGlu(ffn, gateUpOut);
    }

    /// <summary>
    /// Rotary embedding in place, rotate-half form, on the first <paramref name="heads"/> · <paramref name="headDim"/>
    /// columns of each row of x F32[T, W]: for head h and j &lt; Dh/2, with angle = positions[t] · frequency[j] and the
    /// frequencies from <see cref="RopeParameters.Frequencies"/> (θ^(−2j/Dh) in float32 math, then any scaling),
    /// (a, b) = (x[h·Dh + j], x[h·Dh + j + Dh/2]) becomes (a·cos − b·sin, a·sin + b·cos).
    /// </summary>
    void Rope(DeviceTensor x, DeviceTensor positions, int heads, int headDim, RopeParameters rope);

    /// <summary>
    /// Writes the keys and values of T new tokens into the cache. qkv F32[T, (H + 2Hkv)·Dh] holds Q | K | V per row;
    /// K starts at column <paramref name="queryHeads"/> · Dh. Token t goes to logical position <paramref name="startPosition"/> + t,
    /// physical slot blockTable[p / B] · B + p mod B. blockTable I32[1, n]. An F16 cache stores each key and value
    /// saturated at ±65504 (infinities too; NaN stays NaN) and rounded to the nearest binary16, ties to even: the same
    /// bits on every backend for every input but NaN payloads.
    /// </summary>
    void KvWrite(KvCache cache, int layer, DeviceTensor qkv, int queryHeads, DeviceTensor blockTable, int startPosition);

    /// <summary>
    /// <see cref="Rope"/> on the query and key heads of qkv (H = <paramref name="queryHeads"/> plus the cache's Hkv) at
    /// RoPE <paramref name="positions"/>, then <see cref="KvWrite"/> of the rotated keys and the values at cache positions
    /// <paramref name="startPosition"/> + t. This default runs the two ops; a backend may fuse them (the ILGPU backend
    /// does: one launch instead of two per layer).
    /// </summary>
    void RopeKvWrite(DeviceTensor qkv, DeviceTensor positions, int queryHeads, int headDim, RopeParameters rope, KvCache cache, int layer, DeviceTensor blockTable, int startPosition)
    {
        ArgumentNullException.ThrowIfNull(cache);
        Rope(qkv, positions, queryHeads + cache.Layout.KvHeads, headDim, rope);
        KvWrite(cache, layer, qkv, queryHeads, blockTable, startPosition);
    }

    /// <summary>
    /// Attention of T new queries over S = <paramref name="committed"/> committed keys plus the T new keys (already
    /// written at logical positions S..S+T−1). Query t sees key j when j &lt; S, or when mask[t, j − S] ≠ 0; with no mask,
    /// when j − S ≤ t (causal). Scores are q·k / √Dh, softmax over visible keys, output = Σ p·v. Query head h reads
    /// kv head h / (H / Hkv). output F32[T, H·Dh]; qkv as in <see cref="KvWrite"/>, of which only the first H·Dh columns
    /// (the queries) are read: every key and value comes from the cache, so a plain query matrix F32[T, H·Dh] will do
    /// (Medusa heads with context attention pass one); mask I32[T, T] or null. Computed in float32 whatever the cache
    /// stores (F16 elements widen exactly).
    /// </summary>
    void Attention(DeviceTensor output, DeviceTensor qkv, KvCache cache, int layer, DeviceTensor blockTable, int committed, DeviceTensor? mask);

    /// <summary>output[t, i] = silu(gateUp[t, i]) · gateUp[t, F + i]. output F32[T, F], gateUp F32[T, 2F]; silu(g) = g / (1 + e^−g).</summary>
    void SwiGlu(DeviceTensor output, DeviceTensor gateUp);

    /// <summary>
    /// The Medusa ResBlock's second half: output[r, i] = input[r, i] + silu(linear[r, i] + bias[0, i]) (bias[r, i] when
    /// bias has R rows: several heads at once). output, input, linear F32[R, D] (output may be input); bias [1, D] or
    /// [R, D] of any float dtype.
    /// </summary>
    void SiluResidual(DeviceTensor output, DeviceTensor input, DeviceTensor linear, DeviceTensor bias) =>
        throw new NotSupportedException($"{DeviceName}: SiluResidual (Medusa heads) is not implemented on this backend yet.");

    /// <summary>
    /// Running sequences up to which Medusa sequences verify trees; in a larger batch they decode one token per step,
    /// because a batch that already fills the device gains little from tree rows and pays for every one of them. The
    /// default is no limit (accelerators: extra rows are nearly free until the batch is large).
    /// </summary>
    int SpeculationBatchLimit => int.MaxValue;

    /// <summary>
    /// Leaves up to which a greedy Medusa step asks the classifier for every tree node's token, leaves included, in the
    /// one pass after the forward. A tree with more leaves skips them there and computes an accepted leaf's token
    /// afterwards in a pass of its own. Extra rows in the one pass cost compute; the separate pass streams the whole
    /// classifier again and is needed in most steps of a small tree (its accepted path usually ends at a leaf). The
    /// default, 0, always skips.
    /// </summary>
    int EagerLeafRows => 0;

    /// <summary>
    /// True when <see cref="ProductArgMax"/> finds the greedy tokens without computing every logit (the host's bounded
    /// pass over an 8-bit copy of the classifier): a caller that needs a row only now and then (greedy decoding under a
    /// constraint, when the argmax is ruled out) computes that row alone. False (the default) when it computes every row
    /// anyway: such a caller asks for the rows instead, and none is computed twice.
    /// </summary>
    bool ArgMaxSkipsLogits => false;

    /// <summary>
    /// True when <see cref="GroupedMatMul"/> takes groups of <paramref name="rowsPerGroup"/> weight rows (the ILGPU backend:
    /// a multiple of 4). The default backend has none.
    /// </summary>
    bool CanGroupMatMul(int rowsPerGroup) => false;

    /// <summary>
    /// The type the Medusa heads' matrices are stored in, for a model whose weights are <paramref name="modelWeights"/>
    /// (default: the same). The heads only propose tokens (each proposal is verified exactly), so a backend whose heads
    /// are bound by memory may store them narrower.
    /// </summary>
    DType HeadsWeightType(DType modelWeights) => modelWeights;

    /// <summary>
    /// Several GEMVs with their own matrices in one op: output[g, n] = input[g, :] · weight[g·N + n, :]ᵀ for the G groups
    /// of N rows of a stacked weight [G·N, K] (input [1, K]: one row for every group). Used for the Medusa heads, whose
    /// ResBlocks are small, alike and otherwise one launch each. Only where <see cref="CanGroupMatMul"/> says so.
    /// </summary>
    void GroupedMatMul(DeviceTensor output, DeviceTensor input, DeviceTensor weight) =>
        throw new NotSupportedException($"{DeviceName}: GroupedMatMul is not implemented on this backend (check CanGroupMatMul).");

    /// <summary>output = a + b elementwise, output and a F32 of one shape, b of that shape or one row of it (added to every row; output may be a).</summary>
    void Add(DeviceTensor output, DeviceTensor a, DeviceTensor b);

    /// <summary>output[t] = index of the largest logits[t, :] (the lowest index on ties). output I32[T, 1], logits F32[T, V].</summary>
    void ArgMax(DeviceTensor output, DeviceTensor logits);

    /// <summary>
    /// ids[t] = argmax over v of input[t] · weight[v] (the lowest index on ties): the greedy token of each hidden row,
    /// for callers that need nothing else from the logits. The result is that of <see cref="MatMul"/> then
    /// <see cref="ArgMax"/>, up to float rounding of near-ties; <paramref name="scratch"/> F32[T, V] may be overwritten.
    /// ids I32[T, 1], input F32[T, D], weight [V, D].
    /// </summary>
    void ProductArgMax(DeviceTensor ids, DeviceTensor input, DeviceTensor weight, DeviceTensor scratch)
    {
        MatMul(scratch, input, weight, accumulate: false);
        ArgMax(ids, scratch);
    }

    /// <summary>
    /// The greedy token of one hidden row under an additive adjustment: the argmax over v of input · weight[v] + adjust[v]
    /// (the lowest index on ties), as <see cref="MatMul"/>, the sum and <see cref="ArgMax"/> would give it up to float
    /// rounding of near-ties. For a constraint's mask (0 for an allowed token, −∞ for the others) where
    /// <see cref="ArgMaxSkipsLogits"/>: the host then settles only allowed rows exactly. input F32[1, D], weight [V, D],
    /// scratch F32[1, V] (overwritten), adjust V values.
    /// </summary>
    int AdjustedProductArgMax(DeviceTensor input, DeviceTensor weight, DeviceTensor scratch, ReadOnlySpan<float> adjust) =>
        AdjustedArgMaxByRows(this, input, weight, scratch, adjust);

    /// <summary><see cref="AdjustedProductArgMax"/> from the whole row of logits, computed and read back.</summary>
    internal static int AdjustedArgMaxByRows(IComputeBackend backend, DeviceTensor input, DeviceTensor weight, DeviceTensor scratch, ReadOnlySpan<float> adjust)
    {
        backend.MatMul(scratch, input, weight, accumulate: false);
        var row = new float[adjust.Length];
        backend.Download(scratch, row);
        System.Numerics.Tensors.TensorPrimitives.Add(row, adjust, row);
        return System.Numerics.Tensors.TensorPrimitives.IndexOfMax(row);
    }

    /// <summary>
    /// The k largest logits of each row, in descending order (ties: lower index first).
    /// indices I32[T, k], values F32[T, k], logits F32[T, V], k ≤ V.
    /// </summary>
    void TopK(DeviceTensor indices, DeviceTensor values, DeviceTensor logits);

    /// <summary>
    /// Softmax statistics per row: output[t] = (max, log Σ exp(x), entropy = −Σ p ln p) in nats.
    /// output F32[T, 3], logits F32[T, V].
    /// </summary>
    void SoftmaxStats(DeviceTensor output, DeviceTensor logits);

    /// <summary>Most indices one <see cref="GatherInts"/> call takes.</summary>
    const int MaxGatherInts = 32;

    /// <summary>
    /// output[i] = source[indices[i]] (flat index into source), or map[source[indices[i]]] when <paramref name="map"/> is
    /// given: a Medusa tree's tokens picked from the heads' top-k columns (mapped through the vocabulary shortlist) on the
    /// device, so the next forward needs no trip through the host. output I32 with indices.Length ≤
    /// <see cref="MaxGatherInts"/> elements, source I32, map I32[m, 1] or null. A mapped value outside the map gives 0.
    /// </summary>
    void GatherInts(DeviceTensor output, DeviceTensor source, ReadOnlySpan<int> indices, DeviceTensor? map);

    /// <summary>
    /// For every layer, keys and values: copies logical position sources[i] to logical position
    /// <paramref name="destinationStart"/> + i, in order of i (sources strictly increasing and sources[i] ≥ destinationStart + i,
    /// so reads happen before the slot is overwritten). sources I32[n, 1].
    /// </summary>
    void KvCompact(KvCache cache, DeviceTensor blockTable, DeviceTensor sources, int destinationStart);
}
