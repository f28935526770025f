using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Hosting;
using IlgpuMedusa.Models;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace IlgpuMedusa.Tests.Hosting;

/// <summary>Bad settings fail before any work, with a message naming the setting: through DI at start, GenerationOptions and ChatOptions.</summary>
public class OptionsValidationTests
{
    /// <summary>What a host does at start for ValidateOnStart.</summary>
    private static void ValidateAtStart(IServiceProvider provider) =>
        provider.GetRequiredService<IAsyncStartupValidator>().ValidateAsync(CancellationToken.None).GetAwaiter().GetResult();

    /// <summary>Registers with <paramref name="configure"/>, runs the start check, returns its failure message.</summary>
    private static string StartFailure(Action<IlgpuMedusaOptions> configure)
    {
        var services = new ServiceCollection();
        services.AddIlgpuMedusa(configure);
        using var provider = services.BuildServiceProvider();
        var e = Assert.Throws<OptionsValidationException>(() => ValidateAtStart(provider));
        return e.Message;
    }

    private static void Valid(IlgpuMedusaOptions o)
    {
        o.ModelPath = TestModels.Stories15MDirectory;
        o.Device = DeviceKind.Host;
    }

    [Fact]
    public void MissingModelPath_FailsAtStart()
    {
        var message = StartFailure(o => o.Device = DeviceKind.Host);
        Assert.Contains("IlgpuMedusa:ModelPath is not set", message, StringComparison.Ordinal);
    }

    [Fact]
    public void ModelPathThatDoesNotExist_FailsAtStart_NamingItAndThePath()
    {
        var message = StartFailure(o => o.ModelPath = "/no/such/model");
        Assert.Contains("IlgpuMedusa:ModelPath '/no/such/model' does not exist", message, StringComparison.Ordinal);
    }

    [Fact]
    public void NegativeMaxTokens_FailsAtStart()
    {
        var message = StartFailure(o =>
        {
            Valid(o);
            o.MaxTokens = -5;
        });
        Assert.Contains("IlgpuMedusa:MaxTokens must be a positive number of tokens, got -5", message, StringComparison.Ordinal);
    }

    [Fact]
    public void UnknownTree_FailsAtStart()
    {
        var message = StartFailure(o =>
        {
            Valid(o);
            o.Tree = "tree-9000";
        });
        Assert.Contains("IlgpuMedusa:Tree: unknown tree 'tree-9000'", message, StringComparison.Ordinal);
    }

    [Fact]
    public void SeveralBadSettings_AreAllNamed()
    {
        var message = StartFailure(o =>
        {
            Valid(o);
            o.Device = (DeviceKind)42;
            o.KvBudgetMb = 0;
            o.HostThreads = -1;
            o.Acceptance = "sometimes";
            o.Heads = "/no/such/heads.safetensors";
        });
        Assert.Contains("IlgpuMedusa:Device 42 is not a device kind", message, StringComparison.Ordinal);
        Assert.Contains("IlgpuMedusa:KvBudgetMb", message, StringComparison.Ordinal);
        Assert.Contains("IlgpuMedusa:HostThreads", message, StringComparison.Ordinal);
        Assert.Contains("IlgpuMedusa:Acceptance 'sometimes'", message, StringComparison.Ordinal);
        Assert.Contains("IlgpuMedusa:Heads '/no/such/heads.safetensors'", message, StringComparison.Ordinal);
    }

    [Fact]
    public void ValidSettings_PassTheStartCheck()
    {
        var services = new ServiceCollection();
        services.AddIlgpuMedusa(Valid);
        using var provider = services.BuildServiceProvider();
        ValidateAtStart(provider);
    }

    [Fact]
    public void WithoutAHost_ResolvingTheChatClientFailsTheSameWay()
    {
        var services = new ServiceCollection();
        services.AddIlgpuMedusa(o => o.ModelPath = "");
        using var provider = services.BuildServiceProvider();
        var e = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IChatClient>());
        Assert.Contains("IlgpuMedusa:ModelPath is not set", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ConfigurationSection_WithAnUnknownDevice_FailsAtStart_NamingTheKey()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["IlgpuMedusa:ModelPath"] = TestModels.Stories15MDirectory,
            ["IlgpuMedusa:Device"] = "tpu",
        }).Build();
        var services = new ServiceCollection();
        services.AddIlgpuMedusa(configuration.GetSection("IlgpuMedusa"));
        using var provider = services.BuildServiceProvider();
        var e = Assert.ThrowsAny<Exception>(() => ValidateAtStart(provider));
        Assert.Contains("IlgpuMedusa:Device", e.Message, StringComparison.Ordinal);
        Assert.Contains("tpu", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ConfigurationSection_WithBadNumbers_FailsAtStart_NamingThem()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["IlgpuMedusa:MaxTokens"] = "-1",
            ["IlgpuMedusa:Tree"] = "no-such-tree",
        }).Build();
        var services = new ServiceCollection();
        services.AddIlgpuMedusa(configuration.GetSection("IlgpuMedusa"));
        using var provider = services.BuildServiceProvider();
        var e = Assert.Throws<OptionsValidationException>(() => ValidateAtStart(provider));
        Assert.Contains("IlgpuMedusa:ModelPath is not set", e.Message, StringComparison.Ordinal);
        Assert.Contains("IlgpuMedusa:MaxTokens must be a positive number of tokens, got -1", e.Message, StringComparison.Ordinal);
        Assert.Contains("IlgpuMedusa:Tree: unknown tree 'no-such-tree'", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void GenerationOptions_NameTheBadOption()
    {
        var maxTokens = Assert.Throws<ArgumentOutOfRangeException>(() => new GenerationOptions { MaxTokens = -3 }.Validate());
        Assert.Equal("MaxTokens", maxTokens.ParamName);
        Assert.StartsWith("MaxTokens (--max-tokens) must be a number of tokens (0: run the prompt only)", maxTokens.Message, StringComparison.Ordinal);
        new GenerationOptions { MaxTokens = 0 }.Validate(); // the prompt only

        var tree = Assert.Throws<ArgumentException>(() => new GenerationOptions { Tree = "tree-9000" }.Validate());
        Assert.Equal("Tree", tree.ParamName);
        Assert.StartsWith("Tree (--tree): unknown tree 'tree-9000'; presets are mc_sim_7b_63", tree.Message, StringComparison.Ordinal);

        var topP = Assert.Throws<ArgumentOutOfRangeException>(() => Sampling.Temperature(0.8f, 1.5f));
        Assert.Equal("topP", topP.ParamName);
        Assert.StartsWith("top-p must be in (0, 1]", topP.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentOutOfRangeException>(() => Sampling.From(0.8f, 0f));

        var model = Assert.Throws<ArgumentException>(() => new EngineOptions { ModelPath = " " }.Validate());
        Assert.Equal("ModelPath", model.ParamName);
    }

    [Theory]
    [InlineData("bf16")]
    [InlineData("f8")]
    [InlineData("")]
    public void KvCacheType_OtherThanF32OrF16_FailsAtStart_NamingIt(string value)
    {
        var message = StartFailure(o =>
        {
            Valid(o);
            o.KvCacheType = value;
        });
        Assert.Contains($"IlgpuMedusa:KvCacheType must be f32 or f16, got '{value}'.", message, StringComparison.Ordinal);
    }

    [Fact]
    public void KvCacheType_FromConfiguration_IsReadCaseInsensitively_AndDefaultsToF32()
    {
        foreach (var (value, expected) in new[] { ("F16", DType.F16), ("f16", DType.F16), ("fp16", DType.F16), ("F32", DType.F32), (null, DType.F32) })
        {
            var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["IlgpuMedusa:ModelPath"] = TestModels.Stories15MDirectory,
                ["IlgpuMedusa:Device"] = "Host",
                ["IlgpuMedusa:KvCacheType"] = value,
            }).Build();
            var services = new ServiceCollection();
            services.AddIlgpuMedusa(configuration.GetSection("IlgpuMedusa"));
            using var provider = services.BuildServiceProvider();
            ValidateAtStart(provider);
            var options = provider.GetRequiredService<IOptions<IlgpuMedusaOptions>>().Value;
            Assert.Equal(expected, options.ToEngineOptions().KvCacheType);
        }
        var bad = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["IlgpuMedusa:ModelPath"] = TestModels.Stories15MDirectory,
            ["IlgpuMedusa:KvCacheType"] = "half-ish",
        }).Build();
        var badServices = new ServiceCollection();
        badServices.AddIlgpuMedusa(bad.GetSection("IlgpuMedusa"));
        using var badProvider = badServices.BuildServiceProvider();
        var e = Assert.Throws<OptionsValidationException>(() => ValidateAtStart(badProvider));
        Assert.Contains("IlgpuMedusa:KvCacheType must be f32 or f16, got 'half-ish'.", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void EngineOptions_KvCacheType_OtherThanF32OrF16_IsRefused_NamingTheOption()
    {
        foreach (var type in new[] { DType.BF16, DType.I32, (DType)42 })
        {
            var e = Assert.Throws<ArgumentException>(() => new EngineOptions { ModelPath = "m", KvCacheType = type }.Validate());
            Assert.Equal("KvCacheType", e.ParamName);
            Assert.StartsWith($"KvCacheType (--kv-dtype) must be f32 or f16, got {type.ToString().ToLowerInvariant()}.", e.Message, StringComparison.Ordinal);
        }
        Assert.Equal(DType.F32, new EngineOptions { ModelPath = "m" }.Validate().KvCacheType);
        Assert.Equal(DType.F16, new EngineOptions { ModelPath = "m", KvCacheType = DType.F16 }.Validate().KvCacheType);
        Assert.Equal(DType.F16, EngineOptions.ParseKvCacheType("F16", "--kv-dtype"));
        Assert.Equal(DType.F32, EngineOptions.ParseKvCacheType("f32", "--kv-dtype"));
        var garbage = Assert.Throws<ArgumentException>(() => EngineOptions.ParseKvCacheType("garbage", "--kv-dtype"));
        Assert.Equal("--kv-dtype: 'garbage' is not a KV cache element type; expected f32 or f16.", garbage.Message);
        Assert.Throws<ArgumentException>(() => EngineOptions.ParseKvCacheType("bf16", "--kv-dtype"));
    }

    [Fact]
    public void EngineLoad_WithAMissingModelDirectory_NamesIt()
    {
        var e = Assert.Throws<DirectoryNotFoundException>(() => InferenceEngine.Load(new EngineOptions { ModelPath = "/no/such/model", Device = new DeviceOptions { Kind = DeviceKind.Host } }));
        Assert.Contains("'/no/such/model' does not exist", e.Message, StringComparison.Ordinal);
    }
}

/// <summary>ChatOptions are checked before any work, each failure naming the option.</summary>
public sealed class ChatOptionsValidationTests(DemoEngineFixture fixture) : IClassFixture<DemoEngineFixture>, IDisposable
{
    private readonly IlgpuMedusaChatClient _client = new(fixture.Engine);

    public void Dispose() => _client.Dispose();

    private ArgumentException Fails(ChatOptions options) => Assert.ThrowsAny<ArgumentException>(() => _client.ToGenerationOptions(options));

    [Fact]
    public void NegativeMaxOutputTokens() =>
        Assert.StartsWith("ChatOptions.MaxOutputTokens must be a positive number of tokens.", Fails(new ChatOptions { MaxOutputTokens = -1 }).Message, StringComparison.Ordinal);

    [Theory]
    [InlineData(0f)]
    [InlineData(1.5f)]
    [InlineData(-0.1f)]
    public void TopPOutsideZeroToOne(float topP) =>
        Assert.StartsWith("ChatOptions.TopP must be in (0, 1].", Fails(new ChatOptions { TopP = topP }).Message, StringComparison.Ordinal);

    [Fact]
    public void NegativeTemperature() =>
        Assert.StartsWith("ChatOptions.Temperature must be 0 (greedy) or more.", Fails(new ChatOptions { Temperature = -1 }).Message, StringComparison.Ordinal);

    [Fact]
    public void UnknownTree()
    {
        var message = Fails(new ChatOptions { AdditionalProperties = new() { [IlgpuMedusaChatOptionKeys.Tree] = "tree-9000" } }).Message;
        Assert.StartsWith("ChatOptions.AdditionalProperties[\"medusa_tree\"]: Tree (--tree): unknown tree 'tree-9000'", message, StringComparison.Ordinal);
    }

    [Fact]
    public void UnknownAcceptanceAndBadMedusaSwitch()
    {
        Assert.StartsWith("ChatOptions.AdditionalProperties[\"medusa_acceptance\"]",
            Fails(new ChatOptions { AdditionalProperties = new() { [IlgpuMedusaChatOptionKeys.Acceptance] = "sometimes" } }).Message, StringComparison.Ordinal);
        Assert.StartsWith("ChatOptions.AdditionalProperties[\"medusa\"] must be true/false",
            Fails(new ChatOptions { AdditionalProperties = new() { [IlgpuMedusaChatOptionKeys.Medusa] = 3 } }).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void EmptyStopSequence() =>
        Assert.StartsWith("ChatOptions.StopSequences must not contain empty strings.", Fails(new ChatOptions { StopSequences = ["end", ""] }).Message, StringComparison.Ordinal);

    [Fact]
    public async Task BadOptions_FailBeforeAnyBlockIsTaken()
    {
        int free = fixture.Engine.Pool.FreeBlocks;
        await Assert.ThrowsAnyAsync<ArgumentException>(() => _client.GetResponseAsync("Once upon a time", new ChatOptions { MaxOutputTokens = 0 }));
        await Assert.ThrowsAnyAsync<ArgumentException>(async () =>
        {
            await foreach (var _ in _client.GetStreamingResponseAsync("Once upon a time", new ChatOptions { TopP = 2 }))
            {
            }
        });
        Assert.Equal(free, fixture.Engine.Pool.FreeBlocks);
    }
}
