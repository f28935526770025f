namespace IlgpuMedusa.Medusa;

/// <summary>
/// Named candidate trees. <c>mc_sim_7b_63</c> is Medusa's default tree (63 paths + root = 64 nodes, depth 4), found by
/// its authors with simulated acceptance rates of Vicuna-7B heads; its paths are ordered from most to least useful,
/// so its first k paths form the smaller trees <c>tree-8</c>, <c>tree-16</c> and <c>tree-32</c> (k + 1 nodes).
/// <c>tree-4</c> and <c>tree-5</c> are the small trees that measured fastest on a 2-core CPU.
/// <c>chain-d</c> is a single path of depth d taking each head's top-1 (vLLM's Medusa shape). <c>dynamic-N</c> is not a
/// fixed tree: each step takes the N nodes the heads are most confident in (<see cref="DynamicTreePlanner"/>).
/// </summary>
public static class TreePresets
{
    /// <summary>Medusa's mc_sim_7b_63 paths (data from the Medusa reference).</summary>
    public static readonly IReadOnlyList<int[]> McSim7b63 =
    [
        [0], [0, 0], [1], [0, 1], [2], [0, 0, 0], [1, 0], [0, 2], [3], [0, 3], [4], [0, 4], [2, 0], [0, 5], [0, 0, 1],
        [5], [0, 6], [6], [0, 7], [0, 1, 0], [1, 1], [7], [0, 8], [0, 0, 2], [3, 0], [0, 9], [8], [9], [1, 0, 0],
        [0, 2, 0], [1, 2], [0, 0, 3], [4, 0], [2, 1], [0, 0, 4], [0, 0, 5], [0, 0, 0, 0], [0, 1, 1], [0, 0, 6],
        [0, 3, 0], [5, 0], [1, 3], [0, 0, 7], [0, 0, 8], [0, 0, 9], [6, 0], [0, 4, 0], [1, 4], [7, 0], [0, 1, 2],
        [2, 0, 0], [3, 1], [2, 2], [8, 0], [0, 5, 0], [1, 5], [1, 0, 1], [0, 2, 1], [9, 0], [0, 6, 0], [0, 0, 0, 1],
        [1, 6], [0, 7, 0],
    ];

    /// <summary>
    /// The preset used on accelerators when none is named: the fastest preset of the tree sweeps on an NVIDIA H200
    /// (2026-11-28, the GPU kit's `bench --sweep-trees` on the demo model with the shipped heads): `chain-3` at 1.03x and
    /// 0.98x autoregressive in two runs, level with `tree-4` (1.02x, 0.97x) and the shipped `small-4.json`, far ahead of
    /// Medusa's 64-node `mc_sim_7b_63` (0.33x, 0.30x). With the current kernels a tree step costs about 1.9x a decode step
    /// at 4 nodes and 23x at 64 on the 7B shape (FP32-core matmuls), and a Medusa step adds the heads' launches, so only
    /// the smallest trees come close; the kit's sweep revisits this when tree steps get cheaper.
    /// </summary>
    public const string Default = "chain-3";

    /// <summary>
    /// The tree used on the host backend when none is named: the fastest measured there (`bench --sweep-trees` and
    /// alternating single-tree runs, 20 prompts, stories15M, 2 cores, 2026-11-28). On a CPU every node and every head
    /// costs compute, so the smallest trees win once a step runs only the heads its tree reaches: `dynamic-3` (two of the
    /// heads' likeliest nodes, chosen each step; 1.91 accepted tokens per step) and `chain-2` (1.87) ran level, at
    /// 1.45-1.49x autoregressive in three alternating rounds, ahead of `dynamic-4` (1.21-1.41x) and `tree-4`. After the
    /// 8-bit classifier pass made the one-token step cheaper, `chain-1` (1.23-1.33x) and `dynamic-3` (1.20-1.31x) ran
    /// level in three more rounds; `dynamic-3` stays, accepting 0.3 more tokens per step.
    /// </summary>
    public const string HostDefault = "dynamic-3";

    /// <summary>
    /// All preset names: the fixed trees, then dynamic trees of 3, 4, 6, 8 and 16 nodes (any <c>dynamic-N</c> or
    /// <c>dynamic-N-P</c> with 2 ≤ N ≤ <see cref="MaxDynamicNodes"/> and 1 ≤ P ≤ 99 is accepted).
    /// </summary>
    public static IReadOnlyList<string> Names { get; } =
        ["mc_sim_7b_63", "tree-32", "tree-16", "tree-8", "tree-5", "tree-4", "chain-1", "chain-2", "chain-3", "chain-4", "chain-5",
         "dynamic-3", "dynamic-4", "dynamic-6", "dynamic-8", "dynamic-16"];

    /// <summary>The largest N of a <c>dynamic-N</c> tree.</summary>
    public const int MaxDynamicNodes = 64;

    /// <summary>True for <c>dynamic-N</c> (2 ≤ N ≤ 64): a tree of N nodes planned every step (<see cref="DynamicTreePlanner"/>).</summary>
    public static bool IsDynamic(string name, out int nodes) => IsDynamic(name, out nodes, out _);

    /// <summary>
    /// True for <c>dynamic-N</c> and <c>dynamic-N-P</c> (2 ≤ N ≤ 64, 1 ≤ P ≤ 99): a tree of at most N nodes planned every
    /// step (<see cref="DynamicTreePlanner"/>); with P, a node is only added while its path's probability is at least P %,
    /// so a step verifies fewer nodes when the heads are unsure (<paramref name="minProbability"/> = P / 100, else 0).
    /// </summary>
    public static bool IsDynamic(string name, out int nodes, out float minProbability)
    {
        nodes = 0;
        minProbability = 0;
        if (!name.StartsWith("dynamic-", StringComparison.Ordinal)) return false;
        var rest = name.AsSpan(8);
        int dash = rest.IndexOf('-');
        if (!TryParseCount(dash < 0 ? rest : rest[..dash], out nodes) || nodes is < 2 or > MaxDynamicNodes) return false;
        if (dash < 0) return true;
        if (!TryParseCount(rest[(dash + 1)..], out int percent) || percent is < 1 or > 99) return false;
        minProbability = percent / 100f;
        return true;
    }

    /// <summary>What a tree may be named, for error messages: the presets, the dynamic forms and JSON files.</summary>
    public static string Choices => $"presets are {string.Join(", ", Names)}; dynamic-N (2 ≤ N ≤ {MaxDynamicNodes}) or dynamic-N-P (a floor of P %, 1 ≤ P ≤ 99) plan N nodes each step";

    /// <summary>True for a fixed preset or a <c>dynamic-N</c> / <c>dynamic-N-P</c> name.</summary>
    public static bool IsKnown(string name) => TryGet(name, out _) || IsDynamic(name, out _);

    /// <summary>
    /// A count written the one way a name spells it: 1 to 3 ASCII digits without a leading zero. Signs, spaces and
    /// leading zeros are refused, so that each tree has one name (the engine keeps one compiled tree per name).
    /// </summary>
    private static bool TryParseCount(ReadOnlySpan<char> text, out int value)
    {
        value = 0;
        if (text.Length is 0 or > 3 || text[0] == '0') return false;
        foreach (char c in text)
        {
            if (!char.IsAsciiDigit(c)) return false;
            value = value * 10 + (c - '0');
        }
        return true;
    }

    /// <summary>The paths of a preset.</summary>
    public static bool TryGet(string name, out IReadOnlyList<int[]> paths)
    {
        paths = name switch
        {
            "mc_sim_7b_63" => McSim7b63,
            "tree-32" => McSim7b63.Take(31).ToArray(),
            "tree-16" => McSim7b63.Take(15).ToArray(),
            "tree-8" => McSim7b63.Take(7).ToArray(),
            "tree-5" => [[0], [1], [2], [0, 0]],
            "tree-4" => [[0], [1], [0, 0]],
            _ when name.StartsWith("chain-", StringComparison.Ordinal) && TryParseCount(name.AsSpan(6), out int depth) && depth is >= 1 and <= 16 =>
                Enumerable.Range(1, depth).Select(d => new int[d]).ToArray(),
            _ => [],
        };
        return paths.Count > 0;
    }
}
