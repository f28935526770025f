using IlgpuMedusa.Medusa;

namespace IlgpuMedusa.Tests.Medusa;

public class TreeTopologyTests
{
    // Hand-drawn tree (paths given out of order on purpose):
    //            root(0)
    //          /        \
    //      [0](1)       [1](2)
    //      /    \          \
    // [0,0](3) [0,1](4)   [1,0](5)
    //    |
    // [0,0,0](6)
    private static readonly int[][] HandTree = [[0, 0], [1], [0], [0, 0, 0], [1, 0], [0, 1]];

    [Fact]
    public void CompilesHandDrawnTreeToHandComputedBuffers()
    {
        var tree = TreeTopology.Compile("hand", HandTree, maxDepth: 3);
        Assert.Equal(7, tree.NodeCount);
        Assert.Equal([0, 1, 1, 2, 2, 2, 3], tree.Depths);
        Assert.Equal([-1, 0, 0, 1, 1, 2, 3], tree.Parents);
        Assert.Equal([-1, 0, 1, 0, 1, 0, 0], tree.TopKIndices);
        int[] expectedMask =
        [
            1, 0, 0, 0, 0, 0, 0,
            1, 1, 0, 0, 0, 0, 0,
            1, 0, 1, 0, 0, 0, 0,
            1, 1, 0, 1, 0, 0, 0,
            1, 1, 0, 0, 1, 0, 0,
            1, 0, 1, 0, 0, 1, 0,
            1, 1, 0, 1, 0, 0, 1,
        ];
        Assert.Equal(expectedMask, tree.Mask);
        Assert.Equal(3, tree.Paths.Length);
        Assert.Equal([0, 1, 4], tree.Paths[0]);
        Assert.Equal([0, 2, 5], tree.Paths[1]);
        Assert.Equal([0, 1, 3, 6], tree.Paths[2]);
        Assert.Equal([2, 2, 1], tree.TopKPerDepth);
        Assert.Equal(3, tree.MaxDepth);
    }

    [Fact]
    public void PresetsCompileWithExpectedSizes()
    {
        Assert.Equal(64, TreeTopology.Resolve("mc_sim_7b_63", heads: 4).NodeCount);
        Assert.Equal(4, TreeTopology.Resolve("mc_sim_7b_63", heads: 4).MaxDepth);
        Assert.Equal(32, TreeTopology.Resolve("tree-32", 4).NodeCount);
        Assert.Equal(16, TreeTopology.Resolve("tree-16", 4).NodeCount);
        Assert.Equal(8, TreeTopology.Resolve("tree-8", 4).NodeCount);
        var chain = TreeTopology.Resolve("chain-3", 4);
        Assert.Equal(4, chain.NodeCount);
        Assert.Equal([-1, 0, 1, 2], chain.Parents);
        Assert.Single(chain.Paths);
    }

    [Fact]
    public void TreeDeeperThanTheHeadsIsRejected()
    {
        var e = Assert.Throws<ArgumentException>(() => TreeTopology.Resolve("mc_sim_7b_63", heads: 3));
        Assert.Contains("depth 4", e.Message, StringComparison.Ordinal);
        Assert.Contains("3 Medusa heads", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void TopKIndexBeyondTheHeadsIsRejected()
    {
        var e = Assert.Throws<ArgumentException>(() => TreeTopology.Compile("t", [[0], [12]], maxDepth: 2, maxTopK: 10));
        Assert.Contains("[12]", e.Message, StringComparison.Ordinal);
        Assert.Contains("0..9", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void MissingPrefixIsRejected()
    {
        var e = Assert.Throws<ArgumentException>(() => TreeTopology.Compile("t", [[0], [1, 0]], maxDepth: 2));
        Assert.Contains("[1, 0] lacks its prefix [1]", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("{\"not\": \"a list\"}")]
    [InlineData("[[0], [0, \"x\"]]")]
    [InlineData("[]")]
    [InlineData("[[0], null]")]
    public void MalformedTreeFileIsRejectedNamingTheFile(string content)
    {
        var file = Path.Combine(TestModels.TempDirectory("tree"), "bad-tree.json");
        File.WriteAllText(file, content);
        var e = Assert.Throws<InvalidDataException>(() => TreeTopology.FromFile(file, maxDepth: 4));
        Assert.Contains("bad-tree.json", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void TreeFileLoads()
    {
        var file = Path.Combine(TestModels.TempDirectory("tree"), "mine.json");
        File.WriteAllText(file, "[[0], [0, 0], [1]]");
        var tree = TreeTopology.Resolve(file, heads: 2);
        Assert.Equal(4, tree.NodeCount);
    }

    [Fact]
    public void UnknownTreeNameListsPresets()
    {
        var e = Assert.Throws<ArgumentException>(() => TreeTopology.Resolve("bushy", heads: 4));
        Assert.Contains("mc_sim_7b_63", e.Message, StringComparison.Ordinal);
    }
}
