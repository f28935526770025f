using System.Text.Json;

namespace IlgpuMedusa.Medusa;

/// <summary>
/// A Medusa candidate tree compiled once from a list of paths (Medusa's <c>medusa_choices</c>). Each path names, per depth,
/// which of that head's top-k tokens to take: path [0, 2] is "head 0's best token, then head 1's third best".
/// Node 0 is the root (the base model's own next token); node n ≥ 1 is the n-th path after sorting paths by length, then
/// lexicographically, so every node comes after its parent.
/// Buffers (N = <see cref="NodeCount"/>):
/// <list type="bullet">
/// <item><see cref="Depths"/>[n]: 0 for the root; the node's RoPE position is S + depth.</item>
/// <item><see cref="Parents"/>[n]: the parent node (−1 for the root).</item>
/// <item><see cref="TopKIndices"/>[n]: which of head (depth − 1)'s top-k the node's token is (−1 for the root).</item>
/// <item><see cref="Mask"/>[n·N + m] = 1 when m is n or an ancestor of n (tree attention).</item>
/// <item><see cref="Paths"/>: node indices of every root-to-leaf path, root first.</item>
/// </list>
/// </summary>
public sealed class TreeTopology
{
    private TreeTopology(string name, int[][] choices) : this(name, choices, ParentsOf(choices, out var topK), topK)
    {
    }

    private static int[] ParentsOf(int[][] choices, out int[] topKIndices)
    {
        int n = choices.Length + 1;
        var index = new Dictionary<string, int>(StringComparer.Ordinal) { [""] = 0 };
        var parents = new int[n];
        topKIndices = new int[n];
        parents[0] = -1;
        topKIndices[0] = -1;
        for (int i = 0; i < choices.Length; i++)
        {
            var path = choices[i];
            int node = i + 1;
            index[Key(path)] = node;
            parents[node] = index[Key(path.AsSpan(0, path.Length - 1))]; // present: validated and sorted before
            topKIndices[node] = path[^1];
        }
        return parents;
    }

    private TreeTopology(string name, int[][] choices, int[] parents, int[] topKIndices)
    {
        Name = name;
        Choices = choices;
        int n = parents.Length;
        Parents = parents;
        TopKIndices = topKIndices;
        Depths = new int[n];
        for (int node = 1; node < n; node++) Depths[node] = Depths[parents[node]] + 1;
        Mask = new int[n * n];
        for (int node = 0; node < n; node++)
            for (int a = node; a >= 0; a = Parents[a]) Mask[node * n + a] = 1;
        var isParent = new bool[n];
        for (int node = 1; node < n; node++) isParent[Parents[node]] = true;
        var paths = new List<int[]>();
        for (int node = 0; node < n; node++)
        {
            if (isParent[node]) continue;
            var path = new List<int>();
            for (int a = node; a >= 0; a = Parents[a]) path.Add(a);
            path.Reverse();
            paths.Add([.. path]);
        }
        Paths = [.. paths];
        MaxDepth = Depths.Max();
        TopKPerDepth = new int[MaxDepth];
        for (int node = 1; node < n; node++)
            if (TopKIndices[node] >= 0) TopKPerDepth[Depths[node] - 1] = Math.Max(TopKPerDepth[Depths[node] - 1], TopKIndices[node] + 1);
    }

    /// <summary>
    /// A tree of one step given by its parents (<paramref name="parents"/>[0] = −1, every other node after its parent):
    /// node n takes its token from <paramref name="topKIndices"/>[n] of its head's guesses, or, where that is −1, from
    /// elsewhere (text a constraint forces, <see cref="MedusaDecoder"/>). It has no <see cref="Choices"/>.
    /// </summary>
    internal static TreeTopology FromParents(string name, int[] parents, int[] topKIndices)
    {
        if (parents.Length == 0 || parents[0] != -1 || topKIndices.Length != parents.Length)
            throw new ArgumentException($"tree '{name}': node 0 must be the root (parent −1), with one top-k index per node.");
        for (int node = 1; node < parents.Length; node++)
            if (parents[node] < 0 || parents[node] >= node)
                throw new ArgumentException($"tree '{name}': node {node} has parent {parents[node]}; a parent comes before its children.");
        return new TreeTopology(name, [], parents, topKIndices);
    }

    /// <summary>Name (a preset's name or the file it came from).</summary>
    public string Name { get; }
    /// <summary>The paths, sorted (none for a tree made with <see cref="FromParents"/>).</summary>
    public IReadOnlyList<int[]> Choices { get; }
    /// <summary>N: tree tokens verified per step, root included.</summary>
    public int NodeCount => Depths.Length;
    /// <summary>Deepest path length = number of heads the tree uses.</summary>
    public int MaxDepth { get; }
    /// <summary>Depth of each node (root 0).</summary>
    public int[] Depths { get; }
    /// <summary>Parent of each node (root −1).</summary>
    public int[] Parents { get; }
    /// <summary>Top-k index of each node's token within its head's ranking (root −1; −1 also for a node whose token is not a guess).</summary>
    public int[] TopKIndices { get; }
    /// <summary>Tree attention mask [N, N], row-major, 1 = visible.</summary>
    public int[] Mask { get; }
    /// <summary>Root-to-leaf paths as node indices.</summary>
    public int[][] Paths { get; }
    /// <summary>How many top tokens each head must provide (index = head).</summary>
    public int[] TopKPerDepth { get; }

    private static string Key(ReadOnlySpan<int> path) => string.Join(',', path.ToArray());

    /// <summary>
    /// Compiles and validates a tree. Throws <see cref="ArgumentException"/> naming the bad path when a path is empty,
    /// has a negative top-k index or one of at least <paramref name="maxTopK"/>, is deeper than <paramref name="maxDepth"/>
    /// (the number of heads), is listed twice, or lacks one of its prefixes.
    /// </summary>
    public static TreeTopology Compile(string name, IEnumerable<IReadOnlyList<int>> paths, int maxDepth, int maxTopK = 10)
    {
        var list = paths.Select(p => p.ToArray()).ToList();
        var keys = new HashSet<string>(StringComparer.Ordinal);
        foreach (var p in list)
        {
            string shown = "[" + string.Join(", ", p) + "]";
            if (p.Length == 0) throw new ArgumentException($"tree '{name}': empty path (the root is implicit).");
            if (p.Length > maxDepth)
                throw new ArgumentException($"tree '{name}': path {shown} has depth {p.Length} but there are only {maxDepth} Medusa heads.");
            foreach (var k in p)
                if (k < 0 || k >= maxTopK)
                    throw new ArgumentException($"tree '{name}': path {shown} uses top-k index {k}; heads provide indices 0..{maxTopK - 1}.");
            if (!keys.Add(Key(p))) throw new ArgumentException($"tree '{name}': path {shown} is listed twice.");
        }
        foreach (var p in list)
            if (p.Length > 1 && !keys.Contains(Key(p.AsSpan(0, p.Length - 1))))
                throw new ArgumentException($"tree '{name}': path [{string.Join(", ", p)}] lacks its prefix [{string.Join(", ", p[..^1])}].");
        list.Sort(ComparePaths);
        return new TreeTopology(name, [.. list]);
    }

    /// <summary>Paths by length, then lexicographically: the order of <see cref="Choices"/>.</summary>
    internal static int ComparePaths(int[] a, int[] b)
    {
        if (a.Length != b.Length) return a.Length.CompareTo(b.Length);
        for (int i = 0; i < a.Length; i++)
            if (a[i] != b[i]) return a[i].CompareTo(b[i]);
        return 0;
    }

    /// <summary>Loads a tree from a JSON file: an array of paths, e.g. [[0], [1], [0, 0]].</summary>
    public static TreeTopology FromFile(string path, int maxDepth, int maxTopK = 10)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"--tree: file '{path}' not found.", path);
        int[][]? paths;
        try
        {
            paths = JsonSerializer.Deserialize<int[][]>(File.ReadAllText(path));
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: a tree file must be a JSON array of paths such as [[0], [1], [0, 0]]: {e.Message}", e);
        }
        if (paths is null || paths.Length == 0 || paths.Any(p => p is null))
            throw new InvalidDataException($"{path}: a tree file must be a non-empty JSON array of paths such as [[0], [1], [0, 0]].");
        return Compile(Path.GetFileName(path), paths, maxDepth, maxTopK);
    }

    /// <summary>A preset by name (see <see cref="TreePresets"/>) or a JSON file.</summary>
    public static TreeTopology Resolve(string nameOrFile, int heads, int maxTopK = 10)
    {
        if (TreePresets.TryGet(nameOrFile, out var paths)) return Compile(nameOrFile, paths, heads, maxTopK);
        if (TreePresets.IsDynamic(nameOrFile, out _))
            throw new ArgumentException($"--tree: '{nameOrFile}' has no fixed topology: it is planned anew each step (resolve it with CandidateTree.Resolve).");
        if (nameOrFile.EndsWith(".json", StringComparison.OrdinalIgnoreCase) || File.Exists(nameOrFile)) return FromFile(nameOrFile, heads, maxTopK);
        throw new ArgumentException($"--tree: unknown tree '{nameOrFile}'; {TreePresets.Choices}; or give a JSON file of paths.");
    }
}
