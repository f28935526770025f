using System.Numerics.Tensors;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Tokenization;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Medusa.Training;

/// <summary>What text the base model writes for self-distillation.</summary>
public enum DistillationText
{
    /// <summary>
    /// Greedy-path text: after the opening a few sampled tokens (<see cref="DistillationPolicy.MinPrefixTokens"/> .. <see cref="DistillationPolicy.PrefixTokens"/>), then
    /// the greedy continuation with an occasional sampled token (<see cref="DistillationPolicy.Explore"/>). Every token is
    /// marked greedy or not, so only targets on a greedy path train the heads (what greedy Medusa decoding asks of them).
    /// </summary>
    Greedy,

    /// <summary>Temperature sampling throughout (<see cref="DistillationPolicy.Temperature"/>); every target counts.</summary>
    Sampled,
}

/// <summary>How <see cref="SelfDistillation"/> chooses each token.</summary>
public sealed record DistillationPolicy
{
    /// <summary>Greedy-path (default) or sampled text.</summary>
    public DistillationText Text { get; init; } = DistillationText.Greedy;

    /// <summary>Sampling temperature of <see cref="DistillationText.Sampled"/> text.</summary>
    public float Temperature { get; init; } = 0.8f;

    /// <summary>Greedy text: each sequence samples a uniform <see cref="MinPrefixTokens"/> .. this many tokens after its opening before going greedy.</summary>
    public int PrefixTokens { get; init; } = 20;

    /// <summary>Greedy text: the fewest sampled tokens after an opening (a few make every sequence's start its own).</summary>
    public int MinPrefixTokens { get; init; } = 4;

    /// <summary>Greedy text: the chance that a token after the prefix is sampled rather than the argmax.</summary>
    public float Explore { get; init; } = 0.1f;

    /// <summary>Greedy text: temperature of the sampled tokens (prefix and exploration).</summary>
    public float SampleTemperature { get; init; } = 1f;

    /// <summary>
    /// Keep the keys and values the base model's last layer cached for every token (<see cref="HiddenSequence.Keys"/>):
    /// the inputs of heads with context attention.
    /// </summary>
    public bool LastLayerKv { get; init; }

    /// <summary>Temperature sampling throughout, as before greedy-path text existed.</summary>
    public static DistillationPolicy Sampled(float temperature) => new() { Text = DistillationText.Sampled, Temperature = temperature };
}

/// <summary>
/// Self-distillation data: the base model writes its own training text. Several sequences are decoded side by side (one
/// batched forward per step over several KV sequences) from varied starts: BOS alone, or BOS and a common story
/// opening; then greedy-path text or temperature sampling (<see cref="DistillationPolicy"/>). A sequence ends at an end
/// token (llama2.c story models emit BOS between stories) or at the context length, and its slot starts a new one. The
/// final hidden state of every fed token is kept, so the heads' inputs never need a second pass.
/// </summary>
public static class SelfDistillation
{
    /// <summary>Openings a sequence may start with (after BOS); half of the sequences start from BOS alone.</summary>
    private static readonly string[] Openings =
    [
        "Once upon a time", "One day", "Once there was", "There was a", "Tom", "Lily", "Ben", "Sue", "Max", "Anna", "Sam",
        "The", "A little", "It was a sunny day", "Mom", "Dad", "The cat", "The dog", "A bird", "In a small town",
        "Every morning", "Timmy", "Lucy", "The sun", "Tim and", "Sara", "Jack", "Mia", "The old", "Yesterday",
    ];

    /// <summary>
    /// Generates sequences until they hold <paramref name="tokens"/> tokens in all (the sequences still running then are
    /// cut there). Deterministic for a seed.
    /// </summary>
    /// <param name="model">The base model (any backend).</param>
    /// <param name="tokenizer">Its tokenizer (for the openings).</param>
    /// <param name="tokens">Tokens to generate in all.</param>
    /// <param name="temperature">Sampling temperature.</param>
    /// <param name="streams">Most sequences decoded side by side.</param>
    /// <param name="seed">Seed of the sampler and of the choice of openings.</param>
    /// <param name="progress">Fraction of <paramref name="tokens"/> done.</param>
    /// <param name="cancellationToken">Checked every step.</param>
    public static IReadOnlyList<HiddenSequence> Generate(LlamaModel model, ITextTokenizer tokenizer, int tokens, float temperature, int streams, int seed,
        IProgress<double>? progress = null, CancellationToken cancellationToken = default) =>
        Generate(model, tokenizer, tokens, DistillationPolicy.Sampled(temperature), streams, seed, progress, cancellationToken: cancellationToken);

    /// <summary>
    /// Generates sequences until they hold <paramref name="tokens"/> tokens in all (the sequences still running then are
    /// cut there), choosing tokens by <paramref name="policy"/>. Greedy-path sequences carry their greedy flags.
    /// Deterministic for a seed.
    /// </summary>
    /// <param name="model">The base model (any backend).</param>
    /// <param name="tokenizer">Its tokenizer (for the openings).</param>
    /// <param name="tokens">Tokens to generate in all.</param>
    /// <param name="policy">How tokens are chosen.</param>
    /// <param name="streams">Most sequences decoded side by side.</param>
    /// <param name="seed">Seed of the sampler and of the choice of openings.</param>
    /// <param name="progress">Fraction of <paramref name="tokens"/> done.</param>
    /// <param name="hostClassifier">
    /// The model's lm_head [V, D] in host memory, or null. When given, each step's logits come from the downloaded
    /// hidden states through the training GEMM on the host (faster than the host backend's batched classifier product)
    /// instead of the backend.
    /// </param>
    /// <param name="threads">Host threads for that product.</param>
    /// <param name="cancellationToken">Checked every step.</param>
    public static IReadOnlyList<HiddenSequence> Generate(LlamaModel model, ITextTokenizer tokenizer, int tokens, DistillationPolicy policy, int streams, int seed,
        IProgress<double>? progress = null, float[]? hostClassifier = null, int threads = 1, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tokens, 1);
        var c = model.Config;
        bool greedyText = policy.Text == DistillationText.Greedy;
        var random = new Random(seed);
        var openings = Openings.Select(o => tokenizer.Encode(o, addBos: true).ToArray()).Where(ids => ids.Length < c.MaxSequenceLength).ToArray();
        int[] bosOnly = [c.BosTokenId];
        // Enough side-by-side sequences to fill the batch, but few enough that each can reach a natural end.
        int width = Math.Clamp(tokens / 256, 1, streams);
        return Decode(model, width, policy, random, seed, tokens, maxNewTokens: null, NextStart, progress, hostClassifier, threads, cancellationToken);

        Start? NextStart()
        {
            var start = random.Next(2) == 0 ? bosOnly : openings[random.Next(openings.Length)];
            return new Start(start, greedyText ? random.Next(Math.Min(policy.MinPrefixTokens, policy.PrefixTokens), policy.PrefixTokens + 1) : 0);
        }
    }

    /// <summary>
    /// The greedy continuation of each prompt (token ids, BOS first), at most <paramref name="maxNewTokens"/> tokens or to an
    /// end token, with hidden states and greedy flags (prompt tokens are flagged by whether each was the argmax too).
    /// </summary>
    /// <param name="model">The base model (any backend).</param>
    /// <param name="prompts">The prompts.</param>
    /// <param name="maxNewTokens">Most tokens generated per prompt.</param>
    /// <param name="streams">Most sequences decoded side by side.</param>
    /// <param name="progress">Fraction of the prompts done.</param>
    /// <param name="cancellationToken">Checked every step.</param>
    /// <param name="lastLayerKv">Keep the last layer's cached keys and values (<see cref="DistillationPolicy.LastLayerKv"/>).</param>
    public static IReadOnlyList<HiddenSequence> ContinueGreedily(LlamaModel model, IReadOnlyList<int[]> prompts, int maxNewTokens, int streams,
        IProgress<double>? progress = null, bool lastLayerKv = false, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxNewTokens, 1);
        if (prompts.Count == 0) return [];
        foreach (var p in prompts)
            if (p.Length == 0 || p.Length >= model.Config.MaxSequenceLength)
                throw new ArgumentException($"a prompt of {p.Length} tokens does not fit the context of {model.Config.MaxSequenceLength}", nameof(prompts));
        int next = 0;
        var policy = new DistillationPolicy { PrefixTokens = 0, Explore = 0, LastLayerKv = lastLayerKv };
        var result = Decode(model, Math.Min(streams, prompts.Count), policy, new Random(0), 0, tokenBudget: null, maxNewTokens,
            () => next < prompts.Count ? new Start(prompts[next++], 0) : null, null, null, 1, cancellationToken, finished => progress?.Report((double)finished / prompts.Count));
        return result;
    }

    /// <summary>A sequence's forced start (BOS first) and how many tokens it samples after it before going greedy.</summary>
    private sealed record Start(int[] Tokens, int Prefix);

    /// <summary>
    /// The decoding loop: up to <paramref name="width"/> sequences side by side, one batched forward per step; a finished
    /// slot takes the next start (none left: the slot stays empty). Stops when the sequences hold
    /// <paramref name="tokenBudget"/> tokens (running ones are cut there) or, without a budget, when every start is done.
    /// </summary>
    private static unsafe List<HiddenSequence> Decode(LlamaModel model, int width, DistillationPolicy policy, Random random, int seed, long? tokenBudget, int? maxNewTokens,
        Func<Start?> nextStart, IProgress<double>? progress, float[]? hostClassifier, int threads, CancellationToken cancellationToken, Action<int>? finishedCount = null)
    {
        var c = model.Config;
        var b = model.Backend;
        int context = c.MaxSequenceLength, d = c.Dim, v = c.VocabSize;
        float[]? packed = null;
        if (hostClassifier is not null)
        {
            if (hostClassifier.Length != (long)v * d) throw new ArgumentException($"the host classifier has {hostClassifier.Length} values, expected [{v}, {d}]", nameof(hostClassifier));
            packed = new float[TrainingGemm.PackedLength(v, d)];
            TrainingGemm.PackTransposed(hostClassifier, v, d, packed, threads);
        }
        bool greedyText = policy.Text == DistillationText.Greedy;
        var sampler = new Sampler(Sampling.Temperature(greedyText ? policy.SampleTemperature : policy.Temperature), (ulong)seed * 0x9E3779B97F4A7C15UL + 1);

        long perToken = 2L * c.Layers * c.KvDim * sizeof(float);
        const int BlockSize = 16;
        long budget = (long)width * ((context + BlockSize - 1) / BlockSize) * BlockSize * perToken;
        using var pool = KvBlockPool.FromBudget(b, c.Layers, c.KvHeads, c.HeadDim, BlockSize, budget);
        using var workspace = new ForwardWorkspace(b, c, width, width);
        var slots = new Running?[width];
        var finished = new List<HiddenSequence>();
        long produced = 0; // tokens in finished sequences
        try
        {
            for (int i = 0; i < width; i++) slots[i] = Open();
            var inputTokens = new int[width];
            var positions = new int[width];
            var segments = new ForwardSegment[width];
            var active = new int[width];
            var hidden = new float[width * d];
            var logits = new float[(long)width * v];
            while (true)
            {
                cancellationToken.ThrowIfCancellationRequested();
                long running = slots.Sum(s => (long)(s?.Tokens.Count ?? 0));
                if (tokenBudget is long total)
                {
                    progress?.Report(Math.Min(1.0, (double)(produced + running) / total));
                    if (produced + running >= total) break;
                }
                int n = 0;
                for (int i = 0; i < width; i++)
                {
                    if (slots[i] is not { } slot) continue;
                    inputTokens[n] = slot.Tokens[slot.Fed];
                    positions[n] = slot.Fed;
                    segments[n] = new ForwardSegment(slot.Kv, slot.Fed, n, 1, null);
                    active[n++] = i;
                }
                if (n == 0) break;
                var inputs = workspace.Prepare(inputTokens.AsSpan(0, n), positions.AsSpan(0, n));
                var h = model.Forward(workspace, inputs, new ArraySegment<ForwardSegment>(segments, 0, n));
                b.Download(h, hidden.AsSpan(0, n * d));
                if (packed is null)
                {
                    b.Download(model.Logits(workspace, h), logits.AsSpan(0, (int)((long)n * v)));
                }
                else
                {
                    fixed (float* ph = hidden, pp = packed, pl = logits)
                        TrainingGemm.Multiply(n, v, d, GemmA.RowMajor(ph, d), GemmB.Packed(pp, d), pl, v, accumulate: false, threads);
                }
                for (int r = 0; r < n; r++)
                {
                    int i = active[r];
                    var s = slots[i]!;
                    s.Hidden.AddRange(hidden.AsSpan(r * d, d));
                    s.Fed++;
                    var row = logits.AsSpan((int)((long)r * v), v);
                    int argmax = greedyText ? TensorPrimitives.IndexOfMax(row) : -1;
                    if (s.Fed < s.Tokens.Count)
                    {
                        s.Greedy.Add(s.Tokens[s.Fed] == argmax); // still in the forced start
                        continue;
                    }
                    int next;
                    if (!greedyText) next = sampler.Sample(row);
                    else if (s.PrefixLeft > 0)
                    {
                        s.PrefixLeft--;
                        next = sampler.Sample(row);
                    }
                    else next = policy.Explore > 0 && random.NextDouble() < policy.Explore ? sampler.Sample(row) : argmax;
                    s.Tokens.Add(next);
                    s.Greedy.Add(next == argmax);
                    s.Generated++;
                    if (c.EndTokenIds.Contains(next) || s.Fed >= context || s.Generated >= maxNewTokens)
                    {
                        finished.Add(s.Finish());
                        produced += finished[^1].Tokens.Length;
                        finishedCount?.Invoke(finished.Count);
                        slots[i] = Open();
                    }
                }
            }
            // Cut the running sequences where the budget ran out; they are as good as any other text.
            if (tokenBudget is long limit)
                foreach (var s in slots)
                {
                    if (s is null || produced >= limit) break;
                    if (s.Tokens.Count < 3) continue; // no position with a target yet
                    finished.Add(s.Finish(Math.Min(s.Tokens.Count, (int)Math.Min(int.MaxValue, limit - produced))));
                    produced += finished[^1].Tokens.Length;
                }
        }
        finally
        {
            foreach (var s in slots) s?.Kv.Dispose();
        }
        progress?.Report(1.0);
        return finished;

        Running? Open() => nextStart() is { } start
            ? new Running(pool, context, d, start.Tokens, greedyText, policy.LastLayerKv ? c.Layers - 1 : -1) { PrefixLeft = start.Prefix }
            : null;
    }

    /// <summary>
    /// One sequence being generated: its tokens (forced opening, then chosen), whether each was the argmax, how many were
    /// fed, their hidden states.
    /// </summary>
    private sealed class Running(KvBlockPool pool, int context, int dim, int[] start, bool keepGreedy, int kvLayer)
    {
        public KvSequence Kv { get; } = pool.CreateSequence(context);
        public List<int> Tokens { get; } = [.. start];
        public List<bool> Greedy { get; } = [false]; // x_0 (BOS) follows nothing
        public List<float> Hidden { get; } = new(context * dim);
        public int Fed { get; set; }
        /// <summary>Tokens chosen after the forced start.</summary>
        public int Generated { get; set; }
        /// <summary>Sampled tokens still to come before greedy decoding (greedy-path text).</summary>
        public int PrefixLeft { get; set; }

        /// <summary>The sequence so far (or its first <paramref name="length"/> tokens); releases the KV blocks.</summary>
        public HiddenSequence Finish(int? length = null)
        {
            int n = length ?? Tokens.Count;
            if (keepGreedy) n = Math.Min(n, Greedy.Count); // a sequence cut inside its opening: only the tokens judged so far
            int rows = Math.Min(Fed, n);
            float[]? keys = null, values = null;
            if (kvLayer >= 0)
            {
                // The last layer's cache rows of the fed tokens, as heads with context attention will find them.
                int kvDim = pool.Layout.KvDim;
                keys = new float[rows * kvDim];
                values = new float[rows * kvDim];
                for (int p = 0; p < rows; p++)
                {
                    int slot = Kv.PhysicalSlot(p);
                    pool.Cache.ReadSlot(kvLayer, 0, slot, keys.AsSpan(p * kvDim, kvDim));
                    pool.Cache.ReadSlot(kvLayer, 1, slot, values.AsSpan(p * kvDim, kvDim));
                }
            }
            Kv.Dispose();
            return new HiddenSequence([.. Tokens.GetRange(0, n)], [.. Hidden.GetRange(0, rows * dim)], keepGreedy ? [.. Greedy.GetRange(0, n)] : null, keys, values);
        }
    }
}
