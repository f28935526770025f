namespace IlgpuMedusa.Generation;

/// <summary>
/// The logit adjustments of one request, applied on the host to a row of logits before a token is chosen from it (by
/// argmax or by a draw), in this order:
/// <list type="number">
/// <item><see cref="GenerationOptions.LogitBias"/>: the bias is added to its token's logit;</item>
/// <item><see cref="GenerationOptions.RepetitionPenalty"/> r (Hugging Face's and vLLM's): every token already in the
/// prompt or the generated text has its logit divided by r when positive, multiplied by r otherwise;</item>
/// <item><see cref="GenerationOptions.FrequencyPenalty"/> f and <see cref="GenerationOptions.PresencePenalty"/> p
/// (OpenAI's): a token generated c times so far loses c · f + p (the prompt does not count);</item>
/// <item><see cref="GenerationOptions.ResponseFormat"/> JSON: every token that would not keep the text a prefix of a
/// JSON object (or, with a schema, of a JSON text the schema allows) gets −∞ (<see cref="Constraints.GrammarConstraint{TGrammar}"/>).</item>
/// </list>
/// It counts the tokens it is told were generated; a Medusa step that walks a tree passes the tokens it has accepted
/// so far in that step, so that every choice sees exactly the history plain decoding would give it.
/// </summary>
internal sealed class LogitProcessor
{
    private readonly IReadOnlyDictionary<int, float> _bias;
    private readonly float _repetition, _frequency, _presence;
    private readonly HashSet<int> _seen = [];           // prompt and generated tokens (repetition penalty)
    private readonly Dictionary<int, int> _generated = []; // generated token → count (frequency and presence)
    private readonly Dictionary<int, int> _extra = [];
    private readonly Constraints.ITokenConstraint? _constraint;

    private LogitProcessor(GenerationOptions options, ReadOnlySpan<int> prompt, Func<Constraints.ConstraintVocabulary>? vocabulary)
    {
        if (options.ResponseFormat != ResponseFormat.Text)
        {
            if (vocabulary is null) throw new ArgumentException("a response format needs the model's vocabulary.", nameof(vocabulary));
            _constraint = options.ResponseFormat == ResponseFormat.JsonSchema
                ? new Constraints.GrammarConstraint<Constraints.JsonSchemaGrammar>(vocabulary(), Constraints.CompiledJsonSchema.Compile(options.JsonSchema).Start)
                : new Constraints.GrammarConstraint<Constraints.JsonGrammar>(vocabulary(), Constraints.JsonGrammar.Start);
        }
        _bias = options.LogitBias;
        _repetition = options.RepetitionPenalty;
        _frequency = options.FrequencyPenalty;
        _presence = options.PresencePenalty;
        if (_repetition != 1f)
            foreach (int token in prompt) _seen.Add(token);
    }

    /// <summary>
    /// The processor <paramref name="options"/> ask for, or null when they change no logit. <paramref name="vocabulary"/>
    /// gives the token bytes JSON mode needs (called only then).
    /// </summary>
    public static LogitProcessor? For(GenerationOptions options, ReadOnlySpan<int> prompt, Func<Constraints.ConstraintVocabulary>? vocabulary = null) =>
        options.ChangesLogits ? new LogitProcessor(options, prompt, vocabulary) : null;

    /// <summary>
    /// True when the only adjustment is a constraint (JSON mode): a row's argmax is then its adjusted argmax whenever the
    /// constraint allows it (<see cref="Allows"/>), and the row need not be read.
    /// </summary>
    public bool OnlyConstrains => _constraint is not null && _bias.Count == 0 && _repetition == 1f && _frequency == 0f && _presence == 0f;

    /// <summary>Whether a constraint (JSON mode, a JSON schema) decides which tokens may come.</summary>
    public bool Constrains => _constraint is not null;

    /// <summary>Medusa: the tree's guesses under the constraint (<see cref="Constraints.ITokenConstraint.ConstrainGuesses"/>); nothing without one.</summary>
    public void ConstrainGuesses(ReadOnlySpan<int> parents, ReadOnlySpan<int> depths, ReadOnlySpan<int> ranks, Span<int> tokens, ReadOnlySpan<int> topK, int width,
        Span<bool> allowed = default) =>
        _constraint?.ConstrainGuesses(parents, depths, ranks, tokens, topK, width, allowed);

    /// <summary>Medusa: the text a constraint forces after the history plus <paramref name="pending"/>, in tokens (<see cref="Constraints.ITokenConstraint.ForcedTokens"/>); 0 without one.</summary>
    public int ForcedTokens(ReadOnlySpan<int> pending, Span<int> tokens) => _constraint?.ForcedTokens(pending, tokens) ?? 0;

    /// <summary>Whether a constraint lets <paramref name="token"/> follow the history plus <paramref name="pending"/> (true without one).</summary>
    public bool Allows(int token, ReadOnlySpan<int> pending) => _constraint?.Allows(token, pending) ?? true;

    /// <summary>Records a generated token.</summary>
    public void Append(int token)
    {
        _constraint?.Append(token);
        _seen.Add(token);
        _generated[token] = _generated.GetValueOrDefault(token) + 1;
    }

    /// <summary>
    /// Adjusts <paramref name="logits"/> in place for the history so far plus <paramref name="pending"/>: tokens chosen in
    /// the current step that are not yet recorded.
    /// </summary>
    public void Apply(Span<float> logits, ReadOnlySpan<int> pending)
    {
        foreach (var (token, bias) in _bias) logits[token] += bias;
        _extra.Clear();
        foreach (int token in pending) _extra[token] = _extra.GetValueOrDefault(token) + 1;
        if (_repetition != 1f)
        {
            foreach (int token in _seen) Repeat(logits, token);
            foreach (int token in _extra.Keys)
                if (!_seen.Contains(token)) Repeat(logits, token);
        }
        if (_frequency != 0f || _presence != 0f)
        {
            foreach (var (token, count) in _generated) logits[token] -= (count + _extra.GetValueOrDefault(token)) * _frequency + _presence;
            foreach (var (token, count) in _extra)
                if (!_generated.ContainsKey(token)) logits[token] -= count * _frequency + _presence;
        }
        _constraint?.Mask(logits, pending);
    }

    private void Repeat(Span<float> logits, int token) =>
        logits[token] = logits[token] > 0 ? logits[token] / _repetition : logits[token] * _repetition;
}
