namespace IlgpuMedusa.Medusa.Training;

/// <summary>One token sequence with the base model's final hidden state after each of its tokens.</summary>
/// <param name="Tokens">x_0 .. x_{n−1} (x_0 is BOS).</param>
/// <param name="Hidden">[m, D] row-major, m ≤ n: row t is the final-normed hidden state after x_0..x_t.</param>
public sealed record HiddenSequence(int[] Tokens, float[] Hidden);

/// <summary>
/// Training positions for K heads: the hidden state h_t [D] and, for head i, the target x_{t+2+i} (−1 past the end
/// of its sequence). Built once from <see cref="HiddenSequence"/>s and reused every epoch.
/// </summary>
public sealed class TrainingCorpus
{
    private TrainingCorpus(int dim, int heads, float[] hidden, int[] targets, int positions, int sequences, long tokens)
    {
        Dim = dim;
        HeadCount = heads;
        Hidden = hidden;
        Targets = targets;
        Positions = positions;
        Sequences = sequences;
        Tokens = tokens;
    }

    /// <summary>D.</summary>
    public int Dim { get; }
    /// <summary>K: targets per position.</summary>
    public int HeadCount { get; }
    /// <summary>Positions P (every one has a target for head 0).</summary>
    public int Positions { get; }
    /// <summary>Sequences the positions came from.</summary>
    public int Sequences { get; }
    /// <summary>Tokens of those sequences.</summary>
    public long Tokens { get; }
    /// <summary>[P, D] hidden states.</summary>
    internal float[] Hidden { get; }
    /// <summary>[P, K] target token ids, −1 where the sequence ends first.</summary>
    internal int[] Targets { get; }

    /// <summary>
    /// Collects the positions t of each sequence that have a target for head 0 (t + 2 &lt; n and a hidden state).
    /// Throws <see cref="InvalidDataException"/> when none has (every sequence needs more than K + 1 tokens to train all heads;
    /// shorter ones still train the first heads).
    /// </summary>
    public static TrainingCorpus Build(IReadOnlyList<HiddenSequence> sequences, int heads, int dim, string source)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(heads, 1);
        int positions = 0;
        long tokens = 0;
        bool anyFull = false;
        foreach (var s in sequences)
        {
            if (s.Hidden.Length % dim != 0) throw new ArgumentException($"hidden states of {s.Hidden.Length} floats are not rows of {dim}");
            positions += Usable(s, dim);
            tokens += s.Tokens.Length;
            anyFull |= s.Tokens.Length > heads + 1;
        }
        if (positions == 0 || !anyFull)
            throw new InvalidDataException(
                $"{source}: too little text to train {heads} heads: each chunk needs more than {heads + 1} tokens (head {heads - 1} predicts {heads + 1} tokens ahead), " +
                $"but the {sequences.Count} chunk(s) have at most {(sequences.Count == 0 ? 0 : sequences.Max(s => s.Tokens.Length))}.");
        if ((long)positions * Math.Max(dim, heads) > Array.MaxLength)
            throw new InvalidDataException($"{source}: {positions} positions of {dim} values do not fit in memory as one corpus; use fewer tokens.");
        var hidden = new float[(long)positions * dim];
        var targets = new int[(long)positions * heads];
        int p = 0;
        foreach (var s in sequences)
        {
            int usable = Usable(s, dim);
            s.Hidden.AsSpan(0, usable * dim).CopyTo(hidden.AsSpan(p * dim, usable * dim));
            for (int t = 0; t < usable; t++, p++)
                for (int i = 0; i < heads; i++)
                {
                    int target = t + 2 + i;
                    targets[p * heads + i] = target < s.Tokens.Length ? s.Tokens[target] : -1;
                }
        }
        return new TrainingCorpus(dim, heads, hidden, targets, positions, sequences.Count, tokens);
    }

    private static int Usable(HiddenSequence s, int dim) => Math.Max(0, Math.Min(s.Hidden.Length / dim, s.Tokens.Length - 2));

    /// <summary>Positions with a target for head <paramref name="head"/>.</summary>
    public int TargetCount(int head)
    {
        int count = 0;
        for (int p = 0; p < Positions; p++) if (Targets[p * HeadCount + head] >= 0) count++;
        return count;
    }
}
