using IlgpuMedusa.Generation;
using IlgpuMedusa.Medusa;

namespace IlgpuMedusa.Tests.Medusa;

/// <summary>
/// dynamic-N trees: the N − 1 paths whose products of head probabilities are highest. Expected trees are worked out by
/// hand from the probabilities in each test.
/// </summary>
public class DynamicTreePlannerTests
{
    private const int TopK = 3;

    private static float[] Heads(params float[][] heads) => heads.SelectMany(h => h).ToArray();

    private static int[][] Paths(TreeTopology tree) => tree.Choices.Select(p => p.ToArray()).ToArray();

    [Fact]
    public void ProbabilitiesAreASoftmaxOverEachHeadsTopK()
    {
        var p = new float[6];
        DynamicTreePlanner.Probabilities([2f, 1f, 0f, 5f, 5f, 5f], TopK, p);
        // e^0, e^-1, e^-2 over their sum 1.503215
        Assert.Equal(0.665241, p[0], 5);
        Assert.Equal(0.244728, p[1], 5);
        Assert.Equal(0.090031, p[2], 5);
        Assert.All(p[3..], x => Assert.Equal(1 / 3.0, x, 5));
        // −∞ logits (nothing scored) get 0; a head with nothing finite puts everything on its first guess
        DynamicTreePlanner.Probabilities([0f, float.NegativeInfinity, float.NegativeInfinity, float.NaN, float.NaN, float.NaN], TopK, p);
        Assert.Equal([1f, 0f, 0f, 1f, 0f, 0f], p);
    }

    [Fact]
    public void ASureFirstHeadMakesAChain()
    {
        // [0] 0.9, [0,0] 0.72, [0,0,0] 0.504 beat [1] 0.05
        var planner = new DynamicTreePlanner("dynamic-4", nodes: 4, depth: 3, TopK);
        var tree = planner.Plan(Heads([0.9f, 0.06f, 0.04f], [0.8f, 0.15f, 0.05f], [0.7f, 0.2f, 0.1f]));
        Assert.Equal([[0], [0, 0], [0, 0, 0]], Paths(tree));
        Assert.Equal("dynamic-4", tree.Name);
        Assert.Equal(4, tree.NodeCount);
    }

    [Fact]
    public void AHesitantFirstHeadSpreadsOverItsGuesses()
    {
        // [0] 0.4, [1] 0.35, [2] 0.25 beat [0,0] 0.4 · 0.3 = 0.12
        var planner = new DynamicTreePlanner("dynamic-4", nodes: 4, depth: 3, TopK);
        var tree = planner.Plan(Heads([0.4f, 0.35f, 0.25f], [0.3f, 0.3f, 0.4f], [0.9f, 0.05f, 0.05f]));
        Assert.Equal([[0], [1], [2]], Paths(tree));
    }

    [Fact]
    public void MixesDepthAndWidthByScore()
    {
        // [0] 0.6, [0,0] 0.3, [0,0,0] 0.27, [1] 0.25; next would be [0,1] 0.18, then [2] 0.15
        var planner = new DynamicTreePlanner("dynamic-5", nodes: 5, depth: 3, TopK);
        var tree = planner.Plan(Heads([0.6f, 0.25f, 0.15f], [0.5f, 0.3f, 0.2f], [0.9f, 0.06f, 0.04f]));
        Assert.Equal([[0], [1], [0, 0], [0, 0, 0]], Paths(tree));
        Assert.Equal([-1, 0, 0, 1, 3], tree.Parents);
        // one more node takes [0,1] (0.18) before [2] (0.15)
        var bigger = new DynamicTreePlanner("dynamic-6", nodes: 6, depth: 3, TopK);
        Assert.Equal([[0], [1], [0, 0], [0, 1], [0, 0, 0]], Paths(bigger.Plan(Heads([0.6f, 0.25f, 0.15f], [0.5f, 0.3f, 0.2f], [0.9f, 0.06f, 0.04f]))));
    }

    [Fact]
    public void AProbabilityFloorLeavesOutUnlikelyPaths()
    {
        // scores: [0] 0.6, [0,0] 0.3, [0,0,0] 0.27, [1] 0.25, [0,1] 0.18, [2] 0.15
        float[] p = Heads([0.6f, 0.25f, 0.15f], [0.5f, 0.3f, 0.2f], [0.9f, 0.06f, 0.04f]);
        var floor = new DynamicTreePlanner("dynamic-8-26", nodes: 8, depth: 3, TopK, minProbability: 0.26f);
        Assert.Equal([[0], [0, 0], [0, 0, 0]], Paths(floor.Plan(p))); // 0.27 ≥ 0.26 > 0.25
        // the cap still holds, and a floor above every path keeps head 0's best guess
        var capped = new DynamicTreePlanner("dynamic-3-10", nodes: 3, depth: 3, TopK, minProbability: 0.1f);
        Assert.Equal([[0], [0, 0]], Paths(capped.Plan(p)));
        var high = new DynamicTreePlanner("dynamic-8-99", nodes: 8, depth: 3, TopK, minProbability: 0.99f);
        Assert.Equal([[0]], Paths(high.Plan(p)));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DynamicTreePlanner("x", 4, 3, TopK, minProbability: 1f));
    }

    [Fact]
    public void StaysWithinTheHeadsAndTheirTopK()
    {
        // one head: however sure it is, the tree can only be wide
        var oneHead = new DynamicTreePlanner("dynamic-4", nodes: 4, depth: 1, TopK);
        Assert.Equal([[0], [1], [2]], Paths(oneHead.Plan(Heads([0.98f, 0.01f, 0.01f]))));
        // more nodes than one head's top-k: the rest go one level down, [0,0] 0.17, then [1,0] 0.165 (tied with [2,0],
        // found first) before [0,1] 0.136
        var wide = new DynamicTreePlanner("dynamic-6", nodes: 6, depth: 2, TopK);
        Assert.Equal([[0], [1], [2], [0, 0], [1, 0]], Paths(wide.Plan(Heads([0.34f, 0.33f, 0.33f], [0.5f, 0.4f, 0.1f]))));
    }

    [Fact]
    public void ReusesTheTopologyOfARepeatedShapeAndIgnoresNaN()
    {
        var planner = new DynamicTreePlanner("dynamic-4", nodes: 4, depth: 2, TopK);
        var first = planner.Plan(Heads([0.9f, 0.06f, 0.04f], [0.8f, 0.15f, 0.05f]));
        var second = planner.Plan(Heads([0.85f, 0.1f, 0.05f], [0.7f, 0.2f, 0.1f])); // other numbers, same shape
        Assert.Equal([[0], [0, 0], [0, 1]], Paths(second));
        Assert.Same(first, second);
        var withNaN = planner.Plan(Heads([float.NaN, 0.6f, 0.4f], [0.9f, 0.05f, 0.05f]));
        Assert.Equal(4, withNaN.NodeCount);
        // [0] is the first candidate, so it is taken, scoring 0; then [1] 0.6 and [1,0] 0.54 beat [2] 0.4
        Assert.Equal([[0], [1], [1, 0]], Paths(withNaN));
    }

    [Fact]
    public void DynamicNamesResolveAndBadOnesAreRefused()
    {
        Assert.True(TreePresets.IsDynamic("dynamic-8", out int nodes));
        Assert.Equal(8, nodes);
        foreach (var bad in new[] { "dynamic-1", "dynamic-65", "dynamic-", "dynamic-x", "dynamic-+4", "dynamic- 4", "dynamic-8-0", "dynamic-8-100", "dynamic-8-", "dynamic-8-x", "dynamic-8-25-1",
                     "dynamic-08", "dynamic-003-05", "dynamic-8-05", "dynamic-" + new string('0', 1000) + "8" })
            Assert.False(TreePresets.IsDynamic(bad, out _), bad);
        // One spelling per tree (the engine compiles and keeps a tree per name, so aliases would grow without bound).
        foreach (var bad in new[] { "chain-03", "chain-+3", "chain- 3", "chain-3 ", "chain-0", "chain-17" })
            Assert.False(TreePresets.IsKnown(bad), bad);
        Assert.True(TreePresets.IsKnown("chain-3"));
        Assert.True(TreePresets.IsKnown("chain-16"));
        Assert.True(TreePresets.IsDynamic("dynamic-8-25", out nodes, out float floor));
        Assert.Equal(8, nodes);
        Assert.Equal(0.25f, floor);
        Assert.Equal(0.25f, CandidateTree.Resolve("dynamic-8-25", heads: 4).MinProbability);
        Assert.Equal(0f, CandidateTree.Resolve("dynamic-8", heads: 4).MinProbability);
        var tree = CandidateTree.Resolve("dynamic-8", heads: 4);
        Assert.True(tree.IsDynamic);
        Assert.Null(tree.Fixed);
        Assert.Equal(8, tree.NodeCount);
        Assert.Equal(4, tree.MaxDepth);
        Assert.Equal(2, CandidateTree.Resolve("dynamic-3", heads: 4).MaxDepth); // two nodes below the root reach depth 2 at most
        Assert.False(CandidateTree.Resolve("tree-4", heads: 4).IsDynamic);
        var e = Assert.Throws<ArgumentException>(() => new GenerationOptions { Tree = "dynamic-1" }.Validate());
        Assert.Contains("dynamic-1", e.Message);
        Assert.Contains("dynamic-4", e.Message); // the message lists the presets
        Assert.Contains("planned", Assert.Throws<ArgumentException>(() => TreeTopology.Resolve("dynamic-4", heads: 4)).Message);
    }
}
