namespace IlgpuMedusa.Medusa;

/// <summary>
/// The candidates a request verifies each step: a fixed tree (a preset or a JSON file, compiled once into a
/// <see cref="TreeTopology"/>), or a dynamic one, <c>dynamic-N</c>: N nodes chosen anew every step from the heads' own
/// confidence (<see cref="DynamicTreePlanner"/>); <c>dynamic-N-P</c> stops adding nodes below a path probability of P %.
/// </summary>
public sealed class CandidateTree
{
    private CandidateTree(string name, int nodeCount, int maxDepth, TreeTopology? fixedTree, float minProbability = 0)
    {
        Name = name;
        NodeCount = nodeCount;
        MaxDepth = maxDepth;
        Fixed = fixedTree;
        MinProbability = minProbability;
    }

    /// <summary>The preset's name, the file's name, or <c>dynamic-N</c>.</summary>
    public string Name { get; }
    /// <summary>Tokens verified per step, root included (at most, for a dynamic tree with a probability floor).</summary>
    public int NodeCount { get; }
    /// <summary>A dynamic tree's probability floor: nodes whose path is less likely are left out (0: always N nodes).</summary>
    public float MinProbability { get; }
    /// <summary>The deepest a step's tree reaches (heads used).</summary>
    public int MaxDepth { get; }
    /// <summary>The tree of every step; null for a dynamic tree.</summary>
    public TreeTopology? Fixed { get; }
    /// <summary>True when each step plans its own tree.</summary>
    public bool IsDynamic => Fixed is null;

    /// <summary>A fixed tree.</summary>
    public static CandidateTree Of(TreeTopology topology) => new(topology.Name, topology.NodeCount, topology.MaxDepth, topology);

    /// <summary>
    /// A preset (<see cref="TreePresets"/>), <c>dynamic-N</c>, or a JSON file of paths, for heads of the given count.
    /// Throws <see cref="ArgumentException"/> (or the file's errors) naming what is wrong.
    /// </summary>
    public static CandidateTree Resolve(string nameOrFile, int heads, int maxTopK = 10)
    {
        if (TreePresets.IsDynamic(nameOrFile, out int nodes, out float minProbability))
        {
            if (heads < 1) throw new ArgumentException($"tree '{nameOrFile}' needs at least one Medusa head.");
            return new CandidateTree(nameOrFile, nodes, Math.Min(heads, nodes - 1), null, minProbability);
        }
        return Of(TreeTopology.Resolve(nameOrFile, heads, maxTopK));
    }
}
