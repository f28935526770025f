namespace IlgpuMedusa.Generation;

/// <summary>Options of one generation request. Defaults live here and nowhere else.</summary>
public sealed record GenerationOptions
{
    /// <summary>
    /// Most tokens to generate; null means until an end token or the end of the model's context. 0 runs the prompt only:
    /// nothing is generated, its KV goes to the prefix cache (a shared system prompt made ready ahead of its requests)
    /// and, with <see cref="PromptLogprobs"/>, its tokens are scored; such a prompt may fill the whole context.
    /// </summary>
    public int? MaxTokens { get; init; } = 256;

    /// <summary>How tokens are chosen.</summary>
    public Sampling Sampling { get; init; } = Sampling.Greedy;

    /// <summary>Seed of the sampler's random stream (ignored by greedy sampling).</summary>
    public ulong Seed { get; init; } = 42;

    /// <summary>Generation stops after text containing any of these strings (the stop text is not returned).</summary>
    public IReadOnlyList<string> StopSequences { get; init; } = [];

    /// <summary>Whether the prompt is preceded by BOS (the usual Llama convention).</summary>
    public bool AddBos { get; init; } = true;

    /// <summary>Decode with the engine's Medusa heads when it has them (false: one token per forward).</summary>
    public bool UseMedusa { get; init; } = true;

    /// <summary>Medusa tree: a preset name or a JSON file of paths (null: the engine's <see cref="InferenceEngine.DefaultTree"/>).</summary>
    public string? Tree { get; init; }

    /// <summary>How Medusa candidates are accepted.</summary>
    public Medusa.Acceptance Acceptance { get; init; } = Medusa.Acceptance.Greedy;

    /// <summary>
    /// OpenAI's frequency penalty, from −2 to 2: a token's logit loses this much for every time it was generated so far
    /// (the prompt does not count). 0 changes nothing.
    /// </summary>
    public float FrequencyPenalty { get; init; }

    /// <summary>OpenAI's presence penalty, from −2 to 2: a token's logit loses this much once it has been generated. 0 changes nothing.</summary>
    public float PresencePenalty { get; init; }

    /// <summary>
    /// Hugging Face's and vLLM's repetition penalty, above 0: the logit of every token already in the prompt or the
    /// generated text is divided by it when positive, multiplied by it otherwise. 1 changes nothing; 1.1 to 1.3 is usual.
    /// </summary>
    public float RepetitionPenalty { get; init; } = 1f;

    /// <summary>Token id → a bias from −100 to 100 added to that token's logit (−100 in effect bans it, 100 forces it).</summary>
    public IReadOnlyDictionary<int, float> LogitBias { get; init; } = System.Collections.ObjectModel.ReadOnlyDictionary<int, float>.Empty;

    /// <summary>
    /// What the text must be: <see cref="Generation.ResponseFormat.Text"/> (anything),
    /// <see cref="Generation.ResponseFormat.JsonObject"/> (JSON mode: one JSON object, see there) or
    /// <see cref="Generation.ResponseFormat.JsonSchema"/> (an object following <see cref="JsonSchema"/>).
    /// </summary>
    public ResponseFormat ResponseFormat { get; init; } = ResponseFormat.Text;

    /// <summary>
    /// The JSON schema (its text, at most <see cref="MaxJsonSchemaBytes"/> bytes) the output follows with
    /// <see cref="Generation.ResponseFormat.JsonSchema"/>; null otherwise.
    /// </summary>
    public string? JsonSchema { get; init; }

    /// <summary>Most bytes of <see cref="JsonSchema"/>.</summary>
    public const int MaxJsonSchemaBytes = 256 * 1024;

    /// <summary>
    /// Reads a JSON schema file (UTF-8, at most <see cref="MaxJsonSchemaBytes"/>; at most one byte more is read, whatever
    /// the file says its length is) for <see cref="JsonSchema"/>; throws <see cref="ArgumentException"/> naming the file.
    /// </summary>
    public static string ReadJsonSchemaFile(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read);
            var buffer = new byte[MaxJsonSchemaBytes + 1];
            int read = 0, n;
            while (read < buffer.Length && (n = stream.Read(buffer, read, buffer.Length - read)) > 0) read += n;
            if (read > MaxJsonSchemaBytes)
                throw new ArgumentException($"{path} has more than {MaxJsonSchemaBytes} bytes, the most a schema may have.", nameof(path));
            return new System.Text.UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true).GetString(buffer, 0, read).TrimStart('\uFEFF');
        }
        catch (System.Text.DecoderFallbackException e)
        {
            throw new ArgumentException($"{path} is not UTF-8 text.", nameof(path), e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"cannot read {path}: {e.Message}", nameof(path), e);
        }
    }

    /// <summary>
    /// Whether the penalties, a logit bias or JSON mode change the logits. Tokens are then chosen on the host from adjusted
    /// rows, for greedy decoding too, and Medusa walks its tree choosing each token as plain decoding would (so the output
    /// is the same with or without Medusa). Log-probabilities stay those of the unadjusted distribution. Typical acceptance
    /// judges guesses by the unadjusted distribution: a request that would verify Medusa trees with it is refused.
    /// </summary>
    public bool ChangesLogits => FrequencyPenalty != 0 || PresencePenalty != 0 || RepetitionPenalty != 1f || LogitBias.Count > 0 ||
        ResponseFormat != ResponseFormat.Text;

    /// <summary>Most alternatives <see cref="Logprobs"/> may ask for.</summary>
    public const int MaxTopLogprobs = 20;

    /// <summary>
    /// null: no log-probabilities. n (0..<see cref="MaxTopLogprobs"/>): every generated token comes with its
    /// log-probability and the n most likely tokens at its position (<see cref="GeneratedPiece.Logprobs"/>). The
    /// distribution is the base model's at temperature 1 (see <see cref="TokenLogprob"/>); Medusa decoding gives the same
    /// values as one token per step. Costs a logits row per generated token on the host.
    /// </summary>
    public int? Logprobs { get; init; }

    /// <summary>
    /// Scores the prompt too: <see cref="GenerationStats.PromptLogprobs"/> gets every prompt token's log-probability
    /// given the tokens before it (none for the first), with <see cref="Logprobs"/> alternatives (0 when null). The prefill
    /// then computes logits for every prompt row, not only the last. What evaluation harnesses use to score a text.
    /// </summary>
    public bool PromptLogprobs { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> naming the bad option.</summary>
    public GenerationOptions Validate()
    {
        if (MaxTokens is < 0)
            throw new ArgumentOutOfRangeException(nameof(MaxTokens), MaxTokens, "MaxTokens (--max-tokens) must be a number of tokens (0: run the prompt only).");
        ArgumentNullException.ThrowIfNull(Sampling, nameof(Sampling));
        ArgumentNullException.ThrowIfNull(Acceptance, nameof(Acceptance));
        if (Tree is not null && string.IsNullOrWhiteSpace(Tree))
            throw new ArgumentException("Tree (--tree) must name a preset or a JSON file.", nameof(Tree));
        if (Tree is not null && !Medusa.TreePresets.IsKnown(Tree) && !Tree.EndsWith(".json", StringComparison.OrdinalIgnoreCase) && !File.Exists(Tree))
            throw new ArgumentException(
                $"Tree (--tree): unknown tree '{Tree}'; {Medusa.TreePresets.Choices}; or give a JSON file of paths.", nameof(Tree));
        if (!(FrequencyPenalty >= -2 && FrequencyPenalty <= 2))
            throw new ArgumentOutOfRangeException(nameof(FrequencyPenalty), FrequencyPenalty, "FrequencyPenalty (--frequency-penalty) must be from -2 to 2.");
        if (!(PresencePenalty >= -2 && PresencePenalty <= 2))
            throw new ArgumentOutOfRangeException(nameof(PresencePenalty), PresencePenalty, "PresencePenalty (--presence-penalty) must be from -2 to 2.");
        if (!(RepetitionPenalty > 0) || float.IsInfinity(RepetitionPenalty))
            throw new ArgumentOutOfRangeException(nameof(RepetitionPenalty), RepetitionPenalty, "RepetitionPenalty (--repetition-penalty) must be a positive number (1: no penalty).");
        ArgumentNullException.ThrowIfNull(LogitBias, nameof(LogitBias));
        foreach (var (token, bias) in LogitBias)
        {
            if (token < 0) throw new ArgumentOutOfRangeException(nameof(LogitBias), token, $"LogitBias (--logit-bias): token id {token} is negative.");
            if (!(bias >= -100 && bias <= 100))
                throw new ArgumentOutOfRangeException(nameof(LogitBias), bias, $"LogitBias (--logit-bias): the bias of token {token} must be from -100 to 100.");
        }
        if (Logprobs is < 0 or > MaxTopLogprobs)
            throw new ArgumentOutOfRangeException(nameof(Logprobs), Logprobs, $"Logprobs (--logprobs) must be from 0 to {MaxTopLogprobs} alternatives, or null for none.");
        if (!Enum.IsDefined(ResponseFormat))
            throw new ArgumentOutOfRangeException(nameof(ResponseFormat), ResponseFormat, "ResponseFormat (--response-format) must be Text, JsonObject or JsonSchema.");
        if (ResponseFormat == ResponseFormat.JsonSchema) Constraints.CompiledJsonSchema.Compile(JsonSchema); // throws naming what is unsupported
        else if (JsonSchema is not null)
            throw new ArgumentException("JsonSchema is set but ResponseFormat is not JsonSchema: set ResponseFormat = ResponseFormat.JsonSchema to use it.", nameof(JsonSchema));
        foreach (var s in StopSequences)
            if (string.IsNullOrEmpty(s)) throw new ArgumentException("StopSequences (--stop) must not contain empty strings.", nameof(StopSequences));
        return this;
    }
}

/// <summary>Why a generation ended.</summary>
public enum FinishReason
{
    /// <summary>The model produced an end token.</summary>
    EndToken,
    /// <summary>MaxTokens were generated.</summary>
    MaxTokens,
    /// <summary>A stop sequence appeared.</summary>
    StopSequence,
    /// <summary>The model's context is full.</summary>
    ContextFull,
    /// <summary>The caller cancelled.</summary>
    Cancelled,
}

/// <summary>A piece of streamed output: the text that became complete and the ids accepted in this step.</summary>
/// <param name="Text">Text delta (may be empty while a UTF-8 character is incomplete).</param>
/// <param name="TokenIds">Ids accepted in this step.</param>
/// <param name="Logprobs">
/// With <see cref="GenerationOptions.Logprobs"/>: one entry per id of <paramref name="TokenIds"/>, in order; otherwise null.
/// </param>
public sealed record GeneratedPiece(string Text, IReadOnlyList<int> TokenIds, IReadOnlyList<TokenLogprob>? Logprobs = null);

/// <summary>Counters of one generation.</summary>
public sealed class GenerationStats
{
    /// <summary>Prompt tokens, BOS included.</summary>
    public int PromptTokens { get; internal set; }
    /// <summary>
    /// Of <see cref="PromptTokens"/>, those whose KV came from the prefix cache instead of the prefill (a multiple of the
    /// KV block size; 0 with prefix caching off, for a scored prompt, or when no earlier sequence started the same way).
    /// </summary>
    public int CachedPromptTokens { get; internal set; }
    /// <summary>Tokens generated (end token excluded).</summary>
    public int GeneratedTokens { get; internal set; }
    /// <summary>Forward passes after the prefill.</summary>
    public int Steps { get; internal set; }
    /// <summary>Seconds spent in the prefill.</summary>
    public double PrefillSeconds { get; internal set; }
    /// <summary>Seconds spent decoding (after the prefill).</summary>
    public double DecodeSeconds { get; internal set; }
    /// <summary>Why it ended.</summary>
    public FinishReason FinishReason { get; internal set; }
    /// <summary>Medusa acceptance counters; null when decoding was autoregressive.</summary>
    public Medusa.MedusaStats? Medusa { get; internal set; }
    /// <summary>The tree used, when Medusa decoded.</summary>
    public string? Tree { get; internal set; }
    /// <summary>
    /// With <see cref="GenerationOptions.PromptLogprobs"/>: entry i scores prompt token i given the tokens before it; entry
    /// 0 is null (nothing comes before the first token). Complete once the first piece has arrived; null otherwise.
    /// </summary>
    public IReadOnlyList<TokenLogprob?>? PromptLogprobs { get; internal set; }
    /// <summary>Tokens the decode steps produced: all generated tokens but the first, which the prefill's forward gives.</summary>
    public int DecodedTokens => Math.Max(0, GeneratedTokens - 1);
    /// <summary>Tokens per second of decoding: <see cref="DecodedTokens"/> over <see cref="DecodeSeconds"/> (the first token is the prefill's).</summary>
    public double DecodeTokensPerSecond => DecodeSeconds > 0 ? DecodedTokens / DecodeSeconds : 0;
}
