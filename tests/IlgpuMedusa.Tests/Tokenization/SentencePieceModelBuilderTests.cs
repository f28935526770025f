using System.Buffers.Binary;
using IlgpuMedusa.Tokenization;

namespace IlgpuMedusa.Tests.Tokenization;

/// <summary>tokenizer.bin to tokenizer.model: good files convert, damaged ones fail with the file, the token and what was expected.</summary>
public sealed class SentencePieceModelBuilderTests
{
    private static string StoriesTokenizerBin => Path.Combine(TestModels.Stories15MDirectory, "tokenizer.bin");

    [Fact]
    public void InferredVocabularySize_BuildsTheSameModelAsTheExplicitOne()
    {
        Assert.Equal(
            SentencePieceModelBuilder.FromLlama2cTokenizer(StoriesTokenizerBin, 32000),
            SentencePieceModelBuilder.FromLlama2cTokenizer(StoriesTokenizerBin));
    }

    [Theory]
    [InlineData(2)]          // inside the header
    [InlineData(4)]          // header only
    [InlineData(10)]         // inside token 0's score/length
    [InlineData(14)]         // inside token 0's bytes
    [InlineData(200_000)]    // somewhere in the middle
    [InlineData(432_716)]    // one byte short
    public void TruncatedFile_ThrowsInvalidDataNamingFileAndToken(int keptBytes)
    {
        var path = WriteTokenizerBin(File.ReadAllBytes(StoriesTokenizerBin).AsSpan(0, keptBytes).ToArray());

        var error = Assert.Throws<InvalidDataException>(() => SentencePieceModelBuilder.FromLlama2cTokenizer(path, 32000));

        Assert.Contains(path, error.Message, StringComparison.Ordinal);
        Assert.Contains(keptBytes < 4 ? "header" : "token ", error.Message, StringComparison.Ordinal);
        Assert.Throws<InvalidDataException>(() => SentencePieceModelBuilder.FromLlama2cTokenizer(path));
    }

    [Theory]
    [InlineData(int.MaxValue)]
    [InlineData(1_000_000_000)]
    [InlineData(-5)]
    [InlineData(0)]
    public void AbsurdLengthField_ThrowsInvalidDataNamingFileAndToken(int length)
    {
        var data = File.ReadAllBytes(StoriesTokenizerBin);
        int token1LengthOffset = FindEntryOffset(data, 1) + sizeof(float);
        BinaryPrimitives.WriteInt32LittleEndian(data.AsSpan(token1LengthOffset), length);
        var path = WriteTokenizerBin(data);

        var error = Assert.Throws<InvalidDataException>(() => SentencePieceModelBuilder.FromLlama2cTokenizer(path, 32000));

        Assert.Contains(path, error.Message, StringComparison.Ordinal);
        Assert.Contains("token 1:", error.Message, StringComparison.Ordinal);
        Assert.Contains($"length {length}", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void FileWithFewerTokensThanTheModel_Throws()
    {
        var error = Assert.Throws<InvalidDataException>(() => SentencePieceModelBuilder.FromLlama2cTokenizer(StoriesTokenizerBin, 32001));

        Assert.Contains("token 32000:", error.Message, StringComparison.Ordinal);
        Assert.Contains("ends after 32000 whole tokens, the model's vocabulary has 32001", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void FileWithMoreTokensThanTheModel_Throws()
    {
        var error = Assert.Throws<InvalidDataException>(() => SentencePieceModelBuilder.FromLlama2cTokenizer(StoriesTokenizerBin, 31999));

        Assert.Contains(StoriesTokenizerBin, error.Message, StringComparison.Ordinal);
        Assert.Contains("31999 tokens", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void WrongByteToken_Throws()
    {
        var data = File.ReadAllBytes(StoriesTokenizerBin);
        int token3BytesOffset = FindEntryOffset(data, 3) + sizeof(float) + sizeof(int);
        data[token3BytesOffset] = (byte)'x'; // token 3 must be byte 0x00
        var path = WriteTokenizerBin(data);

        var error = Assert.Throws<InvalidDataException>(() => SentencePieceModelBuilder.FromLlama2cTokenizer(path, 32000));

        Assert.Contains("token 3:", error.Message, StringComparison.Ordinal);
        Assert.Contains("<0x00>", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void VocabularySizeBelowTheLlamaLayout_IsAnArgumentError()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => SentencePieceModelBuilder.FromLlama2cTokenizer(StoriesTokenizerBin, 100));
    }

    /// <summary>Offset of token <paramref name="index"/>'s score, walking the (trusted, unmodified) real file.</summary>
    private static int FindEntryOffset(byte[] data, int index)
    {
        int offset = sizeof(int);
        for (int i = 0; i < index; i++)
            offset += sizeof(float) + sizeof(int) + BinaryPrimitives.ReadInt32LittleEndian(data.AsSpan(offset + sizeof(float)));
        return offset;
    }

    private static string WriteTokenizerBin(byte[] data)
    {
        var path = Path.Combine(TestModels.TempDirectory("tokenizer-bin"), "tokenizer.bin");
        File.WriteAllBytes(path, data);
        return path;
    }
}
