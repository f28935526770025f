using System.Text.Json;

namespace IlgpuMedusa.Tests.Tokenization;

/// <summary>
/// An independent Llama 2 tokenizer: the npm package llama-tokenizer-js (its own BPE code and vocabulary data), run by
/// node through tests/tools/llama-tokenizer-js/encode.mjs. It returns ids without BOS and with the dummy prefix, so they
/// compare with <c>Encode(text, addBos: false)</c>.
/// </summary>
public static class LlamaReferenceTokenizer
{
    private static readonly NodeTool Tool = new("llama-tokenizer-js", "llama-tokenizer-js", nodeVersion: 18);

    /// <summary>Encodes every text with llama-tokenizer-js; fails the test with setup instructions when node or the package is missing.</summary>
    public static IReadOnlyList<int[]> Encode(IReadOnlyList<string> texts)
    {
        var stdout = Tool.Run("encode.mjs", JsonSerializer.Serialize(texts), TimeSpan.FromSeconds(60));
        var ids = JsonSerializer.Deserialize<int[][]>(stdout) ?? [];
        Assert.True(ids.Length == texts.Count, $"node encode.mjs printed {ids.Length} results for {texts.Count} texts: {stdout}");
        return ids;
    }
}
