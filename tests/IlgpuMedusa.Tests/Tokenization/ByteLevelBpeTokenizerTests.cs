using IlgpuMedusa.Tokenization;

namespace IlgpuMedusa.Tests.Tokenization;

/// <summary>
/// The byte-level BPE tokenizer on real tokenizer.json files (Llama 3, Qwen3, GPT-2) against Tokenizers.js, an
/// independent implementation of the format: the same ids for every text of a varied corpus, the same decoded text, and
/// streaming that adds up to the whole decode.
/// </summary>
public sealed class ByteLevelBpeTokenizerTests(HuggingFaceReferenceTokenizers references) : IClassFixture<HuggingFaceReferenceTokenizers>
{
    public static TheoryData<string> Tokenizers => ["llama3", "qwen3", "gpt2"];

    private string Directory(string name) => name switch
    {
        "llama3" => references.Llama3,
        "qwen3" => references.Qwen3,
        _ => references.Gpt2,
    };

    [Theory]
    [MemberData(nameof(Tokenizers))]
    public void EncodesAsTokenizersJsDoes(string name)
    {
        var dir = Directory(name);
        var tokenizer = ByteLevelBpeTokenizer.Load(Path.Combine(dir, "tokenizer.json"));
        var corpus = HuggingFaceReferenceTokenizers.Corpus;
        var expected = HuggingFaceReferenceTokenizers.Encode(dir, corpus);
        var mismatches = new List<string>();
        for (int i = 0; i < corpus.Count; i++)
        {
            var actual = tokenizer.Encode(corpus[i], addBos: false);
            if (!actual.SequenceEqual(expected[i]))
                mismatches.Add($"{System.Text.Json.JsonSerializer.Serialize(corpus[i])}: expected [{string.Join(",", expected[i])}] got [{string.Join(",", actual)}]");
        }
        Assert.True(mismatches.Count == 0, $"{name}: {mismatches.Count} of {corpus.Count} texts differ, first: {string.Join("\n", mismatches.Take(3))}");
        Assert.True(expected.Sum(e => e.Length) > 5 * corpus.Count, "the corpus is long enough to need merges");
    }

    [Theory]
    [MemberData(nameof(Tokenizers))]
    public void DecodesAsTokenizersJsDoesAndStreamsTheSame(string name)
    {
        var dir = Directory(name);
        var tokenizer = ByteLevelBpeTokenizer.Load(Path.Combine(dir, "tokenizer.json"));
        var corpus = HuggingFaceReferenceTokenizers.Corpus;
        // Whole encodings, and cuts of them that end inside a character (a token of an emoji's first bytes).
        var idLists = new List<int[]>();
        var random = new Random(7);
        foreach (var text in corpus)
        {
            var ids = tokenizer.Encode(text, addBos: false).ToArray();
            idLists.Add(ids);
            if (ids.Length > 2) idLists.Add(ids[random.Next(1, ids.Length)..]);
        }
        idLists.Add([tokenizer.EosId, .. tokenizer.Encode("after the end", addBos: false)]);
        var expected = HuggingFaceReferenceTokenizers.Decode(dir, idLists);
        for (int i = 0; i < idLists.Count; i++)
        {
            Assert.Equal(expected[i], tokenizer.Decode(idLists[i]));
            var stream = tokenizer.CreateStreamingDetokenizer();
            var streamed = string.Concat(idLists[i].Select(stream.Append)) + stream.Flush();
            Assert.Equal(expected[i], streamed);
        }
    }

    [Fact]
    public void Llama3HasItsSpecialTokensAndNeverReadsThemFromText()
    {
        var tokenizer = ByteLevelBpeTokenizer.Load(Path.Combine(references.Llama3, "tokenizer.json"));
        // Ids from Meta's Llama 3 model card / tokenizer: 128000 BOS, 128001 end of text, 128006/128007 headers, 128009 end of turn.
        Assert.Equal(128256, tokenizer.VocabularySize);
        Assert.Equal(128000, tokenizer.BosId);
        Assert.Equal(128001, tokenizer.EosId);
        Assert.Equal(128006, tokenizer.SpecialTokenId("<|start_header_id|>"));
        Assert.Equal(128007, tokenizer.SpecialTokenId("<|end_header_id|>"));
        Assert.Equal(128009, tokenizer.SpecialTokenId("<|eot_id|>"));
        Assert.Null(tokenizer.SpecialTokenId("<|not_a_token|>"));
        var ids = tokenizer.Encode("<|eot_id|>", addBos: false);
        Assert.DoesNotContain(128009, ids);
        Assert.True(ids.Count > 1);
        Assert.Equal("<|eot_id|>", tokenizer.Decode(ids));
        Assert.Equal("", tokenizer.Decode([128000, 128009]));
        Assert.Empty(tokenizer.TokenBytes(128009));
        // "Hello World" is [9906, 4435] in Llama 3 (Tokenizers.js's README shows the same pieces, 'Hello' 'ĠWorld').
        Assert.Equal([9906, 4435], tokenizer.Encode("Hello World", addBos: false));
        Assert.Equal(" World"u8.ToArray(), tokenizer.TokenBytes(4435));
    }

    [Fact]
    public void Qwen3ReadsItsNonSpecialAddedTokensFromTextAsTokenizersJsDoes()
    {
        var dir = references.Qwen3;
        var tokenizer = ByteLevelBpeTokenizer.Load(Path.Combine(dir, "tokenizer.json"));
        string[] texts = ["<think>\nreasoning\n</think>\n\nanswer", "a<tool_call>{\"name\": \"f\"}</tool_call>b"];
        var expected = HuggingFaceReferenceTokenizers.Encode(dir, texts);
        for (int i = 0; i < texts.Length; i++)
            Assert.Equal(expected[i], tokenizer.Encode(texts[i], addBos: false));
        int think = Assert.Single(tokenizer.Encode("<think>", addBos: false));
        Assert.Equal("<think>", tokenizer.Decode([think]));
        // Qwen has no BOS: nothing is put first, and BosId falls back to the EOS token.
        Assert.False(tokenizer.AddsBos);
        Assert.Equal(tokenizer.Encode("hi", addBos: false), tokenizer.Encode("hi", addBos: true));
        Assert.Equal(tokenizer.SpecialTokenId("<|im_end|>"), tokenizer.EosId);
        Assert.Equal(tokenizer.EosId, tokenizer.BosId);
    }
}
