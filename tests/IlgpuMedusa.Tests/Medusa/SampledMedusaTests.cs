using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;

namespace IlgpuMedusa.Tests.Medusa;

/// <summary>The demo model with its shipped (trained) heads on the host, loaded once for the class.</summary>
public sealed class ShippedHeadsEngineFixture : IDisposable
{
    public InferenceEngine Engine { get; } = InferenceEngine.Load(new EngineOptions
    {
        ModelPath = TestModels.Stories15MDirectory,
        Device = new DeviceOptions { Kind = DeviceKind.Host },
        Heads = "auto",
    });

    public void Dispose() => Engine.Dispose();
}

/// <summary>
/// Temperature sampling with Medusa (greedy acceptance): every emitted token is one seeded draw from the base model's
/// distribution, so a seed gives exactly the tokens plain sampling gives, while trained heads still get tokens accepted.
/// </summary>
public class SampledMedusaTests(ShippedHeadsEngineFixture fixture) : IClassFixture<ShippedHeadsEngineFixture>
{
    private static (List<int> Ids, GenerationStats Stats) Run(InferenceEngine engine, string prompt, GenerationOptions options)
    {
        var stats = new GenerationStats();
        var ids = engine.Generate(engine.EncodePrompt(prompt, options), options, stats).SelectMany(p => p.TokenIds).ToList();
        return (ids, stats);
    }

    public static TheoryData<string, float, float, ulong, int> Cases() => new()
    {
        { "chain-3", 0.8f, 1f, 1, 0 },
        { "dynamic-3", 0.8f, 0.9f, 2, 0 },
        { "tree-8", 1f, 1f, 3, 0 },
        { "dynamic-16", 0.5f, 0.95f, 4, 0 },
        { "mc_sim_7b_63", 0.2f, 1f, 5, 0 },
        { "dynamic-3", 1f, 1f, 6, 20 },
        { "tree-8", 1.2f, 0.9f, 7, 5 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void SeededMedusaSamplingEqualsSeededPlainSampling(string tree, float temperature, float topP, ulong seed, int topK)
    {
        var sampling = Sampling.Temperature(temperature, topP, topK);
        var plain = Run(fixture.Engine, "Once upon a time", new GenerationOptions { MaxTokens = 96, Sampling = sampling, Seed = seed, UseMedusa = false });
        var medusa = Run(fixture.Engine, "Once upon a time", new GenerationOptions { MaxTokens = 96, Sampling = sampling, Seed = seed, Tree = tree });
        Assert.Equal(plain.Ids, medusa.Ids);
        Assert.NotNull(medusa.Stats.Medusa);
        // Trained heads guess sampled text too: more than one token per step on average.
        Assert.True(medusa.Stats.Medusa!.MeanAccepted > 1.2, $"{tree} at temperature {temperature}: {medusa.Stats.Medusa.MeanAccepted:F2} tokens per step");
    }

    [Fact]
    public void DifferentSeedsGiveDifferentMedusaSamples()
    {
        var texts = new HashSet<string>();
        for (ulong seed = 1; seed <= 6; seed++)
        {
            var options = new GenerationOptions { MaxTokens = 24, Sampling = Sampling.Temperature(1f), Seed = seed };
            texts.Add(string.Join(",", Run(fixture.Engine, "Once upon a time", options).Ids));
        }
        Assert.True(texts.Count >= 5, $"{texts.Count} distinct continuations from 6 seeds");
    }
}
