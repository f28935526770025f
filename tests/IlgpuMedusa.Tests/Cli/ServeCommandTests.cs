using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using IlgpuMedusa.Tests.Hosting;

namespace IlgpuMedusa.Tests.Cli;

/// <summary><c>ilgpu-medusa serve</c> as a real process: it answers, stops cleanly on SIGTERM, and refuses bad options.</summary>
public class ServeCommandTests
{
    [Fact]
    public async Task Serves_TheDemoModel_ThenStopsOnSigterm_WithExitCode0()
    {
        int port = Serving.OpenAiServerFixture.FreePort();
        var dll = Path.Combine(AppContext.BaseDirectory, "ilgpu-medusa.dll");
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = TestModels.RepositoryRoot,
        };
        foreach (var a in new[] { dll, "serve", "--model", TestModels.Stories15MDirectory, "--device", "host", "--port", port.ToString(), "--model-name", "demo", "--max-tokens", "12" })
            start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stderr = new StringBuilder();
        var ready = new TaskCompletionSource();
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (stderr) stderr.AppendLine(e.Data);
            if (e.Data.StartsWith("Serving ", StringComparison.Ordinal)) ready.TrySetResult();
        };
        process.BeginErrorReadLine();
        var stdout = process.StandardOutput.ReadToEndAsync();
        try
        {
            await Task.WhenAny(ready.Task, process.WaitForExitAsync(), Task.Delay(TimeSpan.FromMinutes(2)));
            Assert.True(ready.Task.IsCompleted, $"serve did not start: {stderr}");
            Assert.Contains($"Serving 'demo' (Plain chat template, host", stderr.ToString(), StringComparison.Ordinal);

            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}/") };
            var models = JsonDocument.Parse(await http.GetStringAsync("v1/models")).RootElement;
            Assert.Equal("demo", models.GetProperty("data")[0].GetProperty("id").GetString());
            // No max_tokens in the request: the command's --max-tokens 12 applies.
            using var reply = await http.PostAsync("v1/completions", new StringContent("""{"model": "demo", "prompt": "Once upon a time"}""", Encoding.UTF8, "application/json"));
            var json = JsonDocument.Parse(await reply.Content.ReadAsStringAsync()).RootElement;
            Assert.Equal(12, json.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
            Assert.StartsWith(HostingTestSupport.Prompt + json.GetProperty("choices")[0].GetProperty("text").GetString(), HostingTestSupport.Reference, StringComparison.Ordinal);

            using (var kill = Process.Start("kill", ["-TERM", process.Id.ToString()])) await kill.WaitForExitAsync();
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await process.WaitForExitAsync(timeout.Token);
            Assert.Equal(0, process.ExitCode);
            Assert.Equal("", await stdout);
            var log = stderr.ToString();
            Assert.Contains("POST /v1/completions 200", log, StringComparison.Ordinal); // one line per request
            Assert.EndsWith("Stopped." + Environment.NewLine, log, StringComparison.Ordinal);
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
    }

    [Theory]
    [InlineData("--port", "70000", "Port (--port) must be from 1 to 65535")]
    [InlineData("--host", "local host", "Host (--host): 'local host' is not a host name or IP address")]
    [InlineData("--template", "alpaca", "--template: unknown chat template 'alpaca'")]
    [InlineData("--template", "chatml", "chat template ChatML does not fit the model")]
    [InlineData("--host", "::1", "Host (--host): '::1' is an IPv6 address")]
    [InlineData("--allow-origin", "evil.example", "AllowedOrigins (--allow-origin): 'evil.example' is not an origin")]
    [InlineData("--tree", "/nonexistent/tree.json", "/nonexistent/tree.json")]
    [InlineData("--max-concurrent-requests", "0", "--max-concurrent-requests) must be from 1 to 100000")]
    public void BadOptions_ExitNonZero_NamingTheOption(string option, string value, string expected)
    {
        var result = CliRunner.Run("serve", "--model", TestModels.Stories15MDirectory, "--device", "host", option, value);
        Assert.Equal(1, result.ExitCode);
        Assert.Contains(expected, result.StandardError, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", result.StandardError, StringComparison.Ordinal);
    }

    [Fact]
    public void APortInUse_ExitsWithOneLineNamingTheAddress()
    {
        var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        try
        {
            int port = ((IPEndPoint)taken.LocalEndpoint).Port;
            var result = CliRunner.Run("serve", "--model", TestModels.Stories15MDirectory, "--device", "host", "--port", port.ToString());
            Assert.Equal(1, result.ExitCode);
            Assert.Contains($"error: cannot listen on http://127.0.0.1:{port}/ (--host, --port)", result.StandardError, StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", result.StandardError, StringComparison.Ordinal);
        }
        finally
        {
            taken.Stop();
        }
    }
}
