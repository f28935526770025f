using System.Net;
using System.Text;
using System.Text.Json;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Hosting;
using IlgpuMedusa.Serving;
using IlgpuMedusa.Tests.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace IlgpuMedusa.Tests.Serving;

/// <summary><c>AddIlgpuMedusaServer</c> in a .NET generic host: the server listens while the host runs, and stops with it.</summary>
public class HostedServerTests
{
    [Fact]
    public async Task TheServerRunsWithTheHost()
    {
        int port = OpenAiServerFixture.FreePort();
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddIlgpuMedusa(o =>
        {
            o.ModelPath = TestModels.Stories15MDirectory;
            o.Device = DeviceKind.Host;
        });
        builder.Services.AddIlgpuMedusaServer(new OpenAiServerOptions { Port = port, ModelName = "demo" });
        using var host = builder.Build();
        await host.StartAsync();
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}/") };
        try
        {
            var models = JsonDocument.Parse(await http.GetStringAsync("v1/models")).RootElement;
            Assert.Equal("demo", models.GetProperty("data")[0].GetProperty("id").GetString());
            using var reply = await http.PostAsync("v1/completions",
                new StringContent("""{"prompt": "Once upon a time", "max_tokens": 20}""", Encoding.UTF8, "application/json"));
            Assert.Equal(HttpStatusCode.OK, reply.StatusCode);
            var text = JsonDocument.Parse(await reply.Content.ReadAsStringAsync()).RootElement.GetProperty("choices")[0].GetProperty("text").GetString();
            Assert.StartsWith(HostingTestSupport.Prompt + text, HostingTestSupport.Reference, StringComparison.Ordinal);
        }
        finally
        {
            await host.StopAsync();
        }
        await Assert.ThrowsAsync<HttpRequestException>(() => http.GetAsync("health"));
    }

    [Fact]
    public void WithoutAddIlgpuMedusa_TheServerSaysWhatIsMissing()
    {
        var services = new ServiceCollection();
        services.AddIlgpuMedusaServer();
        using var provider = services.BuildServiceProvider();
        var e = Assert.ThrowsAny<InvalidOperationException>(() => provider.GetRequiredService<OpenAiServer>());
        Assert.Contains("IChatClient", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void BadOptions_FailAtRegistration_NamingTheSetting()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new ServiceCollection().AddIlgpuMedusaServer(new OpenAiServerOptions { Port = 0 }));
        Assert.Contains("Port (--port)", e.Message, StringComparison.Ordinal);
    }
}
