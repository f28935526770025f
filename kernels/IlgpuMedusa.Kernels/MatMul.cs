using ILGPU;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>Scalars of the <see cref="MatMulKernels"/>.</summary>
public readonly struct MatMulArgs
{
    /// <summary>Creates the scalars.</summary>
    public MatMulArgs(int tokens, int rows, int columns, int weightStride, bool accumulate, float eps = 0f, int groupRows = 0, int groupInputStride = 0,
        int chunksPerSplit = 0)
    {
        ChunksPerSplit = chunksPerSplit;
        Tokens = tokens;
        Rows = rows;
        Columns = columns;
        WeightStride = weightStride;
        Accumulate = accumulate ? 1 : 0;
        Eps = eps;
        GroupRows = groupRows;
        GroupInputStride = groupInputStride;
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
    /// <summary>
    /// Grouped GEMV (vector kernel, T = 1): weight rows [g·GroupRows, (g + 1)·GroupRows) multiply input row g (its start
    /// is g · GroupInputStride: K for one row per group, 0 for one row shared by all). 0: not grouped.
    /// </summary>
    public readonly int GroupRows;
    /// <summary>Floats from one group's input row to the next (see <see cref="GroupRows"/>).</summary>
    public readonly int GroupInputStride;
    /// <summary>Tensor-core kernel with split-K: 32-column chunks per K split (grid z); 0: one split.</summary>
    public readonly int ChunksPerSplit;
}

/// <summary>What the vector and skinny matmul kernels do besides x·Wᵀ (a compile-time choice: one kernel per mode).</summary>
public interface IMatMulMode
{
    /// <summary>True: each input row is RMS-normalised (with the norm weights) as it is read.</summary>
    bool Normalizes { get; }

    /// <summary>
    /// True: weight rows come in (gate, up) pairs, rows 2i and 2i + 1 (see <see cref="MatMulLauncher.InterleaveGateUp"/>),
    /// and the kernel writes silu(gate)·up to output[t, i] instead of the two products.
    /// </summary>
    bool SwiGluPairs { get; }
}

/// <summary>Input rows as they are, products written as they are.</summary>
public readonly struct PlainInput : IMatMulMode
{
    /// <inheritdoc />
    public bool Normalizes => false;

    /// <inheritdoc />
    public bool SwiGluPairs => false;
}

/// <summary>Input rows x read as RMSNorm(x) = x / √(mean(x²) + ε) ⊙ w: RMSNorm fused into the matmul.</summary>
public readonly struct NormedInput : IMatMulMode
{
    /// <inheritdoc />
    public bool Normalizes => true;

    /// <inheritdoc />
    public bool SwiGluPairs => false;
}

/// <summary>RMSNorm on the input and SwiGLU on the (gate, up) row pairs: a feed-forward block's first half in one launch.</summary>
public readonly struct NormedSwiGlu : IMatMulMode
{
    /// <inheritdoc />
    public bool Normalizes => true;

    /// <inheritdoc />
    public bool SwiGluPairs => true;
}

/// <summary>The kernel a matmul launch uses.</summary>
public enum MatMulPath
{
    /// <summary>Pick by T: vector for T = 1, skinny for small T, tiled beyond.</summary>
    Auto,
    /// <summary><see cref="MatMulKernels.Vector{TPack, TFormat, TMode}"/>: one token per grid row, weights streamed once per token.</summary>
    Vector,
    /// <summary><see cref="MatMulKernels.Skinny{TPack, TFormat, TMode}"/>: four tokens per pass over the weights.</summary>
    Skinny,
    /// <summary><see cref="MatMulKernels.Tiled{TElement, TFormat}"/>: shared-memory tiles of tokens × rows.</summary>
    Tiled,
    /// <summary>
    /// <see cref="MatMulKernels.TensorCore{TTiles, TInput}"/>: fp16 tensor cores (F16 weights, see
    /// <see cref="MatMulLauncher.CanUseTensorCores"/>; needs <see cref="MatMulTuning.TensorCores"/> on).
    /// </summary>
    TensorCore,
}

/// <summary>Whether and how F16 matmuls with T ≥ 2 use tensor cores (<see cref="MatMulKernels.TensorCore{TTiles, TInput}"/>).</summary>
public enum TensorCoreMode
{
    /// <summary>Not used: the skinny and tiled kernels on float32 cores.</summary>
    Off,
    /// <summary>Inputs rounded to fp16 once (<see cref="RoundedInput"/>).</summary>
    Rounded,
    /// <summary>Inputs as hi + lo fp16 pairs (<see cref="SplitInput"/>): two products per tile, about float32 accuracy.</summary>
    Split,
}

/// <summary>How the matmul launcher runs on one device (measured on an H200 and the 2-core PoCL machine).</summary>
/// <param name="GroupSize">Threads per group of the vector (T = 1) kernel.</param>
/// <param name="SkinnyGroupSize">Threads per group of the skinny kernel.</param>
/// <param name="TiledGroupSize">Threads per group of the tiled kernel: 16, 64 or 256.</param>
/// <param name="SkinnyMaxTokens">Largest T sent to the skinny kernel by <see cref="MatMulPath.Auto"/>.</param>
/// <param name="NativeHalf">Decode F16 with ILGPU's Half conversion (<see cref="F16NativeFormat"/>; CUDA, emulator).</param>
public readonly record struct MatMulTuning(int GroupSize, int SkinnyGroupSize, int TiledGroupSize, int SkinnyMaxTokens, bool NativeHalf)
{
    /// <summary>Environment variable that sets <see cref="TensorCores"/> on CUDA: off, rounded or split (the default).</summary>
    public const string TensorCoresVariable = "ILGPU_MEDUSA_TENSOR_CORES";

    /// <summary>
    /// Tensor cores for F16 matmuls of T ≥ <see cref="TensorMinTokens"/> tokens: on for CUDA devices of compute
    /// capability 8.0 or later (mma.sync m16n8k16), <see cref="TensorCoreMode.Split"/> unless
    /// <see cref="TensorCoresVariable"/> says otherwise; off elsewhere.
    /// </summary>
    public TensorCoreMode TensorCores { get; init; }

    /// <summary>Environment variable that turns the wide GEMV off on CUDA (0) to time it against the portable one.</summary>
    public const string WideVectorVariable = "ILGPU_MEDUSA_WIDE_GEMV";

    /// <summary>
    /// T = 1 with 16-bit weights through <see cref="MatMulKernels.VectorWide{TFormat, TMode}"/> (16-byte loads, a warp per
    /// two rows, shuffles instead of a shared-memory reduction) where it applies: on for CUDA unless
    /// <see cref="WideVectorVariable"/> is 0.
    /// </summary>
    public bool WideVector { get; init; }

    /// <summary>Environment variable choosing the wide GEMV's rows per warp on CUDA: auto (the default), 1 or 2.</summary>
    public const string WideRowsVariable = "ILGPU_MEDUSA_GEMV_ROWS";

    /// <summary>
    /// Largest N (plain and normed GEMVs) that goes to the one-row-per-warp wide GEMV
    /// (<see cref="MatMulKernels.VectorWideRow{TFormat, TMode}"/>); beyond, and for SwiGLU pairs, two rows per warp. The
    /// default 16384 sends a 7B model's QKV (12,288 rows), output and down projections (4,096) to one row per warp: the
    /// two-row kernel gave the 4096-row ones 2,048 warps, under half of what an H200 keeps resident (32 per
    /// multiprocessor at ptxas's 51-62 registers), and they streamed at 2.1-2.8 TB/s where the 22,016-row gate/up
    /// matrix (11,008 warps) reached 3.5 (H200, 2026-11-28, `profile --op-times`). Not yet timed on a GPU;
    /// <see cref="WideRowsVariable"/> = 2 restores the two-row kernel everywhere, 1 sends every plain or normed GEMV to
    /// one row per warp.
    /// </summary>
    public int WideSingleRowMaxRows { get; init; } = 16384;

    /// <summary>Parses <see cref="WideRowsVariable"/> into <see cref="WideSingleRowMaxRows"/> (null, empty or auto: 16384).</summary>
    public static int ParseWideRows(string? text) => text?.Trim().ToLowerInvariant() switch
    {
        null or "" or "auto" => 16384,
        "1" => int.MaxValue,
        "2" => 0,
        _ => throw new ArgumentException($"{WideRowsVariable}: unknown value '{text}'; expected auto, 1 or 2"),
    };

    /// <summary>Environment variable choosing the tensor-core kernel on CUDA: staged (the default) or direct.</summary>
    public const string TensorKernelVariable = "ILGPU_MEDUSA_TENSOR_KERNEL";

    /// <summary>
    /// True: <see cref="MatMulKernels.TensorStaged{TTiles, TInput, TDepth}"/> (warps split the rows, inputs staged in shared
    /// memory) where groups of four warps run; false: <see cref="MatMulKernels.TensorCore{TTiles, TInput}"/> (warps split K).
    /// </summary>
    public bool TensorStaged { get; init; } = true;

    /// <summary>
    /// Largest N and T that go to the staged kernel (beyond, the direct one). On an H200 (2026-11-28, the kit's kernel
    /// timings, both kernels side by side) the staged kernel won for N = 4096 at T ≤ 64 (4096×4096, T = 64: 37 against
    /// 44 µs; 4096×11008: 76 against 92 µs) and lost for N = 11008 (94 against 84 µs) and for T = 256 (152 against
    /// 106 µs), and inside the 7B model's tree step its 22016-row matrix took 185 µs where the direct kernel took 142.
    /// </summary>
    public int TensorStagedMaxRows { get; init; } = 8192;

    /// <inheritdoc cref="TensorStagedMaxRows"/>
    public int TensorStagedMaxTokens { get; init; } = 64;

    /// <summary>Environment variable setting <see cref="TensorPrefetch"/> on CUDA: 1 to 4 (default 4).</summary>
    public const string TensorPrefetchVariable = "ILGPU_MEDUSA_TENSOR_PREFETCH";

    /// <summary>
    /// Weight chunks (16 rows x 32 columns, 1 KB) each warp of the staged tensor-core kernel has requested ahead of the
    /// chunk it multiplies: 1 to 4, a compile-time constant of the kernel (<see cref="IPrefetchDepth"/>). Little's law:
    /// at ~5 TB/s and ~0.7 µs of memory latency an H200 needs ~3.5 MB in flight, ~25 KB per multiprocessor. ptxas
    /// (sm_90, `GpuCheck --ptxas`) gives the 64-token kernel with split inputs 102 registers at depth 1 (16 resident
    /// warps: 16 KB in flight per multiprocessor), 132 at depth 2 (12 warps, 24 KB) and 140 at depth 4 (12 warps, 48 KB);
    /// the 8-token kernel 70 / 80 / 96 registers (28 / 24 / 20 warps: 28 / 48 / 80 KB). The H200 run of 2026-11-28 (one
    /// chunk ahead, then a run-time choice that cost 136 registers) streamed the weights of a 64-token matmul at ~1 TB/s,
    /// what ~12-16 KB in flight allows. Default 4 (not yet timed on a GPU; the GPU kit times 1, 2 and 4 side by side).
    /// </summary>
    public int TensorPrefetch { get; init; } = 4;

    /// <summary>Parses <see cref="TensorPrefetchVariable"/> (null or empty: 4).</summary>
    public static int ParseTensorPrefetch(string? text) => text?.Trim() switch
    {
        null or "" => 4,
        "1" => 1,
        "2" => 2,
        "3" => 3,
        "4" => 4,
        _ => throw new ArgumentException($"{TensorPrefetchVariable}: unknown value '{text}'; expected 1, 2, 3 or 4"),
    };

    /// <summary>Smallest T that <see cref="MatMulPath.Auto"/> sends to the tensor-core kernel (when it applies).</summary>
    public int TensorMinTokens { get; init; } = 2;

    /// <summary>Threads per group of the tensor-core kernel: 128 (4 warps), or fewer warps where groups are smaller.</summary>
    public int TensorGroupSize { get; init; } = MatMulKernels.TensorGroupSize;

    /// <summary>
    /// Groups a tensor-core launch aims for (about four per multiprocessor) when <see cref="TensorWaveSplits"/> is off or
    /// the driver gives no occupancy: with fewer (token tiles × 32-row groups), K is split over grid z and the partial
    /// sums added by a second launch. 1: never split.
    /// </summary>
    public int TensorTargetGroups { get; init; } = 1;

    /// <summary>Environment variable choosing how tensor-core launches split K on CUDA: waves (the default) or fixed.</summary>
    public const string TensorSplitsVariable = "ILGPU_MEDUSA_TENSOR_SPLITS";

    /// <summary>
    /// True: K is split so that a launch fills the device in one wave, no more: Z = ⌊R · SMs / groups⌋ with R the groups
    /// of that kernel resident on one multiprocessor as the driver reckons them (registers, shared memory). A fixed
    /// target of four groups per multiprocessor left the 64-token kernel (three resident groups of 128 threads above 128
    /// registers) with 1.45 waves on a 4096-row matrix: the last 45% of the groups ran on a third of the device. False:
    /// <see cref="TensorTargetGroups"/>. Not yet timed on a GPU.
    /// </summary>
    public bool TensorWaveSplits { get; init; }

    /// <summary>Parses <see cref="TensorSplitsVariable"/> (null or empty: waves).</summary>
    public static bool ParseTensorSplits(string? text) => text?.Trim().ToLowerInvariant() switch
    {
        null or "" or "waves" => true,
        "fixed" => false,
        _ => throw new ArgumentException($"{TensorSplitsVariable}: unknown value '{text}'; expected waves or fixed"),
    };

    /// <summary>Parses <see cref="TensorCoresVariable"/> (null or empty: <paramref name="fallback"/>).</summary>
    public static TensorCoreMode ParseTensorCores(string? text, TensorCoreMode fallback) => text?.Trim().ToLowerInvariant() switch
    {
        null or "" => fallback,
        "off" or "0" => TensorCoreMode.Off,
        "rounded" => TensorCoreMode.Rounded,
        "split" or "1" => TensorCoreMode.Split,
        _ => throw new ArgumentException($"{TensorCoresVariable}: unknown value '{text}'; expected off, rounded or split"),
    };

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
        bool mma = accelerator is ILGPU.Runtime.Cuda.CudaAccelerator cuda && cuda.Architecture is { } arch && arch.Major >= 8;
        var tensor = mma ? ParseTensorCores(Environment.GetEnvironmentVariable(TensorCoresVariable), TensorCoreMode.Split) : TensorCoreMode.Off;
        int tensorGroup = Math.Min(MatMulKernels.TensorGroupSize, accelerator.MaxNumThreadsPerGroup / 32 * 32);
        return gpu
            ? new(groupSize, Math.Min(groupSize, 128), tiled, 64, accelerator.AcceleratorType == AcceleratorType.Cuda)
            {
                TensorCores = tensor,
                TensorGroupSize = tensorGroup,
                WideVector = accelerator.AcceleratorType == AcceleratorType.Cuda && Environment.GetEnvironmentVariable(WideVectorVariable) != "0",
                WideSingleRowMaxRows = ParseWideRows(Environment.GetEnvironmentVariable(WideRowsVariable)),
                TensorStaged = Environment.GetEnvironmentVariable(TensorKernelVariable)?.Trim().ToLowerInvariant() switch
                {
                    null or "" or "staged" => true,
                    "direct" => false,
                    var other => throw new ArgumentException($"{TensorKernelVariable}: unknown value '{other}'; expected staged or direct"),
                },
                TensorTargetGroups = 4 * Math.Max(1, accelerator.NumMultiprocessors),
                TensorPrefetch = ParseTensorPrefetch(Environment.GetEnvironmentVariable(TensorPrefetchVariable)),
                TensorWaveSplits = ParseTensorSplits(Environment.GetEnvironmentVariable(TensorSplitsVariable)),
            }
            : new(groupSize, groupSize, tiled, 16, false) { TensorGroupSize = tensorGroup };
    }
}

/// <summary>
/// Launches the matmul kernels, output[T, N] = (accumulate ? output : 0) + input[T, K] · W[N, K]ᵀ; one instance per accelerator.
/// T = 1 (decoding) is a GEMV and memory-bound: the vector kernel streams each weight row once with coalesced loads.
/// Small T (tree verification) uses the skinny kernel, which reads the weights once per four tokens; larger T (prefill)
/// uses the tiled kernel, which reuses each loaded weight tile for 4·√G tokens. <see cref="LaunchNormed"/> fuses the
/// RMSNorm of the input into the vector and skinny kernels, <see cref="LaunchNormedSwiGlu"/> also SwiGLU on interleaved
/// (gate, up) rows (T ≤ <see cref="MatMulTuning.SkinnyMaxTokens"/>). On CUDA, 16-bit GEMVs take the wide kernel and F16
/// matmuls of T ≥ 2 the tensor-core kernels (<see cref="MatMulTuning.WideVector"/>, <see cref="MatMulTuning.TensorCores"/>);
/// the launcher owns their scratch buffers (fp16 input planes, split-K partial sums): dispose it with the accelerator's
/// other buffers.
/// </summary>
public sealed class MatMulLauncher : IDisposable
{
    // Vector and skinny kernels per storage, indexed [3 · path (0 vector, 1 skinny) + mode (0 plain, 1 normed, 2 normed + SwiGLU)].
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, MatMulArgs>[] _f32 =
        new Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, MatMulArgs>[6];
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>[] _f16 =
        new Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>[6];
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>[] _bf16 =
        new Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>[6];
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, MatMulArgs> _f32Tiled;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<ushort>, MatMulArgs> _f16Tiled;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<ushort>, MatMulArgs> _bf16Tiled;
    // Tensor-core kernels for 1, 2, 4 and 8 token tiles and their input preparation (null when TensorCores is off or
    // they failed to load), and the fp16 input planes they read (grown on demand; one stream uses them at a time).
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>[]? _tensor;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<uint>, ArrayView<uint>>? _tensorInput;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>[]? _tensorStaged;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<uint>, int, float>? _tensorInputNormed;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int, int, int>? _tensorReduce;
    // Wide GEMV per 16-bit storage and mode (plain, normed, normed + SwiGLU); null when WideVector is off.
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>[]? _wideF16;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>[]? _wideBf16;
    // One-row-per-warp wide GEMV per 16-bit storage (plain, normed); null when WideVector is off.
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>[]? _wideRowF16;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>[]? _wideRowBf16;
    private readonly Accelerator _accelerator;
    // Groups of each tensor-core kernel resident per multiprocessor (the driver's occupancy; null: unknown).
    private readonly int[]? _tensorResident;
    private readonly int[]? _stagedResident;
    private MemoryBuffer1D<float, Stride1D.Dense>? _partials;
    private MemoryBuffer1D<uint, Stride1D.Dense>? _inputHi;
    private MemoryBuffer1D<uint, Stride1D.Dense>? _inputLo;

    /// <summary>
    /// Compiles and loads the kernels with the device's tuning: vector and skinny in three modes and tiled, for three
    /// storage types; on CUDA also the wide GEMV and the tensor-core kernels (see <see cref="MatMulTuning"/>).
    /// </summary>
    public MatMulLauncher(Accelerator accelerator, int groupSize)
        : this(accelerator, MatMulTuning.For(accelerator, groupSize))
    {
    }

    /// <summary>Compiles and loads the kernels with an explicit tuning (tests, benchmarks).</summary>
    public MatMulLauncher(Accelerator accelerator, MatMulTuning tuning)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        KernelLimits.CheckGroupSize(tuning.GroupSize);
        KernelLimits.CheckGroupSize(tuning.SkinnyGroupSize);
        MatMulKernels.TileFor(tuning.TiledGroupSize);
        Tuning = tuning;
        _accelerator = accelerator;
        LoadRows<float, F32Format>(accelerator, _f32);
        _f32Tiled = LoadTiled<float>(accelerator, MatMulKernels.Tiled<float, F32Format>);
        if (tuning.NativeHalf)
        {
            LoadRows<uint, F16NativeFormat>(accelerator, _f16);
            _f16Tiled = LoadTiled<ushort>(accelerator, MatMulKernels.Tiled<ushort, F16NativeFormat>);
        }
        else
        {
            LoadRows<uint, F16Format>(accelerator, _f16);
            _f16Tiled = LoadTiled<ushort>(accelerator, MatMulKernels.Tiled<ushort, F16Format>);
        }
        LoadRows<uint, BF16Format>(accelerator, _bf16);
        _bf16Tiled = LoadTiled<ushort>(accelerator, MatMulKernels.Tiled<ushort, BF16Format>);
        if (tuning.WideVector)
        {
            if (tuning.GroupSize < 32 || tuning.GroupSize % 32 != 0)
                throw new ArgumentException($"wide GEMV: group size {tuning.GroupSize} is not a whole number of warps of 32");
            _wideF16 = tuning.NativeHalf ? LoadWide<F16NativeFormat>(accelerator) : LoadWide<F16Format>(accelerator);
            _wideBf16 = LoadWide<BF16Format>(accelerator);
            _wideRowF16 = tuning.NativeHalf ? LoadWideRow<F16NativeFormat>(accelerator) : LoadWideRow<F16Format>(accelerator);
            _wideRowBf16 = LoadWideRow<BF16Format>(accelerator);
        }
        if (tuning.TensorCores != TensorCoreMode.Off)
        {
            if (tuning.TensorGroupSize < 32 || tuning.TensorGroupSize % 32 != 0 || tuning.TensorGroupSize > MatMulKernels.TensorGroupSize)
                throw new ArgumentException($"tensor-core group size {tuning.TensorGroupSize}: expected 1 to {MatMulKernels.TensorWarps} warps of 32");
            try
            {
                bool split = tuning.TensorCores == TensorCoreMode.Split;
                _tensor = split ? LoadTensor<SplitInput>(accelerator) : LoadTensor<RoundedInput>(accelerator);
                if (tuning.TensorStaged && tuning.TensorGroupSize == MatMulKernels.TensorGroupSize)
                    _tensorStaged = LoadStaged(accelerator, split, tuning.TensorPrefetch);
                _tensorInput = split ? LoadTensorInput<SplitInput>(accelerator) : LoadTensorInput<RoundedInput>(accelerator);
                _tensorInputNormed = split ? LoadTensorInputNormed<SplitInput>(accelerator) : LoadTensorInputNormed<RoundedInput>(accelerator);
                Action<Index1D, ArrayView<float>, ArrayView<float>, int, int, int> reduce = MatMulKernels.TensorReduce;
                _tensorReduce = KernelLoader.Load(accelerator, reduce, () => accelerator.LoadAutoGroupedKernel(reduce));
                _tensorResident = ResidentGroups(accelerator, _tensor, tuning.TensorGroupSize);
                _stagedResident = _tensorStaged is null ? null : ResidentGroups(accelerator, _tensorStaged, tuning.TensorGroupSize);
            }
            catch (KernelLoadException e)
            {
                // A driver that rejects the inline PTX leaves the float32 kernels in charge; the reason is kept for diagnostics.
                TensorCoreError = e.Message;
                _tensor = null;
                _tensorStaged = null;
                _tensorInput = null;
                _tensorInputNormed = null;
                _tensorReduce = null;
                _tensorResident = null;
                _stagedResident = null;
                Tuning = tuning with { TensorCores = TensorCoreMode.Off };
            }
        }
    }

    private static Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>[] LoadTensor<TInput>(Accelerator accelerator)
        where TInput : struct, ITensorInput =>
    [
        LoadTensorKernel(accelerator, MatMulKernels.TensorCore<OneTokenTile, TInput>),
        LoadTensorKernel(accelerator, MatMulKernels.TensorCore<TwoTokenTiles, TInput>),
        LoadTensorKernel(accelerator, MatMulKernels.TensorCore<FourTokenTiles, TInput>),
        LoadTensorKernel(accelerator, MatMulKernels.TensorCore<EightTokenTiles, TInput>),
    ];

    /// <summary>
    /// Groups of each kernel (one per token-tile count) resident on one multiprocessor at the given group size, as the
    /// driver reckons them (registers, shared memory); null when the accelerator cannot say.
    /// </summary>
    private static int[]? ResidentGroups(Accelerator accelerator,
        Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>[] kernels, int groupSize)
    {
        try
        {
            var resident = kernels.Select(k => accelerator.EstimateMaxActiveGroupsPerMultiprocessor(k.GetKernel(), groupSize)).ToArray();
            return resident.All(r => r > 0) ? resident : null;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Only a hint for the K splits: any failure to ask leaves the fixed target in charge.
            return null;
        }
    }

    private static Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>[] LoadStaged(
        Accelerator accelerator, bool split, int depth) => (split, depth) switch
    {
        (true, 1) => LoadStaged<SplitInput, PrefetchOne>(accelerator),
        (true, 2) => LoadStaged<SplitInput, PrefetchTwo>(accelerator),
        (true, 3) => LoadStaged<SplitInput, PrefetchThree>(accelerator),
        (true, 4) => LoadStaged<SplitInput, PrefetchFour>(accelerator),
        (false, 1) => LoadStaged<RoundedInput, PrefetchOne>(accelerator),
        (false, 2) => LoadStaged<RoundedInput, PrefetchTwo>(accelerator),
        (false, 3) => LoadStaged<RoundedInput, PrefetchThree>(accelerator),
        (false, 4) => LoadStaged<RoundedInput, PrefetchFour>(accelerator),
        _ => throw new ArgumentException($"tensor-core prefetch depth {depth}: expected 1 to 4"),
    };

    private static Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>[] LoadStaged<TInput, TDepth>(Accelerator accelerator)
        where TInput : struct, ITensorInput
        where TDepth : struct, IPrefetchDepth =>
    [
        LoadTensorKernel(accelerator, MatMulKernels.TensorStaged<OneTokenTile, TInput, TDepth>),
        LoadTensorKernel(accelerator, MatMulKernels.TensorStaged<TwoTokenTiles, TInput, TDepth>),
        LoadTensorKernel(accelerator, MatMulKernels.TensorStaged<FourTokenTiles, TInput, TDepth>),
        LoadTensorKernel(accelerator, MatMulKernels.TensorStaged<EightTokenTiles, TInput, TDepth>),
    ];

    private static Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>[] LoadWide<TFormat>(Accelerator accelerator)
        where TFormat : struct, IPackFormat<uint> =>
    [
        LoadWideKernel(accelerator, MatMulKernels.VectorWide<TFormat, PlainInput>),
        LoadWideKernel(accelerator, MatMulKernels.VectorWide<TFormat, NormedInput>),
        LoadWideKernel(accelerator, MatMulKernels.VectorWide<TFormat, NormedSwiGlu>),
    ];

    private static Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>[] LoadWideRow<TFormat>(Accelerator accelerator)
        where TFormat : struct, IPackFormat<uint> =>
    [
        LoadWideKernel(accelerator, MatMulKernels.VectorWideRow<TFormat, PlainInput>),
        LoadWideKernel(accelerator, MatMulKernels.VectorWideRow<TFormat, NormedInput>),
    ];

    private static Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs> LoadWideKernel(
        Accelerator accelerator, Action<ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs> kernel) =>
        KernelLoader.Load(accelerator, kernel, () => accelerator.LoadKernel(kernel));

    private static Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<uint>, int, float> LoadTensorInputNormed<TInput>(Accelerator accelerator)
        where TInput : struct, ITensorInput
    {
        Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<uint>, int, float> kernel = MatMulKernels.TensorInputNormed<TInput>;
        return KernelLoader.Load(accelerator, kernel, () => accelerator.LoadKernel(kernel));
    }

    private static Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<uint>, ArrayView<uint>> LoadTensorInput<TInput>(Accelerator accelerator)
        where TInput : struct, ITensorInput
    {
        Action<Index1D, ArrayView<float>, ArrayView<uint>, ArrayView<uint>> kernel = MatMulKernels.TensorInput<TInput>;
        return KernelLoader.Load(accelerator, kernel, () => accelerator.LoadAutoGroupedKernel(kernel));
    }

    private static Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs> LoadTensorKernel(
        Accelerator accelerator, Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs> kernel) =>
        KernelLoader.Load(accelerator, kernel, () => accelerator.LoadKernel(kernel));

    /// <summary>True when the staged tensor-core kernels are loaded (<see cref="MatMulTuning.TensorStaged"/>, four-warp groups).</summary>
    public bool UsesStagedTensorKernel => _tensorStaged is not null;

    /// <summary>True when a tensor-core launch of T tokens on this weight runs the staged kernel (else the direct one).</summary>
    public bool RunsStaged(WeightView weight, int tokens) =>
        _tensorStaged is not null && tokens <= Tuning.TensorStagedMaxTokens && weight.Rows <= Tuning.TensorStagedMaxRows;

    /// <summary>Why the tensor-core kernels are off although the tuning asked for them (they failed to load), else null.</summary>
    public string? TensorCoreError { get; }

    private static void LoadRows<TPack, TFormat>(Accelerator accelerator,
        Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<TPack>, ArrayView<float>, MatMulArgs>[] slots)
        where TPack : unmanaged
        where TFormat : struct, IPackFormat<TPack>
    {
        slots[0] = Load<TPack>(accelerator, MatMulKernels.Vector<TPack, TFormat, PlainInput>);
        slots[1] = Load<TPack>(accelerator, MatMulKernels.Vector<TPack, TFormat, NormedInput>);
        slots[2] = Load<TPack>(accelerator, MatMulKernels.Vector<TPack, TFormat, NormedSwiGlu>);
        slots[3] = Load<TPack>(accelerator, MatMulKernels.Skinny<TPack, TFormat, PlainInput>);
        slots[4] = Load<TPack>(accelerator, MatMulKernels.Skinny<TPack, TFormat, NormedInput>);
        slots[5] = Load<TPack>(accelerator, MatMulKernels.Skinny<TPack, TFormat, NormedSwiGlu>);
    }

    /// <summary>
    /// The row of the interleaved (gate, up) weight <see cref="NormedSwiGlu"/> reads that holds gate row i (2i) or up
    /// row i (2i + 1).
    /// </summary>
    public static int InterleaveGateUp(int row, bool up) => 2 * row + (up ? 1 : 0);

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

    /// <summary>The float32-core path <see cref="MatMulPath.Auto"/> takes for T tokens (see <see cref="Choose(WeightView, int)"/>).</summary>
    public MatMulPath Choose(int tokens) => tokens == 1 ? MatMulPath.Vector : tokens <= Tuning.SkinnyMaxTokens ? MatMulPath.Skinny : MatMulPath.Tiled;

    /// <summary>
    /// The path <see cref="MatMulPath.Auto"/> takes for T tokens of this weight: the tensor-core kernel when it is on and
    /// applies (<see cref="CanUseTensorCores"/>, T ≥ <see cref="MatMulTuning.TensorMinTokens"/>), else by T alone.
    /// </summary>
    public MatMulPath Choose(WeightView weight, int tokens) =>
        _tensor is not null && tokens >= Tuning.TensorMinTokens && CanUseTensorCores(weight) ? MatMulPath.TensorCore : Choose(tokens);

    /// <summary>
    /// True when the tensor-core kernel takes this weight: F16, K a multiple of <see cref="MatMulKernels.TensorChunk"/>,
    /// row stride a multiple of 8 elements, the view 16-byte aligned (the input is read element by element when the
    /// launch rounds it to fp16, so any input view does).
    /// </summary>
    public static bool CanUseTensorCores(WeightView weight) =>
        weight.Storage == WeightStorage.F16 && weight.Columns > 0 && weight.Columns % MatMulKernels.TensorChunk == 0
        && weight.RowStride % 8 == 0 && ByteOffset(weight.Raw) % 16 == 0;

    /// <summary>
    /// True when <see cref="LaunchNormed"/> and <see cref="LaunchNormedSwiGlu"/> take T tokens: T ≤ 4, the vector kernel
    /// or one pass of the skinny kernel. Beyond, the skinny kernel would normalise the input again on every pass of four
    /// tokens: on an H200 (2026-11-28) the fused kernels made a decode step 12-18% faster but a 64-token step 6-8% slower.
    /// </summary>
    public bool CanNormalize(int tokens) => tokens >= 1 && tokens <= Math.Min(MatMulKernels.SkinnyTokens, Tuning.SkinnyMaxTokens);

    /// <summary>
    /// True when <see cref="LaunchNormed"/> / <see cref="LaunchNormedSwiGlu"/> should take T tokens of this weight:
    /// <see cref="CanNormalize"/>, unless the matmul runs on tensor cores (then <see cref="LaunchNormedTensor"/> applies the
    /// norm while it rounds the inputs to fp16).
    /// </summary>
    public bool ShouldNormalize(WeightView weight, int tokens) => CanNormalize(tokens) && Choose(weight, tokens) != MatMulPath.TensorCore;

    /// <summary>output F32[T, N] and input F32[T, K] contiguous; weight [N, K].</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> input, WeightView weight, int tokens, bool accumulate, MatMulPath path = MatMulPath.Auto)
    {
        int n = weight.Rows, k = weight.Columns;
        CheckExtents(output, input, weight, tokens);
        if (tokens == 0 || n == 0) return;
        if (path == MatMulPath.Auto) path = Choose(weight, tokens);
        if (path == MatMulPath.TensorCore)
        {
            LaunchTensor(stream, output, input, weight, tokens, accumulate);
            return;
        }
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
        LaunchRows(stream, output, input, input, weight, tokens, path == MatMulPath.Vector, mode: 0, new MatMulArgs(tokens, n, k, weight.PackStride, accumulate));
    }

    /// <summary>
    /// output[T, N] = (accumulate ? output : 0) + RMSNorm(input[T, K], norm, ε) · W[N, K]ᵀ in one launch (see
    /// <see cref="NormedInput"/>); T must satisfy <see cref="CanNormalize"/>. norm: F32[K].
    /// </summary>
    public void LaunchNormed(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> input, ArrayView<float> norm, WeightView weight, int tokens, float eps, bool accumulate)
    {
        CheckExtents(output, input, weight, tokens);
        CheckNormed(norm, weight, tokens, "MatMul with RMSNorm");
        if (weight.Rows == 0) return;
        LaunchRows(stream, output, input, norm, weight, tokens, tokens == 1, mode: 1, new MatMulArgs(tokens, weight.Rows, weight.Columns, weight.PackStride, accumulate, eps));
    }

    /// <summary>
    /// output[T, N] = (accumulate ? output : 0) + RMSNorm(input[T, K], norm, ε) · W[N, K]ᵀ on tensor cores, the norm
    /// applied while the inputs are rounded to fp16 (<see cref="MatMulKernels.TensorInputNormed{TInput}"/>): for T where
    /// <see cref="Choose(WeightView, int)"/> is <see cref="MatMulPath.TensorCore"/>. norm: F32[K].
    /// </summary>
    public void LaunchNormedTensor(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> input, ArrayView<float> norm, WeightView weight, int tokens, float eps, bool accumulate)
    {
        CheckExtents(output, input, weight, tokens);
        if (Choose(weight, tokens) != MatMulPath.TensorCore)
            throw new ArgumentException($"MatMul with RMSNorm on tensor cores: {weight} at T={tokens} does not take the tensor-core path");
        if (norm.Length < weight.Columns)
            throw new ArgumentException($"MatMul with RMSNorm on tensor cores: {norm.Length} norm weights for K={weight.Columns}");
        if (tokens == 0 || weight.Rows == 0) return;
        LaunchTensor(stream, output, input, weight, tokens, accumulate, norm, eps);
    }

    /// <summary>
    /// output[T, F] = silu(g) ⊙ u with [g_i, u_i] = RMSNorm(input[T, K], norm, ε) · W[2i | 2i + 1, K]ᵀ: a feed-forward
    /// block's norm, gate and up projections and SwiGLU in one launch (see <see cref="NormedSwiGlu"/>). W [2F, K] holds
    /// the gate and up rows interleaved (<see cref="InterleaveGateUp"/>); T must satisfy <see cref="CanNormalize"/>.
    /// </summary>
    public void LaunchNormedSwiGlu(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> input, ArrayView<float> norm, WeightView weight, int tokens, float eps)
    {
        if (weight.Rows % 2 != 0)
            throw new ArgumentException($"MatMul with SwiGLU: {weight} has an odd number of rows; expected interleaved (gate, up) pairs");
        if (output.Length < (long)tokens * (weight.Rows / 2) || input.Length < (long)tokens * weight.Columns)
            throw new ArgumentException($"MatMul with SwiGLU: output {output.Length} / input {input.Length} floats too small for [T={tokens}, F={weight.Rows / 2}] from [T, K={weight.Columns}] · {weight}ᵀ");
        CheckNormed(norm, weight, tokens, "MatMul with SwiGLU");
        if (weight.Rows == 0) return;
        LaunchRows(stream, output, input, norm, weight, tokens, tokens == 1, mode: 2, new MatMulArgs(tokens, weight.Rows, weight.Columns, weight.PackStride, accumulate: false, eps));
    }

    private void CheckNormed(ArrayView<float> norm, WeightView weight, int tokens, string what)
    {
        if (!CanNormalize(tokens))
            throw new ArgumentException($"{what}: T={tokens} outside [1, {Tuning.SkinnyMaxTokens}] (normalise separately for larger T)");
        if (norm.Length < weight.Columns)
            throw new ArgumentException($"{what}: {norm.Length} norm weights for K={weight.Columns}");
    }

    /// <summary>
    /// Grouped GEMV: output[g, n] = input[g or 0, :] · W[g·N + n, :]ᵀ for G groups of N rows: several small matrices
    /// (Medusa heads' ResBlocks, stacked into one weight) in one launch. N must be a multiple of 4 (a group of the vector
    /// kernel must not straddle two matrices); <paramref name="sharedInput"/>: every group reads input row 0.
    /// output F32[G·N], input F32[G or 1, K], weight [G·N, K].
    /// </summary>
    public void LaunchGrouped(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> input, WeightView weight, int groupRows, bool sharedInput)
    {
        int n = weight.Rows, k = weight.Columns;
        if (groupRows <= 0 || groupRows % MatMulKernels.RowsPerGroup != 0 || n % groupRows != 0)
            throw new ArgumentException($"grouped MatMul: {weight} is not a stack of [N={groupRows}, K] matrices with N a multiple of {MatMulKernels.RowsPerGroup}");
        int groups = n / groupRows;
        if (output.Length < n || input.Length < (sharedInput ? 1L : groups) * k)
            throw new ArgumentException($"grouped MatMul: output {output.Length} / input {input.Length} floats too small for {groups} groups of [{groupRows}, {k}]");
        if (n == 0) return;
        LaunchRows(stream, output, input, input, weight, tokens: 1, vector: true, mode: 0,
            new MatMulArgs(1, n, k, weight.PackStride, accumulate: false, groupRows: groupRows, groupInputStride: sharedInput ? 0 : k));
    }

    /// <summary>
    /// True when a wide GEMV of N rows in this mode (0 plain, 1 normed, 2 normed + SwiGLU pairs) runs one row per warp
    /// (<see cref="MatMulTuning.WideSingleRowMaxRows"/>; SwiGLU pairs always take two).
    /// </summary>
    public bool UsesOneRowGemv(int rows, int mode) => _wideRowF16 is not null && mode < 2 && rows <= Tuning.WideSingleRowMaxRows;

    /// <summary>True when the wide GEMV takes this launch (16-bit weights, K and the stride multiples of 8, aligned views).</summary>
    private bool CanUseWideVector(WeightView weight, ArrayView<float> input, ArrayView<float> norm, int tokens, int mode) =>
        _wideF16 is not null && weight.Storage != WeightStorage.F32 && weight.Columns > 0 && weight.Columns % 8 == 0
        && weight.RowStride % 8 == 0 && ByteOffset(weight.Raw) % 16 == 0 && ByteOffset(input.Cast<byte>()) % 16 == 0
        && (mode == 0 || ByteOffset(norm.Cast<byte>()) % 16 == 0) && tokens >= 1;

    /// <summary>Where a view starts in its buffer, in bytes (allocations themselves are at least 256-byte aligned on GPUs).</summary>
    private static long ByteOffset(ArrayView<byte> view) => ((IContiguousArrayView)view).IndexInBytes;

    private void LaunchTensor(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> input, WeightView weight, int tokens, bool accumulate,
        ArrayView<float> norm = default, float eps = 0f)
    {
        if (_tensor is null || _tensorInput is null || _tensorReduce is null)
            throw new InvalidOperationException($"MatMul: the tensor-core path is off on this device ({TensorCoreError ?? "tuning " + Tuning.TensorCores})");
        if (!CanUseTensorCores(weight))
            throw new ArgumentException($"MatMul: {weight} cannot take the tensor-core path (F16, K a multiple of {MatMulKernels.TensorChunk}, row stride a multiple of 8, 16-byte aligned)");
        int n = weight.Rows, k = weight.Columns;
        long pairs = (long)tokens * k / 2;
        if (_inputHi is null || _inputHi.Length < pairs)
        {
            // Grown to the largest T·K seen (prefill sets it once); freed with the launcher. The new buffers first: if
            // they cannot be had, the old ones stay in place (a failed allocation leaves no freed buffer behind).
            var grownHi = _accelerator.Allocate1D<uint>(pairs);
            MemoryBuffer1D<uint, Stride1D.Dense> grownLo;
            try
            {
                grownLo = Tuning.TensorCores == TensorCoreMode.Split ? _accelerator.Allocate1D<uint>(pairs) : _accelerator.Allocate1D<uint>(4);
            }
            catch
            {
                grownHi.Dispose();
                throw;
            }
            _inputHi?.Dispose();
            _inputLo?.Dispose();
            _inputHi = grownHi;
            _inputLo = grownLo;
        }
        ArrayView<uint> hi = _inputHi.View.SubView(0, pairs);
        ArrayView<uint> lo = Tuning.TensorCores == TensorCoreMode.Split ? _inputLo!.View.SubView(0, pairs) : _inputLo!.View;
        if (norm.IsValid)
            _tensorInputNormed!(stream, new KernelConfig(tokens, Tuning.GroupSize), input, norm, hi, lo, k, eps);
        else
            _tensorInput(stream, checked((int)pairs), input, hi, lo);
        int tiles = tokens <= 8 ? 1 : tokens <= 16 ? 2 : tokens <= 32 ? 4 : 8;
        int slot = tiles == 1 ? 0 : tiles == 2 ? 1 : tiles == 4 ? 2 : 3;
        int tokensPerGroup = MatMulKernels.TensorTileTokens * tiles;
        int tokenTiles = (tokens + tokensPerGroup - 1) / tokensPerGroup;
        bool staged = RunsStaged(weight, tokens);
        var kernels = staged ? _tensorStaged! : _tensor;
        int groupRows = staged ? MatMulKernels.StagedRowsPerWarp * (Tuning.TensorGroupSize / 32) : MatMulKernels.TensorRows;
        int rowGroups = (n + groupRows - 1) / groupRows;
        int chunks = k / MatMulKernels.TensorChunk;
        int splits = TensorSplits(tokenTiles * rowGroups, chunks, staged, slot);
        int perSplit = (chunks + splits - 1) / splits;
        splits = (chunks + perSplit - 1) / perSplit;
        var config = new KernelConfig(new Index3D(tokenTiles, rowGroups, splits), new Index3D(Tuning.TensorGroupSize, 1, 1));
        var packs = weight.Raw.SubView(0, (long)n * weight.RowStride * 2).Cast<Pack8>();
        long elements = (long)tokens * n;
        if (splits == 1)
        {
            kernels[slot](stream, config, output, hi.Cast<Pack8>(), lo.Cast<Pack8>(), packs,
                new MatMulArgs(tokens, n, k, weight.RowStride / 8, accumulate));
            return;
        }
        if (_partials is null || _partials.Length < splits * elements)
        {
            var grown = _accelerator.Allocate1D<float>(splits * elements);
            _partials?.Dispose();
            _partials = grown;
        }
        var partials = _partials.View.SubView(0, splits * elements);
        kernels[slot](stream, config, partials, hi.Cast<Pack8>(), lo.Cast<Pack8>(), packs,
            new MatMulArgs(tokens, n, k, weight.RowStride / 8, accumulate: false, chunksPerSplit: perSplit));
        _tensorReduce(stream, checked((int)elements), output, partials, checked((int)elements), splits, accumulate ? 1 : 0);
    }

    /// <summary>
    /// K splits of a tensor-core launch of <paramref name="groups"/> groups (token tiles × row groups). With
    /// <see cref="MatMulTuning.TensorWaveSplits"/> and a known occupancy: as many as fit in one wave of the device
    /// (<see cref="WaveSplits"/>); else enough for <see cref="MatMulTuning.TensorTargetGroups"/>. Each split keeps
    /// enough 32-column chunks.
    /// </summary>
    private int TensorSplits(int groups, int chunks, bool staged, int slot)
    {
        var resident = staged ? _stagedResident : _tensorResident;
        int wanted = Tuning.TensorWaveSplits && resident is not null
            ? WaveSplits(groups, resident[slot] * Math.Max(1, _accelerator.NumMultiprocessors))
            : (Tuning.TensorTargetGroups + groups - 1) / groups;
        // The direct kernel's warps share a split's chunks (at least two each); the staged kernel's warps all take every
        // chunk of the split (at least four, so that the double buffering runs).
        int most = staged ? Math.Max(1, chunks / 4) : Math.Max(1, chunks / (2 * (Tuning.TensorGroupSize / 32)));
        return Math.Clamp(wanted, 1, most);
    }

    /// <summary>
    /// Splits Z that make <paramref name="groups"/> · Z fill one wave of <paramref name="slots"/> resident groups without
    /// spilling into a second: ⌊slots / groups⌋, at least 1 (a launch that fills the device already is not split).
    /// </summary>
    public static int WaveSplits(int groups, int slots) => groups <= 0 ? 1 : Math.Max(1, slots / groups);

    /// <summary>Frees the tensor-core kernels' input planes.</summary>
    public void Dispose()
    {
        _partials?.Dispose();
        _partials = null;
        _inputHi?.Dispose();
        _inputLo?.Dispose();
        _inputHi = null;
        _inputLo = null;
    }

    private static void CheckExtents(ArrayView<float> output, ArrayView<float> input, WeightView weight, int tokens)
    {
        if (output.Length < (long)tokens * weight.Rows || input.Length < (long)tokens * weight.Columns)
            throw new ArgumentException($"MatMul: output {output.Length} / input {input.Length} floats too small for [T={tokens}, N={weight.Rows}] = [T, K={weight.Columns}] · {weight}ᵀ");
    }

    private void LaunchRows(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> input, ArrayView<float> norm, WeightView weight,
        int tokens, bool vector, int mode, MatMulArgs args)
    {
        if (vector && args.GroupRows == 0 && CanUseWideVector(weight, input, norm, tokens, mode))
        {
            int warps = Tuning.GroupSize / 32;
            bool oneRow = UsesOneRowGemv(weight.Rows, mode);
            int rowsPerGroup = warps * (oneRow ? 1 : MatMulKernels.WideRowsPerWarp);
            var wideConfig = new KernelConfig(new Index2D((weight.Rows + rowsPerGroup - 1) / rowsPerGroup, tokens), new Index2D(Tuning.GroupSize, 1));
            var kernels = oneRow
                ? (weight.Storage == WeightStorage.F16 ? _wideRowF16! : _wideRowBf16!)
                : (weight.Storage == WeightStorage.F16 ? _wideF16! : _wideBf16!);
            var x = input.SubView(0, (long)tokens * weight.Columns).Cast<Quad>();
            var n = mode == 0 ? x : norm.SubView(0, weight.Columns).Cast<Quad>();
            var packs = weight.Raw.SubView(0, (long)weight.Rows * weight.RowStride * 2).Cast<Pack8>();
            kernels[mode](stream, wideConfig, output, x, packs, n,
                new MatMulArgs(tokens, weight.Rows, weight.Columns, weight.RowStride / 8, args.Accumulate != 0, args.Eps));
            return;
        }
        int rowGroups = (weight.Rows + MatMulKernels.RowsPerGroup - 1) / MatMulKernels.RowsPerGroup;
        int slot = (vector ? 0 : 3) + mode;
        var config = new KernelConfig(new Index2D(rowGroups, vector ? tokens : 1), new Index2D(vector ? Tuning.GroupSize : Tuning.SkinnyGroupSize, 1));
        switch (weight.Storage)
        {
            case WeightStorage.F32: _f32[slot](stream, config, output, input, weight.Floats, norm, args); break;
            case WeightStorage.F16: _f16[slot](stream, config, output, input, weight.Pairs, norm, args); break;
            default: _bf16[slot](stream, config, output, input, weight.Pairs, norm, args); break;
        }
    }
}
