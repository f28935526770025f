using System.Text;

namespace IlgpuMedusa.Tokenization;

/// <summary>
/// Streaming detokenizer for a Llama SentencePiece vocabulary. It turns each id into bytes or text on its own (never
/// re-decoding the sequence) and follows the same rules as <see cref="LlamaTextTokenizer.Decode"/>, so the concatenated
/// deltas plus <see cref="Flush"/> equal <c>Decode(all ids)</c>:
/// <list type="bullet">
/// <item>byte tokens <c>&lt;0xNN&gt;</c> go through one UTF-8 decoder that holds an incomplete character until its last byte arrives;</item>
/// <item>any other id ends a byte run: bytes still incomplete then become U+FFFD, as in Decode;</item>
/// <item>BOS, EOS and <c>&lt;unk&gt;</c> give no text;</item>
/// <item>the first non-empty piece loses its leading U+2581 (the dummy-prefix space added by encoding), unless the ids continue earlier text;</item>
/// <item>U+2581 is shown as ' ' everywhere, in decoded bytes too.</item>
/// </list>
/// </summary>
internal sealed class SentencePieceStreamingDetokenizer : IStreamingDetokenizer
{
    // A UTF-8 sequence is at most 4 bytes, so one call yields at most 4 chars (4 replacement characters, or a surrogate pair).
    private const int MaxCharsPerByte = 4;

    private readonly SentencePieceDecodingTable _table;
    private readonly Decoder _utf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false).GetDecoder();
    private bool _prefixPending;

    public SentencePieceStreamingDetokenizer(SentencePieceDecodingTable table, bool continuesText = false)
    {
        _table = table;
        _prefixPending = table.AddDummyPrefix && !continuesText;
    }

    /// <inheritdoc/>
    public string Append(int tokenId)
    {
        _table.CheckId(tokenId);
        if (_table.TryGetByte(tokenId, out byte value))
            return DecodeBytes([value], flush: false);

        string pendingBytes = DecodeBytes([], flush: true);
        if (_table.IsSilent(tokenId))
            return pendingBytes;

        string piece = _table.Piece(tokenId);
        if (piece.Length == 0)
            return pendingBytes;
        if (_prefixPending)
        {
            _prefixPending = false;
            if (piece[0] == SentencePieceModelBuilder.SpaceMarker)
                piece = piece[1..];
        }

        return pendingBytes + ShowSpaces(piece);
    }

    /// <inheritdoc/>
    public string Flush() => DecodeBytes([], flush: true);

    private string DecodeBytes(ReadOnlySpan<byte> bytes, bool flush)
    {
        Span<char> chars = stackalloc char[MaxCharsPerByte];
        int count = _utf8.GetChars(bytes, chars, flush);
        return count == 0 ? string.Empty : ShowSpaces(new string(chars[..count]));
    }

    private static string ShowSpaces(string text) => text.Replace(SentencePieceModelBuilder.SpaceMarker, ' ');
}
