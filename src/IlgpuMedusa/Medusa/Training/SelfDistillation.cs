using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Tokenization;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Medusa.Training;

/// <summary>
/// Self-distillation data: the base model writes its own training text. Several sequences are decoded side by side (one
/// batched forward per step over several KV sequences) with temperature sampling from varied starts: BOS
/// alone, or BOS and a common story opening. A sequence ends at an end token (llama2.c story models emit BOS between
/// stories) or at the context length, and its slot starts a new one. The final hidden state of every fed token is kept,
/// so the heads' inputs never need a second pass.
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
        IProgress<double>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tokens, 1);
        var c = model.Config;
        var b = model.Backend;
        int context = c.MaxSequenceLength, d = c.Dim, v = c.VocabSize;
        // Enough side-by-side sequences to fill the batch, but few enough that each can reach a natural end.
        int width = Math.Clamp(tokens / 256, 1, streams);
        var random = new Random(seed);
        var openings = Openings.Select(o => tokenizer.Encode(o, addBos: true).ToArray()).Where(ids => ids.Length < context).ToArray();
        int[] bosOnly = [c.BosTokenId];
        var sampler = new Sampler(Sampling.Temperature(temperature), (ulong)seed * 0x9E3779B97F4A7C15UL + 1);

        long perToken = 2L * c.Layers * c.KvDim * sizeof(float);
        const int BlockSize = 16;
        long budget = (long)width * ((context + BlockSize - 1) / BlockSize) * BlockSize * perToken;
        using var pool = KvBlockPool.FromBudget(b, c.Layers, c.KvHeads, c.HeadDim, BlockSize, budget);
        using var workspace = new ForwardWorkspace(b, c, width, width);
        var slots = new Running[width];
        var finished = new List<HiddenSequence>();
        long produced = 0; // tokens in finished sequences
        try
        {
            for (int i = 0; i < width; i++) slots[i] = new Running(pool, context, d, Start());
            var inputTokens = new int[width];
            var positions = new int[width];
            var segments = new ForwardSegment[width];
            var hidden = new float[width * d];
            var logits = new float[(long)width * v];
            while (true)
            {
                cancellationToken.ThrowIfCancellationRequested();
                long running = slots.Sum(s => (long)s.Tokens.Count);
                progress?.Report(Math.Min(1.0, (double)(produced + running) / tokens));
                if (produced + running >= tokens) break;
                for (int i = 0; i < width; i++)
                {
                    inputTokens[i] = slots[i].Tokens[slots[i].Fed];
                    positions[i] = slots[i].Fed;
                    segments[i] = new ForwardSegment(slots[i].Kv, slots[i].Fed, i, 1, null);
                }
                var inputs = workspace.Prepare(inputTokens, positions);
                var h = model.Forward(workspace, inputs, segments);
                b.Download(h, hidden);
                b.Download(model.Logits(workspace, h), logits);
                for (int i = 0; i < width; i++)
                {
                    var s = slots[i];
                    s.Hidden.AddRange(hidden.AsSpan(i * d, d));
                    s.Fed++;
                    if (s.Fed < s.Tokens.Count) continue; // still in the forced opening
                    int next = sampler.Sample(logits.AsSpan((int)((long)i * v), v));
                    s.Tokens.Add(next);
                    if (c.EndTokenIds.Contains(next) || s.Fed >= context)
                    {
                        finished.Add(s.Finish());
                        produced += finished[^1].Tokens.Length;
                        slots[i] = new Running(pool, context, d, Start());
                    }
                }
            }
            // Cut the running sequences where the budget ran out; they are as good as any other text.
            foreach (var s in slots)
            {
                if (produced >= tokens) break;
                if (s.Tokens.Count < 3) continue; // no position with a target yet
                finished.Add(s.Finish(Math.Min(s.Tokens.Count, (int)Math.Min(int.MaxValue, tokens - produced))));
                produced += finished[^1].Tokens.Length;
            }
        }
        finally
        {
            foreach (var s in slots) s?.Kv.Dispose();
        }
        progress?.Report(1.0);
        return finished;

        int[] Start() => random.Next(2) == 0 ? bosOnly : openings[random.Next(openings.Length)];
    }

    /// <summary>One sequence being generated: its tokens (forced opening, then sampled), how many were fed, their hidden states.</summary>
    private sealed class Running(KvBlockPool pool, int context, int dim, int[] start)
    {
        public KvSequence Kv { get; } = pool.CreateSequence(context);
        public List<int> Tokens { get; } = [.. start];
        public List<float> Hidden { get; } = new(context * dim);
        public int Fed { get; set; }

        /// <summary>The sequence so far (or its first <paramref name="length"/> tokens); releases the KV blocks.</summary>
        public HiddenSequence Finish(int? length = null)
        {
            Kv.Dispose();
            int n = length ?? Tokens.Count;
            int rows = Math.Min(Fed, n);
            return new HiddenSequence([.. Tokens.GetRange(0, n)], [.. Hidden.GetRange(0, rows * dim)]);
        }
    }
}
