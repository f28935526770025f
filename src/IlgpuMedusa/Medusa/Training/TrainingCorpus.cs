namespace IlgpuMedusa.Medusa.Training;

/// <summary>One token sequence with the base model's final hidden state after each of its tokens.</summary>
/// <param name="Tokens">x_0 .. x_{n−1} (x_0 is BOS).</param>
/// <param name="Hidden">[m, D] row-major, m ≤ n: row t is the final-normed hidden state after x_0..x_t.</param>
/// <param name="Greedy">
/// Null (every target counts), or per token: Greedy[j] is true when x_j is the base model's argmax given x_0..x_{j−1}
/// (Greedy[0] is unused). Then a target counts only when it lies on a greedy path (see <see cref="TrainingCorpus"/>).
/// </param>
/// <param name="Keys">
/// Null, or [m, KvDim]: the keys the base model's last layer cached for x_0..x_{m−1} (rotated, as the cache holds them),
/// what heads with context attention attend to (see <see cref="Models.MedusaHeadWeights.ContextQuery"/>).
/// </param>
/// <param name="Values">Null, or [m, KvDim]: the values the last layer cached for the same tokens.</param>
public sealed record HiddenSequence(int[] Tokens, float[] Hidden, bool[]? Greedy = null, float[]? Keys = null, float[]? Values = null);

/// <summary>
/// Training positions for K heads: the hidden state h_t [D] and, for head i, the target x_{t+2+i} (−1 past the end
/// of its sequence). Built once from <see cref="HiddenSequence"/>s and reused every epoch. For sequences that mark
/// their greedy tokens, head i's target at t is kept only when x_{t+1} .. x_{t+2+i} are all greedy choices: in greedy
/// Medusa decoding the pending token x_{t+1} and every token a head must guess are the base model's argmax, so a target
/// behind a sampled token is not what the head will be asked for (−1 then, as past the end).
/// </summary>
public sealed class TrainingCorpus
{
    private TrainingCorpus(int dim, int heads, float[] hidden, int[] targets, int[] next, int positions, int sequences, long tokens, ContextKv? context, SequenceRows? rows)
    {
        Context = context;
        Teachers = rows;
        Next = next;
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
    /// <summary>[P, K] target token ids, −1 where the sequence ends first or the path to the target leaves the greedy one.</summary>
    internal int[] Targets { get; }
    /// <summary>[P] the token after each position, x_{t+1} (the pending token a head's guess follows).</summary>
    internal int[] Next { get; }
    /// <summary>The last layer's cached keys and values of every position's sequence, when the sequences carried them.</summary>
    internal ContextKv? Context { get; }
    /// <summary>Every sequence's hidden states and where each position sits in them (kept for soft labels), or null.</summary>
    internal SequenceRows? Teachers { get; }

    /// <summary>Per training position p: its sequence's final hidden states [n, D] (all of them) and its index t there.</summary>
    internal sealed record SequenceRows(float[][] Hidden, int[] Sequence, int[] Position)
    {
        /// <summary>
        /// The base model's hidden state h_{t+1+i} of each position (where the target of head i is the next token) into
        /// <paramref name="rows"/> [M, D]; rows whose target is −1 are left as they are.
        /// </summary>
        public void Teacher(ReadOnlySpan<int> positions, int head, ReadOnlySpan<int> targets, Span<float> rows, int dim)
        {
            for (int r = 0; r < positions.Length; r++)
            {
                if (targets[r] < 0) continue;
                int p = positions[r];
                Hidden[Sequence[p]].AsSpan((Position[p] + 1 + head) * dim, dim).CopyTo(rows.Slice(r * dim, dim));
            }
        }
    }

    /// <summary>
    /// Per training position p: its sequence's last-layer keys and values ([n, KvDim] each) and how many of them the heads
    /// at p see (t + 1: x_0..x_t, whose keys are cached when the heads run; the heads' query sits at position t + 1).
    /// </summary>
    internal sealed record ContextKv(float[][] Keys, float[][] Values, int[] Sequence, int[] Visible, int KvDim)
    {
        /// <summary>The rows of positions <paramref name="positions"/>, for <see cref="TrainableHeads"/>.</summary>
        public HeadContextRows Rows(ReadOnlySpan<int> positions)
        {
            var keys = new float[positions.Length][];
            var values = new float[positions.Length][];
            var visible = new int[positions.Length];
            for (int r = 0; r < positions.Length; r++)
            {
                int p = positions[r];
                keys[r] = Keys[Sequence[p]];
                values[r] = Values[Sequence[p]];
                visible[r] = Visible[p];
            }
            return new HeadContextRows(keys, values, visible);
        }
    }

    /// <summary>
    /// Collects the positions t of each sequence that have a target for head 0 (t + 2 &lt; n, a hidden state, and for
    /// sequences marking greedy tokens x_{t+1} and x_{t+2} greedy). Throws <see cref="InvalidDataException"/> when none has
    /// (every sequence needs more than K + 1 tokens to train all heads; shorter ones still train the first heads).
    /// </summary>
    /// <param name="sequences">The sequences.</param>
    /// <param name="heads">K.</param>
    /// <param name="dim">D.</param>
    /// <param name="source">Named in errors.</param>
    /// <param name="keepSequenceRows">
    /// Keep every sequence's hidden states for soft labels (<see cref="Teachers"/>); a target then also needs the hidden state
    /// of the position before it.
    /// </param>
    public static TrainingCorpus Build(IReadOnlyList<HiddenSequence> sequences, int heads, int dim, string source, bool keepSequenceRows = false)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(heads, 1);
        long positions = 0;
        long tokens = 0;
        bool anyFull = false;
        foreach (var s in sequences)
        {
            if (s.Hidden.Length % dim != 0) throw new ArgumentException($"hidden states of {s.Hidden.Length} floats are not rows of {dim}");
            if (s.Greedy is not null && s.Greedy.Length != s.Tokens.Length)
                throw new ArgumentException($"{s.Greedy.Length} greedy flags for {s.Tokens.Length} tokens");
            for (int t = 0; t < Rows(s, dim); t++) if (Trains(s, t)) positions++;
            tokens += s.Tokens.Length;
            anyFull |= s.Tokens.Length > heads + 1;
        }
        if (positions == 0 || !anyFull)
            throw TooLittleText(source, heads, sequences.Select(s => s.Tokens.Length).ToList(), positions == 0 && anyFull ? " and none has two greedy tokens in a row." : ".");
        if (positions * Math.Max(dim, heads) > Array.MaxLength)
            throw new InvalidDataException($"{source}: {positions} positions of {dim} values do not fit in memory as one corpus; use fewer tokens.");
        var hidden = new float[positions * dim];
        var targets = new int[positions * heads];
        var next = new int[positions];
        bool context = sequences.Count > 0 && sequences.All(s => s.Keys is not null && s.Values is not null);
        int kvDim = 0;
        if (context)
        {
            var first = sequences.First(s => s.Hidden.Length > 0);
            kvDim = first.Keys!.Length / (first.Hidden.Length / dim);
            foreach (var s in sequences)
                if (s.Keys!.Length != (long)kvDim * (s.Hidden.Length / dim) || s.Values!.Length != s.Keys.Length)
                    throw new ArgumentException($"a sequence's cached keys ({s.Keys.Length}) and values ({s.Values!.Length}) are not [{s.Hidden.Length / dim}, {kvDim}] like its hidden states");
        }
        var sequenceOf = context || keepSequenceRows ? new int[positions] : [];
        var visible = context ? new int[positions] : [];
        var positionOf = keepSequenceRows ? new int[positions] : [];
        int p = 0, index = -1;
        foreach (var s in sequences)
        {
            index++;
            for (int t = 0; t < Rows(s, dim); t++)
            {
                if (!Trains(s, t)) continue;
                s.Hidden.AsSpan(t * dim, dim).CopyTo(hidden.AsSpan(p * dim, dim));
                next[p] = s.Tokens[t + 1];
                if (context || keepSequenceRows) sequenceOf[p] = index;
                if (context) visible[p] = t + 1;
                if (keepSequenceRows) positionOf[p] = t;
                int hiddenRows = s.Hidden.Length / dim;
                bool onPath = true;
                for (int i = 0; i < heads; i++)
                {
                    int target = t + 2 + i;
                    onPath = onPath && target < s.Tokens.Length && (s.Greedy is null || s.Greedy[target]) && (!keepSequenceRows || target - 1 < hiddenRows);
                    targets[p * heads + i] = onPath ? s.Tokens[target] : -1;
                }
                p++;
            }
        }
        var kv = context ? new ContextKv([.. sequences.Select(s => s.Keys!)], [.. sequences.Select(s => s.Values!)], sequenceOf, visible, kvDim) : null;
        var rows = keepSequenceRows ? new SequenceRows([.. sequences.Select(s => s.Hidden)], sequenceOf, positionOf) : null;
        return new TrainingCorpus(dim, heads, hidden, targets, next, (int)positions, sequences.Count, tokens, kv, rows);
    }

    /// <summary>Positions of a sequence that may have targets: a hidden state, and t + 2 inside the sequence.</summary>
    private static int Rows(HiddenSequence s, int dim) => Math.Max(0, Math.Min(s.Hidden.Length / dim, s.Tokens.Length - 2));

    /// <summary>Whether position t has a target for head 0 (x_{t+1} and x_{t+2} greedy when marked).</summary>
    private static bool Trains(HiddenSequence s, int t) => s.Greedy is null || (s.Greedy[t + 1] && s.Greedy[t + 2]);

    /// <summary>Positions with a target for head <paramref name="head"/>.</summary>
    public int TargetCount(int head)
    {
        int count = 0;
        for (int p = 0; p < Positions; p++) if (Targets[p * HeadCount + head] >= 0) count++;
        return count;
    }

    /// <summary>How often each token of a vocabulary of <paramref name="vocabSize"/> is a target (all heads together).</summary>
    public long[] TargetFrequencies(int vocabSize)
    {
        var counts = new long[vocabSize];
        foreach (int t in Targets)
        {
            if (t < 0) continue;
            if (t >= vocabSize) throw new InvalidDataException($"target token {t} is outside the vocabulary of {vocabSize}");
            counts[t]++;
        }
        return counts;
    }

    /// <summary>The error for text whose chunks (of these token counts) are too short to give every head a target.</summary>
    internal static InvalidDataException TooLittleText(string source, int heads, IReadOnlyList<int> chunkLengths, string ending = ".") => new(
        $"{source}: too little text to train {heads} heads: each chunk needs more than {heads + 1} tokens (head {heads - 1} predicts {heads + 1} tokens ahead), " +
        $"but the {chunkLengths.Count} chunk(s) have at most {(chunkLengths.Count == 0 ? 0 : chunkLengths.Max())}{ending}");
}
