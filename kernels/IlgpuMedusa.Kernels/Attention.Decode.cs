using ILGPU;
using ILGPU.Algorithms;

namespace IlgpuMedusa.Kernels;

/// <summary>
/// Eight floats of a head row held by one lane: dimensions lane, lane + s, ..., lane + 7s with s the stride, 32 (a warp
/// shares the row: Dh ≤ 256, <see cref="AttentionKernel.Decode"/>) or 16 (a half warp does: Dh ≤ 128,
/// <see cref="AttentionKernel.Tiles"/>).
/// </summary>
internal readonly struct LaneSlice
{
    public LaneSlice(float a0, float a1, float a2, float a3, float a4, float a5, float a6, float a7)
    {
        A0 = a0;
        A1 = a1;
        A2 = a2;
        A3 = a3;
        A4 = a4;
        A5 = a5;
        A6 = a6;
        A7 = a7;
    }

    public readonly float A0, A1, A2, A3, A4, A5, A6, A7;

    /// <summary>Loads dimensions lane + 32i (those below Dh; 0 beyond) of the row at offset, decoded to float32, times scale.</summary>
    public static LaneSlice Load<TElement, TFormat>(ArrayView<TElement> view, long offset, int lane, int dh, float scale)
        where TElement : unmanaged
        where TFormat : struct, IElementFormat<TElement>
    {
        var f = default(TFormat);
        float a0 = lane < dh ? f.Decode(view[offset + lane]) * scale : 0f;
        float a1 = lane + 32 < dh ? f.Decode(view[offset + lane + 32]) * scale : 0f;
        float a2 = lane + 64 < dh ? f.Decode(view[offset + lane + 64]) * scale : 0f;
        float a3 = lane + 96 < dh ? f.Decode(view[offset + lane + 96]) * scale : 0f;
        float a4 = lane + 128 < dh ? f.Decode(view[offset + lane + 128]) * scale : 0f;
        float a5 = lane + 160 < dh ? f.Decode(view[offset + lane + 160]) * scale : 0f;
        float a6 = lane + 192 < dh ? f.Decode(view[offset + lane + 192]) * scale : 0f;
        float a7 = lane + 224 < dh ? f.Decode(view[offset + lane + 224]) * scale : 0f;
        return new LaneSlice(a0, a1, a2, a3, a4, a5, a6, a7);
    }

    /// <summary>This lane's share of the dot product.</summary>
    public float Dot(LaneSlice o) =>
        ((A0 * o.A0 + A1 * o.A1) + (A2 * o.A2 + A3 * o.A3)) + ((A4 * o.A4 + A5 * o.A5) + (A6 * o.A6 + A7 * o.A7));

    /// <summary>this · r + v · p, per dimension.</summary>
    public LaneSlice ScaleAdd(float r, LaneSlice v, float p) => new(
        A0 * r + v.A0 * p, A1 * r + v.A1 * p, A2 * r + v.A2 * p, A3 * r + v.A3 * p,
        A4 * r + v.A4 * p, A5 * r + v.A5 * p, A6 * r + v.A6 * p, A7 * r + v.A7 * p);

    /// <summary>this · r + p · (the row of <paramref name="tile"/> at <paramref name="offset"/>, dimensions lane + i·stride below Dh).</summary>
    public LaneSlice ScaleAddRow(float r, ArrayView<float> tile, int offset, int lane, int dh, float p, int stride) => new(
        A0 * r + (lane < dh ? p * tile[offset + lane] : 0f),
        A1 * r + (lane + stride < dh ? p * tile[offset + lane + stride] : 0f),
        A2 * r + (lane + 2 * stride < dh ? p * tile[offset + lane + 2 * stride] : 0f),
        A3 * r + (lane + 3 * stride < dh ? p * tile[offset + lane + 3 * stride] : 0f),
        A4 * r + (lane + 4 * stride < dh ? p * tile[offset + lane + 4 * stride] : 0f),
        A5 * r + (lane + 5 * stride < dh ? p * tile[offset + lane + 5 * stride] : 0f),
        A6 * r + (lane + 6 * stride < dh ? p * tile[offset + lane + 6 * stride] : 0f),
        A7 * r + (lane + 7 * stride < dh ? p * tile[offset + lane + 7 * stride] : 0f));

    /// <summary>Stores dimensions lane + i·stride below Dh, times <paramref name="scale"/>.</summary>
    public void Store(ArrayView<float> view, long offset, int lane, int dh, float scale, int stride = 32)
    {
        if (lane < dh) view[offset + lane] = A0 * scale;
        if (lane + stride < dh) view[offset + lane + stride] = A1 * scale;
        if (lane + 2 * stride < dh) view[offset + lane + 2 * stride] = A2 * scale;
        if (lane + 3 * stride < dh) view[offset + lane + 3 * stride] = A3 * scale;
        if (lane + 4 * stride < dh) view[offset + lane + 4 * stride] = A4 * scale;
        if (lane + 5 * stride < dh) view[offset + lane + 5 * stride] = A5 * scale;
        if (lane + 6 * stride < dh) view[offset + lane + 6 * stride] = A6 * scale;
        if (lane + 7 * stride < dh) view[offset + lane + 7 * stride] = A7 * scale;
    }
}

public static partial class AttentionKernel
{
    /// <summary>Keys <see cref="Decode"/> loads per iteration (their loads in flight together).</summary>
    private const int DecodeKeysPerStep = 4;

    /// <summary>
    /// Decoding attention (T = 1) with one warp per (head, key split): lane l holds dimensions l, l + 32, ... of the query,
    /// of each key and value row it reads (consecutive lanes, consecutive floats: coalesced) and of its accumulator. Four
    /// keys per iteration: their key and value rows are loaded together, each score is a warp sum by shuffles (every lane
    /// gets it), and the online softmax lives in registers: no shared memory, no barrier. Splits write the partials of
    /// <see cref="Run"/>, merged by <see cref="Combine"/>. Warp shuffles: CUDA (and the CPU emulator, for tests). Dh ≤ 256.
    /// Grid: (H, 1, Z) groups of 32 threads.
    /// </summary>
    /// <param name="output">F32[1, H·Dh] (Z = 1).</param>
    /// <param name="partials">F32[H·Z, Dh + 2] (Z &gt; 1).</param>
    /// <param name="qkv">F32[1, stride]: Q | K | V, RoPE applied.</param>
    /// <param name="keys">The layer's key plane.</param>
    /// <param name="values">The layer's value plane.</param>
    /// <param name="blockTable">I32[blocks].</param>
    /// <param name="mask">I32[1, 1] (ignored when args.HasMask is 0).</param>
    /// <param name="args">Shapes (T = 1).</param>
    public static void Decode<TKv, TFormat>(ArrayView<float> output, ArrayView<float> partials, ArrayView<float> qkv, ArrayView<TKv> keys, ArrayView<TKv> values,
        ArrayView<int> blockTable, ArrayView<int> mask, AttentionArgs args)
        where TKv : unmanaged
        where TFormat : struct, IKvFormat<TKv>
    {
        int lane = Warp.LaneIdx;
        int head = Grid.IdxX;
        int split = Grid.IdxZ;
        int dh = args.HeadDim;
        int kvDim = args.KvHeads * dh;
        long slotCount = keys.Length / (kvDim > 0 ? kvDim : 1); // Hkv · Dh ≥ 1 (the launcher checks; clamped all the same)
        long headOffset = (long)(head / (args.Heads / args.KvHeads)) * dh;
        var query = LaneSlice.Load<float, F32Format>(qkv, (long)head * dh, lane, dh, args.Scale);
        int keyCount = args.Committed + 1;
        int perSplit = (keyCount + args.Splits - 1) / args.Splits;
        int begin = split * perSplit;
        int end = begin + perSplit < keyCount ? begin + perSplit : keyCount;
        float runningMax = Hidden;
        float runningSum = 0f;
        var zero = new LaneSlice(0f, 0f, 0f, 0f, 0f, 0f, 0f, 0f);
        var acc = zero;
        for (int key = begin; key < end; key += DecodeKeysPerStep)
        {
            // Keys past the end read the split's last key row (this sequence's), a hidden new key its own row; both weigh 0.
            long o0 = KeyRowOffset(blockTable, args, key, end, kvDim, headOffset, slotCount);
            long o1 = KeyRowOffset(blockTable, args, key + 1, end, kvDim, headOffset, slotCount);
            long o2 = KeyRowOffset(blockTable, args, key + 2, end, kvDim, headOffset, slotCount);
            long o3 = KeyRowOffset(blockTable, args, key + 3, end, kvDim, headOffset, slotCount);
            var k0 = LaneSlice.Load<TKv, TFormat>(keys, o0, lane, dh, 1f);
            var k1 = LaneSlice.Load<TKv, TFormat>(keys, o1, lane, dh, 1f);
            var k2 = LaneSlice.Load<TKv, TFormat>(keys, o2, lane, dh, 1f);
            var k3 = LaneSlice.Load<TKv, TFormat>(keys, o3, lane, dh, 1f);
            var v0 = LaneSlice.Load<TKv, TFormat>(values, o0, lane, dh, 1f);
            var v1 = LaneSlice.Load<TKv, TFormat>(values, o1, lane, dh, 1f);
            var v2 = LaneSlice.Load<TKv, TFormat>(values, o2, lane, dh, 1f);
            var v3 = LaneSlice.Load<TKv, TFormat>(values, o3, lane, dh, 1f);
            float s0 = query.Dot(k0), s1 = query.Dot(k1), s2 = query.Dot(k2), s3 = query.Dot(k3);
            for (int offset = 16; offset > 0; offset >>= 1)
            {
                s0 += Warp.ShuffleXor(s0, offset);
                s1 += Warp.ShuffleXor(s1, offset);
                s2 += Warp.ShuffleXor(s2, offset);
                s3 += Warp.ShuffleXor(s3, offset);
            }
            bool e0 = DecodeVisible(mask, args, key, end), e1 = DecodeVisible(mask, args, key + 1, end);
            bool e2 = DecodeVisible(mask, args, key + 2, end), e3 = DecodeVisible(mask, args, key + 3, end);
            s0 = e0 ? s0 : Hidden;
            s1 = e1 ? s1 : Hidden;
            s2 = e2 ? s2 : Hidden;
            s3 = e3 ? s3 : Hidden;
            float m = XMath.Max(XMath.Max(s0, s1), XMath.Max(s2, s3));
            float newMax = runningMax > m ? runningMax : m;
            float r = XMath.Exp(runningMax - newMax);
            float p0 = e0 ? XMath.Exp(s0 - newMax) : 0f, p1 = e1 ? XMath.Exp(s1 - newMax) : 0f;
            float p2 = e2 ? XMath.Exp(s2 - newMax) : 0f, p3 = e3 ? XMath.Exp(s3 - newMax) : 0f;
            runningSum = runningSum * r + ((p0 + p1) + (p2 + p3));
            runningMax = newMax;
            acc = acc.ScaleAdd(r, v0, p0).ScaleAdd(1f, v1, p1).ScaleAdd(1f, v2, p2).ScaleAdd(1f, v3, p3);
        }
        if (args.Splits == 1)
        {
            acc.Store(output, (long)head * dh, lane, dh, runningSum > 0f ? 1f / runningSum : 0f);
            return;
        }
        long at = ((long)head * args.Splits + split) * (dh + 2);
        acc.Store(partials, at, lane, dh, 1f);
        if (lane == 0)
        {
            partials[at + dh] = runningMax;
            partials[at + dh + 1] = runningSum;
        }
    }

    /// <summary>
    /// Where key <paramref name="key"/>'s row of one key/value head starts in a layer's plane, through the block table;
    /// keys at or past <paramref name="end"/> (never visible: their weight is 0) read key end − 1's row, a row of this
    /// sequence: never another sequence's, whose ∞ or NaN would make 0 · ∞ = NaN here. A table entry outside the cache's
    /// <paramref name="slotCount"/> slots reads slot 0 (<see cref="KvSlots"/>). Callers have begin ≤ key, begin &lt; end.
    /// </summary>
    private static long KeyRowOffset(ArrayView<int> blockTable, AttentionArgs args, int key, int end, int kvDim, long headOffset, long slotCount)
    {
        long slot = KvSlots.Slot(blockTable, key < end ? key : end - 1, args.BlockSize, slotCount);
        return (slot < 0 ? 0 : slot) * kvDim + headOffset;
    }

    private static bool DecodeVisible(ArrayView<int> mask, AttentionArgs args, int key, int end) =>
        key < end && (key < args.Committed || args.HasMask == 0 || mask[key - args.Committed] != 0);
}
