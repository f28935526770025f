using System.Reflection;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.OpenCL;

namespace IlgpuMedusa.Kernels;

/// <summary>
/// Every launcher, loaded once for one accelerator (compiling all kernels up front, so the hot path never compiles).
/// </summary>
public sealed class KernelSet : IDisposable
{
    /// <summary>Compiles and loads every kernel for <paramref name="accelerator"/> with <paramref name="groupSize"/> threads per group.</summary>
    public KernelSet(Accelerator accelerator, int groupSize)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        KernelLimits.CheckGroupSize(groupSize);
        GroupSize = groupSize;
        Embedding = new EmbeddingLauncher(accelerator);
        RmsNorm = new RmsNormLauncher(accelerator, groupSize);
        HeadRmsNorm = new HeadRmsNormLauncher(accelerator, groupSize);
        MatMul = new MatMulLauncher(accelerator, groupSize);
        Rope = new RopeLauncher(accelerator);
        KvWrite = new KvWriteLauncher(accelerator);
        RopeKvWrite = new RopeKvWriteLauncher(accelerator);
        Attention = new AttentionLauncher(accelerator, groupSize);
        SwiGlu = new SwiGluLauncher(accelerator);
        SiluResidual = new SiluResidualLauncher(accelerator);
        Add = new AddLauncher(accelerator);
        ArgMax = new ArgMaxLauncher(accelerator, groupSize);
        TopK = new TopKLauncher(accelerator, groupSize);
        SoftmaxStats = new SoftmaxStatsLauncher(accelerator, groupSize);
        KvCompact = new KvCompactLauncher(accelerator);
        SmallWrite = new SmallWriteLauncher(accelerator);
        GatherInts = new GatherIntsLauncher(accelerator);
    }

    /// <summary>Threads per group of the grouped kernels.</summary>
    public int GroupSize { get; }
    /// <summary>Embedding gather.</summary>
    public EmbeddingLauncher Embedding { get; }
    /// <summary>RMSNorm.</summary>
    public RmsNormLauncher RmsNorm { get; }
    /// <summary>Per-head RMSNorm of queries and keys (Qwen3).</summary>
    public HeadRmsNormLauncher HeadRmsNorm { get; }
    /// <summary>Matmul (vector, skinny, tiled).</summary>
    public MatMulLauncher MatMul { get; }
    /// <summary>Rotary embedding.</summary>
    public RopeLauncher Rope { get; }
    /// <summary>KV write.</summary>
    public KvWriteLauncher KvWrite { get; }
    /// <summary>RoPE and the KV write in one launch.</summary>
    public RopeKvWriteLauncher RopeKvWrite { get; }
    /// <summary>Attention.</summary>
    public AttentionLauncher Attention { get; }
    /// <summary>SwiGLU.</summary>
    public SwiGluLauncher SwiGlu { get; }
    /// <summary>Medusa ResBlock residual.</summary>
    public SiluResidualLauncher SiluResidual { get; }
    /// <summary>Elementwise add.</summary>
    public AddLauncher Add { get; }
    /// <summary>Argmax per row.</summary>
    public ArgMaxLauncher ArgMax { get; }
    /// <summary>Top-k per row.</summary>
    public TopKLauncher TopK { get; }
    /// <summary>Softmax statistics per row.</summary>
    public SoftmaxStatsLauncher SoftmaxStats { get; }
    /// <summary>KV compaction.</summary>
    public KvCompactLauncher KvCompact { get; }
    /// <summary>A few ints written by a launch instead of a copy.</summary>
    public SmallWriteLauncher SmallWrite { get; }
    /// <summary>A few ints gathered (and mapped) on the device.</summary>
    public GatherIntsLauncher GatherInts { get; }

    /// <summary>Frees the launchers' buffers.</summary>
    public void Dispose()
    {
        Attention.Dispose();
        MatMul.Dispose();
    }

    /// <summary>
    /// The group size for an accelerator: 256 on GPUs (8 warps: enough loads in flight per group, cheap barriers);
    /// 32 on a CPU OpenCL (PoCL runs a group's work-items as vectorised loops on one core; the 32000×288 GEMV took
    /// about 6 ms with groups of 16 or 32, 8 ms with 64, 12 ms with 128 on the 2-core machine); 32 on ILGPU's CPU emulator
    /// (one OS thread per work-item, barriers are expensive).
    /// Always a power of two within the device's limit.
    /// </summary>
    public static int DefaultGroupSize(Accelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        int wanted = accelerator switch
        {
            CPUAccelerator => 32,
            CLAccelerator cl when cl.DeviceType.HasFlag(CLDeviceType.CL_DEVICE_TYPE_CPU) => 32,
            _ => 256,
        };
        int limit = Math.Min(accelerator.MaxNumThreadsPerGroup, KernelLimits.MaxGroupSize);
        while (wanted > limit) wanted /= 2;
        return Math.Max(wanted, 1);
    }
}

/// <summary>Every kernel method the launchers load, with the generic instantiations they use: for compile checks.</summary>
public static class KernelCatalog
{
    /// <summary>A kernel: its name, method, whether it is implicitly grouped, and whether it is a CUDA-only variant.</summary>
    /// <param name="Name">Readable name.</param>
    /// <param name="Method">The (constructed) kernel method.</param>
    /// <param name="ImplicitlyGrouped">True for index-first kernels, false for explicitly grouped ones.</param>
    /// <param name="CudaOnly">
    /// True for variants outside the portable subset (ILGPU's Half type, inline PTX for tensor cores, warp shuffles),
    /// loaded on CUDA only.
    /// </param>
    public sealed record Entry(string Name, MethodInfo Method, bool ImplicitlyGrouped, bool CudaOnly);

    /// <summary>All kernels.</summary>
    public static IReadOnlyList<Entry> All { get; } = Build();

    /// <summary>The staged tensor-core kernels of one prefetch depth: four token-tile counts, split and rounded inputs.</summary>
    private static Delegate[] Staged<TDepth>()
        where TDepth : struct, IPrefetchDepth =>
    [
        (Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>)MatMulKernels.TensorStaged<OneTokenTile, SplitInput, TDepth>,
        (Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>)MatMulKernels.TensorStaged<TwoTokenTiles, SplitInput, TDepth>,
        (Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>)MatMulKernels.TensorStaged<FourTokenTiles, SplitInput, TDepth>,
        (Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>)MatMulKernels.TensorStaged<EightTokenTiles, SplitInput, TDepth>,
        (Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>)MatMulKernels.TensorStaged<OneTokenTile, RoundedInput, TDepth>,
        (Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>)MatMulKernels.TensorStaged<TwoTokenTiles, RoundedInput, TDepth>,
        (Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>)MatMulKernels.TensorStaged<FourTokenTiles, RoundedInput, TDepth>,
        (Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>)MatMulKernels.TensorStaged<EightTokenTiles, RoundedInput, TDepth>,
    ];

    /// <summary>
    /// The kernels that read or write the KV cache, for one element format as the launchers load them: the per-token and
    /// block attention kernels always; the warp and tile kernels (CUDA) with float32 and ILGPU's Half decoding; the KV
    /// writes with float32 and the portable binary16 encoding (every device encodes bit by bit).
    /// </summary>
    private static Delegate[] KvKernels<TKv, TFormat>()
        where TKv : unmanaged
        where TFormat : struct, IKvFormat<TKv>
    {
        bool cudaDecoding = typeof(TFormat) != typeof(KvF16);
        bool writes = typeof(TFormat) != typeof(KvF16Native);
        var attention = new List<Delegate>
        {
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<TKv>, ArrayView<TKv>, ArrayView<int>, ArrayView<int>, AttentionArgs>)AttentionKernel.Run<TKv, TFormat>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<TKv>, ArrayView<TKv>, ArrayView<int>, ArrayView<int>, AttentionArgs>)AttentionKernel.Block<TKv, TFormat>,
        };
        if (cudaDecoding)
        {
            attention.Add((Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<TKv>, ArrayView<TKv>, ArrayView<int>, ArrayView<int>, AttentionArgs>)AttentionKernel.Decode<TKv, TFormat>);
            attention.Add((Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<TKv>, ArrayView<TKv>, ArrayView<int>, ArrayView<int>, AttentionArgs>)AttentionKernel.Tiles<TKv, TFormat>);
        }
        if (writes)
        {
            attention.Add((Action<Index1D, ArrayView<TKv>, ArrayView<TKv>, ArrayView<float>, ArrayView<int>, KvWriteArgs>)KvWriteKernel.Run<TKv, TFormat>);
            attention.Add((Action<Index1D, ArrayView<TKv>, ArrayView<TKv>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, RopeKvWriteArgs>)RopeKvWriteKernel.Run<TKv, TFormat>);
        }
        return [.. attention];
    }

    private static List<Entry> Build()
    {
        Delegate[] kernels =
        [
            (Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, EmbeddingArgs>)EmbeddingKernel.Run<float, F32Format>,
            (Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<ushort>, EmbeddingArgs>)EmbeddingKernel.Run<ushort, F16Format>,
            (Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<ushort>, EmbeddingArgs>)EmbeddingKernel.Run<ushort, BF16Format>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, RmsNormArgs>)RmsNormKernel.Run<float, F32Format>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<ushort>, RmsNormArgs>)RmsNormKernel.Run<ushort, F16Format>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<ushort>, RmsNormArgs>)RmsNormKernel.Run<ushort, BF16Format>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, HeadRmsNormArgs>)HeadRmsNormKernel.Run,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, MatMulArgs>)MatMulKernels.Vector<float, F32Format, PlainInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, MatMulArgs>)MatMulKernels.Vector<float, F32Format, NormedInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, MatMulArgs>)MatMulKernels.Vector<float, F32Format, NormedSwiGlu>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Vector<uint, F16Format, PlainInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Vector<uint, F16Format, NormedInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Vector<uint, F16Format, NormedSwiGlu>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Vector<uint, BF16Format, PlainInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Vector<uint, BF16Format, NormedInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Vector<uint, BF16Format, NormedSwiGlu>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, MatMulArgs>)MatMulKernels.Skinny<float, F32Format, PlainInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, MatMulArgs>)MatMulKernels.Skinny<float, F32Format, NormedInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, MatMulArgs>)MatMulKernels.Skinny<float, F32Format, NormedSwiGlu>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Skinny<uint, F16Format, PlainInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Skinny<uint, F16Format, NormedInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Skinny<uint, F16Format, NormedSwiGlu>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Skinny<uint, BF16Format, PlainInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Skinny<uint, BF16Format, NormedInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Skinny<uint, BF16Format, NormedSwiGlu>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, MatMulArgs>)MatMulKernels.Tiled<float, F32Format>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<ushort>, MatMulArgs>)MatMulKernels.Tiled<ushort, F16Format>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<ushort>, MatMulArgs>)MatMulKernels.Tiled<ushort, BF16Format>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Vector<uint, F16NativeFormat, PlainInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Vector<uint, F16NativeFormat, NormedInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Vector<uint, F16NativeFormat, NormedSwiGlu>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Skinny<uint, F16NativeFormat, PlainInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Skinny<uint, F16NativeFormat, NormedInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<float>, MatMulArgs>)MatMulKernels.Skinny<uint, F16NativeFormat, NormedSwiGlu>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<ushort>, MatMulArgs>)MatMulKernels.Tiled<ushort, F16NativeFormat>,
            (Action<ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>)MatMulKernels.VectorWide<F16NativeFormat, PlainInput>,
            (Action<ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>)MatMulKernels.VectorWide<F16NativeFormat, NormedInput>,
            (Action<ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>)MatMulKernels.VectorWide<F16NativeFormat, NormedSwiGlu>,
            (Action<ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>)MatMulKernels.VectorWide<F16Format, PlainInput>,
            (Action<ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>)MatMulKernels.VectorWide<F16Format, NormedInput>,
            (Action<ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>)MatMulKernels.VectorWide<F16Format, NormedSwiGlu>,
            (Action<ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>)MatMulKernels.VectorWide<BF16Format, PlainInput>,
            (Action<ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>)MatMulKernels.VectorWide<BF16Format, NormedInput>,
            (Action<ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>)MatMulKernels.VectorWide<BF16Format, NormedSwiGlu>,
            (Action<ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>)MatMulKernels.VectorWideRow<F16NativeFormat, PlainInput>,
            (Action<ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>)MatMulKernels.VectorWideRow<F16NativeFormat, NormedInput>,
            (Action<ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>)MatMulKernels.VectorWideRow<F16Format, PlainInput>,
            (Action<ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>)MatMulKernels.VectorWideRow<F16Format, NormedInput>,
            (Action<ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>)MatMulKernels.VectorWideRow<BF16Format, PlainInput>,
            (Action<ArrayView<float>, ArrayView<Quad>, ArrayView<Pack8>, ArrayView<Quad>, MatMulArgs>)MatMulKernels.VectorWideRow<BF16Format, NormedInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<uint>, int, float>)MatMulKernels.TensorInputNormed<SplitInput>,
            (Action<ArrayView<float>, ArrayView<float>, ArrayView<uint>, ArrayView<uint>, int, float>)MatMulKernels.TensorInputNormed<RoundedInput>,
            (Action<Index1D, ArrayView<float>, ArrayView<uint>, ArrayView<uint>>)MatMulKernels.TensorInput<SplitInput>,
            (Action<Index1D, ArrayView<float>, ArrayView<uint>, ArrayView<uint>>)MatMulKernels.TensorInput<RoundedInput>,
            (Action<Index1D, ArrayView<float>, ArrayView<float>, int, int, int>)MatMulKernels.TensorReduce,
            (Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>)MatMulKernels.TensorCore<OneTokenTile, SplitInput>,
            (Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>)MatMulKernels.TensorCore<TwoTokenTiles, SplitInput>,
            (Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>)MatMulKernels.TensorCore<FourTokenTiles, SplitInput>,
            (Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>)MatMulKernels.TensorCore<EightTokenTiles, SplitInput>,
            (Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>)MatMulKernels.TensorCore<OneTokenTile, RoundedInput>,
            (Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>)MatMulKernels.TensorCore<TwoTokenTiles, RoundedInput>,
            (Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>)MatMulKernels.TensorCore<FourTokenTiles, RoundedInput>,
            (Action<ArrayView<float>, ArrayView<Pack8>, ArrayView<Pack8>, ArrayView<Pack8>, MatMulArgs>)MatMulKernels.TensorCore<EightTokenTiles, RoundedInput>,
            (Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, RopeArgs>)RopeKernel.Run,
            (Action<Index1D, ArrayView<float>, ArrayView<float>, AttentionArgs>)AttentionKernel.Combine,
            (Action<Index1D, ArrayView<float>, ArrayView<float>, SwiGluArgs>)SwiGluKernel.Run,
            (Action<Index1D, ArrayView<float>, ArrayView<float>, SwiGluArgs>)SwiGluKernel.RunPairs,
            (Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, SiluResidualArgs>)SiluResidualKernel.Run,
            (Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, AddArgs>)AddKernel.Run,
            (Action<ArrayView<int>, ArrayView<float>, RowArgs>)ArgMaxKernel.Run,
            (Action<ArrayView<int>, ArrayView<float>, ArrayView<float>, RowArgs>)TopKKernel.Run,
            (Action<ArrayView<float>, ArrayView<float>, RowArgs>)SoftmaxStatsKernel.Run,
            (Action<Index1D, ArrayView<int>, SmallInts>)SmallWriteKernel.Run,
            (Action<Index1D, ArrayView<int>, ArrayView<int>, ArrayView<int>, SmallInts, int>)GatherIntsKernel.Run,
        ];
        kernels = [.. kernels, .. KvKernels<float, KvF32>(), .. KvKernels<ushort, KvF16>(), .. KvKernels<ushort, KvF16Native>(),
            (Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, KvCompactArgs>)KvCompactKernel.Run<float>,
            (Action<Index1D, ArrayView<ushort>, ArrayView<int>, ArrayView<int>, KvCompactArgs>)KvCompactKernel.Run<ushort>];
        kernels = [.. kernels, .. Staged<PrefetchOne>(), .. Staged<PrefetchTwo>(), .. Staged<PrefetchThree>(), .. Staged<PrefetchFour>()];
        return kernels.Select(k => new Entry(KernelLoader.NameOf(k.Method), k.Method, KernelLoader.IsImplicitlyGrouped(k.Method),
            k.Method.Name is nameof(MatMulKernels.VectorWide) or nameof(MatMulKernels.VectorWideRow) or nameof(AttentionKernel.Decode) or nameof(AttentionKernel.Tiles)
            || (k.Method.IsGenericMethod && k.Method.GetGenericArguments().Any(a => a == typeof(F16NativeFormat) || a == typeof(KvF16Native) || typeof(ITensorInput).IsAssignableFrom(a))))).ToList();
    }
}
