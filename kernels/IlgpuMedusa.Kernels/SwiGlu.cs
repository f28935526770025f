using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>Scalars of <see cref="SwiGluKernel"/>.</summary>
public readonly struct SwiGluArgs
{
    /// <summary>Creates the scalars.</summary>
    public SwiGluArgs(int tokens, int width)
    {
        Tokens = tokens;
        Width = width;
    }

    /// <summary>T.</summary>
    public readonly int Tokens;
    /// <summary>F.</summary>
    public readonly int Width;
}

/// <summary>SwiGLU: output[t, i] = silu(g) · u with g = gateUp[t, i], u = gateUp[t, F + i], silu(g) = g · 1/(1 + e^−g).</summary>
public static class SwiGluKernel
{
    /// <summary>One thread per output element.</summary>
    /// <param name="index">t · F + i.</param>
    /// <param name="output">F32[T, F].</param>
    /// <param name="gateUp">F32[T, 2F].</param>
    /// <param name="args">Shapes.</param>
    public static void Run(Index1D index, ArrayView<float> output, ArrayView<float> gateUp, SwiGluArgs args)
    {
        if (index >= args.Tokens * args.Width) return;
        int t = index / args.Width;
        int i = index - t * args.Width;
        long row = (long)t * 2 * args.Width;
        float g = gateUp[row + i];
        float u = gateUp[row + args.Width + i];
        float sigmoid = 1f / (1f + XMath.Exp(-g));
        output[index] = sigmoid * g * u;
    }

    /// <summary>
    /// The same on interleaved rows, gateUp[t] = g_0, u_0, g_1, u_1, ... (the output of a matmul with the interleaved
    /// gate/up weight of <see cref="MatMulLauncher.InterleaveGateUp"/>). One thread per output element.
    /// </summary>
    /// <param name="index">t · F + i.</param>
    /// <param name="output">F32[T, F].</param>
    /// <param name="gateUp">F32[T, 2F], pairs interleaved.</param>
    /// <param name="args">Shapes.</param>
    public static void RunPairs(Index1D index, ArrayView<float> output, ArrayView<float> gateUp, SwiGluArgs args)
    {
        if (index >= args.Tokens * args.Width) return;
        long at = 2L * index; // t·2F + 2i
        float g = gateUp[at];
        float u = gateUp[at + 1];
        output[index] = g / (1f + XMath.Exp(-g)) * u;
    }
}

/// <summary>Launches <see cref="SwiGluKernel"/>; one instance per accelerator.</summary>
public sealed class SwiGluLauncher
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, SwiGluArgs> _kernel;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, SwiGluArgs> _pairs;

    /// <summary>Compiles and loads the kernels (stacked and interleaved gate/up).</summary>
    public SwiGluLauncher(Accelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        _kernel = KernelLoader.Load(accelerator, SwiGluKernel.Run,
            () => accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, SwiGluArgs>(SwiGluKernel.Run));
        _pairs = KernelLoader.Load(accelerator, SwiGluKernel.RunPairs,
            () => accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, SwiGluArgs>(SwiGluKernel.RunPairs));
    }

    /// <summary>output F32[T, F], gateUp F32[T, 2F] (gate | up, or interleaved pairs with <paramref name="interleaved"/>), contiguous.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> gateUp, int tokens, int width, bool interleaved = false)
    {
        if (output.Length < (long)tokens * width || gateUp.Length < 2L * tokens * width)
            throw new ArgumentException($"SwiGlu: output {output.Length} / gateUp {gateUp.Length} floats too small for T={tokens}, F={width}");
        long total = (long)tokens * width;
        if (total == 0) return;
        (interleaved ? _pairs : _kernel)(stream, (int)total, output, gateUp, new SwiGluArgs(tokens, width));
    }
}
