namespace IlgpuMedusa.Generation.Constraints;

/// <summary>
/// JSON mode for one request (<see cref="ResponseFormat.JsonObject"/>): the generated text so far as a
/// <see cref="JsonGrammar"/> state, and the tokens that may come next. A Medusa step asks about tokens after those it
/// has chosen earlier in the same step (the pending ones), exactly as plain decoding would after accepting them, so the
/// constrained text is the same with or without Medusa.
/// </summary>
internal sealed class JsonConstraint
{
    private readonly ConstraintVocabulary _vocabulary;
    private readonly JsonGrammar[] _scratch;
    private JsonGrammar _state = JsonGrammar.Start;

    public JsonConstraint(ConstraintVocabulary vocabulary)
    {
        _vocabulary = vocabulary;
        _scratch = new JsonGrammar[vocabulary.LongestToken + 1];
    }

    /// <summary>Whether the generated text is a complete JSON object (only an end token may follow).</summary>
    public bool IsComplete => _state.IsComplete;

    /// <summary>Records a generated token; throws when the constraint did not allow it (a decoder that skipped the mask).</summary>
    public void Append(int token)
    {
        if (!_vocabulary.TryAppend(ref _state, token))
            throw new InvalidOperationException($"JSON mode: token {token} does not continue the JSON text generated so far (a token was chosen without the constraint).");
    }

    /// <summary>Whether <paramref name="token"/> may come after the text so far plus <paramref name="pending"/>.</summary>
    public bool Allows(int token, ReadOnlySpan<int> pending) => _vocabulary.Allows(After(pending), token);

    /// <summary>Sets the logit of every token that may not come after the text so far plus <paramref name="pending"/> to −∞.</summary>
    public void Mask(Span<float> logits, ReadOnlySpan<int> pending) => _vocabulary.Mask(After(pending), logits, _scratch);

    private JsonGrammar After(ReadOnlySpan<int> pending)
    {
        var state = _state;
        foreach (int token in pending)
            if (!_vocabulary.TryAppend(ref state, token))
                throw new InvalidOperationException($"JSON mode: pending token {token} does not continue the JSON text (a token was chosen without the constraint).");
        return state;
    }
}
