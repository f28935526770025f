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
    /// <summary>One thread per (t, c), c &lt; Hkv · Dh; it copies the key and the value element.</summary>
    /// <param name="index">t · KvDim + c.</param>
    /// <param name="keys">The layer's key plane F32[slots, KvDim].</param>
    /// <param name="values">The layer's value plane F32[slots, KvDim].</param>
    /// <param name="qkv">F32[T, stride]: Q | K | V.</param>
    /// <param name="blockTable">I32[blocks].</param>
    /// <param name="args">Shapes.</param>
    public static void Run(Index1D index, ArrayView<float> keys, ArrayView<float> values, ArrayView<float> qkv, ArrayView<int> blockTable, KvWriteArgs args)
    {
        if (index >= args.Tokens * args.KvDim) return;
        int t = index / args.KvDim;
        int c = index - t * args.KvDim;
        int position = args.StartPosition + t;
        int block = blockTable[position / args.BlockSize];
        long slot = (long)block * args.BlockSize + position % args.BlockSize;
        long source = (long)t * args.QkvStride + args.KeyOffset + c;
        keys[slot * args.KvDim + c] = qkv[source];
        values[slot * args.KvDim + c] = qkv[source + args.KvDim];
    }
}

/// <summary>Launches <see cref="KvWriteKernel"/>; one instance per accelerator.</summary>
public sealed class KvWriteLauncher
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, KvWriteArgs> _kernel;

    /// <summary>Compiles and loads the kernel.</summary>
    public KvWriteLauncher(Accelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        _kernel = KernelLoader.Load(accelerator, KvWriteKernel.Run,
            () => accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, KvWriteArgs>(KvWriteKernel.Run));
    }

    /// <summary>keys/values: one layer's planes; qkv F32[T, stride]; blockTable I32[n] covering start + T positions.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> keys, ArrayView<float> values, ArrayView<float> qkv, ArrayView<int> blockTable,
        in KvWriteArgs args)
    {
        if (qkv.Length < (long)args.Tokens * args.QkvStride || args.KeyOffset + 2L * args.KvDim > args.QkvStride
            || (long)blockTable.Length * args.BlockSize < (long)args.StartPosition + args.Tokens || keys.Length != values.Length)
            throw new ArgumentException($"KvWrite: qkv {qkv.Length} floats (rows of {args.QkvStride}, K at {args.KeyOffset}, KvDim {args.KvDim}), " +
                $"block table of {blockTable.Length} × {args.BlockSize}: wrong for T={args.Tokens} from position {args.StartPosition}");
        long total = (long)args.Tokens * args.KvDim;
        if (total == 0) return;
        _kernel(stream, (int)total, keys, values, qkv, blockTable, args);
    }
}
