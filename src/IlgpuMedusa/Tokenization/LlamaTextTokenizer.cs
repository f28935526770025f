using Google.Protobuf;
using Microsoft.ML.Tokenizers;

namespace IlgpuMedusa.Tokenization;

/// <summary>
/// The Llama tokenizer (SentencePiece BPE with byte fallback), on Microsoft.ML.Tokenizers' <see cref="LlamaTokenizer"/>
/// loaded from SentencePiece ModelProto bytes (a tokenizer.model file, or one built by <see cref="SentencePieceModelBuilder"/>).
/// </summary>
/// <remarks>
/// Encoding uses the library's default options: normalization must stay on, it is what adds the dummy prefix and turns
/// spaces into U+2581. Decoding drops BOS, EOS and <c>&lt;unk&gt;</c> and the dummy-prefix space of the first piece.
/// Instances are immutable and safe to share between threads; each streaming detokenizer is for one stream.
/// </remarks>
public sealed class LlamaTextTokenizer : ITextTokenizer
{
    private readonly LlamaTokenizer _tokenizer;
    private readonly SentencePieceDecodingTable _table;

    private LlamaTextTokenizer(LlamaTokenizer tokenizer, SentencePieceDecodingTable table)
    {
        _tokenizer = tokenizer;
        _table = table;
    }

    /// <inheritdoc/>
    public int VocabularySize => _table.VocabularySize;

    /// <inheritdoc/>
    public int BosId => _tokenizer.BeginningOfSentenceId;

    /// <inheritdoc/>
    public int EosId => _tokenizer.EndOfSentenceId;

    /// <summary>Creates the tokenizer from SentencePiece ModelProto bytes (the contents of a tokenizer.model file).</summary>
    /// <param name="sentencePieceModel">The ModelProto bytes.</param>
    /// <param name="sourceName">Where the bytes came from (a file path), named in error messages.</param>
    /// <exception cref="InvalidDataException">The bytes are not a SentencePiece model the library can load.</exception>
    /// <exception cref="NotSupportedException">The model is not a Llama-style SentencePiece model (byte fallback, escaped whitespace, prefix space).</exception>
    public static LlamaTextTokenizer FromSentencePieceModel(byte[] sentencePieceModel, string sourceName)
    {
        ArgumentNullException.ThrowIfNull(sentencePieceModel);
        ArgumentNullException.ThrowIfNull(sourceName);
        if (sentencePieceModel.Length == 0) throw new InvalidDataException($"{sourceName}: empty file; expected a SentencePiece model (tokenizer.model).");
        LlamaTokenizer tokenizer;
        try
        {
            using var stream = new MemoryStream(sentencePieceModel, writable: false);
            tokenizer = LlamaTokenizer.Create(stream, addBeginOfSentence: true, addEndOfSentence: false);
        }
        // The library assumes a complete model: an empty file or one without its trainer or normalizer section ends in a
        // null dereference inside it, which is bad input here like any other.
        catch (Exception e) when (e is InvalidProtocolBufferException or ArgumentException or InvalidOperationException or FormatException
            or NullReferenceException or IndexOutOfRangeException or KeyNotFoundException or OverflowException)
        {
            throw new InvalidDataException($"{sourceName}: not a usable SentencePiece model ({e.GetType().Name}: {e.Message})", e);
        }

        return new LlamaTextTokenizer(tokenizer, SentencePieceDecodingTable.Create(tokenizer, sourceName));
    }

    /// <inheritdoc/>
    public IReadOnlyList<int> Encode(string text, bool addBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = _tokenizer.EncodeToIds(text, addBeginningOfSentence: addBos, addEndOfSentence: false);
        // The library returns no ids at all for empty text, BOS included.
        return addBos && ids.Count == 0 ? [BosId] : ids;
    }

    /// <inheritdoc/>
    /// <exception cref="ArgumentOutOfRangeException">An id is outside the vocabulary.</exception>
    public string Decode(IEnumerable<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var list = ids as IReadOnlyCollection<int> ?? [.. ids];
        foreach (int id in list)
            _table.CheckId(id);
        return _tokenizer.Decode(list, considerSpecialTokens: false);
    }

    /// <inheritdoc/>
    public IStreamingDetokenizer CreateStreamingDetokenizer(bool continuesText = false) => new SentencePieceStreamingDetokenizer(_table, continuesText);

    /// <inheritdoc/>
    public byte[] TokenBytes(int id) => _table.Bytes(id);

    /// <summary>The vocabulary as the streaming detokenizer sees it; for tests.</summary>
    internal SentencePieceDecodingTable DecodingTable => _table;
}
