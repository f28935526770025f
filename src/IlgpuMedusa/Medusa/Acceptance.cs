namespace IlgpuMedusa.Medusa;

/// <summary>How tree candidates are accepted. A closed set: <see cref="Greedy"/> or <see cref="Typical"/>.</summary>
public abstract record Acceptance
{
    private Acceptance()
    {
    }

    /// <summary>Lossless: a candidate is kept when it equals the argmax of its parent's logits.</summary>
    public static Acceptance Greedy { get; } = new GreedyAcceptance();

    /// <summary>
    /// Typical acceptance (Medusa-2): a candidate x is kept when p(x) &gt; min(ε, α·e^(−H)) under its parent's
    /// distribution p with entropy H. The defaults ε = 0.09, α = 0.3 are the reference runs' values (Medusa's helper
    /// functions have the two swapped).
    /// </summary>
    public static Acceptance Typical(float posteriorThreshold = 0.09f, float posteriorAlpha = 0.3f) => new TypicalAcceptance(posteriorThreshold, posteriorAlpha);

    /// <summary>Parses --acceptance text.</summary>
    public static Acceptance Parse(string text) => text.ToLowerInvariant() switch
    {
        "greedy" => Greedy,
        "typical" => Typical(),
        _ => throw new ArgumentException($"--acceptance: unknown acceptance '{text}'; expected greedy or typical.", nameof(text)),
    };

    /// <summary>Greedy acceptance.</summary>
    public sealed record GreedyAcceptance : Acceptance;

    /// <summary>Typical acceptance.</summary>
    public sealed record TypicalAcceptance : Acceptance
    {
        /// <summary>Creates it; throws naming a value outside (0, 1].</summary>
        public TypicalAcceptance(float posteriorThreshold, float posteriorAlpha)
        {
            if (!(posteriorThreshold > 0 && posteriorThreshold <= 1))
                throw new ArgumentOutOfRangeException(nameof(posteriorThreshold), posteriorThreshold, "posterior threshold must be in (0, 1].");
            if (!(posteriorAlpha > 0 && posteriorAlpha <= 1))
                throw new ArgumentOutOfRangeException(nameof(posteriorAlpha), posteriorAlpha, "posterior alpha must be in (0, 1].");
            PosteriorThreshold = posteriorThreshold;
            PosteriorAlpha = posteriorAlpha;
        }

        /// <summary>ε: the largest probability ever required.</summary>
        public float PosteriorThreshold { get; }
        /// <summary>α: scales e^(−entropy).</summary>
        public float PosteriorAlpha { get; }

        /// <summary>The probability a candidate needs under a parent distribution of entropy <paramref name="entropy"/> (nats).</summary>
        public float Required(float entropy) => MathF.Min(PosteriorThreshold, PosteriorAlpha * MathF.Exp(-entropy));
    }
}

/// <summary>The outcome of evaluating a tree: which path, and how many of its nodes (root included) were accepted.</summary>
/// <param name="Path">Index into <see cref="TreeTopology.Paths"/>.</param>
/// <param name="Length">Accepted nodes along the path, root included (≥ 1).</param>
public readonly record struct AcceptedPath(int Path, int Length);

/// <summary>Chooses the path to keep after a tree-verification forward.</summary>
public static class PosteriorEvaluator
{
    /// <summary>
    /// Greedy: along each path, count nodes whose token equals the argmax of the parent's logits, stopping at the first
    /// that does not. The longest wins (the first such path on ties). <paramref name="tokens"/>[n] is node n's token,
    /// <paramref name="argMax"/>[n] the argmax of node n's logits.
    /// </summary>
    public static AcceptedPath Greedy(TreeTopology tree, ReadOnlySpan<int> tokens, ReadOnlySpan<int> argMax)
    {
        var best = new AcceptedPath(0, 1);
        for (int p = 0; p < tree.Paths.Length; p++)
        {
            var path = tree.Paths[p];
            int length = 1;
            while (length < path.Length && tokens[path[length]] == argMax[path[length - 1]]) length++;
            if (length > best.Length) best = new AcceptedPath(p, length);
        }
        return best;
    }

    /// <summary>
    /// Typical: node n (not the root) is acceptable when <paramref name="probabilityUnderParent"/>[n] (its token's probability
    /// under its parent's distribution) exceeds min(ε, α·e^(−<paramref name="parentEntropy"/>[n])). Along each path nodes count
    /// until the first unacceptable one; the longest path wins (the first on ties).
    /// </summary>
    public static AcceptedPath Typical(TreeTopology tree, Acceptance.TypicalAcceptance acceptance, ReadOnlySpan<float> probabilityUnderParent, ReadOnlySpan<float> parentEntropy)
    {
        var best = new AcceptedPath(0, 1);
        for (int p = 0; p < tree.Paths.Length; p++)
        {
            var path = tree.Paths[p];
            int length = 1;
            while (length < path.Length)
            {
                int node = path[length];
                if (!(probabilityUnderParent[node] > acceptance.Required(parentEntropy[node]))) break;
                length++;
            }
            if (length > best.Length) best = new AcceptedPath(p, length);
        }
        return best;
    }
}
