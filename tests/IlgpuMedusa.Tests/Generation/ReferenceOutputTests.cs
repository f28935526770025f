using System.Text.Json;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Tests.Cli;

namespace IlgpuMedusa.Tests.Generation;

/// <summary>
/// Greedy output against Karpathy's llama2.c run.c (an independent implementation): TestData holds what it printed for
/// stories15M with -t 0 -n 256 -i "Once upon a time" (the prompt followed by the continuation, ending at BOS).
/// </summary>
public class ReferenceOutputTests
{
    private const string Prompt = "Once upon a time";
    private static readonly string Reference = File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "TestData", "llama2c-greedy-once-upon-a-time-256.txt")).TrimEnd('\n');

    private static (string Text, List<int> Ids, GenerationStats Stats) Generate(string modelDirectory, int maxTokens, string prompt = Prompt)
    {
        using var engine = InferenceEngine.Load(new EngineOptions { ModelPath = modelDirectory, Device = new DeviceOptions { Kind = DeviceKind.Host }, Heads = "none" });
        var options = new GenerationOptions { MaxTokens = maxTokens };
        var stats = new GenerationStats();
        var text = "";
        var ids = new List<int>();
        foreach (var piece in engine.Generate(engine.EncodePrompt(prompt, options), options, stats))
        {
            text += piece.Text;
            ids.AddRange(piece.TokenIds);
        }
        return (text, ids, stats);
    }

    [Fact]
    public void Llama2cLayout_MatchesLlama2cWholeStory()
    {
        var (text, ids, stats) = Generate(TestModels.Stories15MDirectory, 256);
        // llama2.c stopped when the model produced BOS; so must we, with the same text.
        Assert.Equal(FinishReason.EndToken, stats.FinishReason);
        Assert.Equal(Reference, Prompt + text);
        Assert.True(ids.Count >= 60, $"only {ids.Count} tokens generated");
    }

    [Fact]
    public void ConvertedHuggingFaceLayout_MatchesLlama2cFirst100Tokens()
    {
        var converted = Path.Combine(TestModels.TempDirectory("hf-f32"), "model");
        try
        {
            IlgpuMedusa.Models.ModelConverter.Convert(TestModels.Stories15MDirectory, converted, IlgpuMedusa.Models.DType.F32);
            Assert.True(File.Exists(Path.Combine(converted, "model.safetensors")));
            var (text, ids, _) = Generate(converted, 100);
            Assert.Equal(100, ids.Count);
            Assert.StartsWith(Prompt + text, Reference, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(converted)!, recursive: true);
        }
    }

    [Fact]
    public void ContinuationKeepsTheSpaceBeforeItsFirstWord()
    {
        // After "Once upon a time," llama2.c continues with " there" (a piece with a leading space).
        var (text, _, _) = Generate(TestModels.Stories15MDirectory, 20, "Once upon a time,");
        Assert.StartsWith(" there was a little girl", text, StringComparison.Ordinal);
        Assert.StartsWith("Once upon a time," + text, Reference, StringComparison.Ordinal);
    }

    [Fact]
    public void Cli_GenerateJson_MatchesLlama2cFirst60Tokens()
    {
        var result = CliRunner.Run("generate", "--model", TestModels.Stories15MDirectory, "--prompt", Prompt, "--max-tokens", "60", "--device", "host", "--json");
        Assert.True(result.ExitCode == 0, result.StandardError);
        using var json = JsonDocument.Parse(result.StandardOutput);
        var root = json.RootElement;
        Assert.Equal(60, root.GetProperty("generated_tokens").GetInt32());
        Assert.Equal(60, root.GetProperty("tokens").GetArrayLength());
        Assert.Equal(5, root.GetProperty("prompt_tokens").GetInt32()); // BOS + 4 pieces, as in FACTS.md
        var text = root.GetProperty("text").GetString()!;
        Assert.True(text.Length > 100);
        Assert.StartsWith(Prompt + text, Reference, StringComparison.Ordinal);
        Assert.True(root.GetProperty("tokens_per_second").GetDouble() > 0);
        Assert.Contains("host", root.GetProperty("device").GetString()!, StringComparison.Ordinal);
    }
}
