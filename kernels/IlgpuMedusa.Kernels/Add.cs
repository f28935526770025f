using ILGPU;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>Scalars of <see cref="AddKernel"/>.</summary>
public readonly struct AddArgs
{
    /// <summary>Creates the scalars.</summary>
    public AddArgs(int length, int bLength)
    {
        Length = length;
        BLength = bLength;
    }

    /// <summary>n, elements.</summary>
    public readonly int Length;
    /// <summary>Elements of b: n, or a row length that divides n (b is then repeated: one row added to every row).</summary>
    public readonly int BLength;
}

/// <summary>Elementwise sum: output = a + b, where b may be one row added to every row of a.</summary>
public static class AddKernel
{
    /// <summary>One thread per element.</summary>
    /// <param name="index">Element.</param>
    /// <param name="output">F32[n] (may be a or b).</param>
    /// <param name="a">F32[n].</param>
    /// <param name="b">F32[n], or F32[m] with m dividing n.</param>
    /// <param name="args">n and m.</param>
    public static void Run(Index1D index, ArrayView<float> output, ArrayView<float> a, ArrayView<float> b, AddArgs args)
    {
        if (index >= args.Length) return;
        output[index] = a[index] + b[index - index / args.BLength * args.BLength];
    }
}

/// <summary>Launches <see cref="AddKernel"/>; one instance per accelerator.</summary>
public sealed class AddLauncher
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, AddArgs> _kernel;

    /// <summary>Compiles and loads the kernel.</summary>
    public AddLauncher(Accelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        _kernel = KernelLoader.Load(accelerator, AddKernel.Run,
            () => accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, AddArgs>(AddKernel.Run));
    }

    /// <summary>
    /// output = a + b over <paramref name="length"/> floats; b has <paramref name="bLength"/> of them (default: as many),
    /// repeated when fewer (it must divide the length).
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> output, ArrayView<float> a, ArrayView<float> b, int length, int? bLength = null)
    {
        int m = bLength ?? length;
        bool repeats = m > 0 ? length % m == 0 : length == 0;
        if (output.Length < length || a.Length < length || b.Length < m || !repeats)
            throw new ArgumentException($"Add: views of {output.Length}, {a.Length}, {b.Length} floats: wrong for {length} elements plus {m} repeated");
        if (length == 0) return;
        _kernel(stream, length, output, a, b, new AddArgs(length, m));
    }
}
