using IlgpuMedusa.Tokenization;

namespace IlgpuMedusa.Generation.Constraints;

/// <summary>
/// The vocabulary as a constraint sees it: the bytes each token adds to the text (<see cref="ITextTokenizer.TokenBytes"/>),
/// the end tokens, and every byte-carrying token sorted by its bytes with the length of the prefix it shares with the
/// one before, so that <see cref="Mask"/> runs the grammar over a shared prefix once and rules out, at the first bad
/// byte, every token that shares it. Built once per engine (tens of milliseconds for 32,000 tokens) and read-only after.
/// </summary>
internal sealed class ConstraintVocabulary
{
    private readonly byte[] _bytes;       // every token's bytes, concatenated
    private readonly int[] _offset;       // (V + 1) token id → start in _bytes
    private readonly int[] _order;        // ids with at least one byte, sorted by their bytes
    private readonly int[] _shared;       // _shared[i]: length of the prefix _order[i] shares with _order[i − 1]
    private readonly bool[] _end;         // (V) end tokens
    private readonly int[] _special;      // ids with bytes that are not string text (JsonStringScanner.IsPlainText), ascending

    private ConstraintVocabulary(byte[] bytes, int[] offset, int[] order, int[] shared, bool[] end, int[] special, int longest)
    {
        _special = special;
        _bytes = bytes;
        _offset = offset;
        _order = order;
        _shared = shared;
        _end = end;
        LongestToken = longest;
    }

    /// <summary>Tokens (the model's vocabulary, which may have more ids than the tokenizer: those carry no text and are never allowed).</summary>
    public int Size => _end.Length;

    /// <summary>Bytes of the longest token.</summary>
    public int LongestToken { get; }

    /// <summary>
    /// Reads every token's bytes from <paramref name="tokenizer"/>; <paramref name="vocabularySize"/> is the model's (the
    /// logits' length) and <paramref name="endTokens"/> the ids that end generation.
    /// </summary>
    public static ConstraintVocabulary Build(ITextTokenizer tokenizer, int vocabularySize, IEnumerable<int> endTokens)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(vocabularySize);
        var end = new bool[vocabularySize];
        bool anyEnd = false;
        foreach (int id in endTokens)
            if ((uint)id < (uint)vocabularySize) anyEnd = end[id] = true;
        if (!anyEnd)
            throw new InvalidOperationException("JSON mode needs an end token in the vocabulary (eos_token_id) to end the text once the object is closed; the model has none.");
        var offset = new int[vocabularySize + 1];
        var pieces = new byte[vocabularySize][];
        int total = 0, longest = 0, carrying = 0;
        int known = Math.Min(vocabularySize, tokenizer.VocabularySize);
        for (int id = 0; id < vocabularySize; id++)
        {
            var piece = id < known && !end[id] ? tokenizer.TokenBytes(id) : [];
            pieces[id] = piece;
            offset[id] = total;
            total += piece.Length;
            longest = Math.Max(longest, piece.Length);
            if (piece.Length > 0) carrying++;
        }
        offset[vocabularySize] = total;
        var bytes = new byte[total];
        for (int id = 0; id < vocabularySize; id++) pieces[id].CopyTo(bytes, offset[id]);

        var order = new int[carrying];
        for (int id = 0, n = 0; id < vocabularySize; id++)
            if (pieces[id].Length > 0) order[n++] = id;
        Array.Sort(order, (a, b) => pieces[a].AsSpan().SequenceCompareTo(pieces[b]) is var c && c != 0 ? c : a.CompareTo(b));
        var shared = new int[carrying];
        for (int i = 1; i < carrying; i++)
            shared[i] = pieces[order[i]].AsSpan().CommonPrefixLength(pieces[order[i - 1]]);
        var special = new List<int>();
        for (int id = 0; id < vocabularySize; id++)
            if (pieces[id].Length > 0 && !JsonStringScanner.IsPlainText(pieces[id])) special.Add(id);
        return new ConstraintVocabulary(bytes, offset, order, shared, end, [.. special], longest);
    }

    /// <summary>The bytes of <paramref name="token"/> (empty for end tokens and tokens that carry no text).</summary>
    public ReadOnlySpan<byte> Bytes(int token) => _bytes.AsSpan(_offset[token], _offset[token + 1] - _offset[token]);

    /// <summary>
    /// The token whose bytes are the longest prefix of <paramref name="text"/> (−1 when no token starts it); of tokens with
    /// the same bytes the one with the highest id, so that a word piece wins over its byte-fallback token (SentencePiece
    /// vocabularies list those first). How <see cref="ITokenConstraint.ForcedTokens"/> spells forced text.
    /// </summary>
    public int LongestTokenAt(ReadOnlySpan<byte> text)
    {
        for (int length = Math.Min(text.Length, LongestToken); length > 0; length--)
        {
            var key = text[..length];
            int lo = 0, hi = _order.Length; // the first token whose bytes are greater than key
            while (lo < hi)
            {
                int mid = (lo + hi) >>> 1;
                if (Bytes(_order[mid]).SequenceCompareTo(key) <= 0) lo = mid + 1;
                else hi = mid;
            }
            if (lo > 0 && Bytes(_order[lo - 1]).SequenceEqual(key)) return _order[lo - 1];
        }
        return -1;
    }

    /// <summary>Whether <paramref name="token"/> ends generation.</summary>
    public bool IsEnd(int token) => _end[token];

    /// <summary>
    /// Whether <paramref name="token"/> may follow the text <paramref name="state"/> has read: an end token when the text
    /// is complete, another token when each of its bytes continues the text; a token that adds no text never.
    /// </summary>
    public bool Allows<TGrammar>(in TGrammar state, int token)
        where TGrammar : struct, IByteGrammar
    {
        var copy = state;
        return TryAppend(ref copy, token);
    }

    /// <summary>Reads <paramref name="token"/> into <paramref name="state"/>; false (the state unchanged) when <see cref="Allows"/> would say no.</summary>
    public bool TryAppend<TGrammar>(ref TGrammar state, int token)
        where TGrammar : struct, IByteGrammar
    {
        if ((uint)token >= (uint)_end.Length) return false;
        if (_end[token]) return state.IsComplete;
        var piece = Bytes(token);
        if (piece.IsEmpty) return false;
        var s = state; // one walk: the state changes only when every byte is allowed
        foreach (byte b in piece)
            if (!s.Advance(b)) return false;
        state = s;
        return true;
    }

    /// <summary>
    /// Sets every logit of a token <see cref="Allows"/> rules out to −∞ (<paramref name="logits"/> has <see cref="Size"/>
    /// entries); returns how many tokens stay allowed. <paramref name="scratch"/> holds at least <see cref="LongestToken"/>
    /// + 1 states.
    /// </summary>
    public int Mask<TGrammar>(in TGrammar state, Span<float> logits, Span<TGrammar> scratch)
        where TGrammar : struct, IByteGrammar
    {
        if (logits.Length != _end.Length)
            throw new ArgumentException($"the logits row has {logits.Length} entries but the vocabulary {_end.Length}", nameof(logits));
        if (scratch.Length <= LongestToken)
            throw new ArgumentException($"the scratch holds {scratch.Length} states, {LongestToken + 1} are needed", nameof(scratch));
        // Tokens that carry no text: an end token only when the text is complete; every other one never.
        int allowed = 0;
        bool complete = state.IsComplete;
        for (int id = 0; id < _end.Length; id++)
        {
            if (_offset[id + 1] != _offset[id]) continue;
            if (_end[id] && complete) allowed++;
            else logits[id] = float.NegativeInfinity;
        }
        if (state.InStringText)
        {
            // Inside a string every token of plain string text is allowed as it is: only the others are read.
            allowed += _order.Length - _special.Length;
            foreach (int id in _special)
            {
                if (Allows(state, id)) allowed++;
                else logits[id] = float.NegativeInfinity;
            }
            return allowed;
        }
        // The others in byte order: scratch[k] is the state after the first k bytes of the token before (valid up to
        // `known`); when that token failed at byte `failed`, each next one sharing that byte fails too.
        scratch[0] = state;
        int known = 0, failed = int.MaxValue;
        for (int i = 0; i < _order.Length; i++)
        {
            int id = _order[i];
            int shared = _shared[i];
            if (shared > failed)
            {
                logits[id] = float.NegativeInfinity;
                continue;
            }
            failed = int.MaxValue;
            var piece = Bytes(id);
            int k = Math.Min(shared, known);
            for (; k < piece.Length; k++)
            {
                var s = scratch[k];
                if (!s.Advance(piece[k])) break;
                scratch[k + 1] = s;
            }
            known = k;
            if (k == piece.Length) allowed++;
            else
            {
                failed = k;
                logits[id] = float.NegativeInfinity;
            }
        }
        return allowed;
    }
}
