using IlgpuMedusa.Compute;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Scheduling;

/// <summary>Raised when the KV block pool cannot hold what a sequence asks for.</summary>
public sealed class KvPoolExhaustedException : InvalidOperationException
{
    /// <summary>Creates the exception.</summary>
    public KvPoolExhaustedException(string message) : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public KvPoolExhaustedException()
    {
    }

    /// <summary>Creates the exception.</summary>
    public KvPoolExhaustedException(string message, Exception inner) : base(message, inner)
    {
    }
}

/// <summary>
/// The KV cache of every sequence: one device allocation cut into blocks of B token slots (paged, like vLLM).
/// Sequences hold blocks through a <see cref="KvSequence"/>; blocks return to the pool when it is disposed.
/// Not thread-safe: one scheduler loop owns it.
/// </summary>
public sealed class KvBlockPool : IDisposable
{
    private readonly Stack<int> _free;

    /// <summary>Allocates the cache on <paramref name="backend"/>.</summary>
    public KvBlockPool(IComputeBackend backend, KvCacheLayout layout, long budgetBytes)
    {
        if (layout.BlockCount <= 0 || layout.BlockSize <= 0)
            throw new ArgumentException($"KV pool needs at least one block of at least one slot, got {layout.BlockCount} x {layout.BlockSize}");
        Backend = backend;
        BudgetBytes = budgetBytes;
        Cache = backend.AllocateKvCache(layout);
        _free = new Stack<int>(Enumerable.Range(0, layout.BlockCount).Reverse());
    }

    /// <summary>Sizes a pool from a byte budget: as many blocks as fit, with elements of <paramref name="elementType"/> (F32 or F16).</summary>
    public static KvBlockPool FromBudget(IComputeBackend backend, int layers, int kvHeads, int headDim, int blockSize, long budgetBytes,
        DType elementType = DType.F32)
    {
        var probe = new KvCacheLayout(layers, kvHeads, headDim, blockSize, 1, KvCacheLayout.CheckElementType(elementType, "KV block pool"));
        long blocks = budgetBytes / probe.BytesPerBlock;
        if (blocks < 1)
            throw new KvPoolExhaustedException(
                $"KV budget of {Megabytes(budgetBytes)} is smaller than one block of {blockSize} tokens ({Megabytes(probe.BytesPerBlock)}).");
        try
        {
            return new KvBlockPool(backend, probe with { BlockCount = (int)Math.Min(blocks, int.MaxValue) }, budgetBytes);
        }
        catch (OutOfMemoryException e)
        {
            throw new KvPoolExhaustedException(
                $"the KV cache of {Megabytes(budgetBytes)} ({blocks} blocks of {blockSize} tokens) does not fit in the memory of {backend.Kind}: lower the KV budget (--kv-budget-mb, KvBudgetMb).", e);
        }
    }

    internal static string Megabytes(long bytes) => $"{bytes / (1024.0 * 1024.0):0.##} MiB";

    /// <summary>The backend holding the cache.</summary>
    public IComputeBackend Backend { get; }
    /// <summary>The device cache.</summary>
    public KvCache Cache { get; }
    /// <summary>The shape of the cache.</summary>
    public KvCacheLayout Layout => Cache.Layout;
    /// <summary>The byte budget the pool was sized from.</summary>
    public long BudgetBytes { get; }
    /// <summary>Token slots per block.</summary>
    public int BlockSize => Layout.BlockSize;
    /// <summary>Number of blocks.</summary>
    public int BlockCount => Layout.BlockCount;
    /// <summary>Blocks not held by any sequence.</summary>
    public int FreeBlocks => _free.Count;
    /// <summary>Token capacity of the whole pool.</summary>
    public long TokenCapacity => (long)BlockCount * BlockSize;

    /// <summary>Starts a sequence holding no blocks; it may grow to <paramref name="maxTokens"/> positions.</summary>
    public KvSequence CreateSequence(int maxTokens)
    {
        int maxBlocks = BlocksFor(maxTokens);
        if (maxBlocks > BlockCount)
            throw new KvPoolExhaustedException(
                $"a sequence of {maxTokens} tokens needs {maxBlocks} KV blocks of {BlockSize}, but the pool has only {BlockCount} " +
                $"(budget {Megabytes(BudgetBytes)}, {Megabytes(Layout.BytesPerBlock)} per block). Raise the KV budget or shorten the context.");
        return new KvSequence(this, maxBlocks);
    }

    /// <summary>Blocks needed for <paramref name="tokens"/> positions.</summary>
    public int BlocksFor(int tokens) => (tokens + BlockSize - 1) / BlockSize;

    internal int Take(int wantedTotal, int held)
    {
        if (_free.Count == 0)
            throw new KvPoolExhaustedException(
                $"KV block pool exhausted: a sequence needs {wantedTotal} blocks and holds {held}, but all {BlockCount} blocks " +
                $"(budget {Megabytes(BudgetBytes)}) are in use.");
        return _free.Pop();
    }

    internal void Return(int block) => _free.Push(block);

    /// <summary>Frees the device cache.</summary>
    public void Dispose() => Cache.Dispose();
}

/// <summary>
/// One sequence's share of the pool: its block table (host copy and device copy) and how many positions it may use.
/// Dispose returns its blocks to the pool.
/// </summary>
public sealed class KvSequence : IDisposable
{
    private readonly KvBlockPool _pool;
    private readonly int[] _table;
    private bool _dirty;

    internal KvSequence(KvBlockPool pool, int maxBlocks)
    {
        _pool = pool;
        _table = new int[maxBlocks];
        DeviceBlockTable = pool.Backend.Allocate(Models.DType.I32, 1, Math.Max(maxBlocks, 1));
    }

    /// <summary>Blocks held.</summary>
    public int BlockCount { get; private set; }
    /// <summary>Positions the held blocks can store.</summary>
    public int Capacity => BlockCount * _pool.BlockSize;
    /// <summary>Most positions this sequence may ever use.</summary>
    public int MaxTokens => _table.Length * _pool.BlockSize;
    /// <summary>The pool's cache.</summary>
    public KvCache Cache => _pool.Cache;
    /// <summary>The block table on the device, I32[1, max blocks]; entries past <see cref="BlockCount"/> are unused.</summary>
    public DeviceTensor DeviceBlockTable { get; }

    /// <summary>Makes sure positions [0, tokens) have blocks, taking more from the pool if needed.</summary>
    public void EnsureCapacity(int tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (tokens > MaxTokens)
            throw new KvPoolExhaustedException($"sequence needs {tokens} KV positions but was created for at most {MaxTokens}");
        int needed = _pool.BlocksFor(tokens);
        while (BlockCount < needed)
        {
            _table[BlockCount] = _pool.Take(needed, BlockCount);
            BlockCount++;
            _dirty = true;
        }
    }

    /// <summary>Uploads the block table if blocks were added since the last upload.</summary>
    public void SyncBlockTable()
    {
        if (!_dirty) return;
        _pool.Backend.Upload(DeviceBlockTable, _table);
        _dirty = false;
    }

    /// <summary>The physical slot of a logical position (tests, debugging).</summary>
    public int PhysicalSlot(int position) => _table[position / _pool.BlockSize] * _pool.BlockSize + position % _pool.BlockSize;

    private bool _disposed;

    /// <summary>Returns every block to the pool.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        for (int i = 0; i < BlockCount; i++) _pool.Return(_table[i]);
        BlockCount = 0;
        DeviceBlockTable.Dispose();
    }
}
