using System.Globalization;
using System.Text;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Medusa.Training;

/// <summary>
/// How often each candidate-tree path would be accepted under greedy decoding, measured from greedy-path text: at a
/// position t whose next tokens x_{t+1} .. x_{t+1+K} are all the base model's argmax, the heads run on h_t and head i
/// ranks x_{t+2+i} among its top-k (or misses). With greedy acceptance a tree node (path [r_0, .., r_{d−1}]) is accepted
/// exactly when head j's r_j-th token is x_{t+2+j} for every j &lt; d, so the expected tokens per step of a tree are
/// 1 + Σ over its nodes of P(node) (at most one node per depth can match).
/// </summary>
public sealed class AcceptanceProfile
{
    private readonly Dictionary<long, long> _counts = [];
    private readonly long[] _top1, _topK;

    internal AcceptanceProfile(int depth)
    {
        Depth = depth;
        _top1 = new long[depth];
        _topK = new long[depth];
    }

    /// <summary>Heads measured (the deepest path).</summary>
    public int Depth { get; }
    /// <summary>Positions measured.</summary>
    public long Positions { get; private set; }

    /// <summary>Records one position: <paramref name="ranks"/>[i] = rank of head i's target among its top-k, −1 for a miss.</summary>
    internal void Add(ReadOnlySpan<int> ranks)
    {
        Positions++;
        for (int i = 0; i < ranks.Length; i++)
        {
            if (ranks[i] == 0) _top1[i]++;
            if (ranks[i] >= 0) _topK[i]++;
        }
        long key = 0, scale = 1;
        for (int i = 0; i < ranks.Length && ranks[i] >= 0; i++)
        {
            key += (ranks[i] + 1) * scale;
            scale *= MedusaHeads.TopK + 1;
            _counts[key] = _counts.GetValueOrDefault(key) + 1;
        }
    }

    /// <summary>Share of the positions where head <paramref name="head"/>'s best token is its target (alone, whatever the heads before it did).</summary>
    public double Top1(int head) => Positions == 0 ? 0 : (double)_top1[head] / Positions;

    /// <summary>Share of the positions where head <paramref name="head"/>'s target is among its top-k (<see cref="MedusaHeads.TopK"/>).</summary>
    public double TopK(int head) => Positions == 0 ? 0 : (double)_topK[head] / Positions;

    /// <summary>The measured chance that the path (top-k index per depth) is accepted.</summary>
    public double Probability(IReadOnlyList<int> path) => Positions == 0 ? 0 : (double)_counts.GetValueOrDefault(Key(path)) / Positions;

    /// <summary>Expected tokens per step of a tree given by its paths (root excluded): 1 + Σ P(path).</summary>
    public double ExpectedAccepted(IEnumerable<IReadOnlyList<int>> paths) => 1 + paths.Sum(Probability);

    /// <summary>
    /// The tree of <paramref name="nodes"/> nodes (root included) grown greedily: each step adds the path with the highest
    /// measured acceptance whose parent is in the tree (ties: shorter, then lexicographically smaller). Since a path is never
    /// accepted more often than its parent, this is the tree with the highest expected acceptance for its size.
    /// Paths never seen accepted are not added, so the tree may be smaller when the measurement is small.
    /// </summary>
    public IReadOnlyList<int[]> Grow(int nodes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(nodes, 1);
        var ranked = _counts
            .Select(kv => (Path: Decode(kv.Key), Count: kv.Value))
            .OrderByDescending(x => x.Count)
            .ThenBy(x => x.Path.Length)
            .ThenBy(x => string.Join(',', x.Path.Select(r => r.ToString("00", CultureInfo.InvariantCulture))), StringComparer.Ordinal)
            .ToList();
        var chosen = new List<int[]>();
        var inTree = new HashSet<long> { 0 };
        while (chosen.Count < nodes - 1)
        {
            int next = ranked.FindIndex(x => inTree.Contains(Key(x.Path.AsSpan(0, x.Path.Length - 1).ToArray())));
            if (next < 0) break;
            var path = ranked[next].Path;
            ranked.RemoveAt(next);
            chosen.Add(path);
            inTree.Add(Key(path));
        }
        return chosen;
    }

    private static long Key(IReadOnlyList<int> path)
    {
        long key = 0, scale = 1;
        foreach (int r in path)
        {
            if (r is < 0 or >= MedusaHeads.TopK) return -1;
            key += (r + 1) * scale;
            scale *= MedusaHeads.TopK + 1;
        }
        return key;
    }

    private static int[] Decode(long key)
    {
        var path = new List<int>();
        for (; key > 0; key /= MedusaHeads.TopK + 1) path.Add((int)(key % (MedusaHeads.TopK + 1)) - 1);
        return [.. path];
    }

    /// <summary>A tree's paths as the JSON that <c>--tree FILE</c> reads: <c>[[0], [0, 0], [1]]</c>.</summary>
    public static string ToJson(IEnumerable<IReadOnlyList<int>> paths)
    {
        var text = new StringBuilder("[");
        foreach (var path in paths)
        {
            if (text.Length > 1) text.Append(", ");
            text.Append('[').AppendJoin(", ", path).Append(']');
        }
        return text.Append(']').ToString();
    }
}

/// <summary>Measures an <see cref="AcceptanceProfile"/> of Medusa heads on greedy-path text, through the heads' runtime path.</summary>
public static class TreeGrower
{
    /// <summary>
    /// Loads a model and heads on the host and measures the heads' acceptance profile on greedy-path text: by default the
    /// text self-distillation writes (training-style openings; give a <paramref name="seed"/> other than training's), or
    /// the greedy continuations of <paramref name="prompts"/> when given.
    /// </summary>
    /// <param name="modelDirectory">The base model.</param>
    /// <param name="headsPath">The heads file.</param>
    /// <param name="tokens">Greedy-path tokens to generate (without prompts).</param>
    /// <param name="policy">Greedy-path policy of that text.</param>
    /// <param name="seed">Its seed.</param>
    /// <param name="prompts">Prompts to continue instead (text), or null.</param>
    /// <param name="maxNewTokens">Tokens generated per prompt.</param>
    /// <param name="threads">Host threads (null: all cores).</param>
    /// <param name="progress">Stage and fraction.</param>
    /// <param name="cancellationToken">Checked per step.</param>
    public static AcceptanceProfile Profile(string modelDirectory, string headsPath, int tokens, DistillationPolicy policy, int seed, IReadOnlyList<string>? prompts,
        int maxNewTokens, int? threads, Action<string, double>? progress = null, CancellationToken cancellationToken = default)
    {
        if (policy.Text != DistillationText.Greedy) throw new ArgumentException("acceptance is measured on greedy-path text", nameof(policy));
        using var checkpoint = Models.ModelDirectory.OpenCheckpoint(modelDirectory);
        var tokenizer = Models.ModelDirectory.OpenTokenizer(modelDirectory);
        using var headsFile = Models.MedusaHeadsCheckpoint.Open(headsPath);
        using var backend = new Compute.Host.HostBackend(threads ?? Environment.ProcessorCount);
        using var model = LlamaModel.Load(checkpoint, backend, Models.DType.F32);
        using var heads = MedusaHeads.Load(headsFile, model, checkpoint);
        var sequences = prompts is null
            ? SelfDistillation.Generate(model, tokenizer, tokens, policy, 64, seed, Report("generating greedy-path text"), cancellationToken: cancellationToken)
            : SelfDistillation.ContinueGreedily(model, prompts.Select(p => tokenizer.Encode(p, addBos: true).ToArray()).ToArray(), maxNewTokens, 64,
                Report("continuing the prompts greedily"), cancellationToken: cancellationToken);
        return Measure(model, heads, sequences, Report("running the heads"), cancellationToken);

        IProgress<double>? Report(string stage) => progress is null ? null : new StageProgress(value => progress(stage, value));
    }

    private sealed class StageProgress(Action<double> report) : IProgress<double>
    {
        public void Report(double value) => report(value);
    }

    /// <summary>
    /// Runs <paramref name="heads"/> (as loaded for decoding) on every position of <paramref name="sequences"/> whose next
    /// 1 + K tokens are greedy, and records each head's rank of its target.
    /// </summary>
    /// <param name="model">The base model the heads were loaded for.</param>
    /// <param name="heads">The heads.</param>
    /// <param name="sequences">Greedy-path text with its hidden states and greedy flags (<see cref="SelfDistillation"/>).</param>
    /// <param name="progress">Fraction of the sequences done.</param>
    /// <param name="cancellationToken">Checked per sequence.</param>
    public static AcceptanceProfile Measure(LlamaModel model, MedusaHeads heads, IReadOnlyList<HiddenSequence> sequences, IProgress<double>? progress = null,
        CancellationToken cancellationToken = default)
    {
        int k = heads.HeadCount, d = model.Config.Dim;
        var c = model.Config;
        var profile = new AcceptanceProfile(k);
        using var hidden = model.Backend.Allocate(Models.DType.F32, 1, d);
        var ranks = new int[k];
        // Heads with context attention read the last layer's cache: each sequence is prefilled into one first.
        int longest = sequences.Count == 0 ? 1 : Math.Max(1, sequences.Max(x => x.Tokens.Length));
        using var pool = heads.HasContextAttention
            ? KvBlockPool.FromBudget(model.Backend, c.Layers, c.KvHeads, c.HeadDim, 16, (longest + 15) / 16 * 16L * 2 * c.Layers * c.KvDim * sizeof(float))
            : null;
        using var workspace = heads.HasContextAttention ? new ForwardWorkspace(model.Backend, c, longest, 1) : null;
        var positions = Enumerable.Range(0, longest).ToArray();
        for (int s = 0; s < sequences.Count; s++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var sequence = sequences[s];
            var greedy = sequence.Greedy ?? throw new ArgumentException("the acceptance profile needs greedy-path text (sequences with greedy flags)", nameof(sequences));
            int rows = sequence.Hidden.Length / d;
            using var kv = pool?.CreateSequence(sequence.Tokens.Length);
            if (kv is not null) model.Forward(workspace!, workspace!.Prepare(sequence.Tokens, positions.AsSpan(0, sequence.Tokens.Length)), kv, 0);
            for (int t = 0; t < rows && t + 1 + k < sequence.Tokens.Length; t++)
            {
                bool onPath = true;
                for (int j = t + 1; j <= t + 1 + k && onPath; j++) onPath = greedy[j];
                if (!onPath) continue;
                model.Backend.Upload(hidden, sequence.Hidden.AsSpan(t * d, d));
                var top = heads.Predict(hidden, k, nextToken: -1, kv, t + 1);
                for (int i = 0; i < k; i++) ranks[i] = top.Slice(i * MedusaHeads.TopK, MedusaHeads.TopK).IndexOf(sequence.Tokens[t + 2 + i]);
                profile.Add(ranks);
            }
            progress?.Report((s + 1.0) / sequences.Count);
        }
        return profile;
    }
}
