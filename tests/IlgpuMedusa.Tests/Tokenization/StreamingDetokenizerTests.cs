using System.Text;
using IlgpuMedusa.Tokenization;

namespace IlgpuMedusa.Tests.Tokenization;

/// <summary>The streaming detokenizer agrees with Decode and never shows half a character.</summary>
public sealed class StreamingDetokenizerTests(StoriesTokenizerFixture fixture) : IClassFixture<StoriesTokenizerFixture>
{
    // "😀" is F0 9F 98 80 in UTF-8; byte b is token 3 + b. Token 29871 is the lone "▁" of the dummy prefix.
    private static readonly int[] GrinningFaceIds = [29871, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80];

    private readonly LlamaTextTokenizer _tokenizer = fixture.Tokenizer;

    [Theory]
    [MemberData(nameof(TokenizerTestStrings.Theory), MemberType = typeof(TokenizerTestStrings))]
    public void Deltas_ConcatenateToDecode_WithWholeCharactersOnly(string text)
    {
        int[] ids = [.. _tokenizer.Encode(text, addBos: true), _tokenizer.EosId];
        var detokenizer = _tokenizer.CreateStreamingDetokenizer();
        var streamed = new StringBuilder();

        foreach (int id in ids)
        {
            string delta = detokenizer.Append(id);
            AssertWholeCharacters(delta, id);
            streamed.Append(delta);
        }

        Assert.Equal("", detokenizer.Flush());
        Assert.Equal(_tokenizer.Decode(ids), streamed.ToString());
        Assert.Equal(text, streamed.ToString());
    }

    [Fact]
    public void Emoji_SplitOverByteTokens_AppearsWithItsLastByte()
    {
        Assert.Equal(GrinningFaceIds, _tokenizer.Encode("😀", addBos: false));
        var detokenizer = _tokenizer.CreateStreamingDetokenizer();

        var deltas = GrinningFaceIds.Select(detokenizer.Append).ToArray();

        Assert.Equal(["", "", "", "", "😀"], deltas);
        Assert.Equal("", detokenizer.Flush());
    }

    [Fact]
    public void Flush_IncompleteCharacter_BecomesReplacementCharacter_LikeDecode()
    {
        int[] ids = [GrinningFaceIds[1], GrinningFaceIds[2]];
        var detokenizer = _tokenizer.CreateStreamingDetokenizer();

        Assert.Equal("", detokenizer.Append(ids[0]));
        Assert.Equal("", detokenizer.Append(ids[1]));
        Assert.Equal("\uFFFD", detokenizer.Flush());
        Assert.Equal("\uFFFD", _tokenizer.Decode(ids));
    }

    [Fact]
    public void RandomIdSequences_MatchDecode()
    {
        // Mixes specials, byte tokens (valid and broken UTF-8 runs), whitespace pieces and words, in every position.
        var random = new Random(20261127);
        for (int sequence = 0; sequence < 3000; sequence++)
        {
            var ids = new int[random.Next(1, 24)];
            for (int i = 0; i < ids.Length; i++)
            {
                ids[i] = random.Next(10) switch
                {
                    0 => random.Next(0, 3),
                    < 5 => random.Next(3, 259),
                    5 => 29871,
                    _ => random.Next(259, _tokenizer.VocabularySize),
                };
            }

            var detokenizer = _tokenizer.CreateStreamingDetokenizer();
            string streamed = string.Concat(ids.Select(detokenizer.Append)) + detokenizer.Flush();

            Assert.True(_tokenizer.Decode(ids) == streamed, $"ids [{string.Join(", ", ids)}]: Decode gave \"{_tokenizer.Decode(ids)}\", the stream \"{streamed}\"");
        }
    }

    [Fact]
    public void Append_IdOutsideVocabulary_Throws()
    {
        var detokenizer = _tokenizer.CreateStreamingDetokenizer();

        Assert.Throws<ArgumentOutOfRangeException>(() => detokenizer.Append(_tokenizer.VocabularySize));
        Assert.Throws<ArgumentOutOfRangeException>(() => detokenizer.Append(-1));
    }

    private static void AssertWholeCharacters(string delta, int id)
    {
        Assert.False(delta.Contains('\uFFFD', StringComparison.Ordinal), $"token {id}: delta \"{delta}\" holds U+FFFD");
        for (int i = 0; i < delta.Length; i++)
        {
            if (char.IsHighSurrogate(delta[i]) && i + 1 < delta.Length && char.IsLowSurrogate(delta[i + 1]))
                i++;
            else
                Assert.False(char.IsSurrogate(delta[i]), $"token {id}: delta \"{delta}\" holds a lone surrogate at {i}");
        }
    }
}
