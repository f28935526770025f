using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>Scalars of <see cref="AttentionKernel"/>.</summary>
public readonly struct AttentionArgs
{
    /// <summary>Creates the scalars.</summary>
    public AttentionArgs(int tokens, int heads, int kvHeads, int headDim, int qkvStride, int committed, int blockSize, bool hasMask)
    {
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

    /// <summary>Hkv · Dh.</summary>
    public int KvDim => KvHeads * HeadDim;
}

/// <summary>
/// Attention of T new queries over S committed keys plus the T new keys (already written to the cache), read through
/// the block table: query t sees key j &lt; S always, and new key j ≥ S when mask[t, j − S] ≠ 0 (no mask: j − S ≤ t).
/// Softmax(q·k/√Dh) over the visible keys, output = Σ p·v. One kernel serves prefill (causal), decoding (T = 1) and
/// tree verification (tree mask).
/// </summary>
public static class AttentionKernel
{
    /// <summary>Score of a key that does not take part (finite, so that differences never make NaN).</summary>
    private const float Hidden = -3.0e38f;

    /// <summary>
    /// One group per (head h, token t), grid (H, T). Keys go in chunks of G: thread i scores key c0 + i (a dot product
    /// with q, which sits scaled in shared memory); one shared-memory tree reduction gives the chunk's max and its sum of
    /// exponentials together; the running (max, sum) and the output accumulator are rescaled online (flash-attention
    /// style), so any S fits in fixed shared memory. For P·V, thread (part, d) sums p·v[d] over every parts-th key of the
    /// chunk, so consecutive threads read consecutive floats of a value row (coalesced). Dh ≤ 256, G a power of two.
    /// </summary>
    /// <param name="output">F32[T, H·Dh].</param>
    /// <param name="qkv">F32[T, stride]: Q | K | V, RoPE applied.</param>
    /// <param name="keys">The layer's key plane F32[slots, Hkv·Dh].</param>
    /// <param name="values">The layer's value plane F32[slots, Hkv·Dh].</param>
    /// <param name="blockTable">I32[blocks].</param>
    /// <param name="mask">I32[T, T] (ignored when args.HasMask is 0).</param>
    /// <param name="args">Shapes.</param>
    public static void Run(ArrayView<float> output, ArrayView<float> qkv, ArrayView<float> keys, ArrayView<float> values,
        ArrayView<int> blockTable, ArrayView<int> mask, AttentionArgs args)
    {
        var query = SharedMemory.Allocate<float>(KernelLimits.MaxHeadDim);      // q · 1/√Dh
        var sum = SharedMemory.Allocate<float>(KernelLimits.MaxHeadDim);        // Σ p·v so far, relative to the running max
        var probability = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);
        var slotOffset = SharedMemory.Allocate<long>(KernelLimits.MaxGroupSize); // float offset of each chunk key's head
        var reduceMax = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);
        var reduceSum = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);
        var partial = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);  // [parts, Dh] ≤ max(G, Dh) floats

        int tid = Group.IdxX;
        int groupSize = Group.DimX;
        int head = Grid.IdxX;
        int token = Grid.IdxY;
        int dh = args.HeadDim;
        int kvDim = args.KvHeads * dh;
        long headOffset = (long)(head / (args.Heads / args.KvHeads)) * dh;
        long queryStart = (long)token * args.QkvStride + (long)head * dh;
        for (int d = tid; d < dh; d += groupSize)
        {
            query[d] = qkv[queryStart + d] * args.Scale;
            sum[d] = 0f;
        }
        Group.Barrier();

        int keyCount = args.HasMask != 0 ? args.Committed + args.Tokens : args.Committed + token + 1;
        int parts = dh <= groupSize ? groupSize / dh : 1;
        int part = dh <= groupSize ? tid / dh : 0;
        int firstDim = dh <= groupSize ? tid - part * dh : tid;
        int dimStep = dh <= groupSize ? dh : groupSize;
        float runningMax = Hidden;
        float runningSum = 0f;
        for (int chunk = 0; chunk < keyCount; chunk += groupSize)
        {
            // Scores: one key per thread.
            int key = chunk + tid;
            bool visible = key < keyCount
                && (key < args.Committed || args.HasMask == 0 || mask[token * args.Tokens + key - args.Committed] != 0);
            float score = Hidden;
            long offset = 0;
            if (visible)
            {
                long slot = (long)blockTable[key / args.BlockSize] * args.BlockSize + key % args.BlockSize;
                offset = slot * kvDim + headOffset;
                float dot = 0f;
                for (int d = 0; d < dh; d++) dot += query[d] * keys[offset + d];
                score = dot;
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

            // P·V over the chunk: thread (part, d) takes keys part, part + parts, ...
            int count = keyCount - chunk < groupSize ? keyCount - chunk : groupSize;
            if (part < parts)
            {
                for (int d = firstDim; d < dh; d += dimStep)
                {
                    float acc = 0f;
                    for (int k = part; k < count; k += parts)
                    {
                        float p = probability[k];
                        if (p != 0f) acc += p * values[slotOffset[k] + d];
                    }
                    partial[part * dh + d] = acc;
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

        long outputStart = (long)token * args.Heads * dh + (long)head * dh;
        for (int d = tid; d < dh; d += groupSize)
            output[outputStart + d] = runningSum > 0f ? sum[d] / runningSum : 0f;
    }
}

/// <summary>Launches <see cref="AttentionKernel"/>; one instance per accelerator.</summary>
public sealed class AttentionLauncher
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, AttentionArgs> _kernel;
    private readonly int _groupSize;

    /// <summary>Compiles and loads the kernel; <paramref name="groupSize"/> threads per (head, token).</summary>
    public AttentionLauncher(Accelerator accelerator, int groupSize)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        KernelLimits.CheckGroupSize(groupSize);
        _groupSize = groupSize;
        _kernel = KernelLoader.Load(accelerator, AttentionKernel.Run,
            () => accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, AttentionArgs>(AttentionKernel.Run));
    }

    /// <summary>
    /// output F32[T, H·Dh]; qkv F32[T, stride]; keys, values: one layer's planes; blockTable I32[n] covering S + T
    /// positions; mask I32[T, T] when args.HasMask (any non-empty view otherwise).
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> qkv, ArrayView<float> keys, ArrayView<float> values,
        ArrayView<int> blockTable, ArrayView<int> mask, in AttentionArgs args)
    {
        int t = args.Tokens, h = args.Heads, dh = args.HeadDim;
        if (dh <= 0 || dh > KernelLimits.MaxHeadDim || args.KvHeads <= 0 || h % args.KvHeads != 0)
            throw new ArgumentException($"Attention: Dh={dh} must be in [1, {KernelLimits.MaxHeadDim}] and H={h} a multiple of Hkv={args.KvHeads}");
        if (output.Length < (long)t * h * dh || qkv.Length < (long)t * args.QkvStride || (long)(h + 2 * args.KvHeads) * dh > args.QkvStride
            || (long)blockTable.Length * args.BlockSize < (long)args.Committed + t || (args.HasMask != 0 && mask.Length < (long)t * t) || mask.Length < 1)
            throw new ArgumentException($"Attention: output {output.Length}, qkv {qkv.Length} floats (rows of {args.QkvStride}), block table {blockTable.Length} × {args.BlockSize}, " +
                $"mask {mask.Length}: wrong for T={t}, H={h}, Hkv={args.KvHeads}, Dh={dh}, S={args.Committed}");
        if (t == 0 || h == 0) return;
        _kernel(stream, new KernelConfig(new Index2D(h, t), new Index2D(_groupSize, 1)), output, qkv, keys, values, blockTable, mask, args);
    }
}
