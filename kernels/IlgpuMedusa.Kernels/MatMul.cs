using ILGPU;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>Scalars of the <see cref="MatMulKernels"/>.</summary>
public readonly struct MatMulArgs
{
    /// <summary>Creates the scalars.</summary>
    public MatMulArgs(int tokens, int rows, int columns, int weightStride, bool accumulate)
    {
        Tokens = tokens;
        Rows = rows;
        Columns = columns;
        WeightStride = weightStride;
        Accumulate = accumulate ? 1 : 0;
    }

    /// <summary>T, rows of input and output.</summary>
    public readonly int Tokens;
    /// <summary>N, rows of the weight = columns of the output.</summary>
    public readonly int Rows;
    /// <summary>K, columns of input and weight.</summary>
    public readonly int Columns;
    /// <summary>Weight row stride, in packs for the vector kernels and in elements for the tiled kernel.</summary>
    public readonly int WeightStride;
    /// <summary>1: output += x·Wᵀ; 0: output = x·Wᵀ.</summary>
    public readonly int Accumulate;
}

/// <summary>The kernel a matmul launch uses.</summary>
public enum MatMulPath
{
    /// <summary>Pick by T: vector for T = 1, skinny for small T, tiled beyond.</summary>
    Auto,
    /// <summary><see cref="MatMulKernels.Vector{TPack, TFormat}"/>: one token per grid row, weights streamed once per token.</summary>
    Vector,
    /// <summary><see cref="MatMulKernels.Skinny{TPack, TFormat}"/>: four tokens per pass over the weights.</summary>
    Skinny,
    /// <summary><see cref="MatMulKernels.Tiled{TElement, TFormat}"/>: shared-memory tiles of tokens × rows.</summary>
    Tiled,
}

/// <summary>
/// Launches the matmul kernels, output[T, N] = (accumulate ? output : 0) + input[T, K] · W[N, K]ᵀ; one instance per accelerator.
/// T = 1 (decoding) is a GEMV and memory-bound: the vector kernel streams each weight row once with coalesced loads.
/// Small T (tree verification) uses the skinny kernel, which reads the weights once for four tokens; larger T (prefill,
/// big trees) uses the tiled kernel, which reuses each loaded weight tile for 4·√G tokens.
/// </summary>
public sealed class MatMulLauncher
{
    /// <summary>Largest T sent to the skinny kernel by <see cref="MatMulPath.Auto"/>.</summary>
    public const int SkinnyMaxTokens = 16;

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, MatMulArgs>[] _f32 = new Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, MatMulArgs>[3];
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<uint>, MatMulArgs>[] _pairs = new Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<uint>, MatMulArgs>[4];
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<ushort>, MatMulArgs>[] _halves = new Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<ushort>, MatMulArgs>[2];
    private readonly int _groupSize;
    private readonly int _tiledGroupSize;

    /// <summary>Compiles and loads the nine kernels (three paths × three storage types).</summary>
    public MatMulLauncher(Accelerator accelerator, int groupSize)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        KernelLimits.CheckGroupSize(groupSize);
        _groupSize = groupSize;
        _tiledGroupSize = groupSize >= 256 ? 256 : groupSize >= 64 ? 64 : 16;
        _f32[0] = Load<float>(accelerator, MatMulKernels.Vector<float, F32Format>);
        _f32[1] = Load<float>(accelerator, MatMulKernels.Skinny<float, F32Format>);
        _f32[2] = Load<float>(accelerator, MatMulKernels.Tiled<float, F32Format>);
        _pairs[0] = Load<uint>(accelerator, MatMulKernels.Vector<uint, F16Format>);
        _pairs[1] = Load<uint>(accelerator, MatMulKernels.Skinny<uint, F16Format>);
        _pairs[2] = Load<uint>(accelerator, MatMulKernels.Vector<uint, BF16Format>);
        _pairs[3] = Load<uint>(accelerator, MatMulKernels.Skinny<uint, BF16Format>);
        _halves[0] = Load<ushort>(accelerator, MatMulKernels.Tiled<ushort, F16Format>);
        _halves[1] = Load<ushort>(accelerator, MatMulKernels.Tiled<ushort, BF16Format>);
    }

    private static Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<T>, MatMulArgs> Load<T>(
        Accelerator accelerator, Action<ArrayView<float>, ArrayView<float>, ArrayView<T>, MatMulArgs> kernel)
        where T : unmanaged =>
        KernelLoader.Load(accelerator, kernel, () => accelerator.LoadKernel(kernel));

    /// <summary>The path <see cref="MatMulPath.Auto"/> takes for T tokens.</summary>
    public static MatMulPath Choose(int tokens) => tokens == 1 ? MatMulPath.Vector : tokens <= SkinnyMaxTokens ? MatMulPath.Skinny : MatMulPath.Tiled;

    /// <summary>output F32[T, N] and input F32[T, K] contiguous; weight [N, K].</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> input, WeightView weight, int tokens, bool accumulate, MatMulPath path = MatMulPath.Auto)
    {
        int n = weight.Rows, k = weight.Columns;
        if (output.Length < (long)tokens * n || input.Length < (long)tokens * k)
            throw new ArgumentException($"MatMul: output {output.Length} / input {input.Length} floats too small for [T={tokens}, N={n}] = [T, K={k}] · {weight}ᵀ");
        if (tokens == 0 || n == 0) return;
        if (path == MatMulPath.Auto) path = Choose(tokens);
        int rowGroups = (n + MatMulKernels.RowsPerGroup - 1) / MatMulKernels.RowsPerGroup;
        KernelConfig config;
        MatMulArgs args;
        if (path == MatMulPath.Tiled)
        {
            int tile = MatMulKernels.TileFor(_tiledGroupSize);
            config = new KernelConfig(new Index2D((n + tile - 1) / tile, (tokens + tile - 1) / tile), new Index2D(_tiledGroupSize, 1));
            args = new MatMulArgs(tokens, n, k, weight.RowStride, accumulate);
            switch (weight.Storage)
            {
                case WeightStorage.F32: _f32[2](stream, config, output, input, weight.Floats, args); break;
                case WeightStorage.F16: _halves[0](stream, config, output, input, weight.Halves, args); break;
                default: _halves[1](stream, config, output, input, weight.Halves, args); break;
            }
            return;
        }
        int slot = path == MatMulPath.Vector ? 0 : 1;
        int tokenGroups = path == MatMulPath.Vector ? tokens : 1;
        config = new KernelConfig(new Index2D(rowGroups, tokenGroups), new Index2D(_groupSize, 1));
        args = new MatMulArgs(tokens, n, k, weight.PackStride, accumulate);
        switch (weight.Storage)
        {
            case WeightStorage.F32: _f32[slot](stream, config, output, input, weight.Floats, args); break;
            case WeightStorage.F16: _pairs[slot](stream, config, output, input, weight.Pairs, args); break;
            default: _pairs[2 + slot](stream, config, output, input, weight.Pairs, args); break;
        }
    }
}
