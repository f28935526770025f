using Microsoft.ML.Tokenizers;

namespace IlgpuMedusa.Tokenization;

/// <summary>
/// What each id of a Llama SentencePiece vocabulary contributes to decoded text, taken from the loaded tokenizer so that
/// streaming and whole-sequence decoding agree: byte tokens give one raw byte, BOS/EOS/<c>&lt;unk&gt;</c> and the ids below
/// the byte range give nothing, every other id gives its piece with U+2581 standing for ' '.
/// </summary>
internal sealed class SentencePieceDecodingTable
{
    private const int ByteCount = 256;

    private readonly string[] _pieces;   // (V) piece text by id, U+2581 kept
    private readonly int _firstByteId;   // id of <0x00>; <0xNN> is _firstByteId + 0xNN
    private readonly int _bosId, _eosId, _unknownId;

    private SentencePieceDecodingTable(string[] pieces, int firstByteId, int bosId, int eosId, int unknownId, bool addDummyPrefix)
    {
        _pieces = pieces;
        _firstByteId = firstByteId;
        _bosId = bosId;
        _eosId = eosId;
        _unknownId = unknownId;
        AddDummyPrefix = addDummyPrefix;
    }

    /// <summary>Number of ids.</summary>
    public int VocabularySize => _pieces.Length;

    /// <summary>Whether encoding put a space before the text, which decoding removes from the first non-empty piece.</summary>
    public bool AddDummyPrefix { get; }

    /// <summary>Reads the tables from a loaded tokenizer; <paramref name="sourceName"/> is named in error messages.</summary>
    public static SentencePieceDecodingTable Create(SentencePieceTokenizer tokenizer, string sourceName)
    {
        if (!tokenizer.ByteFallback || !tokenizer.EscapeWhiteSpaces || tokenizer.TreatWhitespaceAsSuffix)
            throw new NotSupportedException(
                $"{sourceName}: only Llama-style SentencePiece models are supported (byte_fallback true, escape_whitespaces true, " +
                $"treat_whitespace_as_suffix false); this one has {tokenizer.ByteFallback}, {tokenizer.EscapeWhiteSpaces}, {tokenizer.TreatWhitespaceAsSuffix}");

        var vocabulary = tokenizer.Vocabulary;
        var pieces = new string[vocabulary.Count];
        foreach (var (piece, id) in vocabulary)
        {
            if ((uint)id >= (uint)pieces.Length || pieces[id] is not null)
                throw new InvalidDataException($"{sourceName}: piece ids are not 0..{pieces.Length - 1} (\"{piece}\" has id {id})");
            pieces[id] = piece;
        }

        if (!vocabulary.TryGetValue("<0x00>", out int firstByteId))
            throw new InvalidDataException($"{sourceName}: the model has byte fallback but no byte token <0x00>");
        for (int b = 0; b < ByteCount; b++)
        {
            int id = firstByteId + b;
            if (id >= pieces.Length || pieces[id] != $"<0x{b:X2}>")
                throw new InvalidDataException($"{sourceName}: byte tokens must be <0x00>..<0xFF> at consecutive ids from {firstByteId}; id {id} is not <0x{b:X2}>");
        }

        return new SentencePieceDecodingTable(pieces, firstByteId, tokenizer.BeginningOfSentenceId, tokenizer.EndOfSentenceId, tokenizer.UnknownId, tokenizer.AddDummyPrefix);
    }

    /// <summary>Throws when <paramref name="id"/> is not in the vocabulary.</summary>
    public void CheckId(int id)
    {
        if ((uint)id >= (uint)_pieces.Length)
            throw new ArgumentOutOfRangeException(nameof(id), id, $"token id outside the vocabulary [0, {_pieces.Length})");
    }

    /// <summary>The piece of <paramref name="id"/> as stored in the model (U+2581 for spaces, <c>&lt;0xNN&gt;</c> for bytes).</summary>
    public string Piece(int id) => _pieces[id];

    /// <summary>Whether <paramref name="id"/> is a byte-fallback token, and which byte.</summary>
    public bool TryGetByte(int id, out byte value)
    {
        uint offset = (uint)(id - _firstByteId);
        value = (byte)offset;
        return offset < ByteCount;
    }

    /// <summary>What <paramref name="id"/> contributes to decoded text, as UTF-8 bytes (see <see cref="ITextTokenizer.TokenBytes"/>).</summary>
    public byte[] Bytes(int id)
    {
        CheckId(id);
        if (TryGetByte(id, out byte value)) return [value];
        if (IsSilent(id)) return [];
        return System.Text.Encoding.UTF8.GetBytes(_pieces[id].Replace(SentencePieceModelBuilder.SpaceMarker, ' '));
    }

    /// <summary>
    /// Whether <paramref name="id"/> decodes to no text: BOS, EOS, <c>&lt;unk&gt;</c> and any id before the byte tokens
    /// (Microsoft.ML.Tokenizers' Decode skips all of those).
    /// </summary>
    public bool IsSilent(int id) => id < _firstByteId || id == _bosId || id == _eosId || id == _unknownId;
}
