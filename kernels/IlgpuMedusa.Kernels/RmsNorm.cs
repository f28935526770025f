using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>Scalars of <see cref="RmsNormKernel"/>.</summary>
public readonly struct RmsNormArgs
{
    /// <summary>Creates the scalars.</summary>
    public RmsNormArgs(int columns, float eps)
    {
        Columns = columns;
        Eps = eps;
    }

    /// <summary>D.</summary>
    public readonly int Columns;
    /// <summary>ε added to the mean square.</summary>
    public readonly float Eps;
}

/// <summary>RMSNorm: output[t] = input[t] · (1 / √(mean(input[t]²) + ε)) ⊙ weight.</summary>
public static class RmsNormKernel
{
    /// <summary>One group per row (grid = T groups): strided sum of squares, a shared-memory tree sum, then the scaling pass.</summary>
    /// <param name="output">F32[T, D] (may be the input).</param>
    /// <param name="input">F32[T, D].</param>
    /// <param name="weight">[D] stored as TElement.</param>
    /// <param name="args">D and ε.</param>
    public static void Run<TElement, TFormat>(ArrayView<float> output, ArrayView<float> input, ArrayView<TElement> weight, RmsNormArgs args)
        where TElement : unmanaged
        where TFormat : struct, IElementFormat<TElement>
    {
        var scratch = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);
        int tid = Group.IdxX;
        int groupSize = Group.DimX;
        long rowStart = (long)Grid.IdxX * args.Columns;
        float sumSquares = 0f;
        for (int i = tid; i < args.Columns; i += groupSize)
        {
            float v = input[rowStart + i];
            sumSquares += v * v;
        }
        float total = GroupReduce.Sum(scratch, sumSquares);
        float scale = 1f / XMath.Sqrt(total / args.Columns + args.Eps);
        var format = default(TFormat);
        for (int i = tid; i < args.Columns; i += groupSize)
            output[rowStart + i] = input[rowStart + i] * scale * format.Decode(weight[i]);
    }
}

/// <summary>Launches <see cref="RmsNormKernel"/>; one instance per accelerator.</summary>
public sealed class RmsNormLauncher
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, RmsNormArgs> _f32;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<ushort>, RmsNormArgs> _f16;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<ushort>, RmsNormArgs> _bf16;
    private readonly int _groupSize;

    /// <summary>Compiles and loads the kernels; <paramref name="groupSize"/> threads per row.</summary>
    public RmsNormLauncher(Accelerator accelerator, int groupSize)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        KernelLimits.CheckGroupSize(groupSize);
        _groupSize = groupSize;
        _f32 = KernelLoader.Load(accelerator, RmsNormKernel.Run<float, F32Format>,
            () => accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, RmsNormArgs>(RmsNormKernel.Run<float, F32Format>));
        _f16 = KernelLoader.Load(accelerator, RmsNormKernel.Run<ushort, F16Format>,
            () => accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<ushort>, RmsNormArgs>(RmsNormKernel.Run<ushort, F16Format>));
        _bf16 = KernelLoader.Load(accelerator, RmsNormKernel.Run<ushort, BF16Format>,
            () => accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<ushort>, RmsNormArgs>(RmsNormKernel.Run<ushort, BF16Format>));
    }

    /// <summary>output, input F32[T, D] contiguous; weight [1, D].</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> input, WeightView weight, int rows, float eps)
    {
        int d = weight.Columns;
        if (input.Length < (long)rows * d || output.Length < (long)rows * d || weight.Rows < 1)
            throw new ArgumentException($"RmsNorm: input {input.Length} / output {output.Length} floats, weight {weight}: too small for T={rows}, D={d}");
        if (rows == 0) return;
        var config = new KernelConfig(rows, _groupSize);
        var args = new RmsNormArgs(d, eps);
        switch (weight.Storage)
        {
            case WeightStorage.F32: _f32(stream, config, output, input, weight.Floats, args); break;
            case WeightStorage.F16: _f16(stream, config, output, input, weight.Halves, args); break;
            default: _bf16(stream, config, output, input, weight.Halves, args); break;
        }
    }
}

/// <summary>Scalars of <see cref="HeadRmsNormKernel"/>.</summary>
public readonly struct HeadRmsNormArgs
{
    /// <summary>Creates the scalars.</summary>
    public HeadRmsNormArgs(int headDim, int queryHeads, int heads, int rowStride, float eps)
    {
        HeadDim = headDim;
        QueryHeads = queryHeads;
        Heads = heads;
        RowStride = rowStride;
        Eps = eps;
    }

    /// <summary>Dh, the columns normalized together.</summary>
    public readonly int HeadDim;
    /// <summary>H: heads before this index take the query weight, the others the key weight.</summary>
    public readonly int QueryHeads;
    /// <summary>H + Hkv, heads normalized per row.</summary>
    public readonly int Heads;
    /// <summary>Floats per row of qkv, (H + 2Hkv)·Dh.</summary>
    public readonly int RowStride;
    /// <summary>ε added to the mean square.</summary>
    public readonly float Eps;
}

/// <summary>
/// Per-head RMSNorm of queries and keys in place (Qwen3's q_norm / k_norm): slice h of row t of qkv (Dh columns from
/// h·Dh) becomes slice / √(mean(slice²) + ε) ⊙ w, w the query weight for h &lt; H and the key weight after.
/// </summary>
public static class HeadRmsNormKernel
{
    /// <summary>One group per (row, head) (grid = T·(H + Hkv) groups): strided sum of squares, a shared-memory tree sum, the scaling pass.</summary>
    /// <param name="qkv">F32[T, (H + 2Hkv)·Dh], normalized in place.</param>
    /// <param name="queryWeight">F32[Dh].</param>
    /// <param name="keyWeight">F32[Dh].</param>
    /// <param name="args">Dh, H, H + Hkv, the row stride and ε.</param>
    public static void Run(ArrayView<float> qkv, ArrayView<float> queryWeight, ArrayView<float> keyWeight, HeadRmsNormArgs args)
    {
        var scratch = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);
        int tid = Group.IdxX;
        int groupSize = Group.DimX;
        int row = Grid.IdxX / args.Heads;
        int head = Grid.IdxX - row * args.Heads;
        long start = (long)row * args.RowStride + (long)head * args.HeadDim;
        float sumSquares = 0f;
        for (int i = tid; i < args.HeadDim; i += groupSize)
        {
            float v = qkv[start + i];
            sumSquares += v * v;
        }
        // Every read above happens before the reduction's first barrier, so the writes below cannot race them.
        float total = GroupReduce.Sum(scratch, sumSquares);
        float scale = 1f / XMath.Sqrt(total / args.HeadDim + args.Eps);
        bool query = head < args.QueryHeads;
        for (int i = tid; i < args.HeadDim; i += groupSize)
            qkv[start + i] = qkv[start + i] * scale * (query ? queryWeight[i] : keyWeight[i]);
    }
}

/// <summary>Launches <see cref="HeadRmsNormKernel"/>; one instance per accelerator.</summary>
public sealed class HeadRmsNormLauncher
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, HeadRmsNormArgs> _kernel;
    private readonly int _maxGroupSize;

    /// <summary>Compiles and loads the kernel; at most <paramref name="maxGroupSize"/> threads per head.</summary>
    public HeadRmsNormLauncher(Accelerator accelerator, int maxGroupSize)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        KernelLimits.CheckGroupSize(maxGroupSize);
        _maxGroupSize = maxGroupSize;
        _kernel = KernelLoader.Load(accelerator, HeadRmsNormKernel.Run,
            () => accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, HeadRmsNormArgs>(HeadRmsNormKernel.Run));
    }

    /// <summary>
    /// Normalizes heads 0..H + Hkv − 1 of every row of qkv F32[rows, rowStride] in place; weights F32[Dh] each.
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> qkv, int rows, int rowStride, int queryHeads, int kvHeads, int headDim,
        ArrayView<float> queryWeight, ArrayView<float> keyWeight, float eps)
    {
        int heads = queryHeads + kvHeads;
        if (headDim <= 0 || queryHeads < 0 || kvHeads < 0 || (long)heads * headDim > rowStride || qkv.Length < (long)rows * rowStride
            || queryWeight.Length < headDim || keyWeight.Length < headDim)
            throw new ArgumentException($"HeadRmsNorm: qkv {qkv.Length} floats for {rows} rows of {rowStride}, {queryHeads} + {kvHeads} heads of {headDim}, weights {queryWeight.Length} and {keyWeight.Length} floats: inconsistent");
        if (rows == 0 || heads == 0) return;
        // The smallest power of two covering one head (each thread one column), within the limit.
        int groupSize = 32;
        while (groupSize < headDim && groupSize < _maxGroupSize) groupSize *= 2;
        groupSize = Math.Min(groupSize, _maxGroupSize);
        _kernel(stream, new KernelConfig(checked(rows * heads), groupSize), qkv, queryWeight, keyWeight, new HeadRmsNormArgs(headDim, queryHeads, heads, rowStride, eps));
    }
}
