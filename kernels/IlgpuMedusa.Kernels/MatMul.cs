using ILGPU;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>Scalars of the <see cref="MatMulKernels"/>.</summary>
public readonly struct MatMulArgs
{
    /// <summary>Creates the scalars.</summary>
    public MatMulArgs(int tokens, int rows, int columns, int weightStride, bool accumulate, float eps = 0f)
    {
        Tokens = tokens;
        Rows = rows;
        Columns = columns;
        WeightStride = weightStride;
        Accumulate = accumulate ? 1 : 0;
        Eps = eps;
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
    /// <summary>RMSNorm ε of a <see cref="NormedInput"/> launch.</summary>
    public readonly float Eps;
}

/// <summary>How the vector and skinny matmul kernels read their input rows.</summary>
public interface IMatMulInput
{
    /// <summary>True: each input row is RMS-normalised (with the norm weights) as it is read.</summary>
    bool Normalizes { get; }
}

/// <summary>Input rows as they are.</summary>
public readonly struct PlainInput : IMatMulInput
{
    /// <inheritdoc />
    public bool Normalizes => false;
}

/// <summary>Input rows x read as RMSNorm(x) = x / √(mean(x²) + ε) ⊙ w: RMSNorm fused into the matmul.</summary>
public readonly struct NormedInput : IMatMulInput
{
    /// <inheritdoc />
    public bool Normalizes => true;
}

/// <summary>The kernel a matmul launch uses.</summary>
public enum MatMulPath
{
    /// <summary>Pick by T: vector for T = 1, skinny for small T, tiled beyond.</summary>
    Auto,
    /// <summary><see cref="MatMulKernels.Vector{TPack, TFormat, TInput}"/>: one token per grid row, weights streamed once per token.</summary>
    Vector,
    /// <summary><see cref="MatMulKernels.Skinny{TPack, TFormat, TInput}"/>: four tokens per pass over the weights.</summary>
    Skinny,
    /// <summary><see cref="MatMulKernels.Tiled{TElement, TFormat}"/>: shared-memory tiles of tokens × rows.</summary>
    Tiled,
}

/// <summary>How the matmul launcher runs on one device (measured on an H200 and the 2-core PoCL machine).</summary>
/// <param name="GroupSize">Threads per group of the vector (T = 1) kernel.</param>
/// <param name="SkinnyGroupSize">Threads per group of the skinny kernel.</param>
/// <param name="TiledGroupSize">Threads per group of the tiled kernel: 16, 64 or 256.</param>
/// <param name="SkinnyMaxTokens">Largest T sent to the skinny kernel by <see cref="MatMulPath.Auto"/>.</param>
/// <param name="NativeHalf">Decode F16 with ILGPU's Half conversion (<see cref="F16NativeFormat"/>; CUDA, emulator).</param>
public readonly record struct MatMulTuning(int GroupSize, int SkinnyGroupSize, int TiledGroupSize, int SkinnyMaxTokens, bool NativeHalf)
{
    /// <summary>
    /// GPUs: 256-thread GEMV groups, 128-thread skinny groups (about 10% faster than 256 on an H200) and the skinny kernel
    /// up to T = 64 (per token it costs the same at any T, and beat the tiled kernel up to T = 64 on 4096×4096,
    /// 11008×4096 and 4096×11008; the two were level at T = 128). CPUs (PoCL, emulator): the given group size and the
    /// tiled kernel from T = 17 (it was faster at T = 64 on PoCL).
    /// </summary>
    public static MatMulTuning For(Accelerator accelerator, int groupSize)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        KernelLimits.CheckGroupSize(groupSize);
        bool gpu = accelerator.AcceleratorType == AcceleratorType.Cuda
            || (accelerator is ILGPU.Runtime.OpenCL.CLAccelerator cl && !cl.DeviceType.HasFlag(ILGPU.Runtime.OpenCL.CLDeviceType.CL_DEVICE_TYPE_CPU));
        int tiled = groupSize >= 256 ? 256 : groupSize >= 64 ? 64 : 16;
        return gpu
            ? new(groupSize, Math.Min(groupSize, 128), tiled, 64, accelerator.AcceleratorType == AcceleratorType.Cuda)
            : new(groupSize, groupSize, tiled, 16, false);
    }
}

/// <summary>
/// Launches the matmul kernels, output[T, N] = (accumulate ? output : 0) + input[T, K] · W[N, K]ᵀ; one instance per accelerator.
/// T = 1 (decoding) is a GEMV and memory-bound: the vector kernel streams each weight row once with coalesced loads.
/// Small T (tree verification) uses the skinny kernel, which reads the weights once per four tokens; larger T (prefill)
/// uses the tiled kernel, which reuses each loaded weight tile for 4·√G tokens. <see cref="LaunchNormed"/> fuses the
/// RMSNorm of the input into the vector and skinny kernels (T ≤ <see cref="MatMulTuning.SkinnyMaxTokens"/>).
/// </summary>
public sealed class MatMulLauncher
{
    // Vector and skinny kernels per storage, indexed [2 · path (0 vector, 1 skinny) + input (0 plain, 1 normed)].
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, MatMulArgs>[] _f32 =
        new Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, MatMulArgs>[4];
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>[] _f16 =
        new Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>[4];
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>[] _bf16 =
        new Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>[4];
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, MatMulArgs> _f32Tiled;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<ushort>, MatMulArgs> _f16Tiled;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<ushort>, MatMulArgs> _bf16Tiled;

    /// <summary>Compiles and loads the fifteen kernels (vector and skinny, plain and normed, and tiled; three storage types) with the device's tuning.</summary>
    public MatMulLauncher(Accelerator accelerator, int groupSize)
        : this(accelerator, MatMulTuning.For(accelerator, groupSize))
    {
    }

    /// <summary>Compiles and loads the fifteen kernels with an explicit tuning.</summary>
    public MatMulLauncher(Accelerator accelerator, MatMulTuning tuning)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        KernelLimits.CheckGroupSize(tuning.GroupSize);
        KernelLimits.CheckGroupSize(tuning.SkinnyGroupSize);
        MatMulKernels.TileFor(tuning.TiledGroupSize);
        Tuning = tuning;
        _f32[0] = Load<float>(accelerator, MatMulKernels.Vector<float, F32Format, PlainInput>);
        _f32[1] = Load<float>(accelerator, MatMulKernels.Vector<float, F32Format, NormedInput>);
        _f32[2] = Load<float>(accelerator, MatMulKernels.Skinny<float, F32Format, PlainInput>);
        _f32[3] = Load<float>(accelerator, MatMulKernels.Skinny<float, F32Format, NormedInput>);
        _f32Tiled = LoadTiled<float>(accelerator, MatMulKernels.Tiled<float, F32Format>);
        if (tuning.NativeHalf)
        {
            _f16[0] = Load<uint>(accelerator, MatMulKernels.Vector<uint, F16NativeFormat, PlainInput>);
            _f16[1] = Load<uint>(accelerator, MatMulKernels.Vector<uint, F16NativeFormat, NormedInput>);
            _f16[2] = Load<uint>(accelerator, MatMulKernels.Skinny<uint, F16NativeFormat, PlainInput>);
            _f16[3] = Load<uint>(accelerator, MatMulKernels.Skinny<uint, F16NativeFormat, NormedInput>);
            _f16Tiled = LoadTiled<ushort>(accelerator, MatMulKernels.Tiled<ushort, F16NativeFormat>);
        }
        else
        {
            _f16[0] = Load<uint>(accelerator, MatMulKernels.Vector<uint, F16Format, PlainInput>);
            _f16[1] = Load<uint>(accelerator, MatMulKernels.Vector<uint, F16Format, NormedInput>);
            _f16[2] = Load<uint>(accelerator, MatMulKernels.Skinny<uint, F16Format, PlainInput>);
            _f16[3] = Load<uint>(accelerator, MatMulKernels.Skinny<uint, F16Format, NormedInput>);
            _f16Tiled = LoadTiled<ushort>(accelerator, MatMulKernels.Tiled<ushort, F16Format>);
        }
        _bf16[0] = Load<uint>(accelerator, MatMulKernels.Vector<uint, BF16Format, PlainInput>);
        _bf16[1] = Load<uint>(accelerator, MatMulKernels.Vector<uint, BF16Format, NormedInput>);
        _bf16[2] = Load<uint>(accelerator, MatMulKernels.Skinny<uint, BF16Format, PlainInput>);
        _bf16[3] = Load<uint>(accelerator, MatMulKernels.Skinny<uint, BF16Format, NormedInput>);
        _bf16Tiled = LoadTiled<ushort>(accelerator, MatMulKernels.Tiled<ushort, BF16Format>);
    }

    /// <summary>Group sizes, path thresholds and F16 decoding in use.</summary>
    public MatMulTuning Tuning { get; }

    private static Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<T>, ArrayView<float>, MatMulArgs> Load<T>(
        Accelerator accelerator, Action<ArrayView<float>, ArrayView<float>, ArrayView<T>, ArrayView<float>, MatMulArgs> kernel)
        where T : unmanaged =>
        KernelLoader.Load(accelerator, kernel, () => accelerator.LoadKernel(kernel));

    private static Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<T>, MatMulArgs> LoadTiled<T>(
        Accelerator accelerator, Action<ArrayView<float>, ArrayView<float>, ArrayView<T>, MatMulArgs> kernel)
        where T : unmanaged =>
        KernelLoader.Load(accelerator, kernel, () => accelerator.LoadKernel(kernel));

    /// <summary>The path <see cref="MatMulPath.Auto"/> takes for T tokens.</summary>
    public MatMulPath Choose(int tokens) => tokens == 1 ? MatMulPath.Vector : tokens <= Tuning.SkinnyMaxTokens ? MatMulPath.Skinny : MatMulPath.Tiled;

    /// <summary>True when <see cref="LaunchNormed"/> takes T tokens (the vector and skinny kernels: T ≤ SkinnyMaxTokens).</summary>
    public bool CanNormalize(int tokens) => tokens >= 1 && tokens <= Tuning.SkinnyMaxTokens;

    /// <summary>output F32[T, N] and input F32[T, K] contiguous; weight [N, K].</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> input, WeightView weight, int tokens, bool accumulate, MatMulPath path = MatMulPath.Auto)
    {
        int n = weight.Rows, k = weight.Columns;
        CheckExtents(output, input, weight, tokens);
        if (tokens == 0 || n == 0) return;
        if (path == MatMulPath.Auto) path = Choose(tokens);
        if (path == MatMulPath.Tiled)
        {
            int tile = MatMulKernels.TileFor(Tuning.TiledGroupSize);
            var config = new KernelConfig(new Index2D((n + tile - 1) / tile, (tokens + tile - 1) / tile), new Index2D(Tuning.TiledGroupSize, 1));
            var args = new MatMulArgs(tokens, n, k, weight.RowStride, accumulate);
            switch (weight.Storage)
            {
                case WeightStorage.F32: _f32Tiled(stream, config, output, input, weight.Floats, args); break;
                case WeightStorage.F16: _f16Tiled(stream, config, output, input, weight.Halves, args); break;
                default: _bf16Tiled(stream, config, output, input, weight.Halves, args); break;
            }
            return;
        }
        LaunchRows(stream, output, input, input, weight, tokens, path == MatMulPath.Vector, normed: false, new MatMulArgs(tokens, n, k, weight.PackStride, accumulate));
    }

    /// <summary>
    /// output[T, N] = (accumulate ? output : 0) + RMSNorm(input[T, K], norm, ε) · W[N, K]ᵀ in one launch (see
    /// <see cref="NormedInput"/>); T must satisfy <see cref="CanNormalize"/>. norm: F32[K].
    /// </summary>
    public void LaunchNormed(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> input, ArrayView<float> norm, WeightView weight, int tokens, float eps, bool accumulate)
    {
        int n = weight.Rows, k = weight.Columns;
        CheckExtents(output, input, weight, tokens);
        if (!CanNormalize(tokens))
            throw new ArgumentException($"MatMul with RMSNorm: T={tokens} outside [1, {Tuning.SkinnyMaxTokens}] (normalise separately for larger T)");
        if (norm.Length < k)
            throw new ArgumentException($"MatMul with RMSNorm: {norm.Length} norm weights for K={k}");
        if (n == 0) return;
        LaunchRows(stream, output, input, norm, weight, tokens, tokens == 1, normed: true, new MatMulArgs(tokens, n, k, weight.PackStride, accumulate, eps));
    }

    private static void CheckExtents(ArrayView<float> output, ArrayView<float> input, WeightView weight, int tokens)
    {
        if (output.Length < (long)tokens * weight.Rows || input.Length < (long)tokens * weight.Columns)
            throw new ArgumentException($"MatMul: output {output.Length} / input {input.Length} floats too small for [T={tokens}, N={weight.Rows}] = [T, K={weight.Columns}] · {weight}ᵀ");
    }

    private void LaunchRows(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> input, ArrayView<float> norm, WeightView weight,
        int tokens, bool vector, bool normed, MatMulArgs args)
    {
        int rowGroups = (weight.Rows + MatMulKernels.RowsPerGroup - 1) / MatMulKernels.RowsPerGroup;
        int slot = (vector ? 0 : 2) + (normed ? 1 : 0);
        var config = new KernelConfig(new Index2D(rowGroups, vector ? tokens : 1), new Index2D(vector ? Tuning.GroupSize : Tuning.SkinnyGroupSize, 1));
        switch (weight.Storage)
        {
            case WeightStorage.F32: _f32[slot](stream, config, output, input, weight.Floats, norm, args); break;
            case WeightStorage.F16: _f16[slot](stream, config, output, input, weight.Pairs, norm, args); break;
            default: _bf16[slot](stream, config, output, input, weight.Pairs, norm, args); break;
        }
    }
}
