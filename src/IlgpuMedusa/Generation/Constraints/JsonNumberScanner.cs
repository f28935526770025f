namespace IlgpuMedusa.Generation.Constraints;

/// <summary>
/// Reads a JSON number one byte at a time, for <see cref="JsonGrammar"/> and <see cref="JsonSchemaGrammar"/>:
/// <c>-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?</c>, or the integer part alone when only integers are allowed. A
/// number ends at the first byte that cannot continue it, which then belongs to what follows.
/// </summary>
internal struct JsonNumberScanner
{
    /// <summary>What a byte did.</summary>
    public enum Step : byte
    {
        /// <summary>No number continues so, and the number read so far is not whole (such as "-" or "1.").</summary>
        Invalid,
        /// <summary>The byte is part of the number.</summary>
        Continue,
        /// <summary>The number was whole before this byte, which is not part of it: read it as what follows.</summary>
        Ended,
    }

    private enum State : byte
    {
        Minus,          // after '-': a digit
        Zero,           // the integer part is "0": '.', 'e', or the end
        Integer,        // digits of the integer part
        Dot,            // after '.': a digit
        Fraction,       // fraction digits
        Exponent,       // after 'e': a sign or a digit
        ExponentSign,   // after the exponent's sign: a digit
        ExponentDigits, // exponent digits
    }

    private State _state;
    private bool _integerOnly;

    /// <summary>Whether a number can start with <paramref name="b"/>.</summary>
    public static bool Starts(byte b) => b == (byte)'-' || IsDigit(b);

    /// <summary>A number begun by <paramref name="first"/> (see <see cref="Starts"/>); <paramref name="integerOnly"/>: no fraction or exponent.</summary>
    public static JsonNumberScanner Begin(byte first, bool integerOnly) => new()
    {
        _state = first == (byte)'-' ? State.Minus : first == (byte)'0' ? State.Zero : State.Integer,
        _integerOnly = integerOnly,
    };

    private static bool IsDigit(byte b) => (uint)(b - '0') <= 9;

    /// <summary>Reads one more byte.</summary>
    public Step Advance(byte b)
    {
        bool digit = IsDigit(b), exponent = !_integerOnly && b is (byte)'e' or (byte)'E';
        switch (_state)
        {
            case State.Minus:
                if (!digit) return Step.Invalid;
                _state = b == (byte)'0' ? State.Zero : State.Integer;
                return Step.Continue;
            case State.Zero or State.Integer:
                if (digit && _state == State.Integer) return Step.Continue;
                if (!_integerOnly && b == (byte)'.') _state = State.Dot;
                else if (exponent) _state = State.Exponent;
                else return Step.Ended;
                return Step.Continue;
            case State.Dot:
                if (!digit) return Step.Invalid;
                _state = State.Fraction;
                return Step.Continue;
            case State.Fraction:
                if (digit) return Step.Continue;
                if (!exponent) return Step.Ended;
                _state = State.Exponent;
                return Step.Continue;
            case State.Exponent:
                if (b is (byte)'+' or (byte)'-') _state = State.ExponentSign;
                else if (digit) _state = State.ExponentDigits;
                else return Step.Invalid;
                return Step.Continue;
            case State.ExponentSign:
                if (!digit) return Step.Invalid;
                _state = State.ExponentDigits;
                return Step.Continue;
            default:
                return digit ? Step.Continue : Step.Ended;
        }
    }
}
