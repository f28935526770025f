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
    /// <summary>Floats per plane (slots · KvDim).</summary>
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
    /// <param name="cache">The whole cache F32[2L planes, slots, KvDim].</param>
    /// <param name="blockTable">I32[blocks].</param>
    /// <param name="sources">I32[n], logical positions, increasing.</param>
    /// <param name="args">Shapes.</param>
    public static void Run(Index1D index, ArrayView<float> cache, ArrayView<int> blockTable, ArrayView<int> sources, KvCompactArgs args)
    {
        if (index >= args.Planes * args.KvDim) return;
        int plane = index / args.KvDim;
        int c = index - plane * args.KvDim;
        long column = plane * args.PlaneLength + c;
        for (int i = 0; i < args.Count; i++)
        {
            int from = sources[i];
            int to = args.DestinationStart + i;
            if (from == to) continue;
            long fromSlot = (long)blockTable[from / args.BlockSize] * args.BlockSize + from % args.BlockSize;
            long toSlot = (long)blockTable[to / args.BlockSize] * args.BlockSize + to % args.BlockSize;
            cache[column + toSlot * args.KvDim] = cache[column + fromSlot * args.KvDim];
        }
    }
}

/// <summary>Launches <see cref="KvCompactKernel"/>; one instance per accelerator.</summary>
public sealed class KvCompactLauncher
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, KvCompactArgs> _kernel;

    /// <summary>Compiles and loads the kernel.</summary>
    public KvCompactLauncher(Accelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        _kernel = KernelLoader.Load(accelerator, KvCompactKernel.Run,
            () => accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, KvCompactArgs>(KvCompactKernel.Run));
    }

    /// <summary>cache: all planes; sources I32[n].</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> cache, ArrayView<int> blockTable, ArrayView<int> sources, in KvCompactArgs args)
    {
        if (cache.Length < args.Planes * args.PlaneLength || sources.Length < args.Count
            || (long)blockTable.Length * args.BlockSize < (long)args.DestinationStart + args.Count)
            throw new ArgumentException($"KvCompact: cache {cache.Length} floats ({args.Planes} planes of {args.PlaneLength}), {sources.Length} sources, " +
                $"block table of {blockTable.Length} × {args.BlockSize}: wrong for {args.Count} positions to {args.DestinationStart}");
        long total = (long)args.Planes * args.KvDim;
        if (total == 0 || args.Count == 0) return;
        _kernel(stream, (int)total, cache, blockTable, sources, args);
    }
}
