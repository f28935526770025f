using ILGPU;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>Scalars of the per-row reductions over logits (<see cref="ArgMaxKernel"/>, <see cref="TopKKernel"/>, <see cref="SoftmaxStatsKernel"/>).</summary>
public readonly struct RowArgs
{
    /// <summary>Creates the scalars.</summary>
    public RowArgs(int columns, int k)
    {
        Columns = columns;
        K = k;
    }

    /// <summary>V, values per row.</summary>
    public readonly int Columns;
    /// <summary>k of top-k (unused elsewhere).</summary>
    public readonly int K;
}

/// <summary>Argmax per row: the index of the largest value, the lowest index on ties (NaN counts as largest, as in TensorPrimitives.IndexOfMax).</summary>
public static class ArgMaxKernel
{
    /// <summary>
    /// One group per row: each thread scans a strided share of the row with four independent candidates (four loads in
    /// flight per iteration: one group streams a whole 32k-vocabulary row, so the scan is latency-bound; on an H200 the
    /// one-candidate loop took ~40 µs), merges them, then a tree reduction of (value, index).
    /// </summary>
    /// <param name="output">I32[T].</param>
    /// <param name="logits">F32[T, V].</param>
    /// <param name="args">V.</param>
    public static void Run(ArrayView<int> output, ArrayView<float> logits, RowArgs args)
    {
        var values = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);
        var indices = SharedMemory.Allocate<int>(KernelLimits.MaxGroupSize);
        int tid = Group.IdxX;
        int g = Group.DimX;
        int row = Grid.IdxX;
        long start = (long)row * args.Columns;
        float b0 = 0f, b1 = 0f, b2 = 0f, b3 = 0f;
        int i0 = -1, i1 = -1, i2 = -1, i3 = -1;
        int i = tid;
        for (; i + 3 * g < args.Columns; i += 4 * g)
        {
            float v0 = logits[start + i], v1 = logits[start + i + g], v2 = logits[start + i + 2 * g], v3 = logits[start + i + 3 * g];
            if (GroupReduce.Precedes(v0, i, b0, i0))
            {
                b0 = v0;
                i0 = i;
            }
            if (GroupReduce.Precedes(v1, i + g, b1, i1))
            {
                b1 = v1;
                i1 = i + g;
            }
            if (GroupReduce.Precedes(v2, i + 2 * g, b2, i2))
            {
                b2 = v2;
                i2 = i + 2 * g;
            }
            if (GroupReduce.Precedes(v3, i + 3 * g, b3, i3))
            {
                b3 = v3;
                i3 = i + 3 * g;
            }
        }
        for (; i < args.Columns; i += g)
        {
            float v = logits[start + i];
            if (GroupReduce.Precedes(v, i, b0, i0))
            {
                b0 = v;
                i0 = i;
            }
        }
        if (GroupReduce.Precedes(b1, i1, b0, i0))
        {
            b0 = b1;
            i0 = i1;
        }
        if (GroupReduce.Precedes(b2, i2, b0, i0))
        {
            b0 = b2;
            i0 = i2;
        }
        if (GroupReduce.Precedes(b3, i3, b0, i0))
        {
            b0 = b3;
            i0 = i3;
        }
        int result = GroupReduce.ArgBest(values, indices, b0, i0);
        if (tid == 0) output[row] = result;
    }
}

/// <summary>Launches <see cref="ArgMaxKernel"/>; one instance per accelerator.</summary>
public sealed class ArgMaxLauncher
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<int>, ArrayView<float>, RowArgs> _kernel;
    private readonly int _groupSize;

    /// <summary>Compiles and loads the kernel.</summary>
    public ArgMaxLauncher(Accelerator accelerator, int groupSize)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        KernelLimits.CheckGroupSize(groupSize);
        _groupSize = groupSize;
        _kernel = KernelLoader.Load(accelerator, ArgMaxKernel.Run,
            () => accelerator.LoadKernel<ArrayView<int>, ArrayView<float>, RowArgs>(ArgMaxKernel.Run));
    }

    /// <summary>output I32[T], logits F32[T, V] contiguous.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<int> output, ArrayView<float> logits, int rows, int columns)
    {
        if (columns <= 0 || output.Length < rows || logits.Length < (long)rows * columns)
            throw new ArgumentException($"ArgMax: output {output.Length}, logits {logits.Length}: wrong for T={rows}, V={columns}");
        if (rows == 0) return;
        _kernel(stream, new KernelConfig(rows, _groupSize), output, logits, new RowArgs(columns, 1));
    }
}
