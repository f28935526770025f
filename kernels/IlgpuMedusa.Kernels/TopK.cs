using ILGPU;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>
/// Top-k per row: the k largest values in descending order, ties lower index first (the order "larger value first, then
/// lower index" is total, so the result is exact and matches the host's stable insertion).
/// </summary>
public static class TopKKernel
{
    /// <summary>
    /// One group per row, k rounds: round r finds, with a strided scan and a tree reduction, the first element of the row
    /// that comes after round r−1's pick in that order. k scans of the row cost k·V reads from cache, which for k ≤ 64
    /// and one row per group is cheaper than merging per-thread sorted lists through shared memory.
    /// </summary>
    /// <param name="indices">I32[T, k].</param>
    /// <param name="values">F32[T, k].</param>
    /// <param name="logits">F32[T, V].</param>
    /// <param name="args">V and k.</param>
    public static void Run(ArrayView<int> indices, ArrayView<float> values, ArrayView<float> logits, RowArgs args)
    {
        var scratchValues = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);
        var scratchIndices = SharedMemory.Allocate<int>(KernelLimits.MaxGroupSize);
        int tid = Group.IdxX;
        int row = Grid.IdxX;
        long start = (long)row * args.Columns;
        float previous = 0f;
        int previousIndex = -1;
        for (int round = 0; round < args.K; round++)
        {
            float best = 0f;
            int bestIndex = -1;
            for (int i = tid; i < args.Columns; i += Group.DimX)
            {
                float v = logits[start + i];
                bool eligible = previousIndex < 0 || GroupReduce.Precedes(previous, previousIndex, v, i);
                if (eligible && GroupReduce.Precedes(v, i, best, bestIndex))
                {
                    best = v;
                    bestIndex = i;
                }
            }
            previousIndex = GroupReduce.ArgBest(scratchValues, scratchIndices, best, bestIndex);
            previous = logits[start + previousIndex];
            if (tid == 0)
            {
                long o = (long)row * args.K + round;
                indices[o] = previousIndex;
                values[o] = previous;
            }
        }
    }
}

/// <summary>Launches <see cref="TopKKernel"/>; one instance per accelerator.</summary>
public sealed class TopKLauncher
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<int>, ArrayView<float>, ArrayView<float>, RowArgs> _kernel;
    private readonly int _groupSize;

    /// <summary>Compiles and loads the kernel.</summary>
    public TopKLauncher(Accelerator accelerator, int groupSize)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        KernelLimits.CheckGroupSize(groupSize);
        _groupSize = groupSize;
        _kernel = KernelLoader.Load(accelerator, TopKKernel.Run,
            () => accelerator.LoadKernel<ArrayView<int>, ArrayView<float>, ArrayView<float>, RowArgs>(TopKKernel.Run));
    }

    /// <summary>indices I32[T, k], values F32[T, k], logits F32[T, V], 0 &lt; k ≤ min(V, <see cref="KernelLimits.MaxTopK"/>).</summary>
    public void Launch(AcceleratorStream stream, ArrayView<int> indices, ArrayView<float> values, ArrayView<float> logits, int rows, int columns, int k)
    {
        if (k <= 0 || k > columns || k > KernelLimits.MaxTopK)
            throw new ArgumentException($"TopK: k={k} must be in [1, min(V={columns}, {KernelLimits.MaxTopK})]");
        if (indices.Length < (long)rows * k || values.Length < (long)rows * k || logits.Length < (long)rows * columns)
            throw new ArgumentException($"TopK: indices {indices.Length}, values {values.Length}, logits {logits.Length}: wrong for T={rows}, V={columns}, k={k}");
        if (rows == 0) return;
        _kernel(stream, new KernelConfig(rows, _groupSize), indices, values, logits, new RowArgs(columns, k));
    }
}
