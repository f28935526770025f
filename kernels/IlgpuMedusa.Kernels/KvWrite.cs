using ILGPU;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>Scalars of <see cref="KvWriteKernel"/>.</summary>
public readonly struct KvWriteArgs
{
    /// <summary>Creates the scalars.</summary>
    public KvWriteArgs(int tokens, int kvDim, int qkvStride, int keyOffset, int blockSize, int startPosition)
    {
        Tokens = tokens;
        KvDim = kvDim;
        QkvStride = qkvStride;
        KeyOffset = keyOffset;
        BlockSize = blockSize;
        StartPosition = startPosition;
    }

    /// <summary>T.</summary>
    public readonly int Tokens;
    /// <summary>Hkv · Dh, floats per slot.</summary>
    public readonly int KvDim;
    /// <summary>Floats per qkv row.</summary>
    public readonly int QkvStride;
    /// <summary>Column of K in a qkv row (H · Dh); V follows at KeyOffset + KvDim.</summary>
    public readonly int KeyOffset;
    /// <summary>B, slots per block.</summary>
    public readonly int BlockSize;
    /// <summary>Logical position of token 0.</summary>
    public readonly int StartPosition;
}

/// <summary>
/// KV write: token t's keys and values go to logical position p = start + t, physical slot
/// blockTable[p / B] · B + p mod B of one layer's key and value planes.
/// </summary>
public static class KvWriteKernel
{
    /// <summary>One thread per (t, c), c &lt; Hkv · Dh; it stores the key and the value element (binary16: rounded to nearest even).</summary>
    /// <param name="index">t · KvDim + c.</param>
    /// <param name="keys">The layer's key plane [slots, KvDim], elements of <typeparamref name="TFormat"/>.</param>
    /// <param name="values">The layer's value plane [slots, KvDim].</param>
    /// <param name="qkv">F32[T, stride]: Q | K | V.</param>
    /// <param name="blockTable">I32[blocks].</param>
    /// <param name="args">Shapes.</param>
    public static void Run<TKv, TFormat>(Index1D index, ArrayView<TKv> keys, ArrayView<TKv> values, ArrayView<float> qkv, ArrayView<int> blockTable, KvWriteArgs args)
        where TKv : unmanaged
        where TFormat : struct, IKvFormat<TKv>
    {
        var kv = default(TFormat);
        if (index >= args.Tokens * args.KvDim) return;
        int t = index / args.KvDim;
        int c = index - t * args.KvDim;
        int position = args.StartPosition + t;
        long slot = KvSlots.Slot(blockTable, position, args.BlockSize, keys.Length / (args.KvDim > 0 ? args.KvDim : 1));
        if (slot < 0) return; // a table entry outside the cache: nothing is written
        long source = (long)t * args.QkvStride + args.KeyOffset + c;
        keys[slot * args.KvDim + c] = kv.Encode(qkv[source]);
        values[slot * args.KvDim + c] = kv.Encode(qkv[source + args.KvDim]);
    }
}

/// <summary>Launches <see cref="KvWriteKernel"/>; one instance per accelerator.</summary>
public sealed class KvWriteLauncher
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, KvWriteArgs> _f32;
    private Action<AcceleratorStream, Index1D, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, ArrayView<int>, KvWriteArgs>? _f16;
    private readonly Accelerator _accelerator;

    /// <summary>Compiles and loads the float32 kernel (the binary16 one on first use).</summary>
    public KvWriteLauncher(Accelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        _accelerator = accelerator;
        _f32 = Load<float, KvF32>(accelerator);
    }

    private static Action<AcceleratorStream, Index1D, ArrayView<TKv>, ArrayView<TKv>, ArrayView<float>, ArrayView<int>, KvWriteArgs> Load<TKv, TFormat>(Accelerator accelerator)
        where TKv : unmanaged
        where TFormat : struct, IKvFormat<TKv>
    {
        Action<Index1D, ArrayView<TKv>, ArrayView<TKv>, ArrayView<float>, ArrayView<int>, KvWriteArgs> kernel = KvWriteKernel.Run<TKv, TFormat>;
        return KernelLoader.Load(accelerator, kernel, () => accelerator.LoadAutoGroupedKernel(kernel));
    }

    /// <summary>Compiles the kernel for <paramref name="element"/> now (binary16: otherwise on first use).</summary>
    public void Prepare(KvElement element)
    {
        if (element == KvElement.F16) _f16 ??= Load<ushort, KvF16>(_accelerator);
    }

    /// <summary>planes: one layer's keys and values; qkv F32[T, stride]; blockTable I32[n] covering start + T positions.</summary>
    public void Launch(AcceleratorStream stream, KvPlanes planes, ArrayView<float> qkv, ArrayView<int> blockTable, in KvWriteArgs args)
    {
        if (qkv.Length < (long)args.Tokens * args.QkvStride || args.KeyOffset + 2L * args.KvDim > args.QkvStride
            || (long)blockTable.Length * args.BlockSize < (long)args.StartPosition + args.Tokens)
            throw new ArgumentException($"KvWrite: qkv {qkv.Length} floats (rows of {args.QkvStride}, K at {args.KeyOffset}, KvDim {args.KvDim}), " +
                $"block table of {blockTable.Length} × {args.BlockSize}: wrong for T={args.Tokens} from position {args.StartPosition}");
        long total = (long)args.Tokens * args.KvDim;
        if (total == 0) return;
        if (planes.Element == KvElement.F32)
        {
            _f32(stream, (int)total, planes.Keys.Cast<float>(), planes.Values.Cast<float>(), qkv, blockTable, args);
        }
        else
        {
            _f16 ??= Load<ushort, KvF16>(_accelerator);
            _f16(stream, (int)total, planes.Keys.Cast<ushort>(), planes.Values.Cast<ushort>(), qkv, blockTable, args);
        }
    }
}
