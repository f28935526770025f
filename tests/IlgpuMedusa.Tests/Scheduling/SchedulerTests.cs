using System.Diagnostics;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Models;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Tests.Medusa;

namespace IlgpuMedusa.Tests.Scheduling;

/// <summary>One request of a mixed batch.</summary>
public sealed record MixedRequest(string Prompt, int MaxTokens, bool Medusa, string? Tree, float Temperature = 0, float FrequencyPenalty = 0, float RepetitionPenalty = 1);

/// <summary>
/// Continuous batching must be invisible in the output: each sequence's tokens in a batch equal its tokens when run
/// alone, whatever runs beside it, and the KV pool ends all-free.
/// </summary>
public class SchedulerTests(RandomHeadsFixture heads) : IClassFixture<RandomHeadsFixture>
{
    internal static readonly MixedRequest[] Mixed =
    [
        new("Once upon a time", 40, Medusa: true, "mc_sim_7b_63"),
        new("The little dog was", 25, Medusa: false, null),
        new("Tom had a red ball. He", 33, Medusa: true, "chain-2"),
        new("One day, a bird", 18, Medusa: true, "tree-8"),
        new("Lily and her mom went to the park", 30, Medusa: false, null),
        new("The sun was", 12, Medusa: true, "tree-16"),
        new("There was a big tree", 36, Medusa: true, "chain-4"),
        new("Sam liked to", 22, Medusa: false, null, Temperature: 0.9f),
    ];

    internal static GenerationOptions OptionsFor(MixedRequest r) => new()
    {
        MaxTokens = r.MaxTokens,
        UseMedusa = r.Medusa,
        Tree = r.Tree,
        Sampling = r.Temperature > 0 ? Sampling.Temperature(r.Temperature) : Sampling.Greedy,
        Seed = 11,
        FrequencyPenalty = r.FrequencyPenalty,
        RepetitionPenalty = r.RepetitionPenalty,
    };

    internal static async Task<List<int>> RunAsync(InferenceEngine engine, MixedRequest r)
    {
        var ids = new List<int>();
        var options = OptionsFor(r);
        await foreach (var piece in engine.GenerateAsync(engine.EncodePrompt(r.Prompt, options), options, new GenerationStats()))
            ids.AddRange(piece.TokenIds);
        return ids;
    }

    internal static async Task AssertBatchEqualsAlone(InferenceEngine engine, IReadOnlyList<MixedRequest> requests)
    {
        int freeAtStart = engine.Pool.FreeBlocks;
        var alone = new List<List<int>>();
        foreach (var r in requests) alone.Add(await RunAsync(engine, r));
        long stepsBefore = engine.SchedulerStats.Steps;
        var together = await Task.WhenAll(requests.Select(r => Task.Run(() => RunAsync(engine, r))));
        long batchedSteps = engine.SchedulerStats.Steps - stepsBefore;
        for (int i = 0; i < requests.Count; i++)
            Assert.True(alone[i].SequenceEqual(together[i]),
                $"request {i} ('{requests[i].Prompt}', medusa {requests[i].Medusa}, tree {requests[i].Tree}): batched output differs from alone\nalone:    {string.Join(' ', alone[i])}\nbatched:  {string.Join(' ', together[i])}");
        Assert.Equal(freeAtStart, engine.Pool.FreeBlocks);
        // Run alone, the requests took at least max(tokens) forwards; together they share forwards.
        int longest = together.Max(t => t.Count);
        Assert.True(batchedSteps < together.Sum(t => t.Count), $"{batchedSteps} forwards for {together.Sum(t => t.Count)} tokens: nothing was batched");
        Assert.True(batchedSteps >= 1 && longest > 0);
    }

    [Fact]
    public async Task EightMixedRequests_BatchedEqualAlone_OnHost()
    {
        await AssertBatchEqualsAlone(heads.Engine, Mixed);
        var stats = heads.Engine.SchedulerStats;
        Assert.Equal(0, stats.Running);
        Assert.Equal(0, stats.Waiting);
        Assert.Equal(stats.BlocksFree, heads.Engine.Pool.BlockCount);
    }

    [Fact]
    public async Task EightMixedRequests_BatchedEqualAlone_OnOpenCL()
    {
        // OpenCL on the CPU (PoCL): every kernel JIT-compiled to OpenCL C. Shorter requests: it runs at tens of tokens/s.
        using var engine = InferenceEngine.Load(new EngineOptions
        {
            ModelPath = TestModels.Stories15MDirectory,
            Device = new DeviceOptions { Kind = DeviceKind.OpenCL, AllowCpuOpenCL = true },
            Heads = heads.HeadsPath,
        });
        Assert.Equal(DeviceKind.OpenCL, engine.Backend.Kind);
        await AssertBatchEqualsAlone(engine, Mixed.Select(r => r with { MaxTokens = Math.Min(r.MaxTokens, 16) }).ToArray());
    }

    [Fact]
    public async Task MoreRequestsThanThePoolHolds_WaitOrArePreempted_AndFinishLikeAlone()
    {
        // 3 MiB of KV = 14 blocks of 16 tokens (216 KiB each; about two sequences of these requests); six requests that
        // each fit alone must queue, and growing ones must preempt the newest. Penalties count the generated tokens
        // across a preemption (the recomputed sequence chooses as if it had never stopped).
        using var engine = InferenceEngine.Load(new EngineOptions
        {
            ModelPath = TestModels.Stories15MDirectory,
            Device = new DeviceOptions { Kind = DeviceKind.Host },
            Heads = heads.HeadsPath,
            KvBudgetMb = 3,
        });
        Assert.Equal(14, engine.Pool.BlockCount);
        MixedRequest[] requests =
        [
            new("Once upon a time", 90, Medusa: false, null),
            new("The little dog was", 90, Medusa: true, "chain-2", FrequencyPenalty: 0.7f),
            new("Tom had a red ball. He", 80, Medusa: false, null, RepetitionPenalty: 1.2f),
            new("One day, a bird", 90, Medusa: true, "chain-3", FrequencyPenalty: 0.5f, RepetitionPenalty: 1.1f),
            new("Lily and her mom went to the park", 70, Medusa: false, null),
            new("There was a big tree", 90, Medusa: true, "chain-1"),
        ];
        await AssertBatchEqualsAlone(engine, requests);
        var stats = engine.SchedulerStats;
        Assert.True(stats.Preemptions > 0, $"no preemption happened ({stats})");
        Assert.Equal(engine.Pool.BlockCount, engine.Pool.FreeBlocks);
    }

    [Fact]
    public async Task PastTheSpeculationLimit_MedusaTakesOneTokenSteps_AndStillEqualsGreedy()
    {
        // The shipped heads accept about two tokens per step alone. With a limit of one sequence, three Medusa requests
        // that run side by side take one-token steps while they do, each still exactly greedy.
        using var engine = InferenceEngine.Load(new EngineOptions
        {
            ModelPath = TestModels.Stories15MDirectory,
            Device = new DeviceOptions { Kind = DeviceKind.Host },
            SpeculationBatchLimit = 1,
        });
        Assert.NotNull(engine.Heads);
        string[] prompts = ["Once upon a time", "The little dog was", "Tom had a red ball. He"];
        var options = new GenerationOptions { MaxTokens = 24, Tree = "chain-3" };
        var plain = options with { UseMedusa = false };
        async Task<(List<int> Ids, GenerationStats Stats)> Run(string prompt, GenerationOptions o)
        {
            var stats = new GenerationStats();
            var ids = new List<int>();
            await foreach (var piece in engine.GenerateAsync(engine.EncodePrompt(prompt, o), o, stats)) ids.AddRange(piece.TokenIds);
            return (ids, stats);
        }
        var alone = await Run(prompts[0], options);
        Assert.True(alone.Stats.Medusa!.MeanAccepted > 1.2, $"alone, the heads should be accepted: {alone.Stats.Medusa.MeanAccepted:0.00} tokens/step");
        // Start all three before the scheduler takes its first step, so they run together throughout.
        var together = await Task.WhenAll(prompts.Select(p => Task.Run(() => Run(p, options))));
        for (int i = 0; i < prompts.Length; i++)
            Assert.Equal((await Run(prompts[i], plain)).Ids, together[i].Ids);
        // Only steps taken while at most one sequence ran (a head start, a tail after the others ended) verify trees.
        double batchedMean = (double)together.Sum(t => t.Stats.Medusa!.Tokens) / together.Sum(t => t.Stats.Medusa!.Steps);
        Assert.True(batchedMean < (1 + alone.Stats.Medusa.MeanAccepted) / 2,
            $"{batchedMean:0.00} tokens per step side by side past the limit, {alone.Stats.Medusa.MeanAccepted:0.00} alone");
        Assert.Throws<ArgumentOutOfRangeException>(() => new EngineOptions { ModelPath = "m", SpeculationBatchLimit = 0 }.Validate());
    }

    [Fact]
    public void RequestThatCanNeverFit_FailsAtOnce()
    {
        using var engine = InferenceEngine.Load(new EngineOptions
        {
            ModelPath = TestModels.Stories15MDirectory,
            Device = new DeviceOptions { Kind = DeviceKind.Host },
            Heads = "none",
            KvBudgetMb = 1, // 4 blocks = 64 positions
        });
        var options = new GenerationOptions { MaxTokens = 200 };
        var e = Assert.Throws<KvPoolExhaustedException>(() => engine.Generate(engine.EncodePrompt("Once upon a time", options), options, new GenerationStats()));
        Assert.Contains("4 blocks", e.Message, StringComparison.Ordinal);
        Assert.Contains("KV budget", e.Message, StringComparison.Ordinal);
        Assert.Equal(engine.Pool.BlockCount, engine.Pool.FreeBlocks);
    }
}

/// <summary>Faults and fairness inside one batch: a failing request ends alone; a large tree leaves rows for the others.</summary>
public class SchedulerIsolationTests(RandomHeadsFixture heads) : IClassFixture<RandomHeadsFixture>
{
    private static async Task<(List<int> Ids, TimeSpan Done)> RunAsync(InferenceEngine engine, string prompt, GenerationOptions options, Stopwatch clock)
    {
        var ids = new List<int>();
        await foreach (var piece in engine.GenerateAsync(engine.EncodePrompt(prompt, options), options, new GenerationStats()))
            ids.AddRange(piece.TokenIds);
        return (ids, clock.Elapsed);
    }

    [Fact]
    public async Task ARequestWhoseStepFails_EndsAlone_TheOthersInTheBatchFinish()
    {
        using var engine = InferenceEngine.Load(new EngineOptions { ModelPath = TestModels.Stories15MDirectory, Device = new DeviceOptions { Kind = DeviceKind.Host }, Heads = heads.HeadsPath });
        var healthy = new GenerationOptions { MaxTokens = 60, Tree = "chain-2" };
        var failing = new GenerationOptions { MaxTokens = 200, Seed = 4242, UseMedusa = false };
        var clock = Stopwatch.StartNew();
        var alone = await RunAsync(engine, "Once upon a time", healthy, clock);
        int steps = 0;
        engine.Scheduler.FailStepFor = o => o.Seed == 4242 && ++steps > 5; // its sixth step fails, mid-generation
        var good = Task.Run(() => RunAsync(engine, "Once upon a time", healthy, clock));
        var bad = Task.Run(() => RunAsync(engine, "The little dog was", failing, clock));
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => bad);
        Assert.Contains("injected", e.Message, StringComparison.Ordinal);
        Assert.Equal(alone.Ids, (await good).Ids);
        Assert.Equal(engine.Pool.BlockCount, engine.Pool.FreeBlocks);
        engine.Scheduler.FailStepFor = null;
        Assert.Equal(alone.Ids, (await RunAsync(engine, "Once upon a time", healthy, clock)).Ids); // the loop lives on
    }

    [Fact]
    public async Task ARequestThatCannotStart_EndsWithItsError_AndGivesBackItsBlocks()
    {
        using var engine = InferenceEngine.Load(new EngineOptions { ModelPath = TestModels.Stories15MDirectory, Device = new DeviceOptions { Kind = DeviceKind.Host }, Heads = heads.HeadsPath });
        var clock = Stopwatch.StartNew();
        engine.Scheduler.FailAdmissionFor = o => o.Seed == 777;
        var run = Task.Run(() => RunAsync(engine, "Once upon a time", new GenerationOptions { MaxTokens = 20, Seed = 777, Tree = "chain-2" }, clock));
        var finished = await Task.WhenAny(run, Task.Delay(TimeSpan.FromSeconds(60)));
        Assert.Same(run, finished); // it used to wait forever: out of the queue, never running
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => run);
        Assert.Contains("injected", e.Message, StringComparison.Ordinal);
        Assert.Equal(engine.Pool.BlockCount, engine.Pool.FreeBlocks);
        engine.Scheduler.FailAdmissionFor = null;
        Assert.Equal(20, (await RunAsync(engine, "Once upon a time", new GenerationOptions { MaxTokens = 20, Tree = "chain-2" }, clock)).Ids.Count);
    }

    [Fact]
    public async Task ATreeAsLargeAsTheBatch_ShrinksWhileOthersRun_AndStaysLossless()
    {
        using var engine = InferenceEngine.Load(new EngineOptions
        {
            ModelPath = TestModels.Stories15MDirectory,
            Device = new DeviceOptions { Kind = DeviceKind.Host },
            Heads = heads.HeadsPath,
            MaxBatchTokens = 64,
            SpeculationBatchLimit = 8,
        });
        var large = new GenerationOptions { MaxTokens = 150, Tree = "mc_sim_7b_63" };
        var small = new GenerationOptions { MaxTokens = 5, UseMedusa = false };
        var clock = Stopwatch.StartNew();
        var largeAlone = await RunAsync(engine, "Once upon a time", large, clock);
        var smallAlone = await RunAsync(engine, "The little dog was", small, clock);
        clock.Restart();
        var first = new TaskCompletionSource();
        var largeTask = Task.Run(async () =>
        {
            var ids = new List<int>();
            await foreach (var piece in engine.GenerateAsync(engine.EncodePrompt("Once upon a time", large), large, new GenerationStats()))
            {
                ids.AddRange(piece.TokenIds);
                first.TrySetResult();
            }
            return (ids, clock.Elapsed);
        });
        await first.Task; // the 64-node tree is running
        var smallRun = await RunAsync(engine, "The little dog was", small, clock);
        var largeRun = await largeTask;
        Assert.Equal(smallAlone.Ids, smallRun.Ids);
        Assert.Equal(largeAlone.Ids, largeRun.ids);
        // Before, the 64-node tree took all 64 rows of every batch and the small request waited for it to end.
        Assert.True(smallRun.Done < largeRun.Item2, $"the small request ended at {smallRun.Done.TotalSeconds:F2} s, the large one at {largeRun.Item2.TotalSeconds:F2} s");
    }
}
