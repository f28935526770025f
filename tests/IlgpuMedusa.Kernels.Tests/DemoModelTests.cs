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
