using System.Buffers.Binary;

namespace IlgpuMedusa.Tokenization;

/// <summary>One entry of a llama2.c tokenizer.bin: the piece's raw bytes (spaces as ' ') and its BPE merge score.</summary>
internal readonly record struct Llama2cVocabularyEntry(byte[] Bytes, float Score);

/// <summary>
/// Reads llama2.c's tokenizer.bin. Layout (little-endian): int32 max_token_length, then per token
/// float32 score, int32 length, length bytes. The file does not store the token count; the model does.
/// Every size read from the file is checked against the bytes that remain before it is used.
/// </summary>
internal static class Llama2cTokenizerFile
{
    /// <summary>Llama 2's tokenizer.bin is 0.4 MB; a file this large is not a tokenizer, so it is not read into memory.</summary>
    internal const long MaxFileBytes = 64L * 1024 * 1024;

    private const int HeaderBytes = sizeof(int);
    private const int EntryHeaderBytes = sizeof(float) + sizeof(int);

    /// <summary>
    /// Reads every entry of <paramref name="path"/>. With <paramref name="expectedCount"/> the file must hold exactly that
    /// many tokens; without it, tokens are read until the end of the file.
    /// </summary>
    public static Llama2cVocabularyEntry[] Read(string path, int? expectedCount)
    {
        var info = new FileInfo(path);
        if (!info.Exists)
            throw new FileNotFoundException($"{path}: llama2.c tokenizer file not found", path);
        if (info.Length > MaxFileBytes)
            throw Corrupt(path, $"the file is {info.Length} bytes; a llama2.c tokenizer.bin is far smaller (at most {MaxFileBytes} accepted)");
        return Parse(File.ReadAllBytes(path), path, expectedCount);
    }

    /// <summary>Parses tokenizer.bin bytes; <paramref name="path"/> is only used in error messages.</summary>
    internal static Llama2cVocabularyEntry[] Parse(ReadOnlySpan<byte> data, string path, int? expectedCount)
    {
        if (data.Length < HeaderBytes)
            throw Corrupt(path, $"header: expected a {HeaderBytes}-byte max_token_length, the file has {data.Length} bytes");
        int maxTokenLength = BinaryPrimitives.ReadInt32LittleEndian(data);
        if (maxTokenLength <= 0)
            throw Corrupt(path, $"header: max_token_length {maxTokenLength} is not positive");

        // Each token takes at least 9 bytes, which bounds the list whatever count the caller expects.
        var entries = new List<Llama2cVocabularyEntry>(Math.Min(expectedCount ?? 0, data.Length / (EntryHeaderBytes + 1)));
        string expected = expectedCount is int n ? $"the model's vocabulary has {n}" : "so the file is truncated";
        int offset = HeaderBytes;
        while (expectedCount is int count ? entries.Count < count : offset < data.Length)
        {
            int index = entries.Count;
            if (data.Length - offset < EntryHeaderBytes)
                throw Corrupt(path, $"token {index}: expected an {EntryHeaderBytes}-byte score and length at offset {offset}, but only {data.Length - offset} bytes remain: the file ends after {index} whole tokens, {expected}");

            float score = BinaryPrimitives.ReadSingleLittleEndian(data[offset..]);
            int length = BinaryPrimitives.ReadInt32LittleEndian(data[(offset + sizeof(float))..]);
            if (!float.IsFinite(score))
                throw Corrupt(path, $"token {index}: score {score} at offset {offset} is not a finite number");
            if (length <= 0 || length > maxTokenLength)
                throw Corrupt(path, $"token {index}: length {length} at offset {offset + sizeof(float)} is not between 1 and max_token_length {maxTokenLength}");
            offset += EntryHeaderBytes;
            if (length > data.Length - offset)
                throw Corrupt(path, $"token {index}: length {length} exceeds the {data.Length - offset} bytes that remain at offset {offset} (the file is truncated or the length is corrupt)");

            entries.Add(new Llama2cVocabularyEntry(data.Slice(offset, length).ToArray(), score));
            offset += length;
        }

        if (offset != data.Length)
            throw Corrupt(path, $"{data.Length - offset} bytes remain after token {entries.Count - 1}: the file holds more than the {entries.Count} tokens expected (does it belong to a model with another vocabulary size?)");
        return [.. entries];
    }

    internal static InvalidDataException Corrupt(string path, string what) =>
        new($"{path}: not a valid llama2.c tokenizer.bin: {what}.");
}
