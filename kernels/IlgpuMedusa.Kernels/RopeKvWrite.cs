using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>Scalars of <see cref="RopeKvWriteKernel"/>.</summary>
public readonly struct RopeKvWriteArgs
{
    /// <summary>Creates the scalars.</summary>
    public RopeKvWriteArgs(int tokens, int queryHeads, int kvHeads, int headDim, int qkvStride, int blockSize, int startPosition)
    {
        Tokens = tokens;
        QueryHeads = queryHeads;
        KvHeads = kvHeads;
        HeadDim = headDim;
        QkvStride = qkvStride;
        BlockSize = blockSize;
        StartPosition = startPosition;
    }

    /// <summary>T.</summary>
    public readonly int Tokens;
    /// <summary>H, query heads (columns [0, H·Dh) of a qkv row).</summary>
    public readonly int QueryHeads;
    /// <summary>Hkv: key heads follow the query heads, value heads the key heads.</summary>
    public readonly int KvHeads;
    /// <summary>Dh (even).</summary>
    public readonly int HeadDim;
    /// <summary>Floats per qkv row.</summary>
    public readonly int QkvStride;
    /// <summary>B, slots per block.</summary>
    public readonly int BlockSize;
    /// <summary>Logical cache position of token 0.</summary>
    public readonly int StartPosition;
}

/// <summary>
/// RoPE and the KV write in one launch: the rotation of <see cref="RopeKernel"/> on the query and key heads of each qkv
/// row, in place, and the copy of <see cref="KvWriteKernel"/> of the rotated keys and the values into the layer's cache
/// planes at logical position start + t (slot blockTable[p / B] · B + p mod B). The RoPE position comes from
/// positions[t] (for a tree, S + depth), the cache position from the row (S + node): the two differ during verification.
/// </summary>
public static class RopeKvWriteKernel
{
    /// <summary>
    /// One thread per (t, head slot s, j), j &lt; Dh/2, s &lt; H + Hkv: slot s &lt; H rotates pair j of query head s; slot
    /// H + g rotates pair j of key head g, stores it in the key plane and copies pair j of value head g to the value plane.
    /// </summary>
    /// <param name="index">(t · (H + Hkv) + s) · Dh/2 + j.</param>
    /// <param name="keys">The layer's key plane [slots, Hkv·Dh], elements of <typeparamref name="TFormat"/>.</param>
    /// <param name="values">The layer's value plane [slots, Hkv·Dh].</param>
    /// <param name="qkv">F32[T, stride]: Q | K | V, rotated in place.</param>
    /// <param name="positions">I32[T] RoPE positions.</param>
    /// <param name="frequencies">F32[Dh/2], computed on the host (the main library's RopeParameters.Frequencies).</param>
    /// <param name="blockTable">I32[blocks].</param>
    /// <param name="args">Shapes.</param>
    public static void Run<TKv, TFormat>(Index1D index, ArrayView<TKv> keys, ArrayView<TKv> values, ArrayView<float> qkv, ArrayView<int> positions,
        ArrayView<float> frequencies, ArrayView<int> blockTable, RopeKvWriteArgs args)
        where TKv : unmanaged
        where TFormat : struct, IKvFormat<TKv>
    {
        var kv = default(TFormat);
        int half = args.HeadDim / 2;
        int slots = args.QueryHeads + args.KvHeads;
        if (index >= args.Tokens * slots * half) return;
        int pair = index / half;
        int j = index - pair * half;
        int t = pair / slots;
        int s = pair - t * slots;
        var (cos, sin) = RopeKernel.Rotation(positions[t] * frequencies[j]);
        long i = (long)t * args.QkvStride + s * args.HeadDim + j; // keys follow the query heads in a row
        float a = qkv[i];
        float b = qkv[i + half];
        float ra = a * cos - b * sin;
        float rb = a * sin + b * cos;
        qkv[i] = ra;
        qkv[i + half] = rb;
        if (s < args.QueryHeads) return;
        int kvDim = args.KvHeads * args.HeadDim;
        int position = args.StartPosition + t;
        long slot = KvSlots.Slot(blockTable, position, args.BlockSize, keys.Length / (kvDim > 0 ? kvDim : 1));
        if (slot < 0) return; // a table entry outside the cache: the rotation stands, nothing is stored
        long at = slot * kvDim + (s - args.QueryHeads) * args.HeadDim + j;
        keys[at] = kv.Encode(ra);
        keys[at + half] = kv.Encode(rb);
        values[at] = kv.Encode(qkv[i + kvDim]);
        values[at + half] = kv.Encode(qkv[i + kvDim + half]);
    }
}

/// <summary>Launches <see cref="RopeKvWriteKernel"/>; one instance per accelerator.</summary>
public sealed class RopeKvWriteLauncher
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, RopeKvWriteArgs> _f32;
    private Action<AcceleratorStream, Index1D, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, RopeKvWriteArgs>? _f16;
    private readonly Accelerator _accelerator;

    /// <summary>Compiles and loads the float32 kernel (the binary16 one on first use).</summary>
    public RopeKvWriteLauncher(Accelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        _accelerator = accelerator;
        _f32 = Load<float, KvF32>(accelerator);
    }

    private static Action<AcceleratorStream, Index1D, ArrayView<TKv>, ArrayView<TKv>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, RopeKvWriteArgs> Load<TKv, TFormat>(Accelerator accelerator)
        where TKv : unmanaged
        where TFormat : struct, IKvFormat<TKv>
    {
        Action<Index1D, ArrayView<TKv>, ArrayView<TKv>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, RopeKvWriteArgs> kernel = RopeKvWriteKernel.Run<TKv, TFormat>;
        return KernelLoader.Load(accelerator, kernel, () => accelerator.LoadAutoGroupedKernel(kernel));
    }

    /// <summary>Compiles the kernel for <paramref name="element"/> now (binary16: otherwise on first use).</summary>
    public void Prepare(KvElement element)
    {
        if (element == KvElement.F16) _f16 ??= Load<ushort, KvF16>(_accelerator);
    }

    /// <summary>
    /// planes: one layer's keys and values; qkv F32[T, stride] holding Q | K | V; positions I32[T]; frequencies F32[Dh/2];
    /// blockTable I32[n] covering start + T positions.
    /// </summary>
    public void Launch(AcceleratorStream stream, KvPlanes planes, ArrayView<float> qkv, ArrayView<int> positions,
        ArrayView<float> frequencies, ArrayView<int> blockTable, in RopeKvWriteArgs args)
    {
        int dh = args.HeadDim;
        long kvDim = (long)args.KvHeads * dh;
        if (dh <= 0 || dh % 2 != 0 || (args.QueryHeads + 2L * args.KvHeads) * dh > args.QkvStride || qkv.Length < (long)args.Tokens * args.QkvStride
            || positions.Length < args.Tokens || frequencies.Length < dh / 2
            || (long)blockTable.Length * args.BlockSize < (long)args.StartPosition + args.Tokens || planes.Length % Math.Max(1, kvDim) != 0)
            throw new ArgumentException($"RopeKvWrite: qkv {qkv.Length} floats (rows of {args.QkvStride}), {positions.Length} positions, {frequencies.Length} frequencies, " +
                $"block table of {blockTable.Length} × {args.BlockSize}: wrong for T={args.Tokens}, H={args.QueryHeads}, Hkv={args.KvHeads}, Dh={dh} from position {args.StartPosition}");
        long total = (long)args.Tokens * (args.QueryHeads + args.KvHeads) * (dh / 2);
        if (total == 0) return;
        if (planes.Element == KvElement.F32)
        {
            _f32(stream, (int)total, planes.Keys.Cast<float>(), planes.Values.Cast<float>(), qkv, positions, frequencies, blockTable, args);
        }
        else
        {
            _f16 ??= Load<ushort, KvF16>(_accelerator);
            _f16(stream, (int)total, planes.Keys.Cast<ushort>(), planes.Values.Cast<ushort>(), qkv, positions, frequencies, blockTable, args);
        }
    }
}
