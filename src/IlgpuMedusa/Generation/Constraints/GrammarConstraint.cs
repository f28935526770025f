namespace IlgpuMedusa.Generation.Constraints;

/// <summary>The tokens a request's text may continue with: what <see cref="LogitProcessor"/> asks a constraint.</summary>
internal interface ITokenConstraint
{
    /// <summary>Whether the generated text is complete (only an end token may follow).</summary>
    bool IsComplete { get; }

    /// <summary>Records a generated token; throws when the constraint did not allow it (a decoder that skipped the mask).</summary>
    void Append(int token);

    /// <summary>Whether <paramref name="token"/> may come after the text so far plus <paramref name="pending"/>.</summary>
    bool Allows(int token, ReadOnlySpan<int> pending);

    /// <summary>Sets the logit of every token that may not come after the text so far plus <paramref name="pending"/> to −∞.</summary>
    void Mask(Span<float> logits, ReadOnlySpan<int> pending);

    /// <summary>
    /// Guesses for a Medusa tree under the constraint: node n (n ≥ 1, parents before children, node 0 the token last
    /// appended) takes the <paramref name="ranks"/>[n]-th of the tokens in its head's row of <paramref name="topK"/> (row
    /// <paramref name="depths"/>[n] − 1, <paramref name="width"/> wide, best first) that the constraint allows after its
    /// path, instead of the <paramref name="ranks"/>[n]-th of them all; a node keeps its guess in <paramref name="tokens"/>
    /// when its row has too few allowed tokens or its parent's token is not allowed itself. <paramref name="allowed"/>
    /// (when given, one entry per node) says which nodes' paths the constraint allows: the others can never be accepted.
    /// </summary>
    void ConstrainGuesses(ReadOnlySpan<int> parents, ReadOnlySpan<int> depths, ReadOnlySpan<int> ranks, Span<int> tokens, ReadOnlySpan<int> topK, int width,
        Span<bool> allowed = default);

    /// <summary>
    /// The text the constraint forces after the text so far plus <paramref name="pending"/> (a schema's next key, the rest
    /// of an enum value), spelled in tokens into <paramref name="tokens"/> (at most its length); returns how many. Where the
    /// grammar allows optional whitespace the text takes what the generated text did in the same place before (a space
    /// after ',' and ':', none after '{' and '[' until then). A guess for Medusa: the model may spell it otherwise.
    /// </summary>
    int ForcedTokens(ReadOnlySpan<int> pending, Span<int> tokens);
}

/// <summary>
/// A grammar constraint for one request (JSON mode: <see cref="JsonGrammar"/>; a JSON schema: <see cref="JsonSchemaGrammar"/>):
/// the generated text so far as a grammar state, and the tokens that may come next. A Medusa step asks about tokens
/// after those it has chosen earlier in the same step (the pending ones), exactly as plain decoding would after
/// accepting them, so the constrained text is the same with or without Medusa.
/// </summary>
internal sealed class GrammarConstraint<TGrammar> : ITokenConstraint
    where TGrammar : struct, IByteGrammar
{
    private readonly ConstraintVocabulary _vocabulary;
    private readonly TGrammar[] _scratch;
    private TGrammar _state;
    private Spacing _spacing = Spacing.Start;
    private readonly int[] _habit = Spacing.Defaults(); // [previous class · Classes + next class]: the whitespace byte written between them (−1: none)
    private readonly int[] _pendingHabit = new int[Spacing.Classes * Spacing.Classes]; // the habit with pending tokens read too

    /// <summary>Most bytes of forced text read at once.</summary>
    private const int MaxForcedBytes = 64;

    public GrammarConstraint(ConstraintVocabulary vocabulary, TGrammar start)
    {
        _vocabulary = vocabulary;
        _scratch = new TGrammar[vocabulary.LongestToken + 1];
        _state = start;
    }

    /// <inheritdoc />
    public bool IsComplete => _state.IsComplete;

    /// <inheritdoc />
    public void Append(int token)
    {
        if (!_vocabulary.Allows(_state, token))
            throw new InvalidOperationException($"constrained generation: token {token} does not continue the text generated so far (a token was chosen without the constraint).");
        Follow(ref _state, ref _spacing, token, _habit);
    }

    /// <summary>
    /// Reads an allowed token's bytes into <paramref name="state"/> one at a time, keeping <paramref name="spacing"/> and,
    /// when <paramref name="habit"/> is given, recording in it what whitespace the text put between two bytes outside strings.
    /// </summary>
    private void Follow(ref TGrammar state, ref Spacing spacing, int token, int[]? habit)
    {
        foreach (byte b in _vocabulary.Bytes(token))
        {
            bool inString = state.InStringText;
            state.Advance(b);
            spacing = spacing.Read(b, inString, state.InStringText, habit);
        }
    }

    /// <inheritdoc />
    public int ForcedTokens(ReadOnlySpan<int> pending, Span<int> tokens)
    {
        var state = _state;
        var spacing = _spacing;
        var habit = _habit;
        if (!pending.IsEmpty)
        {
            habit = _pendingHabit;
            _habit.CopyTo(habit, 0);
        }
        foreach (int token in pending)
        {
            if (!_vocabulary.Allows(state, token))
                throw new InvalidOperationException($"constrained generation: pending token {token} does not continue the text (a token was chosen without the constraint).");
            Follow(ref state, ref spacing, token, habit);
        }
        Span<byte> text = stackalloc byte[MaxForcedBytes];
        // No more bytes than the tokens asked for can hold.
        int length = ForcedBytes(state, spacing, habit, text[..Math.Min(MaxForcedBytes, tokens.Length * _vocabulary.LongestToken)]), count = 0;
        for (int at = 0; at < length && count < tokens.Length;)
        {
            int token = _vocabulary.LongestTokenAt(text[at..length]);
            if (token < 0) break;
            tokens[count++] = token;
            at += _vocabulary.Bytes(token).Length;
        }
        return count;
    }

    /// <summary>
    /// The bytes the grammar forces from <paramref name="state"/> on: while exactly one byte other than whitespace may
    /// come, that byte, after the whitespace the text wrote before between the same two bytes (by default a space after
    /// ',' and ':', none elsewhere) when the grammar allows it and none was written since; while only one byte may come
    /// and it is whitespace (a space inside a key or an enum value), that byte. Returns the length written into
    /// <paramref name="text"/>.
    /// </summary>
    private static int ForcedBytes(TGrammar state, Spacing spacing, int[] habit, Span<byte> text)
    {
        int length = 0;
        while (length < text.Length && !state.IsComplete && !state.InStringText)
        {
            // The bytes that may come, printable ASCII first: stop at the second.
            int only = -1;
            var next = state;
            for (int i = 0; i < 256; i++)
            {
                int b = (i + ' ') & 0xFF;
                if (Spacing.IsWhitespace(b)) continue;
                var probe = state;
                if (!probe.Advance((byte)b)) continue;
                if (only >= 0)
                {
                    only = -2;
                    break;
                }
                only = b;
            }
            if (only == -1)
            {
                // Nothing but whitespace may come: forced when it is one byte (text inside a key or a value).
                foreach (byte white in " \n\t\r"u8)
                {
                    var probe = state;
                    if (!probe.Advance(white)) continue;
                    if (only >= 0)
                    {
                        only = -2;
                        break;
                    }
                    only = white;
                }
            }
            if (only < 0) break;
            int space = spacing.Space < 0 && !Spacing.IsWhitespace(only) ? spacing.Habit(only, habit) : -1;
            if (space >= 0 && next.Advance((byte)space) && next.Advance((byte)only))
            {
                if (length + 2 > text.Length) break;
                text[length++] = (byte)space;
            }
            else
            {
                next = state;
                next.Advance((byte)only);
            }
            text[length++] = (byte)only;
            spacing = spacing.Read((byte)only, false, next.InStringText, null);
            state = next;
        }
        return length;
    }

    /// <summary>
    /// Where the text stands for its whitespace habit: the class of the last byte read outside string content (−1: none
    /// yet, or inside a string) and the whitespace byte read since (−1: none).
    /// </summary>
    private readonly record struct Spacing(int Previous, int Space)
    {
        public static Spacing Start => new(-1, -1);

        /// <summary>Bytes with a class of their own; every other byte outside strings (a number's, a literal's, a key's) is class <see cref="Classes"/> − 1.</summary>
        private const string Marks = ",:{}[]\"";

        public const int Classes = 8;

        public static int Class(int b) => Marks.IndexOf((char)b) is var i and >= 0 ? i : Classes - 1;

        public static bool IsWhitespace(int b) => b is ' ' or '\n' or '\t' or '\r';

        /// <summary>The habit before any text: a space after ',' and ':' (as most JSON writers put them), no whitespace elsewhere.</summary>
        public static int[] Defaults()
        {
            var habit = new int[Classes * Classes];
            Array.Fill(habit, -1);
            for (int next = 0; next < Classes; next++)
            {
                habit[Class(',') * Classes + next] = ' ';
                habit[Class(':') * Classes + next] = ' ';
            }
            return habit;
        }

        /// <summary>The whitespace the habit puts before <paramref name="next"/> here (−1: none).</summary>
        public int Habit(int next, int[] habit) => Previous < 0 ? -1 : habit[Previous * Classes + Class(next)];

        /// <summary>After byte <paramref name="b"/>, read inside string content or not (<paramref name="before"/>, <paramref name="after"/>).</summary>
        public Spacing Read(byte b, bool before, bool after, int[]? habit)
        {
            if (!before && IsWhitespace(b)) return this with { Space = b };
            if (!before && Previous >= 0 && habit is not null) habit[Previous * Classes + Class(b)] = Space;
            return new Spacing(after ? -1 : Class(b), -1);
        }
    }

    /// <inheritdoc />
    public bool Allows(int token, ReadOnlySpan<int> pending) => _vocabulary.Allows(After(pending), token);

    /// <inheritdoc />
    public void Mask(Span<float> logits, ReadOnlySpan<int> pending) => _vocabulary.Mask(After(pending), logits, _scratch);

    private TGrammar[] _nodes = [];
    private bool[] _reachable = [];

    /// <inheritdoc />
    public void ConstrainGuesses(ReadOnlySpan<int> parents, ReadOnlySpan<int> depths, ReadOnlySpan<int> ranks, Span<int> tokens, ReadOnlySpan<int> topK, int width,
        Span<bool> allowed = default)
    {
        int n = parents.Length;
        if (_nodes.Length < n)
        {
            _nodes = new TGrammar[n];
            _reachable = new bool[n];
        }
        _nodes[0] = _state;
        _reachable[0] = true;
        for (int node = 1; node < n; node++)
        {
            int parent = parents[node];
            _reachable[node] = false;
            if (parent < 0 || parent >= node || !_reachable[parent]) continue;
            var state = _nodes[parent];
            var row = topK.Slice((depths[node] - 1) * width, width);
            for (int k = 0, seen = 0; k < row.Length; k++)
            {
                if (!_vocabulary.Allows(state, row[k])) continue;
                if (seen++ < ranks[node]) continue;
                tokens[node] = row[k];
                break;
            }
            if (_vocabulary.TryAppend(ref state, tokens[node]))
            {
                _nodes[node] = state;
                _reachable[node] = true;
            }
        }
        if (!allowed.IsEmpty) _reachable.AsSpan(0, n).CopyTo(allowed);
    }

    private TGrammar After(ReadOnlySpan<int> pending)
    {
        var state = _state;
        foreach (int token in pending)
            if (!_vocabulary.TryAppend(ref state, token))
                throw new InvalidOperationException($"constrained generation: pending token {token} does not continue the text (a token was chosen without the constraint).");
        return state;
    }
}
