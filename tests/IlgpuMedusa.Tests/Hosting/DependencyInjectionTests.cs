using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Hosting;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace IlgpuMedusa.Tests.Hosting;

/// <summary>AddIlgpuMedusa: one engine for both service types, a chat client on it, logging, disposal with the container.</summary>
public class DependencyInjectionTests
{
    [Fact]
    public async Task AddIlgpuMedusa_RegistersOneEngine_AndAChatClientThatContinuesLikeLlama2c()
    {
        var services = new ServiceCollection();
        services.AddIlgpuMedusa(o =>
        {
            o.ModelPath = TestModels.Stories15MDirectory;
            o.Device = DeviceKind.Host;
        });
        InferenceEngine engine;
        using (var provider = services.BuildServiceProvider())
        {
            engine = provider.GetRequiredService<InferenceEngine>();
            Assert.Same(engine, provider.GetRequiredService<IInferenceEngine>());
            Assert.StartsWith("host", engine.DeviceName, StringComparison.Ordinal);

            var chat = provider.GetRequiredService<IChatClient>();
            Assert.Same(chat, provider.GetRequiredService<IChatClient>());
            var response = await chat.GetResponseAsync(HostingTestSupport.Prompt, new ChatOptions { MaxOutputTokens = 20 });
            Assert.StartsWith(", there was a little girl named Lily.", response.Text, StringComparison.Ordinal);
            Assert.StartsWith(HostingTestSupport.Prompt + response.Text, HostingTestSupport.Reference, StringComparison.Ordinal);
        }
        // Disposing the container disposed the engine (once, although it is registered twice): it no longer generates.
        Assert.Throws<ObjectDisposedException>(() => engine.Generate([1], new GenerationOptions { MaxTokens = 1 }, new GenerationStats()).ToList());
    }

    [Fact]
    public void ConfigurationSection_BindsEveryKind_OfSetting()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["IlgpuMedusa:ModelPath"] = TestModels.Stories15MDirectory,
            ["IlgpuMedusa:Device"] = "host",
            ["IlgpuMedusa:HostThreads"] = "1",
            ["IlgpuMedusa:KvBudgetMb"] = "8",
            ["IlgpuMedusa:MaxTokens"] = "12",
            ["IlgpuMedusa:UseMedusa"] = "false",
            ["IlgpuMedusa:Tree"] = "tree-8",
            ["IlgpuMedusa:Acceptance"] = "typical",
            ["IlgpuMedusa:ChatTemplate"] = "Vicuna",
            ["IlgpuMedusa:WarmUp"] = "false",
        }).Build();
        var services = new ServiceCollection();
        services.AddIlgpuMedusa(configuration.GetSection(IlgpuMedusaOptions.SectionName), o => o.Heads = "none");
        using var provider = services.BuildServiceProvider();
        var engine = provider.GetRequiredService<InferenceEngine>();
        Assert.Equal(DeviceKind.Host, engine.Options.Device.Kind);
        Assert.Equal(1, engine.Options.Device.HostThreads);
        Assert.Equal(8, engine.Options.KvBudgetMb);
        Assert.Equal("none", engine.Options.Heads);
        Assert.Null(engine.Heads);
        Assert.Equal(8L * 1024 * 1024, engine.Pool.BudgetBytes);

        var chat = Assert.IsType<IlgpuMedusaChatClient>(provider.GetRequiredService<IChatClient>());
        Assert.Equal(ChatTemplateKind.Vicuna, chat.Template);
        Assert.Equal(12, chat.Defaults.MaxTokens);
        Assert.False(chat.Defaults.UseMedusa);
        Assert.Equal("tree-8", chat.Defaults.Tree);
        Assert.IsType<IlgpuMedusa.Medusa.Acceptance.TypicalAcceptance>(chat.Defaults.Acceptance);
    }

    [Fact]
    public void Startup_LogsDeviceLoadTimeAndWarmUp()
    {
        var logs = new RecordingLoggerFactory();
        var services = new ServiceCollection();
        services.AddSingleton<ILoggerFactory>(logs);
        services.AddIlgpuMedusa(o =>
        {
            o.ModelPath = TestModels.Stories15MDirectory;
            o.Device = DeviceKind.Host;
        });
        using var provider = services.BuildServiceProvider();
        _ = provider.GetRequiredService<IInferenceEngine>();
        var all = string.Join("\n", logs.Messages);
        Assert.Contains("IlgpuMedusa Information: Device: host", all, StringComparison.Ordinal);
        Assert.Contains("(requested Host)", all, StringComparison.Ordinal);
        Assert.Matches(@"Model loaded in \d+ ms: 6 layers, D 288, V 32000, context 256", all);
        Assert.Matches(@"Warm-up \(kernel compile\) in \d+ ms", all);
        Assert.Contains("Medusa:", all, StringComparison.Ordinal);
    }

    [Fact]
    public void WarmUpOff_IsNotLogged()
    {
        var logs = new RecordingLoggerFactory();
        var services = new ServiceCollection();
        services.AddSingleton<ILoggerFactory>(logs);
        services.AddIlgpuMedusa(o =>
        {
            o.ModelPath = TestModels.Stories15MDirectory;
            o.Device = DeviceKind.Host;
            o.WarmUp = false;
        });
        using var provider = services.BuildServiceProvider();
        _ = provider.GetRequiredService<InferenceEngine>();
        Assert.DoesNotContain(logs.Messages, m => m.Contains("Warm-up", StringComparison.Ordinal));
        Assert.Contains(logs.Messages, m => m.Contains("Model loaded in", StringComparison.Ordinal));
    }
}
