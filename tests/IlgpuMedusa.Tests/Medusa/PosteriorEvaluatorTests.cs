using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Medusa;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Tests.Medusa;

public class PosteriorEvaluatorTests
{
    private static readonly TreeTopology Tree = TreeTopology.Compile("hand", [[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]], maxDepth: 3);

    [Fact]
    public void GreedyTakesTheLongestPrefixMatchingParentArgmax()
    {
        // nodes:            0   1   2   3   4   5   6
        int[] tokens =     [10, 20, 21, 30, 31, 32, 40];
        int[] argMax =     [20, 31, 99, 40, 77, 88, 66]; // root wants 20 (node 1, not node 2); node 1 wants 31 (node 4, not node 3)
        var accepted = PosteriorEvaluator.Greedy(Tree, tokens, argMax);
        Assert.Equal(new AcceptedPath(0, 3), accepted); // path [0, 1, 4]
    }

    [Fact]
    public void GreedyAcceptsOnlyTheRootWhenNothingMatches()
    {
        int[] tokens = [10, 20, 21, 30, 31, 32, 40];
        int[] argMax = [5, 5, 5, 5, 5, 5, 5];
        Assert.Equal(1, PosteriorEvaluator.Greedy(Tree, tokens, argMax).Length);
    }

    [Fact]
    public void TypicalAcceptanceMatchesHandComputation()
    {
        var typical = (Acceptance.TypicalAcceptance)Acceptance.Typical();
        // Parent distributions, computed by hand:
        //  peaked  p = (0.9, 0.05, 0.05): H = −(0.9 ln 0.9 + 2·0.05 ln 0.05) = 0.39439 nats; required = min(0.09, 0.3·e^−0.39439 = 0.20223) = 0.09
        //  uniform over 4: H = ln 4 = 1.38629; required = min(0.09, 0.3·0.25 = 0.075) = 0.075
        Assert.Equal(0.09f, typical.Required(0.39439f), 5);
        Assert.Equal(0.075f, typical.Required(1.38629f), 5);
        // node:                       0     1     2     3      4     5      6
        float[] probability =       [1f,  0.9f, 0.05f, 0.08f, 0.25f, 0.5f, 0.5f];
        float[] parentEntropy =     [0f,  0.39439f, 0.39439f, 1.38629f, 1.38629f, 0f, 0f];
        // node 1 (0.9 > 0.09) in; node 2 (0.05 < 0.09) out; node 3 (0.08 > 0.075) in; node 4 (0.25 > 0.075) in; node 6 in.
        // path [0,1,4]: 3; path [0,2,5]: 1; path [0,1,3,6]: 4.
        Assert.Equal(new AcceptedPath(2, 4), PosteriorEvaluator.Typical(Tree, typical, probability, parentEntropy));
        // Node 3 just below its parent's requirement: 0.07 < 0.075, so path [0,1,3,6] stops at 2 and [0,1,4] (3) wins.
        probability[3] = 0.07f;
        Assert.Equal(new AcceptedPath(0, 3), PosteriorEvaluator.Typical(Tree, typical, probability, parentEntropy));
    }

    [Fact]
    public void SoftmaxStatsGiveTheEntropyTypicalAcceptanceUses()
    {
        var backend = new HostBackend(1);
        using var logits = backend.Allocate(DType.F32, 2, 3);
        using var stats = backend.Allocate(DType.F32, 2, 3);
        // Row 0: log-probabilities of (0.9, 0.05, 0.05) shifted by +3 (softmax is shift-invariant). Row 1: uniform over 3.
        backend.Upload(logits, [MathF.Log(0.9f) + 3, MathF.Log(0.05f) + 3, MathF.Log(0.05f) + 3, 1f, 1f, 1f]);
        backend.SoftmaxStats(stats, logits);
        var s = new float[6];
        backend.Download(stats, s);
        Assert.Equal(MathF.Log(0.9f) + 3, s[0], 5);     // max
        Assert.Equal(3f, s[1], 4);                        // log Σ e^x = ln(1) + 3
        Assert.Equal(0.39439f, s[2], 4);                  // entropy by hand
        Assert.Equal(1f + MathF.Log(3), s[4], 5);         // log-sum-exp of uniform
        Assert.Equal(MathF.Log(3), s[5], 5);              // entropy ln 3
    }

    [Fact]
    public void TypicalParametersAreValidated()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => Acceptance.Typical(posteriorThreshold: 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => Acceptance.Typical(posteriorAlpha: 1.5f));
        Assert.Throws<ArgumentException>(() => Acceptance.Parse("sometimes"));
    }
}
