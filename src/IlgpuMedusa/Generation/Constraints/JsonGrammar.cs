namespace IlgpuMedusa.Generation.Constraints;

/// <summary>
/// A byte-at-a-time recognizer of one JSON text (RFC 8259) whose top-level value is an object, as OpenAI's JSON mode
/// asks: <see cref="Advance"/> says whether a byte can extend what was read so far towards a complete text, so every
/// state it accepts can still be completed (a constraint built on it never leads generation into a dead end). A small
/// value type: a candidate's state is copied, never shared.
/// <para>It accepts exactly the JSON texts of an object, with these limits, which every generated text then meets too:</para>
/// <list type="bullet">
/// <item>nesting of at most <see cref="MaxDepth"/> objects and arrays;</item>
/// <item>runs of at most <see cref="MaxWhitespaceRun"/> whitespace bytes (a model cannot stall in blank lines), none
/// before the opening brace and nothing after the closing one: the text is the object, from brace to brace;</item>
/// <item>strings are well-formed UTF-8 (no overlong forms, no surrogates) and no <c>\u</c> escape names a surrogate
/// (D800-DFFF), so every string decodes to valid Unicode; characters outside the Basic Multilingual Plane are written
/// as UTF-8; U+2581 is refused (<see cref="JsonStringScanner"/>);</item>
/// <item>keys are not checked for duplicates (RFC 8259 allows them; some parsers refuse them).</item>
/// </list>
/// </summary>
internal struct JsonGrammar : IByteGrammar
{
    /// <summary>Most objects and arrays open at once.</summary>
    public const int MaxDepth = 64;

    /// <summary>Most whitespace bytes in a row.</summary>
    public const int MaxWhitespaceRun = 16;

    private const byte Quote = (byte)'"';

    private enum Mode : byte
    {
        Start,          // before the top-level object: '{'
        ObjectOpen,     // after '{': whitespace, a key, '}'
        ObjectKey,      // after ',' in an object: whitespace, a key
        Colon,          // after a key: whitespace, ':'
        Value,          // after ':' or ',' in an array: whitespace, a value
        ArrayOpen,      // after '[': whitespace, a value, ']'
        AfterValue,     // whitespace, ',' or the container's closing bracket
        String,         // inside a string (key or value)
        Number,         // inside a number
        Literal,        // inside true, false or null
        Done,           // the top-level object is closed
    }

    private static readonly byte[][] Literals = ["true"u8.ToArray(), "false"u8.ToArray(), "null"u8.ToArray()];

    private Mode _mode;
    private bool _key;          // the string being read is an object key
    private byte _depth;        // containers open
    private byte _spaces;       // whitespace bytes in the current run
    private JsonStringScanner _string;
    private JsonNumberScanner _number;
    private byte _pending;      // Literal: next index
    private byte _low;          // Literal: which
    private ulong _objects;     // bit d set: container d (0 = outermost) is an object

    /// <summary>Nothing read yet.</summary>
    public static JsonGrammar Start => default;

    /// <inheritdoc />
    public readonly bool InStringText => _mode == Mode.String && _string.BetweenCharacters;

    /// <summary>The top-level object is closed: the text is complete and nothing more may follow.</summary>
    public readonly bool IsComplete => _mode == Mode.Done;

    /// <summary>Reads one more byte; false (state unchanged in meaning, to be discarded) when no JSON object text continues so.</summary>
    public bool Advance(byte b)
    {
        switch (_mode)
        {
            case Mode.String:
                switch (_string.Advance(b))
                {
                    case JsonStringScanner.Step.Continue:
                        return true;
                    case JsonStringScanner.Step.Closed:
                        if (_key) _mode = Mode.Colon;
                        else EndValue();
                        return true;
                    default:
                        return false;
                }
            case Mode.Literal:
            {
                var literal = Literals[_low];
                if (b != literal[_pending]) return false;
                if (++_pending == literal.Length) EndValue();
                return true;
            }
            case Mode.Number:
                switch (_number.Advance(b))
                {
                    case JsonNumberScanner.Step.Continue:
                        return true;
                    case JsonNumberScanner.Step.Ended:
                        // A number ends at the first byte that cannot continue it; that byte is then read as what follows
                        // the value. (Numbers only occur inside a container here, so the text is never complete at one.)
                        EndValue();
                        return Advance(b);
                    default:
                        return false;
                }
            case Mode.Done:
                return false;
        }

        // Between tokens: whitespace (not before the object: the text starts with its brace), then what the mode expects.
        if (_mode != Mode.Start && b is (byte)' ' or (byte)'\t' or (byte)'\n' or (byte)'\r')
            return ++_spaces <= MaxWhitespaceRun;
        _spaces = 0;
        switch (_mode)
        {
            case Mode.Start:
                return b == (byte)'{' && Open(isObject: true);
            case Mode.ObjectOpen:
                if (b == (byte)'}') return Close();
                return b == Quote && BeginString(key: true);
            case Mode.ObjectKey:
                return b == Quote && BeginString(key: true);
            case Mode.Colon:
                if (b != (byte)':') return false;
                _mode = Mode.Value;
                return true;
            case Mode.ArrayOpen:
                if (b == (byte)']') return Close();
                return BeginValue(b);
            case Mode.Value:
                return BeginValue(b);
            case Mode.AfterValue:
                bool inObject = InObject;
                if (b == (byte)',')
                {
                    _mode = inObject ? Mode.ObjectKey : Mode.Value;
                    return true;
                }
                return (inObject ? b == (byte)'}' : b == (byte)']') && Close();
            default:
                throw new InvalidOperationException($"JSON grammar: unknown mode {_mode}");
        }
    }

    private readonly bool InObject => (_objects >> (_depth - 1) & 1) != 0;

    private bool BeginValue(byte b)
    {
        switch (b)
        {
            case (byte)'{':
                return Open(isObject: true);
            case (byte)'[':
                return Open(isObject: false);
            case Quote:
                return BeginString(key: false);
            case (byte)'t' or (byte)'f' or (byte)'n':
                _mode = Mode.Literal;
                _low = b == (byte)'t' ? (byte)0 : b == (byte)'f' ? (byte)1 : (byte)2;
                _pending = 1;
                return true;
            default:
                if (!JsonNumberScanner.Starts(b)) return false;
                _mode = Mode.Number;
                _number = JsonNumberScanner.Begin(b, integerOnly: false);
                return true;
        }
    }

    private bool Open(bool isObject)
    {
        if (_depth >= MaxDepth) return false;
        if (isObject) _objects |= 1UL << _depth;
        else _objects &= ~(1UL << _depth);
        _depth++;
        _mode = isObject ? Mode.ObjectOpen : Mode.ArrayOpen;
        return true;
    }

    private bool Close()
    {
        _depth--;
        EndValue();
        return true;
    }

    private bool BeginString(bool key)
    {
        _mode = Mode.String;
        _key = key;
        _string = default;
        return true;
    }

    private void EndValue()
    {
        _mode = _depth == 0 ? Mode.Done : Mode.AfterValue;
        _spaces = 0;
    }
}
