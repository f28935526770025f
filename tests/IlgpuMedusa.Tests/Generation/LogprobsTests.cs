using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Models;
using IlgpuMedusa.Tests.Hosting;
using IlgpuMedusa.Tokenization;

namespace IlgpuMedusa.Tests.Generation;

/// <summary>
/// Log-probabilities of generated and prompt tokens: the math against values worked out by hand, a model whose logits
/// are known from its weights, and three independent paths through the runtime that must agree (one token per step,
/// Medusa tree verification, prompt scoring in the prefill).
/// </summary>
public sealed class LogprobsTests(DemoEngineFixture fixture) : IClassFixture<DemoEngineFixture>
{
    [Fact]
    public void LogSoftmaxOfAKnownDistribution()
    {
        // logits ln 1, ln 2, ln 3, ln 4: probabilities 0.1, 0.2, 0.3, 0.4.
        float[] logits = [0f, MathF.Log(2), MathF.Log(3), MathF.Log(4)];
        var result = LogprobMath.Of(logits, 1, 3);
        Assert.Equal(1, result.TokenId);
        Assert.Equal(Math.Log(0.2), result.Logprob, 5);
        Assert.Equal([3, 2, 1], result.Top.Select(t => t.TokenId));
        Assert.Equal(Math.Log(0.4), result.Top[0].Logprob, 5);
        Assert.Equal(Math.Log(0.3), result.Top[1].Logprob, 5);
    }

    [Fact]
    public void HugeLogitsDoNotOverflow_TiesKeepTheLowerIdFirst()
    {
        float[] logits = [1000f, 1000f, -1000f, 1000f];
        var result = LogprobMath.Of(logits, 2, 4);
        Assert.Equal(Math.Log(1.0 / 3), result.Top[0].Logprob, 5);
        Assert.Equal([0, 1, 3, 2], result.Top.Select(t => t.TokenId));
        Assert.Equal(-2000 - Math.Log(3), result.Logprob, 2);
        Assert.Empty(LogprobMath.Of(logits, 0, 0).Top);
        Assert.Throws<ArgumentOutOfRangeException>(() => LogprobMath.Of(logits, 4, 1));
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(21)]
    public void OutOfRangeCountsAreRefused(int count)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new GenerationOptions { Logprobs = count }.Validate());
        Assert.Contains("Logprobs", e.Message, StringComparison.Ordinal);
    }

    private static void Close(double expected, double actual, double tolerance) =>
        Assert.True(Math.Abs(expected - actual) <= tolerance, $"expected {expected} within {tolerance}, got {actual}");

    private static (List<int> Ids, List<TokenLogprob> Logprobs, GenerationStats Stats) Run(InferenceEngine engine, IReadOnlyList<int> prompt, GenerationOptions options)
    {
        var stats = new GenerationStats();
        var ids = new List<int>();
        var logprobs = new List<TokenLogprob>();
        foreach (var piece in engine.Generate(prompt, options, stats))
        {
            ids.AddRange(piece.TokenIds);
            if (options.Logprobs is null) Assert.Null(piece.Logprobs);
            else
            {
                Assert.NotNull(piece.Logprobs);
                Assert.Equal(piece.TokenIds, piece.Logprobs!.Select(l => l.TokenId));
                logprobs.AddRange(piece.Logprobs);
            }
        }
        return (ids, logprobs, stats);
    }

    [Fact]
    public void GreedyTokensAreTheMostLikely_MedusaGivesTheValuesOfOneTokenSteps()
    {
        var engine = fixture.Engine;
        var prompt = engine.EncodePrompt("Once upon a time", new GenerationOptions());
        var plain = Run(engine, prompt, new GenerationOptions { MaxTokens = 60, UseMedusa = false, Logprobs = 5 });
        var medusa = Run(engine, prompt, new GenerationOptions { MaxTokens = 60, Logprobs = 5 });
        var without = Run(engine, prompt, new GenerationOptions { MaxTokens = 60 });

        Assert.Equal(60, plain.Ids.Count);
        Assert.Equal(plain.Ids, medusa.Ids);
        Assert.Equal(plain.Ids, without.Ids); // asking for logprobs changes no token
        Assert.True(medusa.Stats.Medusa!.MeanAccepted > 1.5, $"the shipped heads should accept several tokens per step, got {medusa.Stats.Medusa.MeanAccepted}");
        Assert.Null(plain.Stats.PromptLogprobs);
        for (int i = 0; i < plain.Ids.Count; i++)
        {
            var p = plain.Logprobs[i];
            Assert.Equal(5, p.Top.Count);
            Assert.Equal(p.TokenId, p.Top[0].TokenId);
            Assert.Equal(p.Logprob, p.Top[0].Logprob);
            Assert.True(p.Logprob <= 0);
            for (int k = 1; k < p.Top.Count; k++) Assert.True(p.Top[k].Logprob <= p.Top[k - 1].Logprob);
            Assert.True(p.Top.Sum(t => Math.Exp(t.Logprob)) <= 1 + 1e-5);
            Assert.Equal(p.Top.Select(t => t.TokenId), medusa.Logprobs[i].Top.Select(t => t.TokenId));
            for (int k = 0; k < p.Top.Count; k++) Close(p.Top[k].Logprob, medusa.Logprobs[i].Top[k].Logprob, 1e-3);
        }
        // The story is not one the model is sure of everywhere: some token must be below 90 %.
        Assert.Contains(plain.Logprobs, l => l.Logprob < Math.Log(0.9));
    }

    [Fact]
    public void ScoringTheTextAsAPromptGivesTheGeneratedTokensTheirLogprobs()
    {
        var engine = fixture.Engine;
        var prompt = engine.EncodePrompt("The little dog was", new GenerationOptions());
        var generated = Run(engine, prompt, new GenerationOptions { MaxTokens = 40, Logprobs = 2 });

        var text = prompt.Concat(generated.Ids).ToArray();
        var stats = new GenerationStats();
        var scored = Run(engine, text, new GenerationOptions { MaxTokens = 1, PromptLogprobs = true, Logprobs = 2, UseMedusa = false });
        var scores = Assert.IsAssignableFrom<IReadOnlyList<TokenLogprob?>>(scored.Stats.PromptLogprobs);
        Assert.Equal(text.Length, scores.Count);
        Assert.Null(scores[0]);
        for (int i = 1; i < text.Length; i++)
        {
            var score = scores[i]!;
            Assert.Equal(text[i], score.TokenId);
            Assert.Equal(2, score.Top.Count);
        }
        for (int i = 0; i < generated.Ids.Count; i++)
        {
            var score = scores[prompt.Count + i]!;
            Close(generated.Logprobs[i].Logprob, score.Logprob, 1e-3);
            Assert.Equal(generated.Logprobs[i].Top.Select(t => t.TokenId), score.Top.Select(t => t.TokenId));
        }
        // The token after the text is the next greedy one, with the logprob that row gives.
        Assert.Equal(scored.Logprobs[0].Top[0].TokenId, scored.Ids[0]);
        // The prompt's own words are less likely than the model's greedy continuation of them.
        Assert.True(Enumerable.Range(1, prompt.Count - 1).Average(i => scores[i]!.Logprob) < generated.Logprobs.Average(l => l.Logprob));
    }

    [Fact]
    public void PromptScoresAcrossPrefillChunksEqualOneChunk()
    {
        // A batch of 64 rows cuts a 150-token prompt into three prefill chunks.
        using var small = InferenceEngine.Load(new EngineOptions
        {
            ModelPath = TestModels.Stories15MDirectory, Device = new DeviceOptions { Kind = DeviceKind.Host }, Heads = "none", MaxBatchTokens = 64,
        });
        var engine = fixture.Engine;
        var prompt = engine.EncodePrompt(string.Join(" ", Enumerable.Repeat("Lily and Tom went to the park to play with a big red ball.", 10)), new GenerationOptions());
        Assert.InRange(prompt.Count, 129, 400);
        var options = new GenerationOptions { MaxTokens = 1, PromptLogprobs = true };
        var whole = Run(engine, prompt, options).Stats.PromptLogprobs!;
        var chunked = Run(small, prompt, options).Stats.PromptLogprobs!;
        for (int i = 1; i < prompt.Count; i++)
        {
            Assert.Empty(whole[i]!.Top);
            Close(whole[i]!.Logprob, chunked[i]!.Logprob, 1e-3);
        }
        // Repeated text becomes more predictable: the tenth sentence is more likely than the first (measured: −1.80 vs −0.91 nats per token).
        int sentence = prompt.Count / 10;
        Assert.True(Enumerable.Range(prompt.Count - sentence, sentence).Average(i => whole[i]!.Logprob) >
                    Enumerable.Range(1, sentence).Average(i => whole[i]!.Logprob) + 0.5);
    }

    [Fact]
    public void SampledTokensGetTheBaseModelsLogprobs()
    {
        var engine = fixture.Engine;
        var prompt = engine.EncodePrompt("Once upon a time", new GenerationOptions());
        var options = new GenerationOptions { MaxTokens = 50, Sampling = Sampling.Temperature(1.5f), Seed = 3, Logprobs = 1 };
        var plain = Run(engine, prompt, options with { UseMedusa = false });
        var medusa = Run(engine, prompt, options);
        Assert.Equal(plain.Ids, medusa.Ids); // one draw per token from the same stream (see SampledMedusaTests)
        for (int i = 0; i < plain.Ids.Count; i++) Close(plain.Logprobs[i].Logprob, medusa.Logprobs[i].Logprob, 1e-3);
        // At temperature 1.5 some drawn token is not the most likely one, and its logprob is below the best's.
        Assert.Contains(plain.Logprobs, l => l.Top[0].TokenId != l.TokenId && l.Logprob < l.Top[0].Logprob);
    }

    /// <summary>
    /// A model whose layers add nothing (every projection zero) and whose embedding rows are all ones: the final hidden
    /// state is RMSNorm(1, …, 1) = 1 / √(1 + ε) in every column, so logit v = Σ_d W[v, d] / √(1 + ε) at every position,
    /// known from the weights alone.
    /// </summary>
    [Fact]
    public void LogprobsOfAModelWhoseLogitsAreKnownFromItsWeights()
    {
        const int dim = 8;
        var vocab = new float[32000];
        for (int v = 0; v < vocab.Length; v++) vocab[v] = (float)(3 * Math.Sin(v * 0.37) + (v % 11 == 0 ? 2 : 0));
        var directory = WriteKnownLogitsModel(dim, vocab);
        using var engine = InferenceEngine.Load(new EngineOptions { ModelPath = directory, Device = new DeviceOptions { Kind = DeviceKind.Host }, Heads = "none" });

        double eps = engine.Config.RmsNormEps, scale = 1 / Math.Sqrt(1 + eps);
        var expected = vocab.Select(c => c * scale).ToArray();
        double max = expected.Max();
        double logSumExp = max + Math.Log(expected.Sum(x => Math.Exp(x - max)));
        int best = Array.IndexOf(expected, max);
        var order = Enumerable.Range(0, vocab.Length).OrderByDescending(v => expected[v]).ThenBy(v => v).Take(3).ToArray();

        int[] prompt = [1, 500, 7000, 31999];
        var run = Run(engine, prompt, new GenerationOptions { MaxTokens = 4, Logprobs = 3, PromptLogprobs = true });
        Assert.Equal(Enumerable.Repeat(best, 4), run.Ids);
        foreach (var l in run.Logprobs)
        {
            Close(max - logSumExp, l.Logprob, 1e-4);
            Assert.Equal(order, l.Top.Select(t => t.TokenId));
            for (int k = 0; k < 3; k++) Close(expected[order[k]] - logSumExp, l.Top[k].Logprob, 1e-4);
        }
        var scores = run.Stats.PromptLogprobs!;
        for (int i = 1; i < prompt.Length; i++) Close(expected[prompt[i]] - logSumExp, scores[i]!.Logprob, 1e-4);
    }

    internal static string WriteKnownLogitsModel(int dim, float[] vocab)
    {
        var config = new ModelConfig
        {
            Dim = dim, HiddenDim = 16, Layers = 1, Heads = 2, KvHeads = 2, VocabSize = vocab.Length, MaxSequenceLength = 64,
            RopeTheta = 10000f, RmsNormEps = 1e-5f, TiedEmbeddings = false, BosTokenId = 1, EndTokenIds = [2], Source = "known-logits",
        };
        var directory = TestModels.TempDirectory("known-logits");
        var arrays = new List<(string Name, float[] Data, int[] Shape)>();
        void Add(string name, int rows, int columns, Func<int, int, float> value)
        {
            var data = new float[rows * columns];
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < columns; c++) data[r * columns + c] = value(r, c);
            arrays.Add((name, data, rows == 1 ? [columns] : [rows, columns]));
        }
        Add(LlamaTensorNames.Embedding, vocab.Length, dim, (_, _) => 1f);
        Add(LlamaTensorNames.AttentionNorm(0), 1, dim, (_, _) => 1f);
        Add(LlamaTensorNames.Query(0), dim, dim, (_, _) => 0f);
        Add(LlamaTensorNames.Key(0), dim, dim, (_, _) => 0f);
        Add(LlamaTensorNames.Value(0), dim, dim, (_, _) => 0f);
        Add(LlamaTensorNames.Output(0), dim, dim, (_, _) => 0f);
        Add(LlamaTensorNames.FfnNorm(0), 1, dim, (_, _) => 1f);
        Add(LlamaTensorNames.Gate(0), 16, dim, (_, _) => 0f);
        Add(LlamaTensorNames.Up(0), 16, dim, (_, _) => 0f);
        Add(LlamaTensorNames.Down(0), dim, 16, (_, _) => 0f);
        Add(LlamaTensorNames.FinalNorm, 1, dim, (_, _) => 1f);
        Add(LlamaTensorNames.Classifier, vocab.Length, dim, (v, _) => vocab[v] / dim);
        IlgpuMedusa.Tests.Medusa.TinyRandomModel.WriteDirectory(directory, config, arrays);
        File.WriteAllBytes(Path.Combine(directory, "tokenizer.model"), TokenizerLoader.GetSentencePieceModelBytes(TestModels.Stories15MDirectory));
        return directory;
    }
}
