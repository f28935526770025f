using ILGPU;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>
/// Up to <see cref="Capacity"/> ints passed by value as a kernel parameter (<see cref="SmallWriteKernel"/>): a step's
/// token ids and positions, a small tree mask, a few KV compaction sources.
/// </summary>
public readonly struct SmallInts
{
    /// <summary>Most ints one launch carries.</summary>
    public const int Capacity = 32;

    /// <summary>Copies <paramref name="values"/> (at most <see cref="Capacity"/>).</summary>
    public SmallInts(ReadOnlySpan<int> values)
    {
        if (values.Length > Capacity)
            throw new ArgumentException($"SmallInts: at most {Capacity} values, got {values.Length}", nameof(values));
        Span<int> v = stackalloc int[Capacity];
        values.CopyTo(v);
        Count = values.Length;
        V0 = v[0]; V1 = v[1]; V2 = v[2]; V3 = v[3]; V4 = v[4]; V5 = v[5]; V6 = v[6]; V7 = v[7];
        V8 = v[8]; V9 = v[9]; V10 = v[10]; V11 = v[11]; V12 = v[12]; V13 = v[13]; V14 = v[14]; V15 = v[15];
        V16 = v[16]; V17 = v[17]; V18 = v[18]; V19 = v[19]; V20 = v[20]; V21 = v[21]; V22 = v[22]; V23 = v[23];
        V24 = v[24]; V25 = v[25]; V26 = v[26]; V27 = v[27]; V28 = v[28]; V29 = v[29]; V30 = v[30]; V31 = v[31];
    }

    /// <summary>Values carried.</summary>
    public readonly int Count;
    private readonly int V0, V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12, V13, V14, V15;
    private readonly int V16, V17, V18, V19, V20, V21, V22, V23, V24, V25, V26, V27, V28, V29, V30, V31;

    /// <summary>Value <paramref name="i"/> (0 ≤ i &lt; <see cref="Capacity"/>).</summary>
    public int Get(int i)
    {
        // Halving by bit keeps every lookup to five branches on a device.
        if (i < 16)
        {
            if (i < 8)
            {
                if (i < 4) return i < 2 ? (i == 0 ? V0 : V1) : (i == 2 ? V2 : V3);
                return i < 6 ? (i == 4 ? V4 : V5) : (i == 6 ? V6 : V7);
            }
            if (i < 12) return i < 10 ? (i == 8 ? V8 : V9) : (i == 10 ? V10 : V11);
            return i < 14 ? (i == 12 ? V12 : V13) : (i == 14 ? V14 : V15);
        }
        if (i < 24)
        {
            if (i < 20) return i < 18 ? (i == 16 ? V16 : V17) : (i == 18 ? V18 : V19);
            return i < 22 ? (i == 20 ? V20 : V21) : (i == 22 ? V22 : V23);
        }
        if (i < 28) return i < 26 ? (i == 24 ? V24 : V25) : (i == 26 ? V26 : V27);
        return i < 30 ? (i == 28 ? V28 : V29) : (i == 30 ? V30 : V31);
    }
}

/// <summary>
/// Writes a few ints carried in the launch itself into device memory. A copy from the host makes ILGPU wait for the
/// stream (the host blocks until the device has drained everything queued before it); a launch is queued like any other
/// op, so small per-step inputs reach the device without stopping it.
/// </summary>
public static class SmallWriteKernel
{
    /// <summary>One thread per value.</summary>
    /// <param name="index">Value.</param>
    /// <param name="target">I32[≥ n].</param>
    /// <param name="values">The n values.</param>
    public static void Run(Index1D index, ArrayView<int> target, SmallInts values)
    {
        if (index >= values.Count) return;
        target[index] = values.Get(index);
    }
}

/// <summary>Launches <see cref="SmallWriteKernel"/>; one instance per accelerator.</summary>
public sealed class SmallWriteLauncher
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<int>, SmallInts> _kernel;

    /// <summary>Compiles and loads the kernel.</summary>
    public SmallWriteLauncher(Accelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        _kernel = KernelLoader.Load(accelerator, SmallWriteKernel.Run,
            () => accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<int>, SmallInts>(SmallWriteKernel.Run));
    }

    /// <summary>target[0 .. n) = values (n ≤ <see cref="SmallInts.Capacity"/>), queued on the stream.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<int> target, ReadOnlySpan<int> values)
    {
        if (values.Length > SmallInts.Capacity || target.Length < values.Length)
            throw new ArgumentException($"SmallWrite: {values.Length} values (at most {SmallInts.Capacity}) into a view of {target.Length} ints");
        if (values.Length == 0) return;
        _kernel(stream, values.Length, target, new SmallInts(values));
    }
}

/// <summary>
/// output[i] = source[indices[i]], or map[source[indices[i]]] with a map, for a few indices carried in the launch: a Medusa
/// tree's tokens picked from the heads' top-k (shortlist columns mapped to token ids) without a trip through the host.
/// </summary>
public static class GatherIntsKernel
{
    /// <summary>One thread per output value.</summary>
    /// <param name="index">Output value.</param>
    /// <param name="output">I32[n].</param>
    /// <param name="source">I32, read at the given flat indices.</param>
    /// <param name="map">I32[m] (read only when <paramref name="useMap"/> is 1; a value outside it gives 0).</param>
    /// <param name="indices">The n flat indices into source.</param>
    /// <param name="useMap">1: map the values read.</param>
    public static void Run(Index1D index, ArrayView<int> output, ArrayView<int> source, ArrayView<int> map, SmallInts indices, int useMap)
    {
        if (index >= indices.Count) return;
        int value = source[indices.Get(index)];
        if (useMap != 0) value = value >= 0 && value < map.Length ? map[value] : 0;
        output[index] = value;
    }
}

/// <summary>Launches <see cref="GatherIntsKernel"/>; one instance per accelerator.</summary>
public sealed class GatherIntsLauncher
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<int>, ArrayView<int>, ArrayView<int>, SmallInts, int> _kernel;

    /// <summary>Compiles and loads the kernel.</summary>
    public GatherIntsLauncher(Accelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        _kernel = KernelLoader.Load(accelerator, GatherIntsKernel.Run,
            () => accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<int>, ArrayView<int>, ArrayView<int>, SmallInts, int>(GatherIntsKernel.Run));
    }

    /// <summary>output[i] = source[indices[i]] (through map when given), n ≤ <see cref="SmallInts.Capacity"/>, queued on the stream.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<int> output, ArrayView<int> source, ArrayView<int>? map, ReadOnlySpan<int> indices)
    {
        if (indices.Length > SmallInts.Capacity || output.Length < indices.Length)
            throw new ArgumentException($"GatherInts: {indices.Length} indices (at most {SmallInts.Capacity}) into an output of {output.Length} ints");
        foreach (int i in indices)
            if (i < 0 || i >= source.Length)
                throw new ArgumentOutOfRangeException(nameof(indices), $"GatherInts: index {i} outside a source of {source.Length} ints");
        if (indices.Length == 0) return;
        _kernel(stream, indices.Length, output, source, map ?? source, new SmallInts(indices), map is null ? 0 : 1);
    }
}
