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
    /// <summary>One group per row: each thread scans a strided share of the row, then a tree reduction of (value, index).</summary>
    /// <param name="output">I32[T].</param>
    /// <param name="logits">F32[T, V].</param>
    /// <param name="args">V.</param>
    public static void Run(ArrayView<int> output, ArrayView<float> logits, RowArgs args)
    {
        var values = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);
        var indices = SharedMemory.Allocate<int>(KernelLimits.MaxGroupSize);
        int tid = Group.IdxX;
        int row = Grid.IdxX;
        long start = (long)row * args.Columns;
        float best = 0f;
        int bestIndex = -1;
        for (int i = tid; i < args.Columns; i += Group.DimX)
        {
            float v = logits[start + i];
            if (GroupReduce.Precedes(v, i, best, bestIndex))
            {
                best = v;
                bestIndex = i;
            }
        }
        int result = GroupReduce.ArgBest(values, indices, best, bestIndex);
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
