using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>Scalars of <see cref="RopeKernel"/>.</summary>
public readonly struct RopeArgs
{
    /// <summary>Creates the scalars.</summary>
    public RopeArgs(int tokens, int heads, int headDim, int rowStride)
    {
        Tokens = tokens;
        Heads = heads;
        HeadDim = headDim;
        RowStride = rowStride;
    }

    /// <summary>T.</summary>
    public readonly int Tokens;
    /// <summary>Heads rotated (from column 0).</summary>
    public readonly int Heads;
    /// <summary>Dh (even).</summary>
    public readonly int HeadDim;
    /// <summary>W, floats per row of x.</summary>
    public readonly int RowStride;
}

/// <summary>
/// Rotary embedding in place, rotate-half form: for head h and j &lt; Dh/2, angle = positions[t] · frequency[j],
/// (a, b) = (x[h·Dh + j], x[h·Dh + j + Dh/2]) becomes (a·cos − b·sin, a·sin + b·cos).
/// The frequencies 1/θ^(2j/Dh) come in as a table computed on the host with the host backend's float32 formula, so
/// both backends rotate by bit-identical angles; cos and sin are taken after an exact reduction of the angle to
/// [−π, π] (CUDA's fast sin/cos lose accuracy beyond that range).
/// </summary>
public static class RopeKernel
{
    // 2π = TwoPiHigh + TwoPiMiddle + TwoPiLow; the first two have ≤ 10 significant bits so k · part is exact for k < 2^14.
    private const float TwoPiHigh = 6.28125f;
    private const float TwoPiMiddle = 0.001934051513671875f;
    private const float TwoPiLow = 1.2556658930407139e-06f;
    private const float InverseTwoPi = 0.15915494f;

    /// <summary>(cos, sin) of an angle, reduced exactly to [−π, π] first.</summary>
    internal static (float Cos, float Sin) Rotation(float angle)
    {
        float turns = XMath.Floor(angle * InverseTwoPi + 0.5f);
        float reduced = angle - turns * TwoPiHigh;
        reduced -= turns * TwoPiMiddle;
        reduced -= turns * TwoPiLow;
        return (XMath.Cos(reduced), XMath.Sin(reduced));
    }

    /// <summary>
    /// One thread per (t, h, j). (A thread per (t, j) looping over the heads left a decode step with Dh/2 threads: 64 for
    /// a 7B layer, ~40 µs of one SM per layer on an H200.)
    /// </summary>
    /// <param name="index">(t · heads + h) · Dh/2 + j.</param>
    /// <param name="x">F32[T, W], rotated in place.</param>
    /// <param name="positions">I32[T].</param>
    /// <param name="frequencies">F32[Dh/2].</param>
    /// <param name="args">Shapes.</param>
    public static void Run(Index1D index, ArrayView<float> x, ArrayView<int> positions, ArrayView<float> frequencies, RopeArgs args)
    {
        int half = args.HeadDim / 2;
        if (index >= args.Tokens * args.Heads * half) return;
        int pair = index / half;
        int j = index - pair * half;
        int t = pair / args.Heads;
        int h = pair - t * args.Heads;
        var (cos, sin) = Rotation(positions[t] * frequencies[j]);
        long i = (long)t * args.RowStride + h * args.HeadDim + j;
        float a = x[i];
        float b = x[i + half];
        x[i] = a * cos - b * sin;
        x[i + half] = a * sin + b * cos;
    }
}

/// <summary>Launches <see cref="RopeKernel"/>; one instance per accelerator.</summary>
public sealed class RopeLauncher
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, RopeArgs> _kernel;

    /// <summary>Compiles and loads the kernel.</summary>
    public RopeLauncher(Accelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        _kernel = KernelLoader.Load(accelerator, RopeKernel.Run,
            () => accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, RopeArgs>(RopeKernel.Run));
    }

    /// <summary>x F32[T, W] contiguous, positions I32[T], frequencies (F32[Dh/2], computed on the host).</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> x, ArrayView<int> positions, ArrayView<float> frequencies, int tokens, int rowStride, int heads, int headDim)
    {
        if (headDim <= 0 || headDim % 2 != 0 || (long)heads * headDim > rowStride || x.Length < (long)tokens * rowStride
            || positions.Length < tokens || frequencies.Length < headDim / 2)
            throw new ArgumentException($"Rope: x {x.Length} floats (rows of {rowStride}), {positions.Length} positions, {frequencies.Length} frequencies: wrong for T={tokens}, {heads} heads of {headDim}");
        long total = (long)tokens * heads * (headDim / 2);
        if (total == 0) return;
        _kernel(stream, (int)total, x, positions, frequencies, new RopeArgs(tokens, heads, headDim, rowStride));
    }
}
