using IlgpuMedusa.Generation;
using IlgpuMedusa.Hosting;
using Microsoft.Extensions.AI;

namespace IlgpuMedusa.Tests.Hosting;

/// <summary>The IChatClient on the demo model: text, usage, finish reasons, streaming, option mapping, services.</summary>
public sealed class ChatClientTests(DemoEngineFixture fixture) : IClassFixture<DemoEngineFixture>, IDisposable
{
    private static readonly string[] TheEnd = ["The end"];
    private readonly IlgpuMedusaChatClient _client = new(fixture.Engine);

    public void Dispose() => _client.Dispose();

    [Fact]
    public void DemoModel_GetsThePlainTemplate() => Assert.Equal(ChatTemplateKind.Plain, _client.Template);

    [Fact]
    public async Task GetResponse_ContinuesLikeLlama2c_WithUsageAndLengthFinish()
    {
        var response = await _client.GetResponseAsync(HostingTestSupport.Prompt, new ChatOptions { MaxOutputTokens = 20 });
        Assert.StartsWith(", there was a little girl named Lily.", response.Text, StringComparison.Ordinal);
        Assert.StartsWith(HostingTestSupport.Prompt + response.Text, HostingTestSupport.Reference, StringComparison.Ordinal);
        Assert.Equal(ChatFinishReason.Length, response.FinishReason);
        Assert.NotNull(response.Usage);
        Assert.Equal(5, response.Usage.InputTokenCount); // BOS, Once, upon, a, time (llama2.c's ids 1 9038 2501 263 931)
        Assert.Equal(20, response.Usage.OutputTokenCount);
        Assert.Equal(25, response.Usage.TotalTokenCount);
        Assert.Equal("stories15M", response.ModelId);
        Assert.Equal(ChatRole.Assistant, Assert.Single(response.Messages).Role);
    }

    [Fact]
    public async Task StopSequence_EndsWithStop_WithoutTheStopText()
    {
        var response = await _client.GetResponseAsync(HostingTestSupport.Prompt, new ChatOptions { MaxOutputTokens = 50, StopSequences = ["Lily"] });
        Assert.Equal(", there was a little girl named ", response.Text);
        Assert.Equal(ChatFinishReason.Stop, response.FinishReason);
    }

    [Fact]
    public async Task EndToken_EndsWithStop()
    {
        var response = await _client.GetResponseAsync(HostingTestSupport.Prompt, new ChatOptions { MaxOutputTokens = 250 });
        Assert.Equal(HostingTestSupport.Reference, HostingTestSupport.Prompt + response.Text);
        Assert.Equal(ChatFinishReason.Stop, response.FinishReason);
        Assert.True(response.Usage!.OutputTokenCount < 250);
    }

    [Fact]
    public async Task Streaming_YieldsPieces_ThenFinishReasonAndUsage()
    {
        var updates = new List<ChatResponseUpdate>();
        // One token per forward (Medusa off), so one update per token: the reply must arrive piece by piece.
        var options = new ChatOptions { MaxOutputTokens = 20, AdditionalProperties = new() { [IlgpuMedusaChatOptionKeys.Medusa] = false } };
        await foreach (var update in _client.GetStreamingResponseAsync(HostingTestSupport.Prompt, options))
            updates.Add(update);
        Assert.True(updates.Count >= 10, $"only {updates.Count} updates: the reply did not stream");
        Assert.All(updates, u => Assert.Equal(ChatRole.Assistant, u.Role));
        Assert.Single(updates.Select(u => u.ResponseId).Distinct());
        Assert.Equal(ChatFinishReason.Length, updates[^1].FinishReason);

        var response = updates.ToChatResponse();
        Assert.StartsWith(HostingTestSupport.Prompt + response.Text, HostingTestSupport.Reference, StringComparison.Ordinal);
        Assert.StartsWith(", there was a little girl named Lily.", response.Text, StringComparison.Ordinal);
        Assert.Equal(ChatFinishReason.Length, response.FinishReason);
        Assert.Equal(5, response.Usage!.InputTokenCount);
        Assert.Equal(20, response.Usage.OutputTokenCount);
        Assert.Equal(25, response.Usage.TotalTokenCount);
    }

    [Fact]
    public async Task MedusaOff_GivesTheSameGreedyText()
    {
        var on = await _client.GetResponseAsync(HostingTestSupport.Prompt, new ChatOptions { MaxOutputTokens = 30 });
        var off = await _client.GetResponseAsync(HostingTestSupport.Prompt,
            new ChatOptions { MaxOutputTokens = 30, AdditionalProperties = new() { [IlgpuMedusaChatOptionKeys.Medusa] = false } });
        Assert.Equal(on.Text, off.Text);
        Assert.Equal(false, off.AdditionalProperties!["medusa"]);
        Assert.Equal(fixture.Engine.Heads is not null, on.AdditionalProperties!["medusa"]);
    }

    [Fact]
    public async Task SeededSampling_IsRepeatable()
    {
        var options = new ChatOptions { MaxOutputTokens = 25, Temperature = 1.0f, TopP = 0.9f, Seed = 1234 };
        var first = await _client.GetResponseAsync(HostingTestSupport.Prompt, options);
        var second = await _client.GetResponseAsync(HostingTestSupport.Prompt, options);
        Assert.Equal(first.Text, second.Text);
        Assert.Equal(25, first.Usage!.OutputTokenCount);
    }

    [Fact]
    public void ChatOptions_MapToGenerationOptions()
    {
        Assert.Equal(_client.Defaults, _client.ToGenerationOptions(null));
        Assert.Equal(_client.Defaults, _client.ToGenerationOptions(new ChatOptions()));

        var mapped = _client.ToGenerationOptions(new ChatOptions
        {
            MaxOutputTokens = 33,
            Temperature = 0.7f,
            TopP = 0.9f,
            TopK = 12,
            Seed = -1,
            StopSequences = [.. TheEnd],
            AdditionalProperties = new()
            {
                [IlgpuMedusaChatOptionKeys.Medusa] = "off",
                [IlgpuMedusaChatOptionKeys.Tree] = "tree-16",
                [IlgpuMedusaChatOptionKeys.Acceptance] = "typical",
                [IlgpuMedusaChatOptionKeys.Logprobs] = 3,
            },
        });
        Assert.Equal(33, mapped.MaxTokens);
        var sampling = Assert.IsType<Sampling.TemperatureSampling>(mapped.Sampling);
        Assert.Equal(0.7f, sampling.TemperatureValue);
        Assert.Equal(0.9f, sampling.TopP);
        Assert.Equal(12, sampling.TopK);
        Assert.Equal(3, mapped.Logprobs);
        Assert.Equal(ulong.MaxValue, mapped.Seed);
        Assert.Equal(TheEnd, mapped.StopSequences);
        Assert.False(mapped.UseMedusa);
        Assert.Equal("tree-16", mapped.Tree);
        Assert.IsType<IlgpuMedusa.Medusa.Acceptance.TypicalAcceptance>(mapped.Acceptance);

        Assert.Same(Sampling.Greedy, _client.ToGenerationOptions(new ChatOptions { Temperature = 0, TopP = 0.5f }).Sampling);
        var topPOnly = Assert.IsType<Sampling.TemperatureSampling>(_client.ToGenerationOptions(new ChatOptions { TopP = 0.5f }).Sampling);
        Assert.Equal(1f, topPOnly.TemperatureValue);
        Assert.Equal(0.5f, topPOnly.TopP);
        // A request that sets one of temperature and top-p keeps the other from the client's defaults.
        var tuned = new IlgpuMedusaChatClient(fixture.Engine, defaults: new GenerationOptions { Sampling = Sampling.Temperature(0.7f, 0.9f) });
        var temperatureOnly = Assert.IsType<Sampling.TemperatureSampling>(tuned.ToGenerationOptions(new ChatOptions { Temperature = 0.5f }).Sampling);
        Assert.Equal(0.5f, temperatureOnly.TemperatureValue);
        Assert.Equal(0.9f, temperatureOnly.TopP);
        var nucleusOnly = Assert.IsType<Sampling.TemperatureSampling>(tuned.ToGenerationOptions(new ChatOptions { TopP = 0.5f }).Sampling);
        Assert.Equal(0.7f, nucleusOnly.TemperatureValue);
        Assert.Equal(0.5f, nucleusOnly.TopP);
        Assert.Equal(0, nucleusOnly.TopK);
        Assert.Throws<ArgumentOutOfRangeException>(() => _client.ToGenerationOptions(new ChatOptions { TopK = -1 }));
        // A client whose default acceptance is typical verifies a penalised request's trees greedily; a request that asks
        // for typical acceptance with a penalty is refused, naming the property.
        var typicalByDefault = new IlgpuMedusaChatClient(fixture.Engine, defaults: new GenerationOptions { Acceptance = IlgpuMedusa.Medusa.Acceptance.Typical() });
        Assert.IsType<IlgpuMedusa.Medusa.Acceptance.TypicalAcceptance>(typicalByDefault.ToGenerationOptions(new ChatOptions()).Acceptance);
        Assert.Same(IlgpuMedusa.Medusa.Acceptance.Greedy, typicalByDefault.ToGenerationOptions(new ChatOptions { FrequencyPenalty = 0.5f }).Acceptance);
        var explicitTypical = Assert.ThrowsAny<ArgumentException>(() => _client.ToGenerationOptions(new ChatOptions
        {
            PresencePenalty = 1, AdditionalProperties = new() { [IlgpuMedusaChatOptionKeys.Acceptance] = "typical" },
        }));
        Assert.Equal(IlgpuMedusaChatOptionKeys.Acceptance, explicitTypical.ParamName);
        var badLogprobs = Assert.ThrowsAny<ArgumentException>(() => _client.ToGenerationOptions(new ChatOptions { AdditionalProperties = new() { [IlgpuMedusaChatOptionKeys.Logprobs] = 50 } }));
        Assert.Contains("logprobs", badLogprobs.Message, StringComparison.Ordinal);
        var json = System.Text.Json.JsonDocument.Parse("""{"medusa": true, "tree": "chain-3"}""").RootElement;
        var fromJson = _client.ToGenerationOptions(new ChatOptions
        {
            AdditionalProperties = new() { [IlgpuMedusaChatOptionKeys.Medusa] = json.GetProperty("medusa"), [IlgpuMedusaChatOptionKeys.Tree] = json.GetProperty("tree") },
        });
        Assert.True(fromJson.UseMedusa);
        Assert.Equal("chain-3", fromJson.Tree);
    }

    [Fact]
    public void GetService_GivesMetadataTheClientAndTheEngine()
    {
        var metadata = Assert.IsType<ChatClientMetadata>(_client.GetService(typeof(ChatClientMetadata)));
        Assert.Equal("ilgpu-medusa", metadata.ProviderName);
        Assert.Equal("stories15M", metadata.DefaultModelId);
        Assert.Same(_client, _client.GetService(typeof(IChatClient)));
        Assert.Same(fixture.Engine, _client.GetService(typeof(InferenceEngine)));
        Assert.Same(fixture.Engine, _client.GetService<IInferenceEngine>());
        Assert.Null(_client.GetService(typeof(string)));
        Assert.Null(_client.GetService(typeof(ChatClientMetadata), "some key"));
    }

    [Fact]
    public void Dispose_LeavesTheEngineAlone()
    {
        var client = new IlgpuMedusaChatClient(fixture.Engine);
        client.Dispose();
        Assert.NotEmpty(fixture.Engine.Generate([1], new GenerationOptions { MaxTokens = 2 }, new GenerationStats()).ToList());
    }

    [Fact]
    public void TooLongConversation_FailsNamingTheContext()
    {
        var longText = string.Concat(Enumerable.Repeat("Once upon a time ", 80));
        var e = Assert.Throws<ArgumentException>(() => _client.EncodeMessages([new ChatMessage(ChatRole.User, longText)]));
        Assert.Contains("the model's context is 256", e.Message, StringComparison.Ordinal);
    }
}
