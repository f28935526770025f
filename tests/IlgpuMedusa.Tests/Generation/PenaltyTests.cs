using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Tests.Hosting;

namespace IlgpuMedusa.Tests.Generation;

/// <summary>
/// Frequency, presence and repetition penalties and logit biases: the adjustment worked out by hand, a model whose logits
/// are known from its weights decoding as a hand simulation says, and Medusa giving exactly the tokens of plain decoding
/// under every setting (greedy and seeded sampling).
/// </summary>
public sealed class PenaltyTests(DemoEngineFixture fixture) : IClassFixture<DemoEngineFixture>
{
    [Fact]
    public void TheAdjustment_ByHand()
    {
        var options = new GenerationOptions
        {
            FrequencyPenalty = 0.5f, PresencePenalty = 0.25f, RepetitionPenalty = 2f, LogitBias = new Dictionary<int, float> { [4] = 3f },
        };
        var processor = LogitProcessor.For(options, [0])!; // token 0 is in the prompt
        processor.Append(1);
        processor.Append(1);
        processor.Append(2);
        float[] logits = [4f, 4f, -1f, 1f, 1f];
        processor.Apply(logits, [3]); // token 3 chosen earlier in this step
        Assert.Equal(2f, logits[0]);                    // prompt: 4 / 2, no frequency or presence (the prompt does not count)
        Assert.Equal(4f / 2 - 2 * 0.5f - 0.25f, logits[1]); // generated twice
        Assert.Equal(-1f * 2 - 0.5f - 0.25f, logits[2]);     // generated once, negative: multiplied
        Assert.Equal(1f / 2 - 0.5f - 0.25f, logits[3]);      // pending in the step counts as generated
        Assert.Equal(4f, logits[4]);                    // biased only
        Assert.Null(LogitProcessor.For(new GenerationOptions(), [0]));
        Assert.Equal(new GenerationOptions(), new GenerationOptions()); // defaults compare equal (one shared empty bias map)
    }

    [Theory]
    [InlineData(2.5f, 0f, 1f, "FrequencyPenalty")]
    [InlineData(0f, -3f, 1f, "PresencePenalty")]
    [InlineData(0f, 0f, 0f, "RepetitionPenalty")]
    [InlineData(0f, 0f, float.NaN, "RepetitionPenalty")]
    public void BadPenaltiesAreNamed(float frequency, float presence, float repetition, string name)
    {
        var options = new GenerationOptions { FrequencyPenalty = frequency, PresencePenalty = presence, RepetitionPenalty = repetition };
        Assert.Contains(name, Assert.ThrowsAny<ArgumentException>(() => options.Validate()).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void BadBiasesAndTypicalAcceptanceAreRefused()
    {
        Assert.Contains("-100 to 100", Assert.ThrowsAny<ArgumentException>(() => new GenerationOptions { LogitBias = new Dictionary<int, float> { [5] = 101 } }.Validate()).Message, StringComparison.Ordinal);
        Assert.Contains("negative", Assert.ThrowsAny<ArgumentException>(() => new GenerationOptions { LogitBias = new Dictionary<int, float> { [-1] = 1 } }.Validate()).Message, StringComparison.Ordinal);
        var engine = fixture.Engine;
        // Typical acceptance judges guesses by the unadjusted distribution: refused with penalties when Medusa verifies trees.
        var typical = new GenerationOptions { MaxTokens = 3, FrequencyPenalty = 1, Acceptance = IlgpuMedusa.Medusa.Acceptance.Typical() };
        var prompt = engine.EncodePrompt("Hi", typical);
        Assert.Contains("typical", Assert.ThrowsAny<ArgumentException>(() => engine.Generate(prompt, typical, new GenerationStats()).ToList()).Message, StringComparison.Ordinal);
        Assert.Equal(3, engine.Generate(prompt, typical with { UseMedusa = false }, new GenerationStats()).Sum(p => p.TokenIds.Count));
        var options = new GenerationOptions { LogitBias = new Dictionary<int, float> { [32000] = 1 } };
        var e = Assert.ThrowsAny<ArgumentException>(() => engine.Generate(engine.EncodePrompt("Hi", options), options, new GenerationStats()).ToList());
        Assert.Contains("outside the vocabulary of 32000", e.Message, StringComparison.Ordinal);
    }

    private static (List<int> Ids, GenerationStats Stats) Run(InferenceEngine engine, IReadOnlyList<int> prompt, GenerationOptions options)
    {
        var stats = new GenerationStats();
        return (engine.Generate(prompt, options, stats).SelectMany(p => p.TokenIds).ToList(), stats);
    }

    public static TheoryData<string, float, float, float, float> Settings() => new()
    {
        // tree, temperature, frequency, presence, repetition
        { "dynamic-3", 0f, 0.8f, 0f, 1f },
        { "mc_sim_7b_63", 0f, 0f, 0.6f, 1f },
        { "tree-8", 0f, 0f, 0f, 1.3f },
        { "chain-3", 0f, 0.4f, 0.4f, 1.1f },
        { "dynamic-3", 0.9f, 0.5f, 0f, 1.2f },
        { "tree-8", 1.1f, 0f, 0.8f, 1f },
    };

    [Theory]
    [MemberData(nameof(Settings))]
    public void MedusaUnderPenalties_EqualsPlainDecoding(string tree, float temperature, float frequency, float presence, float repetition)
    {
        var engine = fixture.Engine;
        var options = new GenerationOptions
        {
            MaxTokens = 100, Sampling = Sampling.From(temperature, 1f), Seed = 5, Tree = tree,
            FrequencyPenalty = frequency, PresencePenalty = presence, RepetitionPenalty = repetition,
            LogitBias = new Dictionary<int, float> { [263] = -2f }, // " a": less likely
        };
        var prompt = engine.EncodePrompt("Once upon a time", options);
        var plain = Run(engine, prompt, options with { UseMedusa = false });
        var medusa = Run(engine, prompt, options);
        Assert.Equal(plain.Ids, medusa.Ids);
        Assert.True(medusa.Stats.Medusa!.MeanAccepted > 1.2, $"{tree}: {medusa.Stats.Medusa.MeanAccepted:F2} tokens per step");
        // The penalties changed the text: it is not what decoding without them gives.
        var free = Run(engine, prompt, new GenerationOptions { MaxTokens = 100, Sampling = Sampling.From(temperature, 1f), Seed = 5, UseMedusa = false });
        Assert.NotEqual(free.Ids, plain.Ids);
    }

    [Fact]
    public void ABiasOfPlus100ForcesAToken_AndMinus100BansIt()
    {
        var engine = fixture.Engine;
        var prompt = engine.EncodePrompt("Once upon a time", new GenerationOptions());
        var forced = Run(engine, prompt, new GenerationOptions { MaxTokens = 12, LogitBias = new Dictionary<int, float> { [3186] = 100 } }).Ids;
        Assert.Equal(Enumerable.Repeat(3186, 12), forced);
        var banned = Run(engine, prompt, new GenerationOptions { MaxTokens = 40, LogitBias = new Dictionary<int, float> { [29892] = -100, [29889] = -100 } }).Ids;
        Assert.DoesNotContain(29892, banned); // ","
        Assert.DoesNotContain(29889, banned); // "."
        // Log-probabilities stay the model's own: a forced token is still an unlikely one.
        var withLogprobs = engine.Generate(prompt, new GenerationOptions { MaxTokens = 3, Logprobs = 1, LogitBias = new Dictionary<int, float> { [3186] = 100 } }, new GenerationStats())
            .SelectMany(p => p.Logprobs!).ToList();
        Assert.All(withLogprobs, l => Assert.True(l.Logprob < l.Top[0].Logprob - 5, $"token {l.TokenId}: {l.Logprob} vs best {l.Top[0].Logprob}"));
    }

    /// <summary>
    /// On the known-logits model (every position has the same logits, c_v / √(1 + ε)), greedy decoding under penalties is a
    /// hand simulation: at each step take the argmax of the adjusted row, then count the token.
    /// </summary>
    [Theory]
    [InlineData(0.7f, 0.3f, 1f)]
    [InlineData(0f, 0f, 1.5f)]
    [InlineData(1.5f, 0f, 1.2f)]
    public void GreedyUnderPenalties_IsTheHandSimulation(float frequency, float presence, float repetition)
    {
        var vocab = new float[32000];
        for (int v = 0; v < vocab.Length; v++) vocab[v] = (float)(3 * Math.Sin(v * 0.37) + (v % 11 == 0 ? 2 : 0));
        using var engine = InferenceEngine.Load(new EngineOptions
        {
            ModelPath = LogprobsTests.WriteKnownLogitsModel(8, vocab), Device = new DeviceOptions { Kind = DeviceKind.Host }, Heads = "none",
        });
        double scale = 1 / Math.Sqrt(1 + engine.Config.RmsNormEps);
        int[] prompt = [1, 500, 7000];
        var counts = new Dictionary<int, int>();
        var expected = new List<int>();
        for (int step = 0; step < 30; step++)
        {
            int best = -1;
            double bestValue = double.NegativeInfinity;
            for (int v = 0; v < vocab.Length; v++)
            {
                double x = vocab[v] * scale;
                if (prompt.Contains(v) || counts.ContainsKey(v)) x = x > 0 ? x / repetition : x * repetition;
                if (counts.TryGetValue(v, out int c)) x -= c * frequency + presence;
                if (x > bestValue) (best, bestValue) = (v, x);
            }
            if (best == 2) break; // the end token
            expected.Add(best);
            counts[best] = counts.GetValueOrDefault(best) + 1;
        }
        var actual = Run(engine, prompt, new GenerationOptions
        {
            MaxTokens = expected.Count, FrequencyPenalty = frequency, PresencePenalty = presence, RepetitionPenalty = repetition,
        }).Ids;
        Assert.Equal(expected, actual);
        Assert.True(expected.Distinct().Count() > 1, "the penalties should move the choice off the best token");
    }
}
