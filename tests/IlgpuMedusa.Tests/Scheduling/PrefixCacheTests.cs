using IlgpuMedusa.Compute;
using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Tests.Medusa;

namespace IlgpuMedusa.Tests.Scheduling;

/// <summary>
/// The block pool's prefix cache on its own: which blocks a prompt finds, who holds them, what is evicted first, and that
/// nothing is shared without prefix caching.
/// </summary>
public sealed class PrefixCachePoolTests : IDisposable
{
    private const int B = 4; // tokens per block
    private readonly HostBackend _backend = new(1);

    private KvBlockPool Pool(int blocks, bool caching = true) => new(_backend, new KvCacheLayout(1, 1, 2, B, blocks), blocks * 64L, caching);

    private static int[] Tokens(int count, int first = 100) => Enumerable.Range(first, count).ToArray();

    /// <summary>A sequence that computed <paramref name="tokens"/> (all of them in the cache) and offered its blocks.</summary>
    private static KvSequence Computed(KvBlockPool pool, int[] tokens)
    {
        var sequence = pool.CreateSequence((int)pool.TokenCapacity);
        sequence.EnsureCapacity(tokens.Length);
        sequence.OfferCachedBlocks(tokens, tokens.Length);
        return sequence;
    }

    [Fact]
    public void APromptFindsTheFullBlocksOfItsLongestCachedPrefix_AndKeepsOneTokenToCompute()
    {
        using var pool = Pool(16);
        int[] story = Tokens(13); // blocks [0..4) [4..8) [8..12), and one token in a fourth block
        using (Computed(pool, story))
        {
        }
        Assert.Equal(3, pool.CachedBlocks); // the partial fourth block is not kept
        Assert.Equal(16, pool.FreeBlocks);

        using var same = pool.CreateSequence((int)pool.TokenCapacity);
        Assert.Equal(12, same.AttachCachedPrefix(story)); // 13 tokens: 12 cached, the 13th computed
        using var exactlyThreeBlocks = pool.CreateSequence((int)pool.TokenCapacity);
        Assert.Equal(8, exactlyThreeBlocks.AttachCachedPrefix(story.AsSpan(0, 12))); // 12 tokens: the last one must be computed
        int[] changedInBlock2 = [.. story];
        changedInBlock2[9] = 7;
        using var diverging = pool.CreateSequence((int)pool.TokenCapacity);
        Assert.Equal(8, diverging.AttachCachedPrefix(changedInBlock2));
        int[] changedFirst = [.. story];
        changedFirst[0] = 1;
        using var other = pool.CreateSequence((int)pool.TokenCapacity);
        Assert.Equal(0, other.AttachCachedPrefix(changedFirst)); // same later blocks, other prefix: nothing
        // Shared blocks are the same physical slots.
        for (int position = 0; position < 8; position++)
            Assert.Equal(same.PhysicalSlot(position), diverging.PhysicalSlot(position));
        Assert.Equal(13 + 12 + 13 + 13, pool.PrefixQueryTokens);
        Assert.Equal(12 + 8 + 8 + 0, pool.PrefixHitTokens);
    }

    [Fact]
    public void SharedBlocksStayHeldUntilTheirLastSequenceEnds_ThenStayCachedAsFree()
    {
        using var pool = Pool(8);
        int[] tokens = Tokens(12);
        var first = Computed(pool, tokens); // 3 full blocks
        var second = pool.CreateSequence((int)pool.TokenCapacity);
        Assert.Equal(8, second.AttachCachedPrefix(tokens));
        second.EnsureCapacity(12); // its own third block (the 12th token is computed again)
        Assert.Equal(8 - 4, pool.FreeBlocks);
        first.Dispose();
        Assert.Equal(8 - 3, pool.FreeBlocks); // first's third block: indexed, now cached; blocks 0 and 1 still held
        Assert.Equal(1, pool.CachedBlocks);
        second.Dispose();
        Assert.Equal(8, pool.FreeBlocks);
        Assert.Equal(3, pool.CachedBlocks); // second's own third block was never offered: plainly free
        using var third = pool.CreateSequence((int)pool.TokenCapacity);
        Assert.Equal(8, third.AttachCachedPrefix(tokens));
        Assert.Equal(1, pool.CachedBlocks);
    }

    [Fact]
    public void TwoSequencesComputingTheSameBlocks_IndexOneCopy_AndTheLaterChainsOnIt()
    {
        using var pool = Pool(12);
        int[] tokens = Tokens(16);
        var early = Computed(pool, tokens.AsSpan(0, 12).ToArray()); // 3 blocks indexed
        using var late = pool.CreateSequence((int)pool.TokenCapacity); // started before them: computes the same 3 itself
        late.EnsureCapacity(16);
        late.OfferCachedBlocks(tokens, 16); // 3 duplicates stay out of the index; its fourth block follows early's third
        Assert.Equal(4, late.IndexedBlocks);
        using (var probe = pool.CreateSequence((int)pool.TokenCapacity))
        {
            Assert.Equal(16, probe.AttachCachedPrefix([.. tokens, 9]));
            for (int position = 0; position < 12; position++) Assert.Equal(early.PhysicalSlot(position), probe.PhysicalSlot(position));
            Assert.Equal(late.PhysicalSlot(12), probe.PhysicalSlot(12));
        }
        early.Dispose();
        Assert.Equal(0, pool.CachedBlocks); // late's held copies took the index over; early's went back as plain free blocks
        late.Dispose();
        Assert.Equal(4, pool.CachedBlocks);
        Assert.Equal(12, pool.FreeBlocks);
    }

    [Fact]
    public void AHeldCopyReplacesAnUnheldIndexedBlock_SoAHeldPrefixStaysFindable()
    {
        // early indexes three blocks and ends (they wait in the LRU); late, started beside it, computed the same three
        // and a fourth. Late's copies take the index over, so evicting early's blocks loses nothing late holds.
        using var pool = Pool(10);
        int[] tokens = Tokens(16);
        var early = Computed(pool, tokens.AsSpan(0, 12).ToArray());
        using var late = pool.CreateSequence((int)pool.TokenCapacity);
        late.EnsureCapacity(16);
        early.Dispose();
        late.OfferCachedBlocks(tokens, 16);
        Assert.Equal(0, pool.CachedBlocks); // early's three went back as plain free blocks
        using var taker = pool.CreateSequence((int)pool.TokenCapacity);
        taker.EnsureCapacity(24); // all six free blocks
        using var again = pool.CreateSequence((int)pool.TokenCapacity);
        Assert.Equal(16, again.AttachCachedPrefix([.. tokens, 1]));
        for (int position = 0; position < 16; position++) Assert.Equal(late.PhysicalSlot(position), again.PhysicalSlot(position));
    }

    [Fact]
    public void WhenAnIndexedBlocksLastHolderEnds_AHeldTwinTakesItsPlace()
    {
        using var pool = Pool(10);
        int[] tokens = Tokens(16);
        var early = Computed(pool, tokens.AsSpan(0, 12).ToArray()); // indexed, held
        using var late = pool.CreateSequence((int)pool.TokenCapacity);
        late.EnsureCapacity(16);
        late.OfferCachedBlocks(tokens, 16); // three twins of early's blocks, and a fourth block chained on them
        early.Dispose();
        Assert.Equal(0, pool.CachedBlocks); // the twins took the index: early's blocks are plainly free
        Assert.Equal(10 - 4, pool.FreeBlocks);
        using var taker = pool.CreateSequence((int)pool.TokenCapacity);
        taker.EnsureCapacity(24);
        using var again = pool.CreateSequence((int)pool.TokenCapacity);
        Assert.Equal(16, again.AttachCachedPrefix([.. tokens, 1]));
        Assert.Equal(late.PhysicalSlot(0), again.PhysicalSlot(0));
    }

    [Fact]
    public void WhenThePoolIsShort_TheLeastRecentlyReleasedBlockGoes_TailsBeforeHeads()
    {
        using var pool = Pool(6);
        int[] a = Tokens(12, first: 100), b = Tokens(12, first: 500);
        using (Computed(pool, a))
        {
        }
        using (Computed(pool, b))
        {
        }
        Assert.Equal(6, pool.CachedBlocks);
        using var taker = pool.CreateSequence((int)pool.TokenCapacity);
        taker.EnsureCapacity(4); // one block: a's tail (released first, last block first) goes
        using (var probe = pool.CreateSequence((int)pool.TokenCapacity)) Assert.Equal(8, probe.AttachCachedPrefix([.. a, 1]));
        using (var probe = pool.CreateSequence((int)pool.TokenCapacity)) Assert.Equal(12, probe.AttachCachedPrefix([.. b, 1]));
        taker.EnsureCapacity(12); // two more: a's middle, then a's head
        using (var probe = pool.CreateSequence((int)pool.TokenCapacity)) Assert.Equal(0, probe.AttachCachedPrefix([.. a, 1]));
        using (var probe = pool.CreateSequence((int)pool.TokenCapacity)) Assert.Equal(12, probe.AttachCachedPrefix([.. b, 1]));
        // The probe found b again just now: its release made b the most recently used, so the last three go last.
        taker.EnsureCapacity(24);
        Assert.Equal(0, pool.FreeBlocks);
        using var late = pool.CreateSequence(4);
        Assert.Throws<KvPoolExhaustedException>(() => late.EnsureCapacity(1));
    }

    [Fact]
    public void ACachedBlockHeldBySomeoneIsNeverEvicted()
    {
        using var pool = Pool(4);
        int[] tokens = Tokens(9);
        using (Computed(pool, tokens))
        {
        }
        using var holder = pool.CreateSequence((int)pool.TokenCapacity);
        Assert.Equal(8, holder.AttachCachedPrefix(tokens));
        using var taker = pool.CreateSequence((int)pool.TokenCapacity);
        taker.EnsureCapacity(8); // the free block and the cached third one
        Assert.Throws<KvPoolExhaustedException>(() => taker.EnsureCapacity(12));
        using var probe = pool.CreateSequence((int)pool.TokenCapacity);
        Assert.Equal(8, probe.AttachCachedPrefix(tokens)); // still there: held
    }

    [Fact]
    public void OnlyBlocksWhollyInTheCacheAndKnown_AreOffered()
    {
        using var pool = Pool(8);
        int[] tokens = Tokens(16);
        using var sequence = pool.CreateSequence((int)pool.TokenCapacity);
        sequence.EnsureCapacity(16);
        sequence.OfferCachedBlocks(tokens, cached: 7); // one full block computed so far
        Assert.Equal(1, sequence.IndexedBlocks);
        sequence.OfferCachedBlocks(tokens.AsSpan(0, 9), cached: 16); // the caller knows only 9 tokens: two blocks
        Assert.Equal(2, sequence.IndexedBlocks);
        sequence.OfferCachedBlocks(tokens, cached: 16);
        Assert.Equal(4, sequence.IndexedBlocks);
        using var probe = pool.CreateSequence((int)pool.TokenCapacity);
        Assert.Equal(16, probe.AttachCachedPrefix([.. tokens, 3]));
    }

    [Fact]
    public void ClearingForgetsWhatNoSequenceHolds()
    {
        using var pool = Pool(8);
        int[] kept = Tokens(9, first: 1), dropped = Tokens(9, first: 50);
        using var holder = Computed(pool, kept);
        using (Computed(pool, dropped))
        {
        }
        pool.ClearPrefixCache();
        Assert.Equal(0, pool.CachedBlocks);
        Assert.Equal(8 - 3, pool.FreeBlocks);
        using var a = pool.CreateSequence((int)pool.TokenCapacity);
        Assert.Equal(8, a.AttachCachedPrefix(kept));
        using var b = pool.CreateSequence((int)pool.TokenCapacity);
        Assert.Equal(0, b.AttachCachedPrefix(dropped));
    }

    [Fact]
    public void WithoutPrefixCaching_NothingIsSharedOrKept()
    {
        using var pool = Pool(8, caching: false);
        int[] tokens = Tokens(9);
        using (Computed(pool, tokens))
        {
        }
        Assert.Equal(0, pool.CachedBlocks);
        using var sequence = pool.CreateSequence((int)pool.TokenCapacity);
        Assert.Equal(0, sequence.AttachCachedPrefix(tokens));
        Assert.Equal(0, pool.PrefixQueryTokens);
    }

    [Fact]
    public void AttachingAfterTakingBlocks_IsRefused()
    {
        using var pool = Pool(8);
        using var sequence = pool.CreateSequence((int)pool.TokenCapacity);
        sequence.EnsureCapacity(1);
        Assert.Throws<InvalidOperationException>(() => sequence.AttachCachedPrefix(Tokens(9)));
    }

    public void Dispose() => _backend.Dispose();
}

/// <summary>
/// Prefix caching through the engine on the demo model: a sequence that starts from cached blocks continues exactly as a
/// cold one (checked against llama2.c's reference story, an independent implementation, and against an engine without
/// the cache), under preemption too, and the pool ends with every block free.
/// </summary>
public sealed class PrefixCacheEngineTests(RandomHeadsFixture heads) : IClassFixture<RandomHeadsFixture>
{
    private static readonly string Reference = File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "TestData", "llama2c-greedy-once-upon-a-time-256.txt")).TrimEnd('\n');

    private InferenceEngine Load(bool caching, int? kvBudgetMb = null, string? headsPath = null) => InferenceEngine.Load(new EngineOptions
    {
        ModelPath = TestModels.Stories15MDirectory,
        Device = new DeviceOptions { Kind = DeviceKind.Host },
        Heads = headsPath ?? heads.HeadsPath,
        PrefixCaching = caching,
        KvBudgetMb = kvBudgetMb,
    });

    private static async Task<(List<int> Ids, string Text, GenerationStats Stats, List<TokenLogprob> Logprobs)> Run(InferenceEngine engine, int[] prompt, GenerationOptions options)
    {
        var stats = new GenerationStats();
        var ids = new List<int>();
        var text = new System.Text.StringBuilder();
        var logprobs = new List<TokenLogprob>();
        await foreach (var piece in engine.GenerateAsync(prompt, options, stats))
        {
            ids.AddRange(piece.TokenIds);
            text.Append(piece.Text);
            if (piece.Logprobs is { } l) logprobs.AddRange(l);
        }
        return (ids, text.ToString(), stats, logprobs);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task AContinuationOfACachedStory_ReadsItsBlocks_AndStillTellsLlama2csStory(bool medusa)
    {
        using var engine = Load(caching: true);
        var options = new GenerationOptions { MaxTokens = 256, UseMedusa = medusa, Tree = "tree-8" };
        int[] opening = [.. engine.EncodePrompt("Once upon a time", options)];
        var story = await Run(engine, opening, options);
        Assert.Equal(Reference, "Once upon a time" + story.Text);
        Assert.Equal(0, story.Stats.CachedPromptTokens);

        // The next request is the opening plus the first 70 generated tokens: its first 64 positions (4 blocks of 16) were
        // computed by the first request, prompt and generated tokens alike, and are not computed again.
        int[] longer = [.. opening, .. story.Ids.Take(70)];
        var rest = await Run(engine, longer, options with { MaxTokens = 40 });
        Assert.Equal((longer.Length - 1) / 16 * 16, rest.Stats.CachedPromptTokens);
        Assert.Equal(story.Ids.Skip(70).Take(40), rest.Ids);
        Assert.StartsWith(engine.Tokenizer.Decode([.. longer]) + rest.Text, Reference, StringComparison.Ordinal);
        Assert.Equal(engine.Pool.BlockCount, engine.Pool.FreeBlocks);
        Assert.True(engine.Pool.CachedBlocks >= 4, $"{engine.Pool.CachedBlocks} blocks cached");
        var stats = engine.SchedulerStats;
        Assert.Equal(rest.Stats.CachedPromptTokens, stats.PrefixHitTokens);
        Assert.Equal(opening.Length + longer.Length, stats.PrefixQueryTokens);
    }

    public static TheoryData<string, bool, float> Modes() => new()
    {
        { "plain greedy", false, 0f },
        { "medusa greedy", true, 0f },
        { "plain sampled", false, 0.8f },
        { "medusa sampled", true, 0.8f },
    };

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task StartingFromCachedBlocks_GivesTheTokensAndLogprobsOfAColdEngine(string mode, bool medusa, float temperature)
    {
        using var warm = Load(caching: true);
        using var cold = Load(caching: false);
        var options = new GenerationOptions
        {
            MaxTokens = 48,
            UseMedusa = medusa,
            Tree = "mc_sim_7b_63",
            Sampling = temperature > 0 ? Sampling.Temperature(temperature) : Sampling.Greedy,
            Seed = 5,
            Logprobs = 2,
        };
        string system = "Lily and Tom were best friends. They liked to play in the big green park near their house every day after school.";
        int[] first = [.. warm.EncodePrompt(system + " One day, they found a red ball.", options)];
        int[] second = [.. warm.EncodePrompt(system + " One day, it started to rain.", options)];
        await Run(warm, first, options);
        var cached = await Run(warm, second, options);
        var reference = await Run(cold, second, options);
        Assert.True(cached.Stats.CachedPromptTokens >= 16, $"{mode}: {cached.Stats.CachedPromptTokens} prompt tokens came from the cache");
        Assert.Equal(0, reference.Stats.CachedPromptTokens);
        Assert.Equal(reference.Ids, cached.Ids);
        Assert.Equal(reference.Logprobs.Count, cached.Logprobs.Count);
        for (int i = 0; i < reference.Logprobs.Count; i++)
            Assert.True(Math.Abs(reference.Logprobs[i].Logprob - cached.Logprobs[i].Logprob) <= 1e-5,
                $"{mode}: token {i}: {cached.Logprobs[i].Logprob} from cached blocks, {reference.Logprobs[i].Logprob} cold");
    }

    [Fact]
    public async Task OnOpenCL_CachedBlocksAreReadByTheDeviceKernels_AsIfComputed()
    {
        // PoCL: the attention kernels follow block tables whose first entries other sequences filled.
        using var engine = InferenceEngine.Load(new EngineOptions
        {
            ModelPath = TestModels.Stories15MDirectory,
            Device = new DeviceOptions { Kind = DeviceKind.OpenCL, AllowCpuOpenCL = true },
            Heads = heads.HeadsPath,
        });
        Assert.Equal(DeviceKind.OpenCL, engine.Backend.Kind);
        var options = new GenerationOptions { MaxTokens = 12, Tree = "tree-8", Logprobs = 1 };
        string system = "Lily and Tom were best friends. They liked to play in the big green park near their house every day after school.";
        int[] first = [.. engine.EncodePrompt(system + " One day, they found a red ball.", options)];
        int[] second = [.. engine.EncodePrompt(system + " One day, it started to rain.", options)];
        var cold = await Run(engine, second, options);
        engine.ClearPrefixCache();
        await Run(engine, first, options);
        var warm = await Run(engine, second, options);
        Assert.Equal(0, cold.Stats.CachedPromptTokens);
        Assert.True(warm.Stats.CachedPromptTokens >= 16, $"{warm.Stats.CachedPromptTokens} cached prompt tokens");
        Assert.Equal(cold.Ids, warm.Ids);
        for (int i = 0; i < cold.Logprobs.Count; i++) Assert.Equal(cold.Logprobs[i].Logprob, warm.Logprobs[i].Logprob, 1e-4);
    }

    [Fact]
    public async Task AScoredPrompt_IsComputedWhole_AndScoresAsCold()
    {
        using var engine = Load(caching: true, headsPath: "none");
        var options = new GenerationOptions { MaxTokens = 4 };
        int[] prompt = [.. engine.EncodePrompt("Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine.", options)];
        var plain = await Run(engine, prompt, options);
        Assert.Equal(0, plain.Stats.CachedPromptTokens);
        var scored = await Run(engine, prompt, options with { PromptLogprobs = true });
        Assert.Equal(0, scored.Stats.CachedPromptTokens); // every row's logits are needed
        Assert.Equal(plain.Ids, scored.Ids);
        using var cold = Load(caching: false, headsPath: "none");
        var reference = await Run(cold, prompt, options with { PromptLogprobs = true });
        for (int i = 1; i < prompt.Length; i++)
            Assert.Equal(reference.Stats.PromptLogprobs![i]!.Logprob, scored.Stats.PromptLogprobs![i]!.Logprob, 1e-5);
        // An unscored request after it finds the blocks the scored one offered.
        var again = await Run(engine, prompt, options);
        Assert.Equal((prompt.Length - 1) / 16 * 16, again.Stats.CachedPromptTokens);
    }

    [Fact]
    public async Task ManyRequestsSharingAPrefix_InASmallPool_PreemptAndStillFinishLikeACacheFreeEngine()
    {
        // 3 MiB of KV = 14 blocks of 16; six requests share a 40-token opening and grow past what the pool holds together:
        // they queue, preempt each other, are recomputed (from cached blocks where they survived) and end like cold runs.
        using var warm = Load(caching: true, kvBudgetMb: 3);
        using var cold = Load(caching: false, kvBudgetMb: 3);
        Assert.Equal(14, warm.Pool.BlockCount);
        int[] opening = [.. warm.EncodePrompt("Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine with her friends. Her mom told her to be careful near the big pond. One day, she", new GenerationOptions())];
        Assert.True(opening.Length >= 33, $"{opening.Length} tokens");
        string[] endings = [" saw a big dog", " went to the park", " found a shiny stone", " met a small bird", " ate a red apple", " lost her hat"];
        var requests = endings.Select((e, i) => (Prompt: (int[])[.. opening, .. warm.EncodePrompt(e, new GenerationOptions()).Skip(1)],
            Options: new GenerationOptions { MaxTokens = 70, UseMedusa = i % 2 == 1, Tree = "chain-2", FrequencyPenalty = i == 2 ? 0.5f : 0 })).ToArray();
        var expected = new List<List<int>>();
        foreach (var r in requests) expected.Add((await Run(cold, r.Prompt, r.Options)).Ids);
        var together = await Task.WhenAll(requests.Select(r => Task.Run(() => Run(warm, r.Prompt, r.Options))));
        for (int i = 0; i < requests.Length; i++)
            Assert.True(expected[i].SequenceEqual(together[i].Ids), $"request {i}: differs from a cache-free engine\ncold: {string.Join(' ', expected[i])}\nwarm: {string.Join(' ', together[i].Ids)}");
        var stats = warm.SchedulerStats;
        Assert.True(stats.Preemptions > 0, $"no preemption happened ({stats})");
        Assert.True(stats.PrefixHitTokens > 0, $"nothing was found in the cache ({stats})");
        Assert.Equal(warm.Pool.BlockCount, warm.Pool.FreeBlocks);
        Assert.Equal(0, stats.Running);

        // Afterwards the same requests one by one take their openings from the cache.
        var again = await Run(warm, requests[0].Prompt, requests[0].Options);
        Assert.Equal(expected[0], again.Ids);
        Assert.True(again.Stats.CachedPromptTokens >= 32, $"{again.Stats.CachedPromptTokens} cached prompt tokens");
    }

    [Fact]
    public void BenchPrefixCache_WarmRequestsFindTheSharedDocument_AndGiveTheColdTokens()
    {
        // A 100-token document shared by the four built-in prompts (which differ from their first token): a warm request
        // finds the document's six full blocks of 16, a cold one nothing.
        var result = Cli.CliRunner.Run("bench", "--model", TestModels.Stories15MDirectory, "--device", "host", "--prefix-cache", "--prefix-tokens", "100",
            "--max-tokens", "8", "--json");
        Assert.True(result.ExitCode == 0, result.StandardError);
        using var json = System.Text.Json.JsonDocument.Parse(result.StandardOutput);
        var root = json.RootElement;
        Assert.Equal(100, root.GetProperty("prefix_tokens").GetInt32());
        Assert.Equal(96, root.GetProperty("cached_prompt_tokens_warm_mean").GetDouble());
        Assert.Equal(0, root.GetProperty("cached_prompt_tokens_cold_mean").GetDouble());
        Assert.Equal("4/4", root.GetProperty("warm_tokens_identical_to_cold").GetString());
        Assert.True(root.GetProperty("time_to_first_token_cold_over_warm").GetDouble() > 0);
    }

    [Fact]
    public async Task ARequestWhosePromptARunningOneHolds_IsAdmittedWithoutWaitingForIt()
    {
        // 14 blocks; A holds 8 or more while it decodes, so at most 6 are free. B has the same prompt: charged for all 8 it
        // would wait for A to end; it needs two of its own (the rest are A's, cached), so it starts at once.
        using var engine = Load(caching: true, kvBudgetMb: 3, headsPath: "none");
        var options = new GenerationOptions { MaxTokens = 60 };
        int[] prompt = [.. engine.EncodePrompt("Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine with her friends. " +
            "Her mom told her to be careful near the big pond. One day, she went to the park with her dog Max and they played with a red ball all day " +
            "long until the sun went down. When they got home, her mom made a big cake for them and they ate it together with milk. Lily was very happy " +
            "and she gave Max a big hug. The next morning, Lily woke up and", options)];
        Assert.InRange(prompt.Length, 112, 127); // its first forward needs 8 blocks
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var aStats = new GenerationStats();
        var a = Task.Run(async () =>
        {
            try
            {
                await foreach (var _ in engine.GenerateAsync(prompt, options, aStats)) started.TrySetResult();
            }
            finally
            {
                started.TrySetResult();
            }
            return clock.Elapsed;
        });
        await started.Task;
        var b = new GenerationStats();
        TimeSpan? bFirst = null;
        await foreach (var _ in engine.GenerateAsync(prompt, options with { MaxTokens = 2 }, b)) bFirst ??= clock.Elapsed;
        var aEnd = await a;
        Assert.True(aStats.GeneratedTokens >= 20, $"A generated {aStats.GeneratedTokens} tokens");
        Assert.Equal((prompt.Length - 1) / 16 * 16, b.CachedPromptTokens);
        Assert.True(bFirst < aEnd, $"B's first token at {bFirst?.TotalMilliseconds:0} ms, A ended at {aEnd.TotalMilliseconds:0} ms");
    }

    [Fact]
    public async Task IdenticalPromptsArrivingTogether_ComputeTheirBlocksOnce_AndAnswerLikeColdRuns()
    {
        using var warm = Load(caching: true);
        using var cold = Load(caching: false);
        int[] prompt = [.. warm.EncodePrompt("Lily and Tom were best friends. They liked to play in the big green park near their house every day after school. One day,", new GenerationOptions())];
        var requests = Enumerable.Range(0, 4).Select(i => new GenerationOptions
        {
            MaxTokens = 20,
            Sampling = Sampling.Temperature(0.9f),
            Seed = (ulong)(30 + i),
            UseMedusa = i % 2 == 0,
            Tree = "tree-8",
        }).ToArray();
        long before = warm.SchedulerStats.PrefixHitTokens;
        var together = await Task.WhenAll(requests.Select(o => Task.Run(() => Run(warm, prompt, o))));
        int cachedEach = (prompt.Length - 1) / 16 * 16;
        Assert.True(cachedEach >= 16, $"{prompt.Length} prompt tokens");
        // Whichever starts first computes the prompt; the others wait while it does, then take its blocks.
        Assert.Equal(3L * cachedEach, warm.SchedulerStats.PrefixHitTokens - before);
        Assert.Equal(3, together.Count(t => t.Stats.CachedPromptTokens == cachedEach));
        for (int i = 0; i < requests.Length; i++) Assert.Equal((await Run(cold, prompt, requests[i])).Ids, together[i].Ids);
    }

    [Fact]
    public async Task APromptArrayTheCallerChangesAfterwards_DoesNotReachTheCache()
    {
        using var engine = Load(caching: true, headsPath: "none");
        var options = new GenerationOptions { MaxTokens = 30 };
        int[] original = [.. engine.EncodePrompt("Lily and Tom were best friends. They liked to play in the big green park near their house every day after school.", options)];
        int[] buffer = [.. original];
        var pieces = engine.Generate(buffer, options, new GenerationStats()).GetEnumerator();
        Assert.True(pieces.MoveNext()); // submitted and prefilled
        Array.Fill(buffer, 1000); // the caller reuses its buffer while its request streams
        while (pieces.MoveNext())
        {
        }
        pieces.Dispose();
        using var cold = Load(caching: false, headsPath: "none");
        var again = await Run(engine, original, options);
        Assert.Equal((original.Length - 1) / 16 * 16, again.Stats.CachedPromptTokens);
        Assert.Equal((await Run(cold, original, options)).Ids, again.Ids);
    }

    [Fact]
    public async Task RunningAPromptOnly_MakesItReadyInTheCache()
    {
        // MaxTokens 0: a system prompt computed ahead of its requests (nothing generated, no Medusa step).
        using var engine = Load(caching: true);
        string system = "You are a storyteller. Lily and Tom were best friends. They liked to play in the big green park near their house every day after school.";
        int[] warmUp = [.. engine.EncodePrompt(system, new GenerationOptions { MaxTokens = 0 })];
        var run = await Run(engine, warmUp, new GenerationOptions { MaxTokens = 0 });
        Assert.Empty(run.Ids);
        int[] request = [.. engine.EncodePrompt(system + " One day, it started to rain.", new GenerationOptions())];
        int full = warmUp.Length / 16 * 16; // every position of the warm-up is computed: all its full blocks are offered
        Assert.Equal(warmUp.AsSpan(0, full).ToArray(), request.AsSpan(0, full).ToArray());
        var answer = await Run(engine, request, new GenerationOptions { MaxTokens = 10 });
        Assert.Equal(full, answer.Stats.CachedPromptTokens);
        Assert.Equal(10, answer.Ids.Count);
        Assert.Equal(0, run.Stats.GeneratedTokens);
        Assert.Equal(FinishReason.MaxTokens, run.Stats.FinishReason);
    }

    [Fact]
    public void EngineOptions_TurnItOff_AndTheHostingOptionsCarryIt()
    {
        Assert.True(new EngineOptions { ModelPath = "m" }.PrefixCaching);
        var hosting = new IlgpuMedusa.Hosting.IlgpuMedusaOptions { ModelPath = "m", PrefixCaching = false };
        Assert.False(hosting.ToEngineOptions().PrefixCaching);
        Assert.True(new IlgpuMedusa.Hosting.IlgpuMedusaOptions { ModelPath = "m" }.ToEngineOptions().PrefixCaching);
    }
}
