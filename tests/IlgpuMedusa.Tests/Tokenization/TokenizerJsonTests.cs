using IlgpuMedusa.Models;
using System.Text.Json.Nodes;
using IlgpuMedusa.Tokenization;

namespace IlgpuMedusa.Tests.Tokenization;

/// <summary>
/// A tiny byte-level tokenizer.json written here, with encodings worked out by hand from its merges, and the errors for
/// files this runtime cannot follow: each names the file and the field.
/// </summary>
public sealed class TokenizerJsonTests
{
    // Ids 0..255: the bytes, in byte order (id b spells byte b). Then merges, by priority: "h e", "l l", "he ll", "Ġ w".
    private const int He = 256, Ll = 257, Hell = 258, SpaceW = 259, Hello = 260, Bos = 261, End = 262, X = 263;

    internal static JsonObject Spec(bool ignoreMerges = false)
    {
        var vocab = new JsonObject();
        for (int b = 0; b < 256; b++) vocab[Spell(b)] = b;
        vocab["he"] = He;
        vocab["ll"] = Ll;
        vocab["hell"] = Hell;
        vocab["Ġw"] = SpaceW;
        vocab["hello"] = Hello; // no merge makes it: only ignore_merges reaches it
        return new JsonObject
        {
            ["added_tokens"] = new JsonArray(
                new JsonObject { ["id"] = Bos, ["content"] = "<|bos|>", ["special"] = true },
                new JsonObject { ["id"] = End, ["content"] = "<|end|>", ["special"] = true },
                new JsonObject { ["id"] = X, ["content"] = "<x>", ["special"] = false }),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = @" ?\p{L}+| ?[^\s\p{L}]+|\s+" }, ["behavior"] = "Isolated", ["invert"] = false },
                    new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["use_regex"] = false }),
            },
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(
                    new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<|bos|>", ["type_id"] = 0 } },
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
            },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel" },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["ignore_merges"] = ignoreMerges,
                ["vocab"] = vocab,
                ["merges"] = new JsonArray("h e", "l l", new JsonArray("he", "ll"), "Ġ w"),
            },
        };
    }

    private static string Spell(int b) => ((char)(b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF
        ? b
        : 256 + Enumerable.Range(0, b).Count(c => !(c is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF)))).ToString();

    internal static string Write(JsonObject spec, string? config = """{"eos_token": "<|end|>"}""")
    {
        var dir = TestModels.TempDirectory("tokenizer-json");
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), spec.ToJsonString());
        if (config is not null) File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), config);
        return Path.Combine(dir, "tokenizer.json");
    }

    /// <summary>
    /// A tiny random model directory (<see cref="Medusa.TinyRandomModel"/>, seed 3) whose tokenizer is <paramref name="spec"/>
    /// as tokenizer.json, with <paramref name="tokenizerConfig"/> as tokenizer_config.json.
    /// </summary>
    internal static string ModelWithTokenizer(ModelConfig config, JsonObject spec, string tokenizerConfig)
    {
        var json = Write(spec, tokenizerConfig);
        var dir = Medusa.TinyRandomModel.Write(config, seed: 3, projectionScale: 0.4f, outputScale: 0.3f);
        foreach (var file in Directory.GetFiles(Path.GetDirectoryName(json)!)) File.Copy(file, Path.Combine(dir, Path.GetFileName(file)));
        return dir;
    }

    [Fact]
    public void TheAlphabetSpellsSpaceAndNewlineAsGpt2Does()
    {
        // GPT-2's table: printable Latin-1 stands for itself; the 68 others take U+0100 on, in byte order.
        Assert.Equal('Ġ', ByteLevelAlphabet.Spell((byte)' '));
        Assert.Equal('Ċ', ByteLevelAlphabet.Spell((byte)'\n'));
        Assert.Equal('ĉ', ByteLevelAlphabet.Spell((byte)'\t'));
        Assert.Equal('Ā', ByteLevelAlphabet.Spell(0));
        Assert.Equal('!', ByteLevelAlphabet.Spell((byte)'!'));
        Assert.Equal('\u0143', ByteLevelAlphabet.Spell(0xAD)); // the soft hyphen is the 68th: U+0143
        for (int b = 0; b < 256; b++) Assert.Equal(Spell(b)[0], ByteLevelAlphabet.Spell((byte)b));
        Assert.True(ByteLevelAlphabet.TryRead("ĠhiĊ", out var bytes));
        Assert.Equal(" hi\n"u8.ToArray(), bytes);
        Assert.False(ByteLevelAlphabet.TryRead("Ő", out _)); // U+0150: past the 68
    }

    [Fact]
    public void APrefixSpaceGoesBeforeEveryPieceAndEveryStretchBetweenAddedTokens()
    {
        var spec = Spec();
        spec["pre_tokenizer"]!["pretokenizers"]![1]!["add_prefix_space"] = true;
        var tokenizer = ByteLevelBpeTokenizer.Load(Write(spec));
        // pieces "hello" " well" -> " hello" " well"; Ġ h e l l o -> Ġ hell o
        Assert.Equal([' ', Hell, 'o', SpaceW, 'e', Ll], tokenizer.Encode("hello well", addBos: false));
        Assert.Equal([' ', 'a', X, ' ', 'b'], tokenizer.Encode("a<x>b", addBos: false));
    }

    [Fact]
    public void LoneSurrogatesBecomeReplacementCharacters()
    {
        var spec = Spec();
        spec["normalizer"] = new JsonObject { ["type"] = "NFC" };
        var tokenizer = ByteLevelBpeTokenizer.Load(Write(spec));
        Assert.Equal(tokenizer.Encode("a\uFFFDb\uFFFD", addBos: false), tokenizer.Encode("a\uD800b\uDC00", addBos: false));
        Assert.Equal("a\uFFFDb", tokenizer.Decode(tokenizer.Encode("a\uD800b", addBos: false)));
        Assert.Equal("\u00e9", tokenizer.Decode(tokenizer.Encode("e\u0301", addBos: false))); // NFC composes
    }

    [Fact]
    public void MergesApplyInPriorityOrder()
    {
        var tokenizer = ByteLevelBpeTokenizer.Load(Write(Spec()));
        // h e l l o -> (h e) -> he l l o -> (l l) -> he ll o -> (he ll) -> hell o
        Assert.Equal([Hell, 'o'], tokenizer.Encode("hello", addBos: false));
        // " well" is one piece: Ġ w e l l -> (l l) first, then (Ġ w)
        Assert.Equal([Hell, 'o', SpaceW, 'e', Ll], tokenizer.Encode("hello well", addBos: false));
        // pieces: "lle" " he" "," " he"; l l e -> ll e; Ġ h e -> Ġ he
        Assert.Equal([Ll, 'e', ' ', He, ',', ' ', He], tokenizer.Encode("lle he, he", addBos: false));
    }

    [Fact]
    public void IgnoreMergesTakesWholePiecesFromTheVocabulary()
    {
        var tokenizer = ByteLevelBpeTokenizer.Load(Write(Spec(ignoreMerges: true)));
        Assert.Equal([Hello], tokenizer.Encode("hello", addBos: false));
        Assert.Equal([Hello, SpaceW, 'e', Ll], tokenizer.Encode("hello well", addBos: false));
    }

    [Fact]
    public void BosComesFromTheTemplateAndSpecialTokensOnlyById()
    {
        var tokenizer = ByteLevelBpeTokenizer.Load(Write(Spec()));
        Assert.True(tokenizer.AddsBos);
        Assert.Equal(Bos, tokenizer.BosId);
        Assert.Equal(End, tokenizer.EosId);
        Assert.Equal([Bos, 'h', 'i'], tokenizer.Encode("hi", addBos: true));
        Assert.Equal([Bos], tokenizer.Encode("", addBos: true));
        // Special tokens typed as text stay text; the non-special added token is recognised.
        Assert.Equal("<|end|>".Select(c => (int)c), tokenizer.Encode("<|end|>", addBos: false));
        Assert.Equal([X, Hell, 'o', X], tokenizer.Encode("<x>hello<x>", addBos: false));
        Assert.Equal(End, tokenizer.SpecialTokenId("<|end|>"));
        Assert.Equal(X, tokenizer.SpecialTokenId("<x>")); // templates may use plain added tokens as markers
        Assert.Null(tokenizer.SpecialTokenId("<y>"));
        Assert.Equal("hello<x> well", tokenizer.Decode([Bos, Hell, 'o', X, SpaceW, 'e', Ll, End]));
    }

    [Fact]
    public void PaddedVocabularyDecodesExtraIdsToNothing()
    {
        var tokenizer = ByteLevelBpeTokenizer.Load(Write(Spec()), vocabularySize: 300);
        Assert.Equal(300, tokenizer.VocabularySize);
        Assert.Empty(tokenizer.TokenBytes(299));
        Assert.Equal("he", tokenizer.Decode([299, He]));
        Assert.Throws<ArgumentOutOfRangeException>(() => tokenizer.TokenBytes(300));
        var e = Assert.Throws<InvalidDataException>(() => ByteLevelBpeTokenizer.Load(Write(Spec()), vocabularySize: 200));
        Assert.Contains("ids up to 263", e.Message);
        Assert.Contains("200", e.Message);
    }

    [Fact]
    public void InvalidUtf8FromCutTokensBecomesReplacementCharacters()
    {
        var tokenizer = ByteLevelBpeTokenizer.Load(Write(Spec()));
        var euro = "€"u8.ToArray(); // E2 82 AC
        Assert.Equal("\uFFFDh", tokenizer.Decode([euro[0], euro[1], 'h']));
        var stream = tokenizer.CreateStreamingDetokenizer();
        Assert.Equal("", stream.Append(euro[0]));
        Assert.Equal("", stream.Append(euro[1]));
        Assert.Equal("€", stream.Append(euro[2]));
        Assert.Equal("", stream.Append(euro[0]));
        Assert.Equal("\uFFFD", stream.Flush());
    }

    [Fact]
    public void TheLoaderPrefersTokenizerModelAndOtherwiseReadsTokenizerJson()
    {
        var json = Write(Spec());
        var dir = Path.GetDirectoryName(json)!;
        Assert.IsType<ByteLevelBpeTokenizer>(TokenizerLoader.Load(dir));
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), TokenizerLoader.GetSentencePieceModelBytes(TestModels.Stories15MDirectory));
        Assert.IsType<LlamaTextTokenizer>(TokenizerLoader.Load(dir));
    }

    public static TheoryData<string, string, string> Refusals => new()
    {
        { "model.type", "Unigram", "'model.type' is 'Unigram'" },
        { "byte_fallback", "", "'model.byte_fallback' is true" },
        { "metaspace", "", "'pre_tokenizer.type' is 'Metaspace'" },
        { "no byte level", "", "'pre_tokenizer' has no ByteLevel step" },
        { "behavior", "", "'pre_tokenizer.pretokenizers[0].behavior' is 'Removed'" },
        { "normalizer", "", "'normalizer.type' is 'Lowercase'" },
        { "merge unknown", "", "'model.merges[1]' uses \"q\u00e4\"" },
        { "merge shape", "", "'model.merges[0]' must be two tokens" },
        { "negative id", "", "'model.vocab[\"he\"]' must be a token id in [0, 4194304), found -1" },
        { "huge id", "", "found 99999999" },
        { "duplicate id", "", "gives id 256 to both" },
        { "missing byte", "", "has no entry for byte 0x41" },
        { "bad regex", "", "'pre_tokenizer.pretokenizers[0].pattern' is not a pattern .NET can run" },
        { "added clash", "", "'added_tokens[0]' gives \"he\" id 261, but model.vocab has it as 256" },
        { "eos unknown", "", "the eos_token \"<|nope|>\" is neither an added token nor in model.vocab" },
        { "added id clash", "", "'added_tokens[2]' gives id 256 to \"<x>\", but model.vocab gives it to \"he\"" },
        { "lstrip", "", "'added_tokens[2].lstrip' is true for \"<x>\"" },
        { "duplicate merge", "", "'model.merges[4]' repeats model.merges[0]" },
    };

    [Theory]
    [MemberData(nameof(Refusals))]
    public void BadOrUnsupportedFilesAreRefusedNamingTheField(string change, string value, string message)
    {
        var spec = Spec();
        var model = spec["model"]!.AsObject();
        var vocab = model["vocab"]!.AsObject();
        var pre = spec["pre_tokenizer"]!["pretokenizers"]!.AsArray();
        string? config = """{"eos_token": "<|end|>"}""";
        switch (change)
        {
            case "model.type": model["type"] = value; break;
            case "byte_fallback": model["byte_fallback"] = true; break;
            case "metaspace": spec["pre_tokenizer"] = new JsonObject { ["type"] = "Metaspace", ["replacement"] = "▁" }; break;
            case "no byte level": pre.RemoveAt(1); break;
            case "behavior": pre[0]!["behavior"] = "Removed"; break;
            case "normalizer": spec["normalizer"] = new JsonObject { ["type"] = "Lowercase" }; break;
            case "merge unknown": model["merges"]!.AsArray()[1] = "q ä"; break;
            case "merge shape": model["merges"]!.AsArray()[0] = "h e l"; break;
            case "negative id": vocab["he"] = -1; break;
            case "huge id": vocab["he"] = 99999999; break;
            case "duplicate id": vocab["hx"] = 256; break;
            case "missing byte": vocab.Remove("A"); break;
            case "bad regex": pre[0]!["pattern"] = new JsonObject { ["Regex"] = "(unclosed" }; break;
            case "added clash": spec["added_tokens"]!.AsArray()[0] = new JsonObject { ["id"] = Bos, ["content"] = "he", ["special"] = true }; break;
            case "eos unknown": config = """{"eos_token": "<|nope|>"}"""; break;
            case "added id clash": spec["added_tokens"]!.AsArray()[2] = new JsonObject { ["id"] = He, ["content"] = "<x>", ["special"] = false }; break;
            case "lstrip": spec["added_tokens"]!.AsArray()[2]!["lstrip"] = true; break;
            case "duplicate merge": model["merges"]!.AsArray().Add("h e"); break;
        }
        var path = Write(spec, config);
        var e = Assert.ThrowsAny<Exception>(() => ByteLevelBpeTokenizer.Load(path));
        Assert.True(e is InvalidDataException or NotSupportedException, e.ToString());
        Assert.Contains(path, e.Message);
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void TruncatedJsonIsAnErrorNamingTheFile()
    {
        var path = Write(Spec());
        File.WriteAllText(path, File.ReadAllText(path)[..500]);
        var e = Assert.Throws<InvalidDataException>(() => ByteLevelBpeTokenizer.Load(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("not valid JSON", e.Message);
    }
}
