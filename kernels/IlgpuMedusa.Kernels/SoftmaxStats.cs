using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>
/// Softmax statistics per row, in nats: (m = max, log Σ e^x = m + ln Z, entropy H = ln Z − Σ p (x − m)) with
/// Z = Σ e^(x − m) and p = e^(x − m) / Z.
/// </summary>
public static class SoftmaxStatsKernel
{
    /// <summary>One group per row: a max reduction, then the two sums Z and Σ e^(x−m)(x−m) reduced together.</summary>
    /// <param name="output">F32[T, 3].</param>
    /// <param name="logits">F32[T, V].</param>
    /// <param name="args">V.</param>
    public static void Run(ArrayView<float> output, ArrayView<float> logits, RowArgs args)
    {
        var scratch = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);
        var scratch2 = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);
        int tid = Group.IdxX;
        int groupSize = Group.DimX;
        int row = Grid.IdxX;
        long start = (long)row * args.Columns;
        float max = -3.0e38f;
        for (int i = tid; i < args.Columns; i += groupSize)
        {
            float v = logits[start + i];
            max = v > max ? v : max;
        }
        max = GroupReduce.Max(scratch, max);
        float z = 0f, weighted = 0f;
        for (int i = tid; i < args.Columns; i += groupSize)
        {
            float shifted = logits[start + i] - max;
            float e = XMath.Exp(shifted);
            z += e;
            weighted += e * shifted;
        }
        scratch[tid] = z;
        scratch2[tid] = weighted;
        Group.Barrier();
        for (int stride = groupSize / 2; stride > 0; stride >>= 1)
        {
            if (tid < stride)
            {
                scratch[tid] += scratch[tid + stride];
                scratch2[tid] += scratch2[tid + stride];
            }
            Group.Barrier();
        }
        if (tid == 0)
        {
            float logZ = XMath.Log(scratch[0]);
            long o = (long)row * 3;
            output[o] = max;
            output[o + 1] = max + logZ;
            output[o + 2] = logZ - scratch2[0] / scratch[0];
        }
    }
}

/// <summary>Launches <see cref="SoftmaxStatsKernel"/>; one instance per accelerator.</summary>
public sealed class SoftmaxStatsLauncher
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, RowArgs> _kernel;
    private readonly int _groupSize;

    /// <summary>Compiles and loads the kernel.</summary>
    public SoftmaxStatsLauncher(Accelerator accelerator, int groupSize)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        KernelLimits.CheckGroupSize(groupSize);
        _groupSize = groupSize;
        _kernel = KernelLoader.Load(accelerator, SoftmaxStatsKernel.Run,
            () => accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, RowArgs>(SoftmaxStatsKernel.Run));
    }

    /// <summary>output F32[T, 3], logits F32[T, V] contiguous.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> logits, int rows, int columns)
    {
        if (columns <= 0 || output.Length < 3L * rows || logits.Length < (long)rows * columns)
            throw new ArgumentException($"SoftmaxStats: output {output.Length}, logits {logits.Length}: wrong for T={rows}, V={columns}");
        if (rows == 0) return;
        _kernel(stream, new KernelConfig(rows, _groupSize), output, logits, new RowArgs(columns, 0));
    }
}
