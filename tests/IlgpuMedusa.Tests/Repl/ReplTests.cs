using System.Diagnostics;
using IlgpuMedusa.Tests.Hosting;

namespace IlgpuMedusa.Tests.Repl;

/// <summary>The sample REPL as a real process, driven line by line through redirected standard input (as a script would).</summary>
public class ReplTests
{
    private sealed record Result(int ExitCode, string StandardOutput, string StandardError);

    private static Result RunRepl(string input, params string[] args)
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "IlgpuMedusa.Repl.dll");
        Assert.True(File.Exists(dll), $"the REPL was not built next to the tests: {dll}");
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = TestModels.RepositoryRoot,
        };
        start.ArgumentList.Add(dll);
        foreach (var a in args) start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        process.StandardInput.Write(input);
        process.StandardInput.Close();
        if (!process.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"the REPL did not finish within 3 minutes; output so far:\n{stdout.Result}\n{stderr.Result}");
        }
        return new Result(process.ExitCode, stdout.Result, stderr.Result);
    }

    private static string[] Args(params string[] more) => ["--model", TestModels.Stories15MDirectory, "--device", "host", .. more];

    [Fact]
    public void ScriptedSession_StreamsBothContinuations_ThenStatsAndQuits()
    {
        var result = RunRepl("Once upon a time\n/medusa off\nOnce upon a time\n/stats\n/quit\nthis line is never read\n", Args("--max-tokens", "30"));
        string output = result.StandardOutput;
        Assert.True(result.ExitCode == 0, $"exit code {result.ExitCode}\n{output}\n{result.StandardError}");

        // Both replies: the prompt, then llama2.c's continuation (30 tokens of it), once with Medusa requested and once without.
        string expected = HostingTestSupport.Reference[..(HostingTestSupport.Prompt.Length + ", there was a little girl named Lily. She loved to play outside in the sunshine.".Length)];
        int first = output.IndexOf(expected, StringComparison.Ordinal);
        Assert.True(first >= 0, $"first continuation missing:\n{output}");
        int second = output.IndexOf(expected, first + expected.Length, StringComparison.Ordinal);
        Assert.True(second > first, $"second continuation missing:\n{output}");
        Assert.Contains("Medusa off: one token per forward.", output, StringComparison.Ordinal);

        // After each reply: tokens/s and mean accepted tokens per step.
        var summaries = output.Split('\n').Where(l => l.StartsWith("[30 tokens, ", StringComparison.Ordinal)).ToList();
        Assert.Equal(2, summaries.Count);
        Assert.All(summaries, s => Assert.Matches(@"^\[30 tokens, \d+\.\d tokens/s, \d\.\d\d accepted tokens/step \(.+\), MaxTokens\]", s));
        Assert.Contains("1.00 accepted tokens/step (autoregressive)", summaries[1], StringComparison.Ordinal);

        // /stats: the last reply, its acceptance-length bar chart, the session totals.
        Assert.Contains("Last reply: 30 tokens in 30 forwards (autoregressive; the prefill gives the first)", output, StringComparison.Ordinal);
        Assert.Contains("prefill 5 tokens (0 of them from the prefix cache)", output, StringComparison.Ordinal); // under one block
        Assert.Contains("Accepted tokens per decode step (last reply)", output, StringComparison.Ordinal);
        Assert.Matches(@"1 token +█+ 29", output); // 29 decode steps after the prefill
        // Session: 30 forwards for the autoregressive reply, the Medusa reply's decode steps plus its prefill for the
        // other (fewer than 30: its heads are the shipped ones), so between 31 and 59; decoded tokens (58) per decode step
        // above 1.
        var totals = System.Text.RegularExpressions.Regex.Match(output, @"Session totals: 2 replies, 60 tokens in (\d+) forwards, (\d\.\d\d) accepted tokens per decode step");
        Assert.True(totals.Success, output);
        long forwards = long.Parse(totals.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        double perStep = double.Parse(totals.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(forwards, 31, 59);
        Assert.Equal(58.0 / (forwards - 2), perStep, 2); // decode steps = forwards − the two prefills

        // Redirected output is plain text: no ANSI escape sequences, no prompt markers.
        Assert.DoesNotContain("\u001b[", output, StringComparison.Ordinal);
        Assert.DoesNotContain("> ", output, StringComparison.Ordinal);
        Assert.DoesNotContain("this line is never read", output, StringComparison.Ordinal);
    }

    [Fact]
    public void BadCommands_PrintErrors_AndTheSessionGoesOn()
    {
        var result = RunRepl("/tree tree-9000\n/tree no-such-tree.json\n/temp warm\n/medusa maybe\n/frobnicate\n/temp 0\n/tree tree-8\n/help\n/stats\n/reset\n", Args("--max-tokens", "5"));
        string output = result.StandardOutput;
        Assert.True(result.ExitCode == 0, $"exit code {result.ExitCode}\n{output}\n{result.StandardError}");
        Assert.Contains("error: Tree (--tree): unknown tree 'tree-9000'", output, StringComparison.Ordinal);
        Assert.Contains("no-such-tree.json' not found", output, StringComparison.Ordinal); // a missing tree file is an error line, not the end
        Assert.Contains("error: /temp takes a number (0 is greedy), got 'warm'.", output, StringComparison.Ordinal);
        Assert.Contains("error: /medusa takes on or off, got 'maybe'.", output, StringComparison.Ordinal);
        Assert.Contains("error: unknown command /frobnicate", output, StringComparison.Ordinal);
        Assert.Contains("Greedy decoding.", output, StringComparison.Ordinal);
        Assert.Contains("/medusa on|off", output, StringComparison.Ordinal);
        Assert.Contains("No reply yet.", output, StringComparison.Ordinal);
        Assert.Contains("Statistics cleared.", output, StringComparison.Ordinal);
    }

    [Fact]
    public void Json_On_MakesTheReplyAnObject_AndASchemaFileOrOffChangeIt()
    {
        string schema = Path.Combine(TestModels.RepositoryRoot, "prompts", "person.schema.json");
        var result = RunRepl($"/json\n/json no-such-schema.json\n/json on\nOnce upon a time\n/json {schema}\nOnce upon a time\n/json off\n", Args("--max-tokens", "12"));
        string output = result.StandardOutput;
        Assert.True(result.ExitCode == 0, $"exit code {result.ExitCode}\n{output}\n{result.StandardError}");
        Assert.Contains("error: /json takes on, off or a JSON schema file.", output, StringComparison.Ordinal);
        Assert.Contains("no-such-schema.json", output, StringComparison.Ordinal);
        Assert.Contains("JSON mode: each reply is one JSON object.", output, StringComparison.Ordinal);
        Assert.Contains("Once upon a time{", output, StringComparison.Ordinal);         // the continuation opens an object at once
        Assert.Matches("Once upon a time\\{\\s?\"name\"", output);                   // under the schema: its first key
        Assert.Contains("Free text.", output, StringComparison.Ordinal);
    }

    [Fact]
    public void ChatTemplate_KeepsTheConversation_UntilReset()
    {
        var result = RunRepl("Hello there\nAnd then?\n/reset\n/quit\n", Args("--max-tokens", "4", "--template", "llama2-chat"));
        Assert.True(result.ExitCode == 0, $"exit code {result.ExitCode}\n{result.StandardOutput}\n{result.StandardError}");
        Assert.Contains("Chat mode (Llama2Chat template)", result.StandardOutput, StringComparison.Ordinal);
        Assert.Equal(2, result.StandardOutput.Split('\n').Count(l => l.StartsWith("[4 tokens, ", StringComparison.Ordinal)));
        Assert.Contains("Conversation and statistics cleared.", result.StandardOutput, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ALaterTurn_TakesTheEarlierTurnsFromThePrefixCache_UnlessItIsOff(bool caching)
    {
        // The second turn's prompt starts with the whole first turn (its 40-odd token message and the reply): with prefix
        // caching its full blocks of 16 come from the cache.
        const string message = "Tell me a story about a little girl named Lily who loved to play outside in the sunshine with her dog Max every day.";
        string[] args = Args("--max-tokens", "8", "--template", "llama2-chat");
        var result = RunRepl($"{message}\nAnd then?\n/stats\n/quit\n", caching ? args : [.. args, "--no-prefix-cache"]);
        Assert.True(result.ExitCode == 0, $"exit code {result.ExitCode}\n{result.StandardOutput}\n{result.StandardError}");
        var last = System.Text.RegularExpressions.Regex.Match(result.StandardOutput, @"prefill (\d+) tokens \((\d+) of them from the prefix cache\)");
        Assert.True(last.Success, result.StandardOutput);
        int prompt = int.Parse(last.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        int cached = int.Parse(last.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(prompt > 48, $"{prompt} prompt tokens");
        if (caching) Assert.InRange(cached, 32, prompt - 1);
        else Assert.Equal(0, cached);
    }

    [Fact]
    public void BadArguments_ExitWithUsage()
    {
        var result = RunRepl("", "--frobnicate");
        Assert.Equal(2, result.ExitCode);
        Assert.Contains("error: unknown argument '--frobnicate'.", result.StandardError, StringComparison.Ordinal);
        Assert.Contains("usage: IlgpuMedusa.Repl", result.StandardError, StringComparison.Ordinal);

        var maxTokens = RunRepl("", "--max-tokens", "-4");
        Assert.Equal(2, maxTokens.ExitCode);
        Assert.Contains("error: --max-tokens must be a positive number of tokens, got '-4'.", maxTokens.StandardError, StringComparison.Ordinal);

        var kvType = RunRepl("", "--kv-dtype", "bf16");
        Assert.Equal(2, kvType.ExitCode);
        Assert.Contains("error: --kv-dtype: 'bf16' is not a KV cache element type; expected f32 or f16.", kvType.StandardError, StringComparison.Ordinal);
    }

    [Fact]
    public void HalfKvCache_StillContinuesWithLlama2cText()
    {
        // An F16 KV cache (--kv-dtype f16) reaches the engine; on the demo it keeps llama2.c's greedy continuation.
        var result = RunRepl("Once upon a time\n/quit\n", Args("--max-tokens", "30", "--kv-dtype", "f16"));
        Assert.True(result.ExitCode == 0, $"exit code {result.ExitCode}\n{result.StandardOutput}\n{result.StandardError}");
        string expected = HostingTestSupport.Reference[..(HostingTestSupport.Prompt.Length + ", there was a little girl named Lily. She loved to play outside in the sunshine.".Length)];
        Assert.Contains(expected, result.StandardOutput, StringComparison.Ordinal);
        Assert.Contains("KV cache: 1024 tokens of f16.", result.StandardError, StringComparison.Ordinal); // 4 sequences of the 256 context
    }

    [Fact]
    public void MissingModel_FailsWithOneLine()
    {
        var result = RunRepl("", "--model", "/no/such/model", "--device", "host");
        Assert.Equal(1, result.ExitCode);
        Assert.Contains("error: model directory '/no/such/model' does not exist", result.StandardError, StringComparison.Ordinal);
    }
}

/// <summary>Ctrl+C (SIGINT) while a reply streams stops that reply; the REPL goes on with the next line.</summary>
public class ReplInterruptTests
{
    [Fact]
    public async Task Sigint_CancelsTheRunningReply_AndKeepsTheRepl()
    {
        Assert.True(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS(), "this test sends SIGINT with kill(1)");
        // OpenCL on PoCL (which CI installs) decodes slowly enough that the reply is surely still running when the signal
        // lands; on the host backend the whole 217-token story can finish before kill(1) has even started.
        // A process started in the background of a non-interactive shell (a CI runner's `cmd &`) inherits SIGINT ignored,
        // and .NET keeps an ignored SIGINT ignored: GNU env puts the default disposition back, so that Ctrl+C reaches the
        // REPL however the tests were started.
        var start = new ProcessStartInfo(OperatingSystem.IsLinux() ? "env" : "dotnet")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = TestModels.RepositoryRoot,
        };
        if (OperatingSystem.IsLinux())
        {
            start.ArgumentList.Add("--default-signal=INT");
            start.ArgumentList.Add("dotnet");
        }
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "IlgpuMedusa.Repl.dll"), "--model", TestModels.Stories15MDirectory, "--device", "opencl", "--heads", "none", "--max-tokens", "250" })
            start.ArgumentList.Add(a);
        start.Environment["ILGPU_MEDUSA_ALLOW_CPU_OPENCL"] = "1";
        using var process = Process.Start(start)!;
        var output = new System.Text.StringBuilder();
        var reader = Task.Run(async () =>
        {
            var buffer = new char[256];
            int n;
            while ((n = await process.StandardOutput.ReadAsync(buffer)) > 0)
                lock (output) output.Append(buffer, 0, n);
        });
        var stderr = process.StandardError.ReadToEndAsync();
        string Output()
        {
            lock (output) return output.ToString();
        }
        try
        {
            await process.StandardInput.WriteLineAsync("Once upon a time");
            await process.StandardInput.FlushAsync();
            var deadline = DateTime.UtcNow.AddMinutes(1);
            while (!Output().Contains(", there was", StringComparison.Ordinal))
            {
                Assert.True(DateTime.UtcNow < deadline && !process.HasExited, $"the reply did not start:\n{Output()}\n{(process.HasExited ? await stderr : "")}");
                await Task.Delay(20);
            }
            using (var kill = Process.Start("kill", ["-INT", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
            {
                await kill.WaitForExitAsync();
                Assert.Equal(0, kill.ExitCode);
            }
            await process.StandardInput.WriteAsync("/stats\n/quit\n");
            process.StandardInput.Close();
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(1));
            await process.WaitForExitAsync(timeout.Token);
            await reader;
            string text = Output();
            Assert.True(process.ExitCode == 0, $"exit code {process.ExitCode}\n{text}\n{await stderr}");
            Assert.True(System.Text.RegularExpressions.Regex.IsMatch(text, @"\[\d+ tokens, .*, cancelled\]"), $"no cancelled reply in:\n{text}\n{await stderr}");
            Assert.Contains("Cancelled.", text, StringComparison.Ordinal); // /stats after the interrupted reply
            Assert.DoesNotContain("EndToken", text, StringComparison.Ordinal);
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
    }
}
