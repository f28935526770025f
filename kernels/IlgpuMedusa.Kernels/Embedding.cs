using ILGPU;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>Scalars of <see cref="EmbeddingKernel"/>.</summary>
public readonly struct EmbeddingArgs
{
    /// <summary>Creates the scalars.</summary>
    public EmbeddingArgs(int tokens, int columns, int vocabulary, int tableStride)
    {
        Tokens = tokens;
        Columns = columns;
        Vocabulary = vocabulary;
        TableStride = tableStride;
    }

    /// <summary>T.</summary>
    public readonly int Tokens;
    /// <summary>D.</summary>
    public readonly int Columns;
    /// <summary>V, rows of the table.</summary>
    public readonly int Vocabulary;
    /// <summary>Elements from one table row to the next.</summary>
    public readonly int TableStride;
}

/// <summary>Embedding gather: output[t, :] = table[tokens[t], :], decoded to float32.</summary>
public static class EmbeddingKernel
{
    /// <summary>One thread per output element. Ids outside the vocabulary give a zero row (the launcher cannot read ids).</summary>
    /// <param name="index">Output element t·D + d.</param>
    /// <param name="output">F32[T, D].</param>
    /// <param name="tokens">I32[T].</param>
    /// <param name="table">[V, stride] stored as TElement.</param>
    /// <param name="args">Shapes.</param>
    public static void Run<TElement, TFormat>(Index1D index, ArrayView<float> output, ArrayView<int> tokens, ArrayView<TElement> table, EmbeddingArgs args)
        where TElement : unmanaged
        where TFormat : struct, IElementFormat<TElement>
    {
        if (index >= args.Tokens * args.Columns) return;
        int t = index / args.Columns;
        int d = index - t * args.Columns;
        int id = tokens[t];
        output[index] = (uint)id < (uint)args.Vocabulary ? default(TFormat).Decode(table[(long)id * args.TableStride + d]) : 0f;
    }
}

/// <summary>Launches <see cref="EmbeddingKernel"/>; one instance per accelerator.</summary>
public sealed class EmbeddingLauncher
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, EmbeddingArgs> _f32;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<ushort>, EmbeddingArgs> _f16;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<ushort>, EmbeddingArgs> _bf16;

    /// <summary>Compiles and loads the kernels.</summary>
    public EmbeddingLauncher(Accelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        _f32 = KernelLoader.Load(accelerator, EmbeddingKernel.Run<float, F32Format>,
            () => accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, EmbeddingArgs>(EmbeddingKernel.Run<float, F32Format>));
        _f16 = KernelLoader.Load(accelerator, EmbeddingKernel.Run<ushort, F16Format>,
            () => accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<ushort>, EmbeddingArgs>(EmbeddingKernel.Run<ushort, F16Format>));
        _bf16 = KernelLoader.Load(accelerator, EmbeddingKernel.Run<ushort, BF16Format>,
            () => accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<ushort>, EmbeddingArgs>(EmbeddingKernel.Run<ushort, BF16Format>));
    }

    /// <summary>output F32[T, D] (contiguous), tokens I32[T], table [V, D].</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> output, ArrayView<int> tokens, WeightView table, int tokenCount)
    {
        int d = table.Columns;
        if (output.Length < (long)tokenCount * d || tokens.Length < tokenCount)
            throw new ArgumentException($"Embedding: output of {output.Length} floats / {tokens.Length} tokens too small for T={tokenCount}, D={d}");
        long total = (long)tokenCount * d;
        if (total == 0) return;
        var args = new EmbeddingArgs(tokenCount, d, table.Rows, table.RowStride);
        switch (table.Storage)
        {
            case WeightStorage.F32: _f32(stream, (int)total, output, tokens, table.Floats, args); break;
            case WeightStorage.F16: _f16(stream, (int)total, output, tokens, table.Halves, args); break;
            default: _bf16(stream, (int)total, output, tokens, table.Halves, args); break;
        }
    }
}
