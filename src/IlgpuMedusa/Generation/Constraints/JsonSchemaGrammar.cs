using System.Runtime.CompilerServices;

namespace IlgpuMedusa.Generation.Constraints;

/// <summary>
/// A byte-at-a-time recognizer of the JSON texts a <see cref="CompiledJsonSchema"/> allows: an object with exactly the
/// schema's properties, in its order, each value of its schema, recursively. Every state it accepts can still be
/// completed. Whitespace: none before the top-level brace or after the closing one, at most
/// <see cref="MaxWhitespaceRun"/> byte in a row between tokens; strings and numbers as JSON has them
/// (strings well-formed UTF-8, no <c>\u</c> escape of a surrogate). Values of an <c>enum</c> or <c>const</c> are
/// written exactly as the schema writes them, compactly, non-ASCII characters unescaped.
/// </summary>
internal struct JsonSchemaGrammar : IByteGrammar
{
    /// <summary>Most objects and arrays open at once (the schema's nesting is checked against it when compiled).</summary>
    public const int MaxFrames = 16;

    /// <summary>
    /// Most whitespace bytes in a row between tokens: one, so that <c>{"a": 1, "b": [2, 3]}</c> can be written but a model
    /// cannot spend its tokens on indentation (structured output is read by programs).
    /// </summary>
    public const int MaxWhitespaceRun = 1;

    private const byte Quote = (byte)'"';

    private enum Phase : byte
    {
        // Objects.
        BeforeKey,   // after '{' or ',': whitespace, the next key's opening quote (or '}' for an object without properties)
        InKey,       // inside the key: its bytes, exactly
        AfterKey,    // whitespace, ':'
        BeforeValue, // whitespace, the property's value
        InValue,     // the value is being read (a scalar, or a frame above)
        AfterValue,  // whitespace, ',' (more properties) or '}' (the last one)
        // Arrays.
        Open,        // after '[': whitespace, ']' (when no item is needed) or the first item
        BeforeItem,  // after ',': whitespace, an item
        InItem,      // an item is being read
        AfterItem,   // whitespace, ',' (room for more) or ']' (enough items)
    }

    private enum Scalar : byte
    {
        None,           // between values: the top frame's phase says what comes
        String,
        Number,
        Literal,        // one of a node's literals
    }

    private struct Frame
    {
        public int Index;   // objects: the property being read; arrays: items completed
        public ushort Node;
        public Phase Phase;
    }

    [InlineArray(MaxFrames)]
    private struct Frames
    {
        private Frame _element;
    }

    private readonly CompiledJsonSchema _schema;
    private Frames _frames;
    private byte _depth;
    private bool _done;
    private Scalar _scalar;
    private JsonNumberScanner _number;
    private byte _spaces;
    private JsonStringScanner _string;
    private ushort _literalNode, _from, _to, _position; // literals: candidates [_from, _to) of the node, bytes matched

    public JsonSchemaGrammar(CompiledJsonSchema schema) => _schema = schema;

    /// <inheritdoc />
    public readonly bool IsComplete => _done;

    /// <inheritdoc />
    public readonly bool InStringText => _scalar == Scalar.String && _string.BetweenCharacters;

    /// <inheritdoc />
    public bool Advance(byte b)
    {
        if (_done || _schema is null) return false;
        switch (_scalar)
        {
            case Scalar.String:
                switch (_string.Advance(b))
                {
                    case JsonStringScanner.Step.Continue:
                        return true;
                    case JsonStringScanner.Step.Closed:
                        EndValue();
                        return true;
                    default:
                        return false;
                }
            case Scalar.Literal:
                return InLiteral(b);
            case Scalar.Number:
                return _number.Advance(b) switch
                {
                    JsonNumberScanner.Step.Continue => true,
                    JsonNumberScanner.Step.Ended => EndScalar(b),
                    _ => false,
                };
        }

        if (_depth == 0) return BeginValue(_schema.Root, b); // the top-level object: no whitespace before it
        ref var frame = ref _frames[_depth - 1];
        if (frame.Phase is not (Phase.InKey or Phase.InValue or Phase.InItem) && b is (byte)' ' or (byte)'\t' or (byte)'\n' or (byte)'\r')
            return ++_spaces <= MaxWhitespaceRun;
        _spaces = 0;
        var node = _schema.Nodes[frame.Node];
        switch (frame.Phase)
        {
            case Phase.BeforeKey:
                if (node.Keys.Length == 0) return b == (byte)'}' && Close();
                if (b != Quote) return false;
                frame.Phase = Phase.InKey;
                _position = 1;
                return true;
            case Phase.InKey:
            {
                var key = node.Keys[frame.Index];
                if (b != key[_position]) return false;
                if (++_position == key.Length) frame.Phase = Phase.AfterKey;
                return true;
            }
            case Phase.AfterKey:
                if (b != (byte)':') return false;
                frame.Phase = Phase.BeforeValue;
                return true;
            case Phase.BeforeValue:
                frame.Phase = Phase.InValue;
                return BeginValue(node.Properties[frame.Index], b);
            case Phase.AfterValue:
                if (frame.Index + 1 < node.Keys.Length)
                {
                    if (b != (byte)',') return false;
                    frame.Index++;
                    frame.Phase = Phase.BeforeKey;
                    return true;
                }
                return b == (byte)'}' && Close();
            case Phase.Open:
                if (b == (byte)']' && node.MinItems == 0) return Close();
                if (node.MaxItems == 0) return false;
                frame.Phase = Phase.InItem;
                return BeginValue(node.Items!, b);
            case Phase.BeforeItem:
                frame.Phase = Phase.InItem;
                return BeginValue(node.Items!, b);
            case Phase.AfterItem:
                if (b == (byte)',' && frame.Index < node.MaxItems)
                {
                    frame.Phase = Phase.BeforeItem;
                    return true;
                }
                return b == (byte)']' && frame.Index >= node.MinItems && Close();
            default:
                return false; // InValue / InItem with no scalar: a frame above is reading it
        }
    }

    /// <summary>Starts a value of <paramref name="node"/> with its first byte.</summary>
    private bool BeginValue(SchemaNode node, byte b)
    {
        switch (node.Kind)
        {
            case SchemaKind.Object or SchemaKind.Discriminated:
                return b == (byte)'{' && Push(node, Phase.BeforeKey);
            case SchemaKind.Array:
                return b == (byte)'[' && Push(node, Phase.Open);
            case SchemaKind.String:
                if (b != Quote) return false;
                _scalar = Scalar.String;
                _string = default;
                return true;
            case SchemaKind.Number or SchemaKind.Integer:
                if (!JsonNumberScanner.Starts(b)) return false;
                _scalar = Scalar.Number;
                _number = JsonNumberScanner.Begin(b, integerOnly: node.Kind == SchemaKind.Integer);
                return true;
            case SchemaKind.Literals:
            {
                var literals = node.Literals;
                int from = 0;
                while (from < literals.Length && literals[from][0] < b) from++;
                int to = from;
                while (to < literals.Length && literals[to][0] == b) to++;
                if (from == to) return false;
                _scalar = Scalar.Literal;
                _literalNode = (ushort)node.Id;
                _from = (ushort)from;
                _to = (ushort)to;
                _position = 1;
                return true;
            }
            case SchemaKind.Union:
                return node.ByFirstByte[b] is { } alternative && BeginValue(alternative, b);
            default:
                return false;
        }
    }

    private bool Push(SchemaNode node, Phase phase)
    {
        if (_depth >= MaxFrames) return false; // the compiler keeps schemas shallower than this
        _frames[_depth++] = new Frame { Node = (ushort)node.Id, Index = 0, Phase = phase };
        return true;
    }

    private bool Close()
    {
        _depth--;
        EndValue();
        return true;
    }

    /// <summary>A value has been read whole: its parent goes on (or the text is complete).</summary>
    private void EndValue()
    {
        _scalar = Scalar.None;
        _spaces = 0;
        if (_depth == 0)
        {
            _done = true;
            return;
        }
        ref var parent = ref _frames[_depth - 1];
        if (parent.Phase == Phase.InValue)
        {
            // A discriminator's value is known: the object goes on as the one it names (its first property read).
            if (_schema.Nodes[parent.Node] is { Kind: SchemaKind.Discriminated } union) parent.Node = (ushort)union.Variants[_from].Id;
            parent.Phase = Phase.AfterValue;
        }
        else
        {
            parent.Index++;
            parent.Phase = Phase.AfterItem;
        }
    }

    // A number (or a literal such as 1 among 1 and 12) ends at the first byte that cannot continue it; that byte is then
    // read as what follows the value. The top level is an object, so such a value always has a parent.
    private bool EndScalar(byte b)
    {
        EndValue();
        return Advance(b);
    }

    private bool InLiteral(byte b)
    {
        var literals = _schema.Nodes[_literalNode].Literals;
        int from = _from, to = _to, position = _position;
        // Candidates share their first `position` bytes and are sorted: those ending here come first, then the byte runs.
        bool complete = literals[from].Length == position;
        int next = complete ? from + 1 : from;
        while (next < to && literals[next][position] < b) next++;
        int end = next;
        while (end < to && literals[end][position] == b) end++;
        if (next < end)
        {
            _from = (ushort)next;
            _to = (ushort)end;
            _position++;
            return true;
        }
        return complete && EndScalar(b);
    }
}
