using IlgpuMedusa.Tokenization;

namespace IlgpuMedusa.Tests.Tokenization;

/// <summary>Encode/Decode of the demo model's tokenizer (tokenizer.bin converted to a SentencePiece model) against independent references.</summary>
public sealed class LlamaTextTokenizerTests(StoriesTokenizerFixture fixture) : IClassFixture<StoriesTokenizerFixture>
{
    // From FACTS.md: llama2.c run.c's encoding of the reference prompt (BOS + dummy prefix).
    private static readonly int[] LilyIds = [1, 9038, 2501, 263, 931, 29892, 727, 471, 263, 2217, 7826, 4257, 365, 2354, 29889];

    private readonly LlamaTextTokenizer _tokenizer = fixture.Tokenizer;

    [Fact]
    public void Encode_LilySentence_MatchesLlama2cReference()
    {
        Assert.Equal(LilyIds, _tokenizer.Encode(TokenizerTestStrings.Lily, addBos: true));
    }

    [Theory]
    [MemberData(nameof(TokenizerTestStrings.Theory), MemberType = typeof(TokenizerTestStrings))]
    public void Encode_MatchesIndependentLlamaTokenizer(string text)
    {
        Assert.Equal(fixture.ReferenceIds[text], _tokenizer.Encode(text, addBos: false));
    }

    [Theory]
    [MemberData(nameof(TokenizerTestStrings.Theory), MemberType = typeof(TokenizerTestStrings))]
    public void Decode_OfEncode_IsTheText(string text)
    {
        Assert.Equal(text, _tokenizer.Decode(_tokenizer.Encode(text, addBos: true)));
        Assert.Equal(text, _tokenizer.Decode(_tokenizer.Encode(text, addBos: false)));
    }

    [Fact]
    public void Encode_AddsBosOnlyWhenAsked()
    {
        var withBos = _tokenizer.Encode("Hello world!", addBos: true);
        var withoutBos = _tokenizer.Encode("Hello world!", addBos: false);

        Assert.Equal(_tokenizer.BosId, withBos[0]);
        Assert.NotEqual(_tokenizer.BosId, withoutBos[0]);
        Assert.Equal(withoutBos, withBos.Skip(1));
        Assert.Equal([_tokenizer.BosId], _tokenizer.Encode("", addBos: true));
        Assert.Empty(_tokenizer.Encode("", addBos: false));
    }

    [Fact]
    public void Decode_SkipsBosAndEos()
    {
        int[] ids = [_tokenizer.BosId, .. _tokenizer.Encode("The end.", addBos: false), _tokenizer.EosId, _tokenizer.BosId];

        Assert.Equal("The end.", _tokenizer.Decode(ids));
    }

    [Fact]
    public void Decode_IdOutsideVocabulary_Throws()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => _tokenizer.Decode([1, 32000]));
        Assert.Throws<ArgumentOutOfRangeException>(() => _tokenizer.Decode([-1]));
    }

    [Fact]
    public void SpecialIdsAndVocabulary_FollowTheLlamaLayout()
    {
        var table = _tokenizer.DecodingTable;

        Assert.Equal(32000, _tokenizer.VocabularySize);
        Assert.Equal(1, _tokenizer.BosId);
        Assert.Equal(2, _tokenizer.EosId);
        Assert.Equal("<unk>", table.Piece(0));
        Assert.Equal("<s>", table.Piece(1));
        Assert.Equal("</s>", table.Piece(2));
        Assert.Equal("<0x00>", table.Piece(3));
        Assert.Equal("<0xFF>", table.Piece(258));
        Assert.Equal("\u2581\u2581", table.Piece(259));
        Assert.Equal("\u2581t", table.Piece(260));
        Assert.Equal("\u2581", table.Piece(29871));
    }
}
