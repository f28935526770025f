using System.Diagnostics;
using System.Text;
using System.Text.Json;

namespace IlgpuMedusa.Tests.Tokenization;

/// <summary>
/// An independent Llama 2 tokenizer: the npm package llama-tokenizer-js (its own BPE code and vocabulary data), run by
/// node through tests/tools/llama-tokenizer-js/encode.mjs. It returns ids without BOS and with the dummy prefix, so they
/// compare with <c>Encode(text, addBos: false)</c>.
/// </summary>
public static class LlamaReferenceTokenizer
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    /// <summary>The folder holding the node script and its package.json.</summary>
    public static string ToolDirectory { get; } = Path.Combine(TestModels.RepositoryRoot, "tests", "tools", "llama-tokenizer-js");

    /// <summary>Encodes every text with llama-tokenizer-js; fails the test with setup instructions when node or the package is missing.</summary>
    public static IReadOnlyList<int[]> Encode(IReadOnlyList<string> texts)
    {
        if (!Directory.Exists(Path.Combine(ToolDirectory, "node_modules", "llama-tokenizer-js")))
            Assert.Fail($"The reference tokenizer is not installed in '{ToolDirectory}'. Run: npm ci --prefix tests/tools/llama-tokenizer-js (needs Node.js 18 or newer).");

        var start = new ProcessStartInfo("node")
        {
            WorkingDirectory = ToolDirectory,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            StandardInputEncoding = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false),
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
            UseShellExecute = false,
        };
        start.ArgumentList.Add("encode.mjs");

        Process process;
        try
        {
            process = Process.Start(start) ?? throw new InvalidOperationException("Process.Start returned null");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            Assert.Fail($"Cannot start 'node' ({e.Message}). Install Node.js 18 or newer, then run: npm ci --prefix tests/tools/llama-tokenizer-js");
            throw;
        }

        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            process.StandardInput.Write(JsonSerializer.Serialize(texts));
            process.StandardInput.Close();
            if (!process.WaitForExit(Timeout))
            {
                process.Kill(entireProcessTree: true);
                Assert.Fail($"node encode.mjs did not finish within {Timeout.TotalSeconds} s");
            }

            Assert.True(process.ExitCode == 0, $"node encode.mjs exited with {process.ExitCode}: {stderr.Result}");
            var ids = JsonSerializer.Deserialize<int[][]>(stdout.Result) ?? [];
            Assert.True(ids.Length == texts.Count, $"node encode.mjs printed {ids.Length} results for {texts.Count} texts: {stdout.Result}");
            return ids;
        }
    }
}
