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
    /// when its row has too few allowed tokens or its parent's token is not allowed itself.
    /// </summary>
    void ConstrainGuesses(ReadOnlySpan<int> parents, ReadOnlySpan<int> depths, ReadOnlySpan<int> ranks, Span<int> tokens, ReadOnlySpan<int> topK, int width);
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
        if (!_vocabulary.TryAppend(ref _state, token))
            throw new InvalidOperationException($"constrained generation: token {token} does not continue the text generated so far (a token was chosen without the constraint).");
    }

    /// <inheritdoc />
    public bool Allows(int token, ReadOnlySpan<int> pending) => _vocabulary.Allows(After(pending), token);

    /// <inheritdoc />
    public void Mask(Span<float> logits, ReadOnlySpan<int> pending) => _vocabulary.Mask(After(pending), logits, _scratch);

    private TGrammar[] _nodes = [];
    private bool[] _reachable = [];

    /// <inheritdoc />
    public void ConstrainGuesses(ReadOnlySpan<int> parents, ReadOnlySpan<int> depths, ReadOnlySpan<int> ranks, Span<int> tokens, ReadOnlySpan<int> topK, int width)
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
            for (int k = 0, allowed = 0; k < row.Length; k++)
            {
                if (!_vocabulary.Allows(state, row[k])) continue;
                if (allowed++ < ranks[node]) continue;
                tokens[node] = row[k];
                break;
            }
            if (_vocabulary.TryAppend(ref state, tokens[node]))
            {
                _nodes[node] = state;
                _reachable[node] = true;
            }
        }
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
