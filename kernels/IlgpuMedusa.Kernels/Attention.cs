using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>Scalars of <see cref="AttentionKernel"/>.</summary>
public readonly struct AttentionArgs
{
    /// <summary>Creates the scalars.</summary>
    public AttentionArgs(int tokens, int heads, int kvHeads, int headDim, int qkvStride, int committed, int blockSize, bool hasMask, int splits = 1)
    {
        Splits = splits;
        Tokens = tokens;
        Heads = heads;
        KvHeads = kvHeads;
        HeadDim = headDim;
        QkvStride = qkvStride;
        Committed = committed;
        BlockSize = blockSize;
        HasMask = hasMask ? 1 : 0;
        Scale = 1f / MathF.Sqrt(headDim);
    }

    /// <summary>T, new tokens (queries).</summary>
    public readonly int Tokens;
    /// <summary>H, query heads.</summary>
    public readonly int Heads;
    /// <summary>Hkv, key/value heads (H is a multiple).</summary>
    public readonly int KvHeads;
    /// <summary>Dh.</summary>
    public readonly int HeadDim;
    /// <summary>Floats per qkv row.</summary>
    public readonly int QkvStride;
    /// <summary>S, committed keys before the new tokens.</summary>
    public readonly int Committed;
    /// <summary>B.</summary>
    public readonly int BlockSize;
    /// <summary>1: mask[T, T] says which new keys a query sees; 0: causal.</summary>
    public readonly int HasMask;
    /// <summary>1/√Dh.</summary>
    public readonly float Scale;
    /// <summary>Key ranges each (head, token) is split into (1: the kernel writes the output itself).</summary>
    public readonly int Splits;

    /// <summary>The same shapes with <paramref name="splits"/> key splits.</summary>
    public AttentionArgs WithSplits(int splits) =>
        new(Tokens, Heads, KvHeads, HeadDim, QkvStride, Committed, BlockSize, HasMask != 0, splits);

    /// <summary>Hkv · Dh.</summary>
    public int KvDim => KvHeads * HeadDim;
}

/// <summary>
/// Attention of T new queries over S committed keys plus the T new keys (already written to the cache), read through
/// the block table: query t sees key j &lt; S always, and new key j ≥ S when mask[t, j − S] ≠ 0 (no mask: j − S ≤ t).
/// Softmax(q·k/√Dh) over the visible keys, output = Σ p·v. One kernel serves prefill (causal), decoding (T = 1) and
/// tree verification (tree mask).
/// </summary>
public static partial class AttentionKernel
{
    /// <summary>Score of a key that does not take part (finite, so that differences never make NaN).</summary>
    private const float Hidden = -3.0e38f;

    /// <summary>Shared floats for the P·V partial sums: parts · Dh ≤ 4·G (parts = G / ⌈Dh/4⌉).</summary>
    private const int PartialFloats = 4 * KernelLimits.MaxGroupSize;

    /// <summary>
    /// One group per (head h, token t, key split z), grid (H, T, Z). Keys go in chunks of G: thread i scores key c0 + i
    /// (a dot product with q, which sits scaled in shared memory); one shared-memory tree reduction gives the chunk's max
    /// and its sum of exponentials together; the running (max, sum) and the output accumulator are rescaled online
    /// (flash-attention style), so any S fits in fixed shared memory. For P·V, thread (part, quad) sums p·v[d] for four
    /// dimensions d over every parts-th key of the chunk, two keys per iteration, so consecutive threads read consecutive
    /// floats of a value row (coalesced) with eight loads in flight. Dh ≤ 256, G a power of two. With Z &gt; 1 splits
    /// (flash-decoding: decoding has only H groups, too few to fill a GPU), split z takes the z-th of Z equal key ranges
    /// (which may be shorter than a chunk) and writes its unnormalised sums with its (max, sum) to partials;
    /// <see cref="Combine"/> merges them.
    /// </summary>
    /// <param name="output">F32[T, H·Dh] (Z = 1).</param>
    /// <param name="partials">F32[T·H·Z, Dh + 2]: per split Σ p·v, then max and Σ p (Z &gt; 1).</param>
    /// <param name="qkv">F32[T, stride]: Q | K | V, RoPE applied.</param>
    /// <param name="keys">The layer's key plane [slots, Hkv·Dh], elements decoded by <typeparamref name="TFormat"/>.</param>
    /// <param name="values">The layer's value plane [slots, Hkv·Dh], elements decoded by <typeparamref name="TFormat"/>.</param>
    /// <param name="blockTable">I32[blocks].</param>
    /// <param name="mask">I32[T, T] (ignored when args.HasMask is 0).</param>
    /// <param name="args">Shapes.</param>
    public static void Run<TKv, TFormat>(ArrayView<float> output, ArrayView<float> partials, ArrayView<float> qkv, ArrayView<TKv> keys, ArrayView<TKv> values,
        ArrayView<int> blockTable, ArrayView<int> mask, AttentionArgs args)
        where TKv : unmanaged
        where TFormat : struct, IKvFormat<TKv>
    {
        var query = SharedMemory.Allocate<float>(KernelLimits.MaxHeadDim);      // q · 1/√Dh
        var sum = SharedMemory.Allocate<float>(KernelLimits.MaxHeadDim);        // Σ p·v so far, relative to the running max
        var probability = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);
        var slotOffset = SharedMemory.Allocate<long>(KernelLimits.MaxGroupSize); // float offset of each chunk key's head
        var reduceMax = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);
        var reduceSum = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);
        var partial = SharedMemory.Allocate<float>(PartialFloats);              // [parts, Dh] ≤ 4·G floats

        int tid = Group.IdxX;
        var kv = default(TFormat);
        int groupSize = Group.DimX;
        int head = Grid.IdxX;
        int token = Grid.IdxY;
        int split = Grid.IdxZ;
        int dh = args.HeadDim;
        int kvDim = args.KvHeads * dh;
        long slotCount = keys.Length / (kvDim > 0 ? kvDim : 1); // Hkv · Dh ≥ 1 (the launcher checks; clamped all the same)
        long headOffset = (long)(head / (args.Heads / args.KvHeads)) * dh;
        long queryStart = (long)token * args.QkvStride + (long)head * dh;
        for (int d = tid; d < dh; d += groupSize)
        {
            query[d] = qkv[queryStart + d] * args.Scale;
            sum[d] = 0f;
        }
        Group.Barrier();

        int keyCount = args.HasMask != 0 ? args.Committed + args.Tokens : args.Committed + token + 1;
        // This split's keys [begin, end): an equal share of the keys (a split may be shorter than a chunk of G).
        int perSplit = (keyCount + args.Splits - 1) / args.Splits;
        int begin = split * perSplit;
        int end = begin + perSplit < keyCount ? begin + perSplit : keyCount;
        // P·V work: thread (part, quad) owns dimensions 4·quad .. 4·quad + 3 and every parts-th key of a chunk.
        int quads = (dh + 3) / 4;
        int parts = quads <= groupSize ? groupSize / quads : 1;
        int part = quads <= groupSize ? tid / quads : 0;
        int firstQuad = quads <= groupSize ? tid - part * quads : tid;
        int quadStep = quads <= groupSize ? quads : groupSize;
        float runningMax = Hidden;
        float runningSum = 0f;
        // Keys that take no part (hidden, or past the split) weigh 0 and read the query's own key row, just written: a row
        // of this sequence, never another sequence's, whose ∞ or NaN would make 0 · ∞ = NaN here.
        long ownSlot = KvSlots.Slot(blockTable, args.Committed + token, args.BlockSize, slotCount);
        long ownOffset = (ownSlot < 0 ? 0 : ownSlot) * kvDim + headOffset;
        for (int chunk = begin; chunk < end; chunk += groupSize)
        {
            // Scores: one key per thread.
            int key = chunk + tid;
            bool visible = key < end
                && (key < args.Committed || args.HasMask == 0 || mask[token * args.Tokens + key - args.Committed] != 0);
            float score = Hidden;
            long offset = ownOffset;
            if (visible)
            {
                long slot = KvSlots.Slot(blockTable, key, args.BlockSize, slotCount);
                offset = (slot < 0 ? 0 : slot) * kvDim + headOffset;
                // Four independent sums, so that four loads are in flight.
                float dot0 = 0f, dot1 = 0f, dot2 = 0f, dot3 = 0f;
                int d = 0;
                for (; d + 4 <= dh; d += 4)
                {
                    dot0 += query[d] * kv.Decode(keys[offset + d]);
                    dot1 += query[d + 1] * kv.Decode(keys[offset + d + 1]);
                    dot2 += query[d + 2] * kv.Decode(keys[offset + d + 2]);
                    dot3 += query[d + 3] * kv.Decode(keys[offset + d + 3]);
                }
                for (; d < dh; d++) dot0 += query[d] * kv.Decode(keys[offset + d]);
                score = (dot0 + dot1) + (dot2 + dot3);
            }
            slotOffset[tid] = offset;

            // (max, Σ e^(s − max)) of the chunk in one tree: (m1, l1) ⊕ (m2, l2) = (M, l1·e^(m1−M) + l2·e^(m2−M)).
            reduceMax[tid] = score;
            reduceSum[tid] = visible ? 1f : 0f;
            Group.Barrier();
            for (int stride = groupSize / 2; stride > 0; stride >>= 1)
            {
                if (tid < stride)
                {
                    float m1 = reduceMax[tid], m2 = reduceMax[tid + stride];
                    float m = m1 > m2 ? m1 : m2;
                    reduceSum[tid] = reduceSum[tid] * XMath.Exp(m1 - m) + reduceSum[tid + stride] * XMath.Exp(m2 - m);
                    reduceMax[tid] = m;
                }
                Group.Barrier();
            }
            float chunkMax = reduceMax[0];
            float chunkSum = reduceSum[0];
            float newMax = runningMax > chunkMax ? runningMax : chunkMax;
            float rescale = XMath.Exp(runningMax - newMax);
            runningSum = runningSum * rescale + chunkSum * XMath.Exp(chunkMax - newMax);
            runningMax = newMax;
            probability[tid] = visible ? XMath.Exp(score - newMax) : 0f;
            Group.Barrier();

            // P·V over the chunk: thread (part, quad) takes keys part, part + parts, ... two at a time, four dimensions
            // each (consecutive threads read consecutive floats of a value row). Keys that take no part have p = 0 and
            // the query's own row, a valid row of this sequence, so no branch is needed.
            int count = end - chunk < groupSize ? end - chunk : groupSize;
            if (part < parts)
            {
                for (int q = firstQuad; q < quads; q += quadStep)
                {
                    int d = 4 * q;
                    float a0 = 0f, a1 = 0f, a2 = 0f, a3 = 0f;
                    if (d + 4 <= dh)
                    {
                        int k = part;
                        for (; k + parts < count; k += 2 * parts)
                        {
                            long first = slotOffset[k] + d, second = slotOffset[k + parts] + d;
                            float p = probability[k], r = probability[k + parts];
                            float v0 = kv.Decode(values[first]), v1 = kv.Decode(values[first + 1]), v2 = kv.Decode(values[first + 2]), v3 = kv.Decode(values[first + 3]);
                            float w0 = kv.Decode(values[second]), w1 = kv.Decode(values[second + 1]), w2 = kv.Decode(values[second + 2]), w3 = kv.Decode(values[second + 3]);
                            a0 += p * v0 + r * w0;
                            a1 += p * v1 + r * w1;
                            a2 += p * v2 + r * w2;
                            a3 += p * v3 + r * w3;
                        }
                        if (k < count)
                        {
                            long at = slotOffset[k] + d;
                            float p = probability[k];
                            a0 += p * kv.Decode(values[at]);
                            a1 += p * kv.Decode(values[at + 1]);
                            a2 += p * kv.Decode(values[at + 2]);
                            a3 += p * kv.Decode(values[at + 3]);
                        }
                        partial[part * dh + d] = a0;
                        partial[part * dh + d + 1] = a1;
                        partial[part * dh + d + 2] = a2;
                        partial[part * dh + d + 3] = a3;
                    }
                    else
                    {
                        // The last, partial quad of a Dh that is not a multiple of 4.
                        for (int e = d; e < dh; e++)
                        {
                            float acc = 0f;
                            for (int k = part; k < count; k += parts) acc += probability[k] * kv.Decode(values[slotOffset[k] + e]);
                            partial[part * dh + e] = acc;
                        }
                    }
                }
            }
            Group.Barrier();
            for (int d = tid; d < dh; d += groupSize)
            {
                float total = 0f;
                for (int q = 0; q < parts; q++) total += partial[q * dh + d];
                sum[d] = sum[d] * rescale + total;
            }
            Group.Barrier();
        }

        if (args.Splits == 1)
        {
            long outputStart = (long)token * args.Heads * dh + (long)head * dh;
            for (int d = tid; d < dh; d += groupSize)
                output[outputStart + d] = runningSum > 0f ? sum[d] / runningSum : 0f;
        }
        else
        {
            long partialStart = (((long)token * args.Heads + head) * args.Splits + split) * (dh + 2);
            for (int d = tid; d < dh; d += groupSize)
                partials[partialStart + d] = sum[d];
            if (tid == 0)
            {
                partials[partialStart + dh] = runningMax;
                partials[partialStart + dh + 1] = runningSum;
            }
        }
    }

    /// <summary>Query tokens one group of <see cref="Block"/> takes together.</summary>
    public const int BlockTokens = 8;

    /// <summary>Key dimensions <see cref="Block"/> stages in shared memory at a time (Dh beyond it takes several passes).</summary>
    private const int StageDims = 128;

    /// <summary>
    /// Attention for T ≥ 2 (tree verification, prefill): as <see cref="Run"/>, but one group per (head h, block of 8
    /// tokens, key split z), grid (H, ⌈T/8⌉, Z), so each key and value row read from memory serves eight queries instead
    /// of one (a tree's tokens share almost all their keys). Keys go in chunks of C = G/8: the group copies the chunk's
    /// key rows into shared memory (consecutive threads read consecutive floats of a row: coalesced; on an H200 scoring
    /// straight from memory, one row per thread, made the kernel as slow as one group per token), then thread
    /// (token i, key j) scores key c0 + j for query i (a warp covers one token's 32 keys when G = 256: the query is a
    /// broadcast, the padded key rows sit in 32 different banks); per token, one segmented
    /// tree reduction gives the chunk's max and sum of exponentials, and the running (max, sum) and the accumulators are
    /// rescaled online. P·V: thread (token, four dimensions) sums p·v over the chunk's keys, two keys per iteration
    /// (consecutive threads read consecutive floats of a value row). Tokens of the last block past T repeat token T − 1
    /// and are not written. Splits write the same partials as <see cref="Run"/>, merged by <see cref="Combine"/>.
    /// G a power of two ≥ 16.
    /// </summary>
    /// <param name="output">F32[T, H·Dh] (Z = 1).</param>
    /// <param name="partials">F32[T·H·Z, Dh + 2] (Z &gt; 1).</param>
    /// <param name="qkv">F32[T, stride]: Q | K | V, RoPE applied.</param>
    /// <param name="keys">The layer's key plane.</param>
    /// <param name="values">The layer's value plane.</param>
    /// <param name="blockTable">I32[blocks].</param>
    /// <param name="mask">I32[T, T] (ignored when args.HasMask is 0).</param>
    /// <param name="args">Shapes.</param>
    public static void Block<TKv, TFormat>(ArrayView<float> output, ArrayView<float> partials, ArrayView<float> qkv, ArrayView<TKv> keys, ArrayView<TKv> values,
        ArrayView<int> blockTable, ArrayView<int> mask, AttentionArgs args)
        where TKv : unmanaged
        where TFormat : struct, IKvFormat<TKv>
    {
        var query = SharedMemory.Allocate<float>(BlockTokens * KernelLimits.MaxHeadDim); // [token][d], scaled by 1/√Dh
        var sum = SharedMemory.Allocate<float>(BlockTokens * KernelLimits.MaxHeadDim);   // [token][d], Σ p·v so far
        var probability = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);      // [token][key of the chunk]
        var reduceMax = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);
        var reduceSum = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);
        var slotOffset = SharedMemory.Allocate<long>(KernelLimits.MaxGroupSize / BlockTokens);
        var keyTile = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize / BlockTokens * (StageDims + 1)); // [key][d], padded
        var runningMax = SharedMemory.Allocate<float>(BlockTokens);
        var runningSum = SharedMemory.Allocate<float>(BlockTokens);
        var rescale = SharedMemory.Allocate<float>(BlockTokens);

        int tid = Group.IdxX;
        var kv = default(TFormat);
        int groupSize = Group.DimX;
        int chunkKeys = groupSize / BlockTokens;
        int head = Grid.IdxX;
        int token0 = Grid.IdxY * BlockTokens;
        int split = Grid.IdxZ;
        int dh = args.HeadDim;
        int kvDim = args.KvHeads * dh;
        long slotCount = keys.Length / (kvDim > 0 ? kvDim : 1); // Hkv · Dh ≥ 1 (the launcher checks; clamped all the same)
        long headOffset = (long)(head / (args.Heads / args.KvHeads)) * dh;
        int lastToken = args.Tokens - 1;
        for (int i = tid; i < BlockTokens * dh; i += groupSize)
        {
            int t = i / dh;
            int token = token0 + t < lastToken ? token0 + t : lastToken;
            query[i] = qkv[(long)token * args.QkvStride + (long)head * dh + i - t * dh] * args.Scale;
            sum[i] = 0f;
        }
        if (tid < BlockTokens)
        {
            runningMax[tid] = Hidden;
            runningSum[tid] = 0f;
        }
        Group.Barrier();

        // Keys of the block: all S + T with a mask; causally, up to the block's last token.
        int lastInBlock = token0 + BlockTokens - 1 < lastToken ? token0 + BlockTokens - 1 : lastToken;
        int keyCount = args.HasMask != 0 ? args.Committed + args.Tokens : args.Committed + lastInBlock + 1;
        int perSplit = (keyCount + args.Splits - 1) / args.Splits;
        int begin = split * perSplit;
        int end = begin + perSplit < keyCount ? begin + perSplit : keyCount;
        // This thread scores key c0 + j for query i.
        int mine = tid / chunkKeys;
        int j = tid - mine * chunkKeys;
        int myToken = token0 + mine;
        long myQuery = (long)mine * dh;
        int quads = (dh + 3) / 4;
        for (int chunk = begin; chunk < end; chunk += chunkKeys)
        {
            if (tid < chunkKeys) slotOffset[tid] = KeyRowOffset(blockTable, args, chunk + tid, end, kvDim, headOffset, slotCount);
            int key = chunk + j;
            bool visible = key < end && myToken <= lastToken
                && (key < args.Committed || (args.HasMask != 0 ? mask[myToken * args.Tokens + key - args.Committed] != 0 : key - args.Committed <= myToken));
            Group.Barrier();
            // Scores from the chunk's key rows staged in shared memory (read coalesced, 128 dimensions at a time; rows
            // padded by one float so that the 32 keys of a warp fall in 32 banks).
            float dot0 = 0f, dot1 = 0f, dot2 = 0f, dot3 = 0f;
            for (int d0 = 0; d0 < dh; d0 += StageDims)
            {
                int width = dh - d0 < StageDims ? dh - d0 : StageDims;
                for (int i = tid; i < chunkKeys * width; i += groupSize)
                {
                    int k = i / width;
                    int d = i - k * width;
                    keyTile[k * (StageDims + 1) + d] = kv.Decode(keys[slotOffset[k] + d0 + d]);
                }
                Group.Barrier();
                if (visible)
                {
                    int row = j * (StageDims + 1);
                    long q = myQuery + d0;
                    int d = 0;
                    for (; d + 4 <= width; d += 4)
                    {
                        dot0 += query[q + d] * keyTile[row + d];
                        dot1 += query[q + d + 1] * keyTile[row + d + 1];
                        dot2 += query[q + d + 2] * keyTile[row + d + 2];
                        dot3 += query[q + d + 3] * keyTile[row + d + 3];
                    }
                    for (; d < width; d++) dot0 += query[q + d] * keyTile[row + d];
                }
                Group.Barrier();
            }
            float score = visible ? (dot0 + dot1) + (dot2 + dot3) : Hidden;
            reduceMax[tid] = score;
            reduceSum[tid] = visible ? 1f : 0f;
            Group.Barrier();
            // Per token, (max, Σ e^(s − max)) over its chunkKeys entries: a tree within each segment.
            for (int stride = chunkKeys / 2; stride > 0; stride >>= 1)
            {
                if (j < stride)
                {
                    float m1 = reduceMax[tid], m2 = reduceMax[tid + stride];
                    float m = m1 > m2 ? m1 : m2;
                    reduceSum[tid] = reduceSum[tid] * XMath.Exp(m1 - m) + reduceSum[tid + stride] * XMath.Exp(m2 - m);
                    reduceMax[tid] = m;
                }
                Group.Barrier();
            }
            if (tid < BlockTokens)
            {
                float chunkMax = reduceMax[tid * chunkKeys], chunkSum = reduceSum[tid * chunkKeys];
                float oldMax = runningMax[tid];
                float newMax = oldMax > chunkMax ? oldMax : chunkMax;
                float r = XMath.Exp(oldMax - newMax);
                runningSum[tid] = runningSum[tid] * r + chunkSum * XMath.Exp(chunkMax - newMax);
                runningMax[tid] = newMax;
                rescale[tid] = r;
            }
            Group.Barrier();
            probability[tid] = visible ? XMath.Exp(score - runningMax[mine]) : 0f;
            Group.Barrier();

            // P·V: (token, four dimensions) per thread, two keys per iteration.
            int count = end - chunk < chunkKeys ? end - chunk : chunkKeys;
            for (int pair = tid; pair < BlockTokens * quads; pair += groupSize)
            {
                int t = pair / quads;
                if (token0 + t > lastToken) continue; // a block's tokens past T (decoding: seven of eight)
                int d = 4 * (pair - t * quads);
                int row = t * chunkKeys;
                long at = (long)t * dh + d;
                float r = rescale[t];
                if (d + 4 <= dh)
                {
                    float a0 = 0f, a1 = 0f, a2 = 0f, a3 = 0f;
                    int k = 0;
                    for (; k + 1 < count; k += 2)
                    {
                        long first = slotOffset[k] + d, second = slotOffset[k + 1] + d;
                        float p = probability[row + k], q = probability[row + k + 1];
                        float v0 = kv.Decode(values[first]), v1 = kv.Decode(values[first + 1]), v2 = kv.Decode(values[first + 2]), v3 = kv.Decode(values[first + 3]);
                        float w0 = kv.Decode(values[second]), w1 = kv.Decode(values[second + 1]), w2 = kv.Decode(values[second + 2]), w3 = kv.Decode(values[second + 3]);
                        a0 += p * v0 + q * w0;
                        a1 += p * v1 + q * w1;
                        a2 += p * v2 + q * w2;
                        a3 += p * v3 + q * w3;
                    }
                    if (k < count)
                    {
                        long first = slotOffset[k] + d;
                        float p = probability[row + k];
                        a0 += p * kv.Decode(values[first]);
                        a1 += p * kv.Decode(values[first + 1]);
                        a2 += p * kv.Decode(values[first + 2]);
                        a3 += p * kv.Decode(values[first + 3]);
                    }
                    sum[at] = sum[at] * r + a0;
                    sum[at + 1] = sum[at + 1] * r + a1;
                    sum[at + 2] = sum[at + 2] * r + a2;
                    sum[at + 3] = sum[at + 3] * r + a3;
                }
                else
                {
                    // The last, partial quad of a Dh that is not a multiple of 4.
                    for (int e = d; e < dh; e++)
                    {
                        float acc = 0f;
                        for (int k = 0; k < count; k++) acc += probability[row + k] * kv.Decode(values[slotOffset[k] + e]);
                        sum[(long)t * dh + e] = sum[(long)t * dh + e] * r + acc;
                    }
                }
            }
            Group.Barrier();
        }

        for (int i = tid; i < BlockTokens * dh; i += groupSize)
        {
            int t = i / dh;
            int token = token0 + t;
            if (token > lastToken) continue;
            int d = i - t * dh;
            if (args.Splits == 1)
                output[(long)token * args.Heads * dh + (long)head * dh + d] = runningSum[t] > 0f ? sum[i] / runningSum[t] : 0f;
            else
                partials[(((long)token * args.Heads + head) * args.Splits + split) * (dh + 2) + d] = sum[i];
        }
        if (args.Splits > 1 && tid < BlockTokens && token0 + tid <= lastToken)
        {
            long at = (((long)(token0 + tid) * args.Heads + head) * args.Splits + split) * (dh + 2);
            partials[at + dh] = runningMax[tid];
            partials[at + dh + 1] = runningSum[tid];
        }
    }

    /// <summary>
    /// Merges the Z key splits of each (head, token): with M = max of the splits' maxima,
    /// output = Σ_z e^(m_z − M)·acc_z / Σ_z e^(m_z − M)·l_z. One thread per (t, h, d).
    /// </summary>
    /// <param name="index">(t·H + h)·Dh + d.</param>
    /// <param name="output">F32[T, H·Dh].</param>
    /// <param name="partials">F32[T·H·Z, Dh + 2] from <see cref="Run"/>.</param>
    /// <param name="args">Shapes and Z.</param>
    public static void Combine(Index1D index, ArrayView<float> output, ArrayView<float> partials, AttentionArgs args)
    {
        int dh = args.HeadDim;
        if (index >= args.Tokens * args.Heads * dh) return;
        int row = index / dh; // t·H + h
        int d = index - row * dh;
        long first = (long)row * args.Splits * (dh + 2);
        float max = Hidden;
        for (int z = 0; z < args.Splits; z++)
        {
            float m = partials[first + z * (dh + 2) + dh];
            max = m > max ? m : max;
        }
        float total = 0f, value = 0f;
        for (int z = 0; z < args.Splits; z++)
        {
            long at = first + z * (dh + 2);
            float weight = XMath.Exp(partials[at + dh] - max);
            total += partials[at + dh + 1] * weight;
            value += partials[at + d] * weight;
        }
        output[index] = total > 0f ? value / total : 0f;
    }
}

/// <summary>
/// Launches <see cref="AttentionKernel"/>; one instance per accelerator. It owns the small partials buffer of the key
/// splits, allocated once: splits are used only while H·T groups are too few for the device, so T·H·Z stays below
/// <see cref="MaxSplitGroups"/>.
/// </summary>
public sealed class AttentionLauncher : IDisposable
{
    /// <summary>Most splits of one (head, token).</summary>
    public const int MaxSplits = 64;

    /// <summary>The attention kernels of one KV element type (TKv: float, or ushort for binary16 bits).</summary>
    private sealed class Family<TKv>
        where TKv : unmanaged
    {
        public required Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<TKv>, ArrayView<TKv>, ArrayView<int>, ArrayView<int>, AttentionArgs> Run { get; init; }
        public required Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<TKv>, ArrayView<TKv>, ArrayView<int>, ArrayView<int>, AttentionArgs> Block { get; init; }
        public Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<TKv>, ArrayView<TKv>, ArrayView<int>, ArrayView<int>, AttentionArgs>? Decode { get; init; }
        public Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<TKv>, ArrayView<TKv>, ArrayView<int>, ArrayView<int>, AttentionArgs>? Tiles { get; init; }
    }

    private readonly Family<float> _f32;
    private Family<ushort>? _f16;
    private readonly bool _loadWarp;
    private readonly bool _loadTiles;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, AttentionArgs> _combine;
    private readonly Accelerator _accelerator;
    private MemoryBuffer1D<float, Stride1D.Dense> _partials;
    private readonly int _groupSize;
    private readonly int _targetGroups;
    private readonly bool _decodeBlocks;
    private readonly bool _treeBlocks;
    private readonly int _decodeTargetGroups;
    private readonly int _tileGroupSize;

    /// <summary>Environment variable choosing the decoding (T = 1) attention kernel: warp, per-token or blocks.</summary>
    public const string DecodeKernelVariable = "ILGPU_MEDUSA_DECODE_ATTENTION";

    /// <summary>Environment variable choosing the attention kernel of T ≥ 2 (trees, prefill): tiles, blocks or per-token.</summary>
    public const string TreeKernelVariable = "ILGPU_MEDUSA_TREE_ATTENTION";

    /// <summary>The former single switch, refused with a message naming its two successors.</summary>
    public const string RetiredKernelVariable = "ILGPU_MEDUSA_ATTENTION";

    /// <summary>Parses <see cref="DecodeKernelVariable"/>: warp (also null or empty), per-token or blocks.</summary>
    public static string ParseDecodeChoice(string? text) => text?.Trim().ToLowerInvariant() switch
    {
        null or "" or "warp" => "warp",
        "per-token" => "per-token",
        "blocks" => "blocks",
        var other => throw new ArgumentException($"{DecodeKernelVariable}: unknown value '{other}'; expected warp, per-token or blocks"),
    };

    /// <summary>Parses <see cref="TreeKernelVariable"/>: tiles (also null or empty), blocks or per-token.</summary>
    public static string ParseTreeChoice(string? text) => text?.Trim().ToLowerInvariant() switch
    {
        null or "" or "tiles" => "tiles",
        "blocks" => "blocks",
        "per-token" => "per-token",
        var other => throw new ArgumentException($"{TreeKernelVariable}: unknown value '{other}'; expected tiles, blocks or per-token"),
    };

    /// <summary>Throws when <see cref="RetiredKernelVariable"/> is set, naming the two variables that replace it.</summary>
    public static void CheckRetiredVariable(string? text)
    {
        if (!string.IsNullOrWhiteSpace(text))
            throw new ArgumentException($"{RetiredKernelVariable}={text.Trim()} is no longer read: set {DecodeKernelVariable} (warp, per-token or blocks) " +
                $"and {TreeKernelVariable} (tiles, blocks or per-token) instead, and unset {RetiredKernelVariable}");
    }

    /// <summary>
    /// Compiles and loads the kernels; <paramref name="groupSize"/> threads per (head, token, split). Each choice left
    /// null comes from <see cref="DecodeKernelVariable"/> / <see cref="TreeKernelVariable"/>, else the default: where warp
    /// shuffles run (CUDA, the CPU emulator) decoding in <see cref="AttentionKernel.Decode"/> (one warp per head and key
    /// split) and T ≥ 2 with Dh ≤ 128 in <see cref="AttentionKernel.Tiles"/> (groups of <paramref name="tileGroupSize"/>
    /// threads, by default the largest of 256, 128 and 64 the device allows; 64 on the emulator), other T ≥ 2 in
    /// <see cref="AttentionKernel.Block"/>; elsewhere (OpenCL) decoding in <see cref="AttentionKernel.Run"/> (one group per
    /// head, token and split) and T ≥ 2 in the block kernel. Neither CUDA default is timed on a GPU yet: the H200 runs of
    /// 2026-11-28 used the per-token kernel for decoding (38 µs per 7B layer at S ≈ 600, 1.22 ms of a 6.75 ms step) and
    /// the block kernel for trees (221 µs per layer at T = 64); the GPU kit times those as variants.
    /// <paramref name="blocks"/>: what <see cref="AttentionKernel.Block"/> takes of what the warp and tile kernels leave:
    /// 1, decoding and T ≥ 2; 2, T ≥ 2; any larger value, nothing (the per-token kernel instead). <paramref name="warpDecode"/>, <paramref name="tiles"/>: force
    /// the warp or tile kernel on or off (on only where it can run).
    /// </summary>
    public AttentionLauncher(Accelerator accelerator, int groupSize, int? blocks = null, bool? warpDecode = null, bool? tiles = null, int? tileGroupSize = null)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        CheckRetiredVariable(Environment.GetEnvironmentVariable(RetiredKernelVariable));
        string decode = ParseDecodeChoice(Environment.GetEnvironmentVariable(DecodeKernelVariable));
        string tree = ParseTreeChoice(Environment.GetEnvironmentVariable(TreeKernelVariable));
        _decodeBlocks = blocks is { } b1 ? b1 <= 1 : decode == "blocks";
        _treeBlocks = blocks is { } b2 ? b2 <= 2 : tree != "per-token";
        warpDecode ??= decode == "warp";
        tiles ??= tree == "tiles";
        KernelLimits.CheckGroupSize(groupSize);
        _groupSize = groupSize;
        // Splitting aims at 8 groups per multiprocessor (on an H200, S = 4096 decoding: 1141 µs unsplit, 161 µs with
        // 9 splits); the buffer also holds forced splits of small cases (tests).
        _targetGroups = 8 * Math.Max(1, accelerator.NumMultiprocessors);
        // One-warp groups: 32 per multiprocessor.
        _decodeTargetGroups = 32 * Math.Max(1, accelerator.NumMultiprocessors);
        MaxSplitGroups = Math.Max(256, _targetGroups);
        bool warpCapable = accelerator.AcceleratorType is AcceleratorType.Cuda or AcceleratorType.CPU && accelerator.WarpSize == 32;
        _loadWarp = warpDecode.Value && warpCapable;
        int tileLimit = Math.Min(accelerator.MaxNumThreadsPerGroup, AttentionKernel.TileMaxGroupSize);
        // The CPU emulator runs a group's threads as OS threads that meet at every barrier (five per 32 keys here): it
        // defaults to the smallest tiles; the conformance suite runs the larger ones explicitly.
        _tileGroupSize = tileGroupSize ?? (accelerator.AcceleratorType == AcceleratorType.CPU ? 64 : tileLimit >= 256 ? 256 : tileLimit >= 128 ? 128 : 64);
        _loadTiles = tiles.Value && warpCapable && accelerator.MaxNumThreadsPerGroup >= 64;
        if (_loadTiles && (_tileGroupSize is not (64 or 128 or 256) || _tileGroupSize > accelerator.MaxNumThreadsPerGroup))
            throw new ArgumentException($"Attention: tile groups of {_tileGroupSize} threads; expected 64, 128 or 256, at most the device's {accelerator.MaxNumThreadsPerGroup}");
        _accelerator = accelerator;
        _f32 = LoadFamily<float, KvF32>();
        _combine = KernelLoader.Load(accelerator, AttentionKernel.Combine,
            () => accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, AttentionArgs>(AttentionKernel.Combine));
        _partials = accelerator.Allocate1D<float>((long)MaxSplitGroups * (KernelLimits.MaxHeadDim + 2));
    }

    /// <summary>
    /// Compiles the kernels for KV elements stored as <typeparamref name="TKv"/> and decoded by <typeparamref name="TFormat"/>:
    /// the per-token and block kernels always, the warp and tile kernels where they were chosen and can run.
    /// </summary>
    private Family<TKv> LoadFamily<TKv, TFormat>()
        where TKv : unmanaged
        where TFormat : struct, IKvFormat<TKv>
    {
        var accelerator = _accelerator;
        var run = (Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<TKv>, ArrayView<TKv>, ArrayView<int>, ArrayView<int>, AttentionArgs>)AttentionKernel.Run<TKv, TFormat>;
        var block = (Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<TKv>, ArrayView<TKv>, ArrayView<int>, ArrayView<int>, AttentionArgs>)AttentionKernel.Block<TKv, TFormat>;
        var decode = (Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<TKv>, ArrayView<TKv>, ArrayView<int>, ArrayView<int>, AttentionArgs>)AttentionKernel.Decode<TKv, TFormat>;
        var tiles = (Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<TKv>, ArrayView<TKv>, ArrayView<int>, ArrayView<int>, AttentionArgs>)AttentionKernel.Tiles<TKv, TFormat>;
        return new Family<TKv>
        {
            Run = KernelLoader.Load(accelerator, run, () => accelerator.LoadKernel(run)),
            Block = KernelLoader.Load(accelerator, block, () => accelerator.LoadKernel(block)),
            Decode = _loadWarp ? KernelLoader.Load(accelerator, decode, () => accelerator.LoadKernel(decode)) : null,
            Tiles = _loadTiles ? KernelLoader.Load(accelerator, tiles, () => accelerator.LoadKernel(tiles)) : null,
        };
    }

    /// <summary>
    /// The kernels for binary16 KV elements, compiled on first use (a cache of float32 elements never pays for them):
    /// decoded with ILGPU's Half conversion where it runs (CUDA, the CPU emulator), bit by bit elsewhere (OpenCL).
    /// </summary>
    /// <summary>Compiles the kernels for <paramref name="element"/> now (binary16: otherwise on first use).</summary>
    public void Prepare(KvElement element)
    {
        if (element == KvElement.F16) F16Family();
    }

    private Family<ushort> F16Family() => _f16 ??= _accelerator.AcceleratorType is AcceleratorType.Cuda or AcceleratorType.CPU
        ? LoadFamily<ushort, KvF16Native>()
        : LoadFamily<ushort, KvF16>();

    /// <summary>
    /// Most (token, head, split) rows of partials that <see cref="AttentionKernel.Run"/> writes: the partials buffer is
    /// allocated with this many rows (it grows for <see cref="AttentionKernel.Block"/>, whose groups hold 8 tokens).
    /// </summary>
    public int MaxSplitGroups { get; }

    /// <summary>
    /// True when T queries may go to <see cref="AttentionKernel.Block"/> (where the warp and tile kernels do not take
    /// them): T ≥ 2 unless tree attention is per-token, T = 1 when decoding is set to blocks; groups of at least 16 threads.
    /// </summary>
    public bool UsesBlocks(int tokens) => tokens >= 1 && (tokens == 1 ? _decodeBlocks : _treeBlocks) && _groupSize >= 2 * AttentionKernel.BlockTokens;

    /// <summary>True when T queries of head dimension Dh go to <see cref="AttentionKernel.Tiles"/>: T ≥ 2, Dh ≤ 128, the tile kernel loaded.</summary>
    public bool UsesTiles(int tokens, int headDim) => _f32.Tiles is not null && tokens >= 2 && headDim >= 1 && headDim <= AttentionKernel.TileMaxHeadDim;

    /// <summary>Threads per group of <see cref="AttentionKernel.Tiles"/> (its tiles hold a eighth as many query rows).</summary>
    public int TileGroupSize => _tileGroupSize;

    /// <summary>
    /// Splits for the tile kernel: Hkv · ⌈T·(H/Hkv) / R⌉ groups, split until the device is full (8 groups per
    /// multiprocessor), never fewer than 128 keys (four chunks) per split: each split adds T·H partial rows of Dh + 2
    /// floats that the combine kernel reads back (at T = 64 on the 7B shape, 1 MB per split and layer).
    /// </summary>
    public int ChooseTileSplits(int tokens, int heads, int kvHeads, int maxKeys)
    {
        if (tokens <= 0 || heads <= 0 || kvHeads <= 0) return 1;
        int rowsPerTile = AttentionKernel.TileRows(_tileGroupSize);
        long groups = (long)kvHeads * (((long)tokens * (heads / kvHeads) + rowsPerTile - 1) / rowsPerTile);
        if (groups * 2 > _targetGroups) return 1;
        int byDevice = (int)(_targetGroups / groups);
        int byKeys = (maxKeys + 4 * AttentionKernel.TileKeys - 1) / (4 * AttentionKernel.TileKeys);
        return Math.Clamp(Math.Min(byDevice, byKeys), 1, MaxSplits);
    }

    /// <summary>True when T queries go to <see cref="AttentionKernel.Decode"/>: T = 1 with the warp kernel loaded.</summary>
    public bool UsesWarpDecode(int tokens) => tokens == 1 && _f32.Decode is not null;

    /// <summary>
    /// Splits for <see cref="AttentionKernel.Decode"/>: one-warp groups until the device holds about 32 per
    /// multiprocessor, never fewer than 16 keys per split.
    /// </summary>
    public int ChooseWarpSplits(int heads, int keys)
    {
        if (heads <= 0) return 1;
        int byDevice = Math.Max(1, _decodeTargetGroups / heads);
        int byKeys = Math.Max(1, (keys + 15) / 16);
        return Math.Clamp(Math.Min(byDevice, byKeys), 1, MaxSplits);
    }

    /// <summary>
    /// Splits for the block kernel: (H · ⌈T/8⌉) groups, split until the device is full (as <see cref="ChooseSplits"/>,
    /// counting groups of eight tokens).
    /// </summary>
    public int ChooseBlockSplits(int tokens, int heads, int maxKeys)
    {
        int blocks = (tokens + AttentionKernel.BlockTokens - 1) / AttentionKernel.BlockTokens;
        return ChooseSplits(blocks, heads, maxKeys);
    }

    /// <summary>Fewest keys a split is given: below this the split's fixed cost (reductions, the combine) dominates.</summary>
    public const int MinKeysPerSplit = 32;

    /// <summary>
    /// Splits for T queries over at most S + T keys with H heads: enough groups to fill the device (H·T·Z ≤ 8 per
    /// multiprocessor), never less than <see cref="MinKeysPerSplit"/> keys per split. Decoding a 7B-like layer at
    /// S ≈ 540 on a 132-SM GPU gets 17 splits of 32 keys (544 groups) instead of 32 lone groups streaming 540 keys each.
    /// </summary>
    public int ChooseSplits(int tokens, int heads, int maxKeys)
    {
        int rows = tokens * heads;
        if (rows <= 0 || rows * 2 > _targetGroups) return 1;
        int byDevice = _targetGroups / rows;
        int byKeys = (maxKeys + MinKeysPerSplit - 1) / MinKeysPerSplit;
        return Math.Clamp(Math.Min(byDevice, byKeys), 1, MaxSplits);
    }

    /// <summary>
    /// output F32[T, H·Dh]; qkv F32[T, stride ≥ H·Dh], of which only the queries are read (Q | K | V rows, or plain
    /// query rows); planes: one layer's key and value planes (float32 or binary16 elements); blockTable I32[n] covering S + T
    /// positions; mask I32[T, T] when args.HasMask (any non-empty view otherwise). <paramref name="splits"/> overrides
    /// <see cref="ChooseSplits"/> (tests).
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> qkv, KvPlanes planes,
        ArrayView<int> blockTable, ArrayView<int> mask, in AttentionArgs args, int? splits = null)
    {
        int t = args.Tokens, h = args.Heads, dh = args.HeadDim;
        if (dh <= 0 || dh > KernelLimits.MaxHeadDim || args.KvHeads <= 0 || h % args.KvHeads != 0)
            throw new ArgumentException($"Attention: Dh={dh} must be in [1, {KernelLimits.MaxHeadDim}] and H={h} a multiple of Hkv={args.KvHeads}");
        if (output.Length < (long)t * h * dh || qkv.Length < (long)t * args.QkvStride || (long)h * dh > args.QkvStride
            || (long)blockTable.Length * args.BlockSize < (long)args.Committed + t || (args.HasMask != 0 && mask.Length < (long)t * t) || mask.Length < 1)
            throw new ArgumentException($"Attention: output {output.Length}, qkv {qkv.Length} floats (rows of {args.QkvStride}), block table {blockTable.Length} × {args.BlockSize}, " +
                $"mask {mask.Length}: wrong for T={t}, H={h}, Hkv={args.KvHeads}, Dh={dh}, S={args.Committed}");
        if (t == 0 || h == 0) return;
        bool warp = UsesWarpDecode(t);
        bool tiled = !warp && UsesTiles(t, dh);
        bool block = !warp && !tiled && UsesBlocks(t);
        int z = splits ?? (warp ? ChooseWarpSplits(h, args.Committed + 1) : tiled ? ChooseTileSplits(t, h, args.KvHeads, args.Committed + t)
            : block ? ChooseBlockSplits(t, h, args.Committed + t) : ChooseSplits(t, h, args.Committed + t));
        if (z < 1 || z > MaxSplits || (!block && !warp && !tiled && z > 1 && (long)t * h * z > MaxSplitGroups))
            throw new ArgumentException($"Attention: {z} key splits for T={t}, H={h}: need 1 ≤ Z ≤ {MaxSplits} and T·H·Z ≤ {MaxSplitGroups}");
        long rows = (long)t * h * z;
        if (z > 1 && _partials.Length < rows * (KernelLimits.MaxHeadDim + 2))
        {
            // Tree steps split too (their groups hold eight tokens): the buffer grows to the largest such step.
            var grown = _accelerator.Allocate1D<float>(rows * (KernelLimits.MaxHeadDim + 2));
            _partials.Dispose();
            _partials = grown;
        }
        var a = args.WithSplits(z);
        if (planes.Element == KvElement.F32)
            Dispatch(_f32, stream, output, qkv, planes.Keys.Cast<float>(), planes.Values.Cast<float>(), blockTable, mask, a, warp, tiled, block);
        else
            Dispatch(F16Family(), stream, output, qkv, planes.Keys.Cast<ushort>(), planes.Values.Cast<ushort>(), blockTable, mask, a, warp, tiled, block);
        if (z > 1) _combine(stream, t * h * dh, output, _partials.View, a);
    }

    private void Dispatch<TKv>(Family<TKv> kernels, AcceleratorStream stream, ArrayView<float> output, ArrayView<float> qkv, ArrayView<TKv> keys, ArrayView<TKv> values,
        ArrayView<int> blockTable, ArrayView<int> mask, AttentionArgs a, bool warp, bool tiled, bool block)
        where TKv : unmanaged
    {
        int t = a.Tokens, h = a.Heads, z = a.Splits;
        if (warp)
        {
            kernels.Decode!(stream, new KernelConfig(new Index3D(h, 1, z), new Index3D(32, 1, 1)), output, _partials.View, qkv, keys, values, blockTable, mask, a);
        }
        else if (tiled)
        {
            int rowsPerTile = AttentionKernel.TileRows(_tileGroupSize);
            int tileCount = (t * (h / a.KvHeads) + rowsPerTile - 1) / rowsPerTile;
            kernels.Tiles!(stream, new KernelConfig(new Index3D(a.KvHeads, tileCount, z), new Index3D(_tileGroupSize, 1, 1)), output, _partials.View, qkv, keys, values, blockTable, mask, a);
        }
        else if (block)
        {
            int blocks = (t + AttentionKernel.BlockTokens - 1) / AttentionKernel.BlockTokens;
            kernels.Block(stream, new KernelConfig(new Index3D(h, blocks, z), new Index3D(_groupSize, 1, 1)), output, _partials.View, qkv, keys, values, blockTable, mask, a);
        }
        else
        {
            kernels.Run(stream, new KernelConfig(new Index3D(h, t, z), new Index3D(_groupSize, 1, 1)), output, _partials.View, qkv, keys, values, blockTable, mask, a);
        }
    }

    /// <summary>Frees the partials buffer.</summary>
    public void Dispose() => _partials.Dispose();
}
