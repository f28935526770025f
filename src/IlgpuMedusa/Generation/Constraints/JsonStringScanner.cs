namespace IlgpuMedusa.Generation.Constraints;

/// <summary>
/// Reads the inside of a JSON string, after its opening quote, one byte at a time, for <see cref="JsonGrammar"/> and
/// <see cref="JsonSchemaGrammar"/>: escapes (<c>\" \\ \/ \b \f \n \r \t \uXXXX</c>, no <c>\u</c> of a surrogate, D800-DFFF),
/// no raw control characters, and well-formed UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF), so every
/// string read decodes to valid Unicode. U+2581 (▁, E2 96 81) is refused too: the tokenizer shows that character, its
/// space marker, as a space, so text holding it could not be shown as the grammar read it.
/// </summary>
internal struct JsonStringScanner
{
    /// <summary>What a byte did.</summary>
    public enum Step : byte
    {
        /// <summary>No string continues so.</summary>
        Invalid,
        /// <summary>The string goes on.</summary>
        Continue,
        /// <summary>The byte was the closing quote.</summary>
        Closed,
    }

    private enum Mode : byte
    {
        Text,
        Escape,
        Unicode,
    }

    private Mode _mode;
    private byte _pending; // Text: UTF-8 continuation bytes still due; Unicode: hex digits still due
    private byte _low, _high; // Text: range of the next continuation byte; Unicode: _low = 1 when the first digit was D
    private byte _marker;     // Text: 1 after E2, 2 after E2 96 (U+2581 is E2 96 81)

    /// <summary>Between characters, outside an escape: <see cref="IsPlainText"/> bytes leave the scanner as it is.</summary>
    public readonly bool BetweenCharacters => _mode == Mode.Text && _pending == 0;

    /// <summary>
    /// Whether <paramref name="bytes"/> are whole UTF-8 characters the scanner reads as they are: none of them '"', '\\',
    /// a control character or U+2581.
    /// </summary>
    public static bool IsPlainText(ReadOnlySpan<byte> bytes) =>
        System.Text.Unicode.Utf8.IsValid(bytes) && bytes.IndexOfAnyInRange((byte)0, (byte)0x1F) < 0 && bytes.IndexOfAny((byte)'"', (byte)'\\') < 0 &&
        bytes.IndexOf("\u2581"u8) < 0;

    /// <summary>Reads one byte of the string.</summary>
    public Step Advance(byte b)
    {
        switch (_mode)
        {
            case Mode.Escape:
                if (b == (byte)'u')
                {
                    _mode = Mode.Unicode;
                    _pending = 4;
                    _low = 0;
                    return Step.Continue;
                }
                _mode = Mode.Text;
                return b is (byte)'"' or (byte)'\\' or (byte)'/' or (byte)'b' or (byte)'f' or (byte)'n' or (byte)'r' or (byte)'t' ? Step.Continue : Step.Invalid;
            case Mode.Unicode:
            {
                int digit = b switch
                {
                    >= (byte)'0' and <= (byte)'9' => b - '0',
                    >= (byte)'a' and <= (byte)'f' => b - 'a' + 10,
                    >= (byte)'A' and <= (byte)'F' => b - 'A' + 10,
                    _ => -1,
                };
                if (digit < 0) return Step.Invalid;
                if (_pending == 4) _low = digit == 0xD ? (byte)1 : (byte)0;
                else if (_pending == 3 && _low == 1 && digit >= 8) return Step.Invalid; // D800-DFFF: a surrogate
                if (--_pending == 0) _mode = Mode.Text;
                return Step.Continue;
            }
        }
        if (_pending > 0)
        {
            if (b < _low || b > _high) return Step.Invalid;
            if (_marker == 2 && b == 0x81) return Step.Invalid; // U+2581
            _marker = _marker == 1 && b == 0x96 ? (byte)2 : (byte)0;
            _pending--;
            _low = 0x80;
            _high = 0xBF;
            return Step.Continue;
        }
        if (b == (byte)'"') return Step.Closed;
        if (b == (byte)'\\')
        {
            _mode = Mode.Escape;
            return Step.Continue;
        }
        if (b < 0x20) return Step.Invalid; // control characters must be escaped
        if (b < 0x80) return Step.Continue;
        // The lead byte of a multi-byte character: how many continuation bytes follow, and the range of the first (which
        // rules out overlong forms, surrogates and code points past U+10FFFF).
        (_pending, _low, _high) = b switch
        {
            >= 0xC2 and <= 0xDF => ((byte)1, (byte)0x80, (byte)0xBF),
            0xE0 => ((byte)2, (byte)0xA0, (byte)0xBF),
            0xED => ((byte)2, (byte)0x80, (byte)0x9F),
            >= 0xE1 and <= 0xEF => ((byte)2, (byte)0x80, (byte)0xBF),
            0xF0 => ((byte)3, (byte)0x90, (byte)0xBF),
            >= 0xF1 and <= 0xF3 => ((byte)3, (byte)0x80, (byte)0xBF),
            0xF4 => ((byte)3, (byte)0x80, (byte)0x8F),
            _ => ((byte)0, (byte)0, (byte)0),
        };
        _marker = b == 0xE2 ? (byte)1 : (byte)0;
        return _pending > 0 ? Step.Continue : Step.Invalid;
    }
}
