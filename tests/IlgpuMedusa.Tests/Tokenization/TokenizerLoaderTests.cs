using IlgpuMedusa.Tokenization;

namespace IlgpuMedusa.Tests.Tokenization;

/// <summary>Which tokenizer file a model directory uses, and what happens when there is none.</summary>
public sealed class TokenizerLoaderTests
{
    private static readonly int[] LilyIds = [1, 9038, 2501, 263, 931, 29892, 727, 471, 263, 2217, 7826, 4257, 365, 2354, 29889];

    [Fact]
    public void EmptyDirectory_ThrowsFileNotFoundNamingWhatWasLookedFor()
    {
        var dir = TestModels.TempDirectory("no-tokenizer");

        var error = Assert.Throws<FileNotFoundException>(() => TokenizerLoader.Load(dir));

        Assert.Contains(dir, error.Message, StringComparison.Ordinal);
        Assert.Contains("tokenizer.model", error.Message, StringComparison.Ordinal);
        Assert.Contains("tokenizer.bin", error.Message, StringComparison.Ordinal);
        Assert.Contains("tokenizer.json (Hugging Face, byte-level BPE)", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void DirectoryWithOnlyABrokenTokenizerJson_SaysWhatIsWrongWithIt()
    {
        var dir = TestModels.TempDirectory("json-tokenizer");
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), "{}");

        var error = Assert.Throws<InvalidDataException>(() => TokenizerLoader.Load(dir));

        Assert.Contains(Path.Combine(dir, "tokenizer.json") + ": 'model' is missing", error.Message, StringComparison.Ordinal);
        // The SentencePiece bytes a conversion wants do not exist for such a directory.
        var missing = Assert.Throws<FileNotFoundException>(() => TokenizerLoader.GetSentencePieceModelBytes(dir));
        Assert.Contains("byte-level BPE tokenizer, which has no SentencePiece model", missing.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void MissingDirectory_ThrowsDirectoryNotFound()
    {
        var dir = Path.Combine(TestModels.TempDirectory("parent"), "absent");

        Assert.Throws<DirectoryNotFoundException>(() => TokenizerLoader.Load(dir));
    }

    [Fact]
    public void ConvertedTokenizerModel_IsPreferredAndEncodesLikeTokenizerBin()
    {
        var dir = TestModels.TempDirectory("converted");
        byte[] model = TokenizerLoader.GetSentencePieceModelBytes(TestModels.Stories15MDirectory, 32000);
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), model);
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.bin"), [1, 2, 3]); // corrupt: must not be read

        var tokenizer = TokenizerLoader.Load(dir, 32000);

        Assert.Equal(LilyIds, tokenizer.Encode(TokenizerTestStrings.Lily, addBos: true));
        Assert.Equal(model, TokenizerLoader.GetSentencePieceModelBytes(dir));
    }

    [Fact]
    public void VocabularySize_IsCheckedAgainstTheTokenizer()
    {
        var dir = TestModels.TempDirectory("vocab-check");
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), TokenizerLoader.GetSentencePieceModelBytes(TestModels.Stories15MDirectory));

        Assert.Throws<InvalidDataException>(() => TokenizerLoader.Load(dir, 31999));
        Assert.Throws<InvalidDataException>(() => TokenizerLoader.Load(TestModels.Stories15MDirectory, 32001));
    }

    [Fact]
    public void CorruptTokenizerModel_ThrowsInvalidDataNamingTheFile()
    {
        var dir = TestModels.TempDirectory("corrupt-model");
        var path = Path.Combine(dir, "tokenizer.model");
        File.WriteAllBytes(path, [0x0A, 0xFF, 0xFF, 0x01, 0x02]);

        var error = Assert.Throws<InvalidDataException>(() => TokenizerLoader.Load(dir));

        Assert.Contains(path, error.Message, StringComparison.Ordinal);
    }
}
