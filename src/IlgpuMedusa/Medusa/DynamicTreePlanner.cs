namespace IlgpuMedusa.Medusa;

/// <summary>
/// Plans the tree of a <c>dynamic-N</c> step from the heads' confidence at that step. Each head's top-k logits are turned
/// into probabilities (a softmax over those k), a path's score is the product of its nodes' probabilities (the chance
/// that every guess on it is right if the heads' errors were independent), and the N − 1 paths of highest score become the
/// tree. Scores only fall along a path, so those paths always include their prefixes, and the set is the best tree of N
/// nodes under that model. When head 0 is sure the tree runs deep; when it hesitates it spreads over its alternatives.
/// With a probability floor P (<c>dynamic-N-P</c>) paths less likely than P are left out, so an unsure step verifies
/// fewer nodes: on a CPU, where every node costs compute, a node is worth adding only when it is likely enough to be
/// accepted.
/// (On the demo model's benchmark that floor measured level with fixed sizes.) Measured on the demo model (20 benchmark
/// prompts, shipped heads): 2.07 accepted tokens per step at 4 nodes against 2.01 for the best fixed tree of 4, 2.34 at 8
/// against 2.25.
/// Topologies are compiled once per distinct shape and reused (a step's tree is usually one of a few shapes).
/// </summary>
public sealed class DynamicTreePlanner
{
    private const int CacheLimit = 4096;
    private readonly int _nodes, _depth, _topK;
    private readonly float _minProbability;
    private readonly string _name;
    private readonly Dictionary<string, TreeTopology> _cache = new(StringComparer.Ordinal);
    private readonly Dictionary<string, TreeTopology>.AlternateLookup<ReadOnlySpan<char>> _lookup;
    private readonly PriorityQueue<Candidate, (float Score, long Order)> _queue = new(Comparer<(float Score, long Order)>.Create(
        (a, b) => a.Score != b.Score ? b.Score.CompareTo(a.Score) : a.Order.CompareTo(b.Order)));
    private readonly List<int[]> _chosen = [];
    private char[] _key = new char[64];

    private readonly record struct Candidate(int[] Path, float ParentScore, float Score);

    /// <summary>
    /// Plans trees of <paramref name="nodes"/> nodes (root included) at most <paramref name="depth"/> deep from
    /// top-<paramref name="topK"/> lists; with <paramref name="minProbability"/> &gt; 0, of fewer nodes when the next
    /// best path is less likely than that (never fewer than two: the root and head 0's best guess).
    /// </summary>
    public DynamicTreePlanner(string name, int nodes, int depth, int topK, float minProbability = 0)
    {
        if (!(minProbability >= 0 && minProbability < 1))
            throw new ArgumentOutOfRangeException(nameof(minProbability), $"a probability floor in [0, 1), got {minProbability}");
        _minProbability = minProbability;
        if (nodes < 2) throw new ArgumentOutOfRangeException(nameof(nodes), $"a dynamic tree needs at least 2 nodes, got {nodes}");
        if (depth < 1) throw new ArgumentOutOfRangeException(nameof(depth), $"a dynamic tree needs at least one head, got depth {depth}");
        if (topK < 1) throw new ArgumentOutOfRangeException(nameof(topK), $"top-k must be at least 1, got {topK}");
        _lookup = _cache.GetAlternateLookup<ReadOnlySpan<char>>();
        _name = name;
        _nodes = nodes;
        _depth = depth;
        _topK = topK;
    }

    /// <summary>
    /// Probabilities [head · topK + rank] of each head's ranked guesses from their logits [head · topK + rank]: a softmax over
    /// each head's top-k (written into <paramref name="probabilities"/>).
    /// </summary>
    public static void Probabilities(ReadOnlySpan<float> topLogits, int topK, Span<float> probabilities)
    {
        if (topLogits.Length % topK != 0 || probabilities.Length < topLogits.Length)
            throw new ArgumentException($"top logits of {topLogits.Length} values do not hold whole top-{topK} lists, or the output is shorter");
        for (int head = 0; head * topK < topLogits.Length; head++)
        {
            var logits = topLogits.Slice(head * topK, topK);
            var p = probabilities.Slice(head * topK, topK);
            float max = float.NegativeInfinity;
            foreach (float v in logits) if (v > max) max = v;
            double sum = 0;
            for (int r = 0; r < topK; r++)
            {
                double e = float.IsFinite(logits[r]) && float.IsFinite(max) ? Math.Exp(logits[r] - max) : 0;
                p[r] = (float)e;
                sum += e;
            }
            for (int r = 0; r < topK; r++) p[r] = sum > 0 ? (float)(p[r] / sum) : (r == 0 ? 1 : 0);
        }
    }

    private void Push(int[] path, float parentScore, ReadOnlySpan<float> probabilities, ref long order)
    {
        float p = probabilities[(path.Length - 1) * _topK + path[^1]];
        float score = parentScore * (p >= 0 ? p : 0); // NaN counts as 0
        _queue.Enqueue(new Candidate(path, parentScore, score), (score, order++));
    }

    /// <summary>
    /// The tree for probabilities [head · topK + rank] (rank 0 most likely; at least <c>depth</c> heads): the N − 1 paths of
    /// highest score, ties to the path found first.
    /// </summary>
    public TreeTopology Plan(ReadOnlySpan<float> probabilities)
    {
        if (probabilities.Length < _depth * _topK)
            throw new ArgumentException($"{_name}: needs top-{_topK} probabilities of {_depth} heads, got {probabilities.Length} values");
        _queue.Clear();
        _chosen.Clear();
        long order = 0;
        Push([0], 1f, probabilities, ref order);
        while (_chosen.Count < _nodes - 1 && _queue.TryPeek(out _, out var best) && (_chosen.Count == 0 || best.Score >= _minProbability))
        {
            var c = _queue.Dequeue();
            _chosen.Add(c.Path);
            int rank = c.Path[^1];
            if (rank + 1 < _topK)
            {
                // next sibling: same parent, next-ranked guess of the same head
                var sibling = (int[])c.Path.Clone();
                sibling[^1] = rank + 1;
                Push(sibling, c.ParentScore, probabilities, ref order);
            }
            if (c.Path.Length < _depth) Push([.. c.Path, 0], c.Score, probabilities, ref order); // first child: the next head's best guess
        }
        _chosen.Sort(TreeTopology.ComparePaths); // the order Compile gives them, so one shape has one key
        // The shape's key, "r,r,;r,;" per path, looked up without making a string (only a new shape stores one).
        int length = 0;
        foreach (var path in _chosen)
        {
            foreach (int r in path)
            {
                if (_key.Length - length < 12) Array.Resize(ref _key, 2 * _key.Length);
                r.TryFormat(_key.AsSpan(length), out int written, default, System.Globalization.CultureInfo.InvariantCulture);
                length += written;
                _key[length++] = ',';
            }
            if (_key.Length - length < 1) Array.Resize(ref _key, 2 * _key.Length);
            _key[length++] = ';';
        }
        var key = _key.AsSpan(0, length);
        if (_lookup.TryGetValue(key, out var topology)) return topology;
        if (_cache.Count >= CacheLimit) _cache.Clear();
        topology = TreeTopology.Compile(_name, _chosen, _depth, _topK);
        _cache[key.ToString()] = topology;
        return topology;
    }
}
