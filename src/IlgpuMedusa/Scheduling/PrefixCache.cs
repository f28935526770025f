namespace IlgpuMedusa.Scheduling;

/// <summary>
/// Automatic prefix caching: an index of KV blocks whose contents are known, so that a sequence starting with the same
/// tokens (a shared system prompt, the earlier turns of a chat, the prompt of another choice, a sequence recomputed after
/// preemption) takes those blocks instead of computing them again.
/// <para>
/// Only full blocks are indexed, and only once every position in them is in the cache: a block is then never written
/// again (sequences write at and after their committed length only), so any number of sequences may read it. A block is
/// keyed by its B tokens and by the identity of the block before it, which stands for the whole prefix; identities are
/// never reused, so a lookup compares tokens exactly and never trusts a hash. A block no sequence holds stays cached
/// (counted as free) until the pool needs it: then the least recently released one is taken (sequences release their
/// blocks last first, so a prefix's tail goes before its head).
/// </para>
/// <para>
/// Two sequences that computed the same prefix side by side hold two copies of its blocks ("twins"): the index keeps
/// one, and keeps whichever is held: a copy offered while the indexed one has no holder replaces it, and when the last
/// holder of an indexed block lets it go while a twin is still held, the twin takes its place. So a prefix that some
/// sequence holds stays findable, and the blocks after it (keyed by its identity) stay reachable.
/// </para>
/// Owned by one <see cref="KvBlockPool"/>; not thread-safe.
/// </summary>
internal sealed class PrefixCache
{
    /// <summary>The identity of the empty prefix, before a sequence's first block.</summary>
    public const long Root = 0;

    private readonly int _blockSize;
    private readonly Dictionary<Key, int> _blocks = [];
    private readonly Key?[] _keyOf;                        // per block: its key while it is indexed
    private readonly long[] _identity;                     // per block: its identity while it is indexed
    private readonly LinkedList<int> _released = new();     // indexed blocks no sequence holds, least recently released first
    private readonly LinkedListNode<int>?[] _releasedNode;
    private readonly Dictionary<int, List<int>> _twins = [];  // indexed block -> held, unindexed copies of it
    private readonly int[] _twinOf;                        // per block: the indexed block it copies, or -1
    private readonly int[] _probe;                         // a lookup's tokens (lookups do not allocate)
    private long _nextIdentity = Root + 1;

    public PrefixCache(int blockCount, int blockSize)
    {
        _blockSize = blockSize;
        _keyOf = new Key?[blockCount];
        _identity = new long[blockCount];
        _releasedNode = new LinkedListNode<int>?[blockCount];
        _twinOf = new int[blockCount];
        Array.Fill(_twinOf, -1);
        _probe = new int[blockSize];
    }

    /// <summary>Indexed blocks that no sequence holds (cached, yet free for the pool to take).</summary>
    public int Released => _released.Count;

    /// <summary>The indexed block holding <paramref name="tokens"/> (B of them) after the prefix <paramref name="parent"/>, if any.</summary>
    public bool TryFind(long parent, ReadOnlySpan<int> tokens, out int block, out long identity)
    {
        tokens.CopyTo(_probe);
        if (_blocks.TryGetValue(new Key(parent, _probe), out block))
        {
            identity = _identity[block];
            return true;
        }
        identity = Root;
        return false;
    }

    /// <summary>
    /// Indexes <paramref name="block"/> (held by the sequence offering it) as holding <paramref name="tokens"/> after
    /// <paramref name="parent"/> and returns the identity of the prefix it ends. When an indexed block already holds the
    /// same: if no sequence holds that one, <paramref name="block"/> replaces it under the same identity and the old one
    /// is returned in <paramref name="freed"/> for the free list; otherwise <paramref name="block"/> is kept as its twin.
    /// </summary>
    public long Add(int block, long parent, ReadOnlySpan<int> tokens, out int freed)
    {
        freed = -1;
        if (tokens.Length != _blockSize) throw new ArgumentException($"a cached block holds {_blockSize} tokens, got {tokens.Length}", nameof(tokens));
        if (_keyOf[block] is not null || _twinOf[block] >= 0) throw new InvalidOperationException($"KV block {block} is indexed already");
        var key = new Key(parent, tokens.ToArray());
        if (_blocks.TryGetValue(key, out int existing))
        {
            if (_releasedNode[existing] is null)
            {
                _twinOf[block] = existing;
                if (!_twins.TryGetValue(existing, out var list)) _twins[existing] = list = [];
                list.Add(block);
                return _identity[existing];
            }
            Hold(existing); // out of the LRU
            Replace(existing, block);
            freed = existing;
            return _identity[block];
        }
        _blocks.Add(key, block);
        _keyOf[block] = key;
        return _identity[block] = _nextIdentity++;
    }

    /// <summary>Moves the index entry of <paramref name="indexed"/> (not in the LRU) to <paramref name="copy"/>, identity and twins included.</summary>
    private void Replace(int indexed, int copy)
    {
        var key = _keyOf[indexed]!.Value;
        _blocks[key] = copy;
        _keyOf[copy] = key;
        _identity[copy] = _identity[indexed];
        _keyOf[indexed] = null;
        _identity[indexed] = Root;
        if (_twins.Remove(indexed, out var twins))
        {
            twins.Remove(copy);
            _twinOf[copy] = -1;
            foreach (int twin in twins) _twinOf[twin] = copy;
            if (twins.Count > 0) _twins[copy] = twins;
        }
    }

    /// <summary>True when <paramref name="block"/> is indexed.</summary>
    public bool IsIndexed(int block) => _keyOf[block] is not null;

    /// <summary>True when <paramref name="block"/> is indexed and no sequence holds it.</summary>
    public bool IsReleased(int block) => _releasedNode[block] is not null;

    /// <summary>A sequence took <paramref name="block"/> again: it is no longer free to evict.</summary>
    public void Hold(int block)
    {
        if (_releasedNode[block] is { } node)
        {
            _released.Remove(node);
            _releasedNode[block] = null;
        }
    }

    /// <summary>
    /// The last sequence holding <paramref name="block"/> let it go. An indexed block with a held twin hands its place to
    /// the twin and is free (true); an indexed block without stays cached until evicted (false); a twin leaves its twin
    /// list and is free (true); any other block is free (true).
    /// </summary>
    public bool Release(int block)
    {
        if (_twinOf[block] is int of and >= 0)
        {
            var list = _twins[of];
            list.Remove(block);
            if (list.Count == 0) _twins.Remove(of);
            _twinOf[block] = -1;
            return true;
        }
        if (_keyOf[block] is null) return true;
        if (_twins.TryGetValue(block, out var twins))
        {
            Replace(block, twins[0]);
            return true;
        }
        _releasedNode[block] = _released.AddLast(block);
        return false;
    }

    /// <summary>Takes the least recently released block out of the index (its contents are forgotten); false when none.</summary>
    public bool TryEvict(out int block)
    {
        if (_released.First is not { } node)
        {
            block = -1;
            return false;
        }
        block = node.Value;
        _released.RemoveFirst();
        _releasedNode[block] = null;
        _blocks.Remove(_keyOf[block]!.Value);
        _keyOf[block] = null;
        _identity[block] = Root;
        return true;
    }

    /// <summary>Forgets every released block (tests, and a caller that wants a cold cache); returns them for the free list.</summary>
    public List<int> Clear()
    {
        var freed = new List<int>(_released.Count);
        while (TryEvict(out int block)) freed.Add(block);
        return freed;
    }

    /// <summary>A block's contents: the prefix before it and its tokens, compared exactly.</summary>
    private readonly struct Key : IEquatable<Key>
    {
        private readonly long _parent;
        private readonly int[] _tokens;
        private readonly int _hash;

        public Key(long parent, int[] tokens)
        {
            _parent = parent;
            _tokens = tokens;
            var hash = new HashCode();
            hash.Add(parent);
            foreach (int token in tokens) hash.Add(token);
            _hash = hash.ToHashCode();
        }

        public bool Equals(Key other) => _parent == other._parent && _hash == other._hash && _tokens.AsSpan().SequenceEqual(other._tokens);
        public override bool Equals(object? obj) => obj is Key other && Equals(other);
        public override int GetHashCode() => _hash;
    }
}
