using System.Text.Json;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Models;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Tests.Cli;

namespace IlgpuMedusa.Tests.Generation;

/// <summary>
/// The F16 KV cache option end to end on the host: pool sizes from the budget, greedy text of the demo model against
/// llama2.c's, and what the CLI's profile and bench report.
/// </summary>
public class HalfKvCacheEngineTests
{
    private const string Prompt = "Once upon a time";
    private static readonly string Reference = File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "TestData", "llama2c-greedy-once-upon-a-time-256.txt")).TrimEnd('\n');

    // stories15M: 6 layers, 6 KV heads of 48 (KV dim 288), a context of 256.
    private const int Layers = 6, KvDim = 288, Context = 256;

    private static InferenceEngine Load(DType kvType, string heads = "none", int? budgetMb = null) => InferenceEngine.Load(new EngineOptions
    {
        ModelPath = TestModels.Stories15MDirectory,
        Device = new DeviceOptions { Kind = DeviceKind.Host },
        Heads = heads,
        KvCacheType = kvType,
        KvBudgetMb = budgetMb,
    });

    [Fact]
    public void FromBudget_with_f16_elements_gives_twice_the_blocks_of_f32()
    {
        using var backend = new HostBackend(threads: 1);
        // One F32 block of 16 slots: 2 layers · (K, V) · 16 slots · 2 heads · 8 = 1024 floats = 4096 bytes.
        foreach (var (budget, f32Blocks) in new[] { (10 * 4096L, 10), (10 * 4096L + 2048, 10), (4096L, 1) })
        {
            using var single = KvBlockPool.FromBudget(backend, 2, 2, 8, 16, budget);
            using var half = KvBlockPool.FromBudget(backend, 2, 2, 8, 16, budget, DType.F16);
            Assert.Equal(DType.F32, single.Layout.ElementType);
            Assert.Equal(DType.F16, half.Layout.ElementType);
            Assert.Equal(f32Blocks, single.BlockCount);
            Assert.Equal(budget / 2048, half.BlockCount); // 2 · f32Blocks, + 1 when half an F32 block is left over
            Assert.Equal(half.BlockCount * 2048L, half.Layout.TotalBytes);
        }
        Assert.Throws<ArgumentException>(() => KvBlockPool.FromBudget(backend, 2, 2, 8, 16, 4096, DType.BF16));
    }

    [Fact]
    public void Default_budget_holds_the_same_full_context_sequences_in_half_the_bytes()
    {
        // EngineOptions.DefaultKvSequences (4) sequences of the whole context: 1024 tokens, 64 blocks of 16, whatever the
        // element type; 2 · 6 · 288 elements per token, of 4 or 2 bytes.
        using (var single = Load(DType.F32))
        {
            Assert.Equal(DType.F32, single.Pool.Layout.ElementType);
            Assert.Equal(4 * Context / 16, single.Pool.BlockCount);
            Assert.Equal(4L * Context * 2 * Layers * KvDim * 4, single.Pool.Layout.TotalBytes);
        }
        using (var half = Load(DType.F16))
        {
            Assert.Equal(DType.F16, half.Pool.Layout.ElementType);
            Assert.Equal(4 * Context / 16, half.Pool.BlockCount);
            Assert.Equal(4L * Context * 2 * Layers * KvDim * 2, half.Pool.Layout.TotalBytes);
        }
        // A budget in MiB holds twice the tokens: 1 MiB / (16 · 6912 bytes) = 9 blocks of F16 (4 of F32).
        using var budgeted = Load(DType.F16, budgetMb: 1);
        Assert.Equal(1048576 / (16 * 2 * Layers * KvDim * 2), budgeted.Pool.BlockCount);
    }

    [Theory]
    [InlineData("none")]
    [InlineData("auto")] // the demo's shipped Medusa heads: tree verification over the F16 cache
    public void Greedy_generation_with_an_f16_kv_cache_matches_llama2c(string heads)
    {
        // Rounding every key and value to binary16 does not change a single greedy token of the demo story: the whole
        // continuation (217 tokens, ending where llama2.c's float32 run produced BOS) is the reference text.
        using var engine = Load(DType.F16, heads);
        var options = new GenerationOptions { MaxTokens = 256 };
        var stats = new GenerationStats();
        var text = string.Concat(engine.Generate(engine.EncodePrompt(Prompt, options), options, stats).Select(p => p.Text));
        Assert.Equal(FinishReason.EndToken, stats.FinishReason);
        Assert.Equal(Reference, Prompt + text);
    }

    [Fact]
    public void Cli_generate_profile_and_bench_report_the_kv_dtype()
    {
        var profile = CliRunner.Run("profile", "--model", TestModels.Stories15MDirectory, "--device", "host", "--prompt-tokens", "8", "--decode-tokens", "4",
            "--tree-sizes", "1,4", "--repeats", "1", "--copy-mb", "0", "--kv-dtype", "f16", "--json");
        Assert.True(profile.ExitCode == 0, profile.StandardError);
        using (var json = JsonDocument.Parse(profile.StandardOutput))
        {
            Assert.Equal("f16", json.RootElement.GetProperty("kv_dtype").GetString());
            Assert.Equal(4, json.RootElement.GetProperty("greedy_tokens").GetArrayLength());
        }

        var generate = CliRunner.Run("generate", "--model", TestModels.Stories15MDirectory, "--device", "host", "--heads", "none", "--prompt", "The cat",
            "--max-tokens", "3", "--kv-dtype", "f16", "--json");
        Assert.True(generate.ExitCode == 0, generate.StandardError);
        using (var json = JsonDocument.Parse(generate.StandardOutput))
            Assert.Equal("f16", json.RootElement.GetProperty("kv_dtype").GetString());

        var prompts = Path.Combine(TestModels.TempDirectory("kv-dtype-bench"), "prompts.txt");
        File.WriteAllText(prompts, "The cat sat on\n");
        foreach (var (type, bytes) in new[] { ("f16", 2), ("f32", 4) })
        {
            var bench = CliRunner.Run("bench", "--model", TestModels.Stories15MDirectory, "--device", "host", "--heads", "none", "--prompts", prompts,
                "--max-tokens", "4", "--warmup", "0", "--kv-dtype", type, "--json");
            Assert.True(bench.ExitCode == 0, bench.StandardError);
            using var json = JsonDocument.Parse(bench.StandardOutput);
            Assert.Equal(type, json.RootElement.GetProperty("kv_dtype").GetString());
            Assert.Equal(Math.Round(4.0 * Context * 2 * Layers * KvDim * bytes / 1048576, 1), json.RootElement.GetProperty("kv_cache_mb").GetDouble());
        }
    }
}
