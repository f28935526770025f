using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>Scalars of <see cref="SiluResidualKernel"/>.</summary>
public readonly struct SiluResidualArgs
{
    /// <summary>Creates the scalars.</summary>
    public SiluResidualArgs(int rows, int width, bool biasPerRow = false)
    {
        Rows = rows;
        Width = width;
        BiasPerRow = biasPerRow ? 1 : 0;
    }

    /// <summary>R.</summary>
    public readonly int Rows;
    /// <summary>D.</summary>
    public readonly int Width;
    /// <summary>1: bias F32[R, D], a row per output row; 0: bias F32[D] for every row.</summary>
    public readonly int BiasPerRow;
}

/// <summary>
/// The second half of a Medusa ResBlock: output[r, i] = input[r, i] + silu(linear[r, i] + bias[i]) (bias[r, i] with a bias
/// per row: several heads' ResBlocks at once),
/// silu(z) = z · 1/(1 + e^−z). Output may be the input (each thread reads its element before writing it).
/// </summary>
public static class SiluResidualKernel
{
    /// <summary>One thread per output element.</summary>
    /// <param name="index">r · D + i.</param>
    /// <param name="output">F32[R, D].</param>
    /// <param name="input">F32[R, D].</param>
    /// <param name="linear">F32[R, D], the ResBlock's W·x.</param>
    /// <param name="bias">F32[D], or F32[R, D] (args.BiasPerRow).</param>
    /// <param name="args">Shapes.</param>
    public static void Run(Index1D index, ArrayView<float> output, ArrayView<float> input, ArrayView<float> linear, ArrayView<float> bias, SiluResidualArgs args)
    {
        if (index >= args.Rows * args.Width) return;
        int i = args.BiasPerRow != 0 ? (int)index : index - index / args.Width * args.Width;
        float z = linear[index] + bias[i];
        output[index] = input[index] + z / (1f + XMath.Exp(-z));
    }
}

/// <summary>Launches <see cref="SiluResidualKernel"/>; one instance per accelerator.</summary>
public sealed class SiluResidualLauncher
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, SiluResidualArgs> _kernel;

    /// <summary>Compiles and loads the kernel.</summary>
    public SiluResidualLauncher(Accelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        _kernel = KernelLoader.Load(accelerator, SiluResidualKernel.Run,
            () => accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, SiluResidualArgs>(SiluResidualKernel.Run));
    }

    /// <summary>output, input, linear F32[R, D] contiguous; bias F32[D], or F32[R, D] with <paramref name="biasPerRow"/>.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> input, ArrayView<float> linear, ArrayView<float> bias, int rows, int width, bool biasPerRow = false)
    {
        long total = (long)rows * width;
        if (output.Length < total || input.Length < total || linear.Length < total || bias.Length < (biasPerRow ? total : width))
            throw new ArgumentException($"SiluResidual: buffers too small for R={rows}, D={width}");
        if (total == 0) return;
        _kernel(stream, (int)total, output, input, linear, bias, new SiluResidualArgs(rows, width, biasPerRow));
    }
}
