using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Medusa;
using IlgpuMedusa.Models;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Tests.Medusa;

/// <summary>Random (untrained) heads for the demo model, written once per test class.</summary>
public sealed class RandomHeadsFixture : IDisposable
{
    public RandomHeadsFixture()
    {
        Directory = TestModels.TempDirectory("random-heads");
        using var checkpoint = ModelDirectory.OpenCheckpoint(TestModels.Stories15MDirectory);
        HeadsPath = Path.Combine(Directory, "random-heads.safetensors");
        var weights = MedusaHeadWeights.CreateRandom(checkpoint.Config, heads: 4, layers: 1, seed: 7);
        MedusaHeadsCheckpoint.Write(HeadsPath, weights, ModelSignature.Of(checkpoint));
        Engine = InferenceEngine.Load(new EngineOptions
        {
            ModelPath = TestModels.Stories15MDirectory,
            Device = new DeviceOptions { Kind = DeviceKind.Host },
            Heads = HeadsPath,
        });
    }

    public string Directory { get; }
    public string HeadsPath { get; }
    public InferenceEngine Engine { get; }

    public void Dispose() => Engine.Dispose();
}

/// <summary>
/// The lossless invariant: with greedy sampling and greedy acceptance, Medusa emits exactly the tokens plain greedy
/// decoding emits, whatever the heads guess and whatever the tree.
/// </summary>
public class MedusaLosslessTests(RandomHeadsFixture fixture) : IClassFixture<RandomHeadsFixture>
{
    public static TheoryData<string, string> Cases()
    {
        var data = new TheoryData<string, string>();
        foreach (var tree in new[] { "chain-1", "chain-4", "tree-4", "tree-8", "tree-16", "mc_sim_7b_63", "dynamic-4", "dynamic-16", "dynamic-8-20" })
            foreach (var prompt in new[] { "Once upon a time", "The little dog was", "Tom had a red ball. He" })
                data.Add(tree, prompt);
        return data;
    }

    private static (List<int> Ids, string Text, GenerationStats Stats) Run(InferenceEngine engine, string prompt, GenerationOptions options)
    {
        var stats = new GenerationStats();
        var ids = new List<int>();
        var text = "";
        foreach (var piece in engine.Generate(engine.EncodePrompt(prompt, options), options, stats))
        {
            ids.AddRange(piece.TokenIds);
            text += piece.Text;
        }
        return (ids, text, stats);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void GreedyMedusaEqualsGreedyDecoding(string tree, string prompt)
    {
        var plain = Run(fixture.Engine, prompt, new GenerationOptions { MaxTokens = 80, UseMedusa = false });
        var medusa = Run(fixture.Engine, prompt, new GenerationOptions { MaxTokens = 80, Tree = tree });
        Assert.Null(plain.Stats.Medusa);
        Assert.NotNull(medusa.Stats.Medusa);
        Assert.Equal(tree, medusa.Stats.Tree);
        Assert.Equal(plain.Ids, medusa.Ids);
        Assert.Equal(plain.Text, medusa.Text);
        Assert.Equal(plain.Stats.FinishReason, medusa.Stats.FinishReason);
        // Every step emits at least one token, so steps never exceed tokens.
        Assert.True(medusa.Stats.Medusa!.Steps <= medusa.Ids.Count);
        Assert.True(medusa.Stats.Medusa.MeanAccepted >= 1.0);
    }

    [Fact]
    public void WithoutSpeculationADecoderTakesOneTokenSteps_ThenTreesAgain()
    {
        // The shipped heads of the demo model (real guesses, so trees are accepted once they run again).
        using var engine = InferenceEngine.Load(new EngineOptions { ModelPath = TestModels.Stories15MDirectory, Device = new DeviceOptions { Kind = DeviceKind.Host } });
        var c = engine.Config;
        int[] prompt = [1, 9038, 2501, 263, 931];
        using var workspace = new ForwardWorkspace(engine.Backend, c, 64, 64);
        using var tree = CompiledTrees.Resolve(engine.Backend, "chain-3", engine.Heads!.HeadCount);
        var stats = new MedusaStats(engine.Heads.HeadCount);
        using var sequence = engine.Pool.CreateSequence(c.MaxSequenceLength);
        var decoder = new MedusaDecoder(engine.Model, sequence, new Sampler(Sampling.Greedy, 1), prompt, null, engine.Heads, tree.Tree, tree.Mask, Acceptance.Greedy, stats)
        {
            SpeculateNext = false,
        };
        var runner = new SingleSequenceRunner(engine.Model, workspace, decoder);
        var tokens = new List<int>();
        runner.Advance(tokens); // prefill: the first token, no guesses
        for (int step = 0; step < 20; step++) runner.Advance(tokens);
        Assert.Equal(21, tokens.Count);
        Assert.Equal(20, stats.Steps);
        Assert.Equal(1.0, stats.MeanAccepted); // one token per step, heads never run
        decoder.SpeculateNext = true;
        runner.Advance(tokens); // one more plain step, after which the heads guess again
        long stepsBefore = stats.Steps, tokensBefore = stats.Tokens;
        for (int step = 0; step < 20; step++) runner.Advance(tokens);
        Assert.True(stats.Tokens - tokensBefore > stats.Steps - stepsBefore, "no tree was accepted after speculation came back");
        decoder.Release();

        using var plainSequence = engine.Pool.CreateSequence(c.MaxSequenceLength);
        var plain = new SingleSequenceRunner(engine.Model, workspace, new AutoregressiveDecoder(engine.Model, plainSequence, new Sampler(Sampling.Greedy, 1), prompt));
        var expected = new List<int>();
        while (expected.Count < tokens.Count) plain.Advance(expected);
        Assert.Equal(expected.Take(tokens.Count), tokens);
    }

    [Fact]
    public void KvCacheAfterMedusaStepsEqualsKvCacheAfterGreedyDecoding()
    {
        var engine = fixture.Engine;
        var c = engine.Config;
        int[] prompt = [1, 9038, 2501, 263, 931];
        using var workspace = new ForwardWorkspace(engine.Backend, c, 64, 64);
        var tree = TreeTopology.Resolve("mc_sim_7b_63", engine.Heads!.HeadCount);
        using var mask = engine.Backend.Allocate(DType.I32, tree.NodeCount, tree.NodeCount);
        engine.Backend.Upload(mask, tree.Mask);

        using var medusaSequence = engine.Pool.CreateSequence(c.MaxSequenceLength);
        var medusa = new MedusaDecoder(engine.Model, medusaSequence, new Sampler(Sampling.Greedy, 1), prompt, null, engine.Heads, CandidateTree.Of(tree), mask, Acceptance.Greedy, new MedusaStats(4));
        var medusaRunner = new SingleSequenceRunner(engine.Model, workspace, medusa);
        var medusaTokens = new List<int>();
        for (int step = 0; step < 13; step++) medusaRunner.Advance(medusaTokens); // prefill + 12 tree steps
        medusa.Release();

        using var plainSequence = engine.Pool.CreateSequence(c.MaxSequenceLength);
        var plain = new SingleSequenceRunner(engine.Model, workspace, new AutoregressiveDecoder(engine.Model, plainSequence, new Sampler(Sampling.Greedy, 1), prompt));
        var plainTokens = new List<int>();
        while (plainTokens.Count < medusaTokens.Count) plain.Advance(plainTokens);
        Assert.Equal(plainTokens, medusaTokens);

        // Positions 0 .. prompt + emitted − 2 are committed in both caches (the last emitted token is still pending).
        int committed = prompt.Length + medusaTokens.Count - 1;
        var a = new float[c.KvDim];
        var b = new float[c.KvDim];
        for (int layer = 0; layer < c.Layers; layer++)
            for (int part = 0; part < 2; part++)
                for (int position = 0; position < committed; position++)
                {
                    engine.Pool.Cache.ReadSlot(layer, part, medusaSequence.PhysicalSlot(position), a);
                    engine.Pool.Cache.ReadSlot(layer, part, plainSequence.PhysicalSlot(position), b);
                    for (int i = 0; i < a.Length; i++)
                        Assert.True(Math.Abs(a[i] - b[i]) <= 1e-5f * (1 + Math.Abs(b[i])),
                            $"layer {layer} {(part == 0 ? "K" : "V")} position {position} element {i}: {a[i]} vs {b[i]}");
                }
    }

    [Fact]
    public void TypicalAcceptanceRunsAndReportsStatistics()
    {
        var (ids, text, stats) = Run(fixture.Engine, "Once upon a time", new GenerationOptions { MaxTokens = 60, Acceptance = Acceptance.Typical() });
        Assert.Equal(60, ids.Count);
        Assert.False(string.IsNullOrWhiteSpace(text));
        Assert.NotNull(stats.Medusa);
        Assert.Equal(stats.Medusa!.Steps, stats.Medusa.AcceptHistogram.Sum());
        Assert.Equal(4, stats.Medusa.HeadHitRates().Length);
    }
}
