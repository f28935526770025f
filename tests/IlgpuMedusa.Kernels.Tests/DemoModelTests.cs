using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using Xunit.Abstractions;

namespace IlgpuMedusa.Kernels.Tests;

/// <summary>The demo model (stories15M) end to end on OpenCL (PoCL) against the host backend.</summary>
[Collection(AcceleratorCollection.Name)]
public sealed class DemoModelTests(ITestOutputHelper output)
{
    private const string Prompt = "Once upon a time";
    private const int Tokens = 64;

    /// <summary>
    /// Greedy decoding gives the same 64 tokens on OpenCL as on the host. Also prints decode tokens/s of both, measured
    /// on a second run (the first warms caches and JIT); no timing is asserted.
    /// </summary>
    [Fact]
    public void Greedy_64_tokens_on_OpenCL_match_the_host()
    {
        var host = Generate(new DeviceOptions { Kind = DeviceKind.Host });
        var openCL = Generate(Accelerators.OpenCLOptions);
        Assert.Equal(Tokens, host.Ids.Count);
        Assert.Equal(host.Ids, openCL.Ids);
        output.WriteLine($"prompt '{Prompt}', {Tokens} greedy tokens: {host.Text}");
        output.WriteLine($"decode {host.TokensPerSecond,8:F1} tok/s  prefill {host.PrefillMs,6:F1} ms  {host.Device}");
        output.WriteLine($"decode {openCL.TokensPerSecond,8:F1} tok/s  prefill {openCL.PrefillMs,6:F1} ms  {openCL.Device}");
    }

    /// <summary>
    /// With a binary16 KV cache (--kv-dtype f16) too: both sides round each key and value to the same half when they
    /// write it and attend in float32, so OpenCL gives the host's 64 tokens (the host's own, over the whole story, are
    /// held to llama2.c's text in the main test suite).
    /// </summary>
    [Fact]
    public void Greedy_64_tokens_over_a_half_cache_on_OpenCL_match_the_host()
    {
        var host = Generate(new DeviceOptions { Kind = DeviceKind.Host }, Models.DType.F16);
        var openCL = Generate(Accelerators.OpenCLOptions, Models.DType.F16);
        Assert.Equal(Tokens, host.Ids.Count);
        Assert.Equal(host.Ids, openCL.Ids);
        output.WriteLine($"kv f16: decode {host.TokensPerSecond,8:F1} tok/s  {host.Device}; {openCL.TokensPerSecond,8:F1} tok/s  {openCL.Device}");
    }

    /// <summary>
    /// Log-probabilities on OpenCL: the prefill scoring every prompt row, then Medusa trees (the demo's trained heads)
    /// verified on the device, give the host's values for the same tokens.
    /// </summary>
    [Fact]
    public void Logprobs_of_prompt_and_Medusa_tokens_on_OpenCL_match_the_host()
    {
        var options = new GenerationOptions { MaxTokens = 32, Logprobs = 3, PromptLogprobs = true };
        var host = Score(new DeviceOptions { Kind = DeviceKind.Host }, options);
        var openCL = Score(Accelerators.OpenCLOptions, options);
        Assert.Equal(host.Ids, openCL.Ids);
        Assert.Equal(32, host.Logprobs.Count);
        Assert.True(openCL.Medusa > 1.5, $"Medusa accepted {openCL.Medusa} tokens per step on OpenCL");
        for (int i = 0; i < host.Logprobs.Count; i++)
        {
            Assert.Equal(host.Logprobs[i].Top.Select(t => t.TokenId), openCL.Logprobs[i].Top.Select(t => t.TokenId));
            Assert.True(Math.Abs(host.Logprobs[i].Logprob - openCL.Logprobs[i].Logprob) < 2e-3, $"token {i}: host {host.Logprobs[i].Logprob}, OpenCL {openCL.Logprobs[i].Logprob}");
        }
        Assert.Equal(host.Prompt.Count, openCL.Prompt.Count);
        Assert.Null(openCL.Prompt[0]);
        for (int i = 1; i < host.Prompt.Count; i++)
            Assert.True(Math.Abs(host.Prompt[i]!.Logprob - openCL.Prompt[i]!.Logprob) < 2e-3, $"prompt token {i}: host {host.Prompt[i]!.Logprob}, OpenCL {openCL.Prompt[i]!.Logprob}");
    }

    private static (List<int> Ids, List<TokenLogprob> Logprobs, IReadOnlyList<TokenLogprob?> Prompt, double Medusa) Score(DeviceOptions device, GenerationOptions options)
    {
        using var engine = InferenceEngine.Load(new EngineOptions { ModelPath = TestModels.Stories15MDirectory, Device = device });
        var stats = new GenerationStats();
        var pieces = engine.Generate(engine.EncodePrompt("Lily and Tom went to the park. They saw a big dog and", options), options, stats).ToList();
        return (pieces.SelectMany(p => p.TokenIds).ToList(), pieces.SelectMany(p => p.Logprobs!).ToList(), stats.PromptLogprobs!, stats.Medusa!.MeanAccepted);
    }

    private sealed record Run(List<int> Ids, string Text, double TokensPerSecond, double PrefillMs, string Device);

    private static Run Generate(DeviceOptions device, Models.DType kv = Models.DType.F32)
    {
        using var engine = InferenceEngine.Load(new EngineOptions { ModelPath = TestModels.Stories15MDirectory, Device = device, KvCacheType = kv });
        Assert.Equal(kv, engine.Pool.Layout.ElementType);
        var options = new GenerationOptions { MaxTokens = Tokens, UseMedusa = false };
        var prompt = engine.EncodePrompt(Prompt, options);
        _ = engine.Generate(prompt, options, new GenerationStats()).ToList(); // warm-up
        var stats = new GenerationStats();
        var pieces = engine.Generate(prompt, options, stats).ToList();
        return new Run(pieces.SelectMany(p => p.TokenIds).ToList(), string.Concat(pieces.Select(p => p.Text)),
            stats.DecodeTokensPerSecond, stats.PrefillSeconds * 1000, engine.DeviceName);
    }
}
