using ILGPU;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels;

/// <summary>Scalars of <see cref="KvCompactKernel"/>.</summary>
public readonly struct KvCompactArgs
{
    /// <summary>Creates the scalars.</summary>
    public KvCompactArgs(int planes, long planeLength, int kvDim, int blockSize, int count, int destinationStart)
    {
        Planes = planes;
        PlaneLength = planeLength;
        KvDim = kvDim;
        BlockSize = blockSize;
        Count = count;
        DestinationStart = destinationStart;
    }

    /// <summary>2 · L: key and value plane of every layer.</summary>
    public readonly int Planes;
    /// <summary>Elements per plane (slots · KvDim).</summary>
    public readonly long PlaneLength;
    /// <summary>Hkv · Dh.</summary>
    public readonly int KvDim;
    /// <summary>B.</summary>
    public readonly int BlockSize;
    /// <summary>n, entries of sources.</summary>
    public readonly int Count;
    /// <summary>Logical position receiving sources[0].</summary>
    public readonly int DestinationStart;
}

/// <summary>
/// KV compaction after tree acceptance: logical position sources[i] is copied to destinationStart + i, for every layer,
/// keys and values. Race-free by construction: each thread owns one column (plane, c) of the whole cache and copies
/// i = 0, 1, ... in order, so with sources increasing and sources[i] ≥ destinationStart + i every read happens before
/// any write to that slot. Example [S+0, S+2, S+5] → S..S+2: i = 0 is in place; i = 1 reads S+2 and writes S+1;
/// i = 2 reads S+5 and writes S+2, which step 1 has already read.
/// </summary>
public static class KvCompactKernel
{
    /// <summary>One thread per column of the cache.</summary>
    /// <param name="index">plane · KvDim + c.</param>
    /// <param name="cache">The whole cache [2L planes, slots, KvDim]: elements copied as they are stored.</param>
    /// <param name="blockTable">I32[blocks].</param>
    /// <param name="sources">I32[n], logical positions, increasing.</param>
    /// <param name="args">Shapes.</param>
    public static void Run<TKv>(Index1D index, ArrayView<TKv> cache, ArrayView<int> blockTable, ArrayView<int> sources, KvCompactArgs args)
        where TKv : unmanaged
    {
        if (index >= args.Planes * args.KvDim) return;
        int plane = index / args.KvDim;
        int c = index - plane * args.KvDim;
        long column = plane * args.PlaneLength + c;
        long slots = args.PlaneLength / (args.KvDim > 0 ? args.KvDim : 1);
        for (int i = 0; i < args.Count; i++)
        {
            int from = sources[i];
            int to = args.DestinationStart + i;
            if (from == to) continue;
            long fromSlot = KvSlots.Slot(blockTable, from, args.BlockSize, slots);
            long toSlot = KvSlots.Slot(blockTable, to, args.BlockSize, slots);
            if (fromSlot < 0 || toSlot < 0) continue; // a table entry outside the cache: that move is dropped
            cache[column + toSlot * args.KvDim] = cache[column + fromSlot * args.KvDim];
        }
    }
}

/// <summary>Launches <see cref="KvCompactKernel"/>; one instance per accelerator.</summary>
public sealed class KvCompactLauncher
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, KvCompactArgs> _f32;
    private Action<AcceleratorStream, Index1D, ArrayView<ushort>, ArrayView<int>, ArrayView<int>, KvCompactArgs>? _f16;
    private readonly Accelerator _accelerator;

    /// <summary>Compiles and loads the kernel for 4-byte elements (the 2-byte one on first use).</summary>
    public KvCompactLauncher(Accelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        _accelerator = accelerator;
        _f32 = Load<float>(accelerator);
    }

    private static Action<AcceleratorStream, Index1D, ArrayView<TKv>, ArrayView<int>, ArrayView<int>, KvCompactArgs> Load<TKv>(Accelerator accelerator)
        where TKv : unmanaged
    {
        Action<Index1D, ArrayView<TKv>, ArrayView<int>, ArrayView<int>, KvCompactArgs> kernel = KvCompactKernel.Run<TKv>;
        return KernelLoader.Load(accelerator, kernel, () => accelerator.LoadAutoGroupedKernel(kernel));
    }

    /// <summary>Compiles the kernel for <paramref name="element"/> now (binary16: otherwise on first use).</summary>
    public void Prepare(KvElement element)
    {
        if (element == KvElement.F16) _f16 ??= Load<ushort>(_accelerator);
    }

    /// <summary>cache: all planes, as bytes, with elements of <paramref name="element"/>; sources I32[n].</summary>
    public void Launch(AcceleratorStream stream, KvElement element, ArrayView<byte> cache, ArrayView<int> blockTable, ArrayView<int> sources, in KvCompactArgs args)
    {
        long elements = cache.Length / KvPlanes.ElementBytes(element);
        if (elements < args.Planes * args.PlaneLength || sources.Length < args.Count
            || (long)blockTable.Length * args.BlockSize < (long)args.DestinationStart + args.Count)
            throw new ArgumentException($"KvCompact: cache of {elements} {element} elements ({args.Planes} planes of {args.PlaneLength}), {sources.Length} sources, " +
                $"block table of {blockTable.Length} × {args.BlockSize}: wrong for {args.Count} positions to {args.DestinationStart}");
        long total = (long)args.Planes * args.KvDim;
        if (total == 0 || args.Count == 0) return;
        if (element == KvElement.F32)
        {
            _f32(stream, (int)total, cache.Cast<float>(), blockTable, sources, args);
        }
        else
        {
            _f16 ??= Load<ushort>(_accelerator);
            _f16(stream, (int)total, cache.Cast<ushort>(), blockTable, sources, args);
        }
    }
}
