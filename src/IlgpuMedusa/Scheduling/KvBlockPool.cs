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
/// Sequences hold blocks through a <see cref="KvSequence"/>; blocks return to the pool when it is disposed. With prefix
/// caching (<see cref="PrefixCaching"/>) full blocks of known tokens stay cached after their sequences end and are shared
/// by sequences that start with the same tokens (<see cref="PrefixCache"/>); a block is free again when no sequence
/// holds it.
/// Not thread-safe: one scheduler loop owns it.
/// </summary>
public sealed class KvBlockPool : IDisposable
{
    private readonly Stack<int> _free;
    private readonly int[] _holders; // sequences holding each block
    private readonly PrefixCache? _prefixes;
    private readonly int[] _peekBlocks;       // PeekCached's scratch (it runs at every admission check)
    private readonly long[] _peekIdentities;

    /// <summary>Allocates the cache on <paramref name="backend"/>; <paramref name="prefixCaching"/> keeps and shares blocks of known prefixes.</summary>
    public KvBlockPool(IComputeBackend backend, KvCacheLayout layout, long budgetBytes, bool prefixCaching = false)
    {
        if (layout.BlockCount <= 0 || layout.BlockSize <= 0)
            throw new ArgumentException($"KV pool needs at least one block of at least one slot, got {layout.BlockCount} x {layout.BlockSize}");
        Backend = backend;
        BudgetBytes = budgetBytes;
        Cache = backend.AllocateKvCache(layout);
        _free = new Stack<int>(Enumerable.Range(0, layout.BlockCount).Reverse());
        _holders = new int[layout.BlockCount];
        _prefixes = prefixCaching ? new PrefixCache(layout.BlockCount, layout.BlockSize) : null;
        _peekBlocks = prefixCaching ? new int[layout.BlockCount] : [];
        _peekIdentities = prefixCaching ? new long[layout.BlockCount] : [];
    }

    /// <summary>Sizes a pool from a byte budget: as many blocks as fit, with elements of <paramref name="elementType"/> (F32 or F16).</summary>
    public static KvBlockPool FromBudget(IComputeBackend backend, int layers, int kvHeads, int headDim, int blockSize, long budgetBytes,
        DType elementType = DType.F32, bool prefixCaching = false)
    {
        var probe = new KvCacheLayout(layers, kvHeads, headDim, blockSize, 1, KvCacheLayout.CheckElementType(elementType, "KV block pool"));
        long blocks = budgetBytes / probe.BytesPerBlock;
        if (blocks < 1)
            throw new KvPoolExhaustedException(
                $"KV budget of {Megabytes(budgetBytes)} is smaller than one block of {blockSize} tokens ({Megabytes(probe.BytesPerBlock)}).");
        try
        {
            return new KvBlockPool(backend, probe with { BlockCount = (int)Math.Min(blocks, int.MaxValue) }, budgetBytes, prefixCaching);
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
    /// <summary>Blocks not held by any sequence (those keeping a cached prefix included: the pool takes them when it needs to).</summary>
    public int FreeBlocks => _free.Count + (_prefixes?.Released ?? 0);
    /// <summary>Free blocks that keep a cached prefix for later sequences (0 without prefix caching).</summary>
    public int CachedBlocks => _prefixes?.Released ?? 0;
    /// <summary>True when full blocks of known tokens are kept and shared (<see cref="KvSequence.AttachCachedPrefix"/>).</summary>
    public bool PrefixCaching => _prefixes is not null;
    /// <summary>Prompt tokens looked up in the prefix cache so far (<see cref="KvSequence.AttachCachedPrefix"/>).</summary>
    public long PrefixQueryTokens { get; private set; }
    /// <summary>Of <see cref="PrefixQueryTokens"/>, those found cached (their KV was not computed again).</summary>
    public long PrefixHitTokens { get; private set; }
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
        // A block never used (or whose prefix was evicted) first; else the cached prefix released longest ago is forgotten.
        if (!_free.TryPop(out int block) && _prefixes?.TryEvict(out block) != true)
            throw new KvPoolExhaustedException(
                $"KV block pool exhausted: a sequence needs {wantedTotal} blocks and holds {held}, but all {BlockCount} blocks " +
                $"(budget {Megabytes(BudgetBytes)}) are in use.");
        _holders[block] = 1;
        return block;
    }

    /// <summary>One more sequence holds cached <paramref name="block"/>.</summary>
    internal void Hold(int block)
    {
        if (_holders[block]++ == 0) _prefixes!.Hold(block);
    }

    internal void Return(int block)
    {
        if (_holders[block] <= 0) throw new InvalidOperationException($"KV block {block} was returned to the pool more often than taken");
        if (--_holders[block] > 0) return;
        if (_prefixes?.Release(block) == false) return; // stays cached
        _free.Push(block);
    }

    /// <summary>
    /// The longest run of cached full blocks that starts <paramref name="tokens"/>, leaving at least
    /// <paramref name="keep"/> tokens uncached; the identity of the prefix each block ends goes to
    /// <paramref name="identities"/>. Counts the lookup in <see cref="PrefixQueryTokens"/> and <see cref="PrefixHitTokens"/>.
    /// </summary>
    internal int FindCached(ReadOnlySpan<int> tokens, int keep, Span<int> blocks, Span<long> identities)
    {
        if (_prefixes is null) return 0;
        int found = Walk(tokens, keep, blocks, identities);
        PrefixQueryTokens += tokens.Length;
        PrefixHitTokens += (long)found * BlockSize;
        return found;
    }

    /// <summary>The cached run of full blocks starting <paramref name="tokens"/> (at most blocks.Length), uncounted.</summary>
    private int Walk(ReadOnlySpan<int> tokens, int keep, Span<int> blocks, Span<long> identities)
    {
        int found = 0;
        long parent = PrefixCache.Root;
        int limit = Math.Min(blocks.Length, Math.Max(0, tokens.Length - keep) / BlockSize);
        while (found < limit && _prefixes!.TryFind(parent, tokens.Slice(found * BlockSize, BlockSize), out int block, out parent))
        {
            blocks[found] = block;
            identities[found] = parent;
            found++;
        }
        return found;
    }

    /// <summary>
    /// Like <see cref="FindCached"/> without taking anything or counting: how many leading full blocks of
    /// <paramref name="tokens"/> are cached (leaving <paramref name="keep"/> tokens), and how many of those no sequence
    /// holds (they count as free now, and would not once taken).
    /// </summary>
    internal (int Found, int Released) PeekCached(ReadOnlySpan<int> tokens, int keep, int maxBlocks)
    {
        if (_prefixes is null) return (0, 0);
        int found = Walk(tokens, keep, _peekBlocks.AsSpan(0, Math.Min(maxBlocks, BlockCount)), _peekIdentities);
        int released = 0;
        foreach (int block in _peekBlocks.AsSpan(0, found))
            if (_prefixes.IsReleased(block)) released++;
        return (found, released);
    }

    /// <summary>Indexes a sequence's full <paramref name="block"/> (see <see cref="PrefixCache.Add"/>).</summary>
    internal long AddCached(int block, long parent, ReadOnlySpan<int> tokens)
    {
        long identity = _prefixes!.Add(block, parent, tokens, out int freed);
        if (freed >= 0) _free.Push(freed); // an unheld older copy gave its place to this held one
        return identity;
    }

    /// <summary>
    /// Forgets every cached prefix that no sequence holds (a cold cache, as for a benchmark's baseline). Not safe while a
    /// scheduler runs on this pool: use <see cref="Generation.InferenceEngine.ClearPrefixCache"/> there.
    /// </summary>
    internal void ClearPrefixCache()
    {
        if (_prefixes is null) return;
        foreach (int block in _prefixes.Clear()) _free.Push(block);
    }

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
    private int _indexed;          // leading blocks known to the prefix cache (taken from it or added to it)
    private long _prefixIdentity;  // the identity of the prefix those blocks end

    internal KvSequence(KvBlockPool pool, int maxBlocks)
    {
        _pool = pool;
        _table = new int[maxBlocks];
        DeviceBlockTable = pool.Backend.Allocate(Models.DType.I32, 1, Math.Max(maxBlocks, 1));
    }

    /// <summary>Blocks held.</summary>
    public int BlockCount { get; private set; }
    /// <summary>Leading blocks the prefix cache knows: taken from it, or offered to it (<see cref="OfferCachedBlocks"/>).</summary>
    internal int IndexedBlocks => _indexed;
    /// <summary>Positions the held blocks can store.</summary>
    public int Capacity => BlockCount * _pool.BlockSize;
    /// <summary>Most positions this sequence may ever use.</summary>
    public int MaxTokens => _table.Length * _pool.BlockSize;
    /// <summary>The pool's cache.</summary>
    public KvCache Cache => _pool.Cache;
    /// <summary>The block table on the device, I32[1, max blocks]; entries past <see cref="BlockCount"/> are unused.</summary>
    public DeviceTensor DeviceBlockTable { get; }

    /// <summary>
    /// Before any other block is taken: takes the cached blocks that hold the longest run of full blocks starting
    /// <paramref name="tokens"/>, leaving at least one token to compute (the forward that gives the next token's logits).
    /// Returns the positions now in the cache (a multiple of the block size; 0 without prefix caching).
    /// </summary>
    internal int AttachCachedPrefix(ReadOnlySpan<int> tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (BlockCount != 0) throw new InvalidOperationException("a cached prefix is attached before the sequence takes any block");
        if (!_pool.PrefixCaching) return 0;
        Span<long> identities = _table.Length <= 256 ? stackalloc long[_table.Length] : new long[_table.Length];
        int found = _pool.FindCached(tokens, keep: 1, _table, identities);
        for (int i = 0; i < found; i++) _pool.Hold(_table[i]);
        BlockCount = _indexed = found;
        _prefixIdentity = found > 0 ? identities[found - 1] : PrefixCache.Root;
        _dirty |= found > 0;
        return found * _pool.BlockSize;
    }

    /// <summary>
    /// Offers this sequence's full blocks to the prefix cache: positions [0, <paramref name="cached"/>) are in the cache and
    /// hold <paramref name="tokens"/>[0, cached) (the caller's word; only blocks wholly below both are offered). Such a
    /// block is never written again. Does nothing without prefix caching.
    /// </summary>
    internal void OfferCachedBlocks(ReadOnlySpan<int> tokens, int cached)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!_pool.PrefixCaching) return;
        int full = Math.Min(Math.Min(cached, tokens.Length) / _pool.BlockSize, BlockCount);
        int b = _pool.BlockSize;
        for (; _indexed < full; _indexed++)
            _prefixIdentity = _pool.AddCached(_table[_indexed], _prefixIdentity, tokens.Slice(_indexed * b, b));
    }

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
        // Last block first: among cached prefixes released together the pool then evicts tails before heads.
        for (int i = BlockCount - 1; i >= 0; i--) _pool.Return(_table[i]);
        BlockCount = 0;
        DeviceBlockTable.Dispose();
    }
}
