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
