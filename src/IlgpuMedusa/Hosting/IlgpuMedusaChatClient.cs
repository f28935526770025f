using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using IlgpuMedusa.Generation;
using Microsoft.Extensions.AI;

namespace IlgpuMedusa.Hosting;

/// <summary>Keys of <see cref="ChatOptions.AdditionalProperties"/> that <see cref="IlgpuMedusaChatClient"/> understands.</summary>
public static class IlgpuMedusaChatOptionKeys
{
    /// <summary>bool (or "on"/"off"): decode with the Medusa heads when the engine has them.</summary>
    public const string Medusa = "medusa";
    /// <summary>string: the Medusa tree, a preset name or a JSON file of paths.</summary>
    public const string Tree = "medusa_tree";
    /// <summary>string: Medusa acceptance, "greedy" (lossless) or "typical".</summary>
    public const string Acceptance = "medusa_acceptance";
    /// <summary>
    /// int (0..<see cref="GenerationOptions.MaxTopLogprobs"/>): report each generated token's log-probability and that many
    /// alternatives (<see cref="GenerationOptions.Logprobs"/>); they arrive in the <see cref="GeneratedPiece"/> each
    /// streaming update carries as its RawRepresentation (non-streaming: the response's RawRepresentation, the list of pieces).
    /// </summary>
    public const string Logprobs = "logprobs";
    /// <summary>float (above 0): the repetition penalty (<see cref="GenerationOptions.RepetitionPenalty"/>).</summary>
    public const string RepetitionPenalty = "repetition_penalty";
    /// <summary>
    /// IReadOnlyDictionary&lt;int, float&gt; (or a JSON object of "id": bias): biases added to token logits
    /// (<see cref="GenerationOptions.LogitBias"/>).
    /// </summary>
    public const string LogitBias = "logit_bias";
}

/// <summary>
/// A Microsoft.Extensions.AI <see cref="IChatClient"/> on an <see cref="InferenceEngine"/>: messages go through a
/// <see cref="ChatTemplate"/>, <see cref="ChatOptions"/> map to <see cref="GenerationOptions"/>, and the response carries
/// <see cref="UsageDetails"/> and a finish reason (<see cref="ChatFinishReason.Stop"/> for an end token or stop sequence,
/// <see cref="ChatFinishReason.Length"/> for the token limit or a full context, <see cref="ChatFinishReason.ToolCalls"/> for
/// a required tool call). Tools: when <see cref="ChatOptions.ToolMode"/> requires a call, the reply is constrained to one
/// (<see cref="ToolCalls"/>) and comes back as a <see cref="FunctionCallContent"/>; otherwise the tools are not offered to
/// the model. The client does not own the engine: disposing it leaves the engine alone.
/// </summary>
public sealed class IlgpuMedusaChatClient : IChatClient
{
    private readonly InferenceEngine _engine;
    private readonly ChatClientMetadata _metadata;

    /// <summary>Creates a client; <paramref name="template"/> Auto is resolved from the model directory.</summary>
    /// <param name="engine">The engine (owned by the caller).</param>
    /// <param name="template">The chat template.</param>
    /// <param name="defaults">Generation options of requests before their <see cref="ChatOptions"/> apply (default: <see cref="GenerationOptions"/>'s).</param>
    /// <exception cref="ArgumentException">The template needs special tokens the model's tokenizer does not have.</exception>
    public IlgpuMedusaChatClient(InferenceEngine engine, ChatTemplateKind template = ChatTemplateKind.Auto, GenerationOptions? defaults = null)
    {
        ArgumentNullException.ThrowIfNull(engine);
        _engine = engine;
        Template = ChatTemplate.Resolve(template, engine.Options.ModelPath, engine.Tokenizer);
        ModelTemplate = ChatTemplate.LoadModelTemplate(Template, engine.Options.ModelPath, engine.Tokenizer);
        try
        {
            // An empty conversation uses every marker of a built-in template: one the tokenizer lacks fails here, not in
            // each request. The model's own template renders a one-message conversation (most index the first message).
            if (ModelTemplate is null) ChatTemplate.Encode(ChatTemplate.Apply(Template, []), engine.Tokenizer);
            else ChatTemplate.Encode(ModelTemplate.Apply([new ChatMessage(ChatRole.User, "Hello")], null, engine.Tokenizer), engine.Tokenizer);
        }
        catch (InvalidOperationException e)
        {
            throw new ArgumentException($"chat template {Template} does not fit the model in '{engine.Options.ModelPath}': {e.Message}", nameof(template), e);
        }
        Defaults = (defaults ?? new GenerationOptions()).Validate();
        ModelId = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(engine.Options.ModelPath)));
        _metadata = new ChatClientMetadata("ilgpu-medusa", null, ModelId);
    }

    /// <summary>The template in use (never Auto).</summary>
    public ChatTemplateKind Template { get; }
    /// <summary>The model's own template when <see cref="Template"/> is <see cref="ChatTemplateKind.Model"/>, else null.</summary>
    public ModelChatTemplate? ModelTemplate { get; }

    /// <summary>The prompt of <paramref name="messages"/> under the template, as segments (special tokens apart).</summary>
    public IReadOnlyList<ChatPromptSegment> Segments(IEnumerable<ChatMessage> messages, string? instructions = null) =>
        ChatTemplate.Apply(Template, ModelTemplate, messages, instructions, _engine.Tokenizer);
    /// <summary>Generation options before a request's <see cref="ChatOptions"/> apply.</summary>
    public GenerationOptions Defaults { get; }
    /// <summary>The model's name (its directory's name).</summary>
    public string ModelId { get; }

    /// <summary>
    /// Maps <paramref name="options"/> onto <see cref="Defaults"/>: MaxOutputTokens, Temperature (0 = greedy), TopP, TopK,
    /// Seed, FrequencyPenalty, PresencePenalty, ResponseFormat (Text; Json without a schema: JSON mode; with one: that
    /// schema, see <see cref="ResponseFormat.JsonSchema"/>), Tools with a required ToolMode (the call's schema,
    /// <see cref="ToolCalls"/>), StopSequences,
    /// and the <see cref="IlgpuMedusaChatOptionKeys"/> properties. Throws <see cref="ArgumentException"/>
    /// naming the bad option.
    /// </summary>
    public GenerationOptions ToGenerationOptions(ChatOptions? options)
    {
        var result = Defaults;
        if (options is null) return result;
        if (options.MaxOutputTokens is { } max)
        {
            if (max <= 0) throw new ArgumentOutOfRangeException(nameof(options), max, "ChatOptions.MaxOutputTokens must be a positive number of tokens.");
            result = result with { MaxTokens = max };
        }
        if (options.Temperature is { } t && !(t >= 0 && float.IsFinite(t)))
            throw new ArgumentOutOfRangeException(nameof(options), t, "ChatOptions.Temperature must be 0 (greedy) or more.");
        if (options.TopP is { } p && !(p > 0 && p <= 1))
            throw new ArgumentOutOfRangeException(nameof(options), p, "ChatOptions.TopP must be in (0, 1].");
        if (options.TopK is < 0)
            throw new ArgumentOutOfRangeException(nameof(options), options.TopK, "ChatOptions.TopK must be 0 (every token) or a positive number of tokens.");
        if (options.Temperature is not null || options.TopP is not null || options.TopK is not null)
        {
            var current = result.Sampling as Sampling.TemperatureSampling;
            float temperature = options.Temperature ?? current?.TemperatureValue ?? 1f;
            result = result with
            {
                Sampling = temperature == 0 ? Sampling.Greedy : Sampling.Temperature(temperature, options.TopP ?? current?.TopP ?? 1f, options.TopK ?? current?.TopK ?? 0),
            };
        }
        if (options.Seed is { } seed) result = result with { Seed = unchecked((ulong)seed) };
        if (options.FrequencyPenalty is { } frequency) result = result with { FrequencyPenalty = frequency };
        if (options.PresencePenalty is { } presence) result = result with { PresencePenalty = presence };
        switch (options.ResponseFormat)
        {
            case null:
                break;
            case ChatResponseFormatText:
                result = result with { ResponseFormat = ResponseFormat.Text, JsonSchema = null };
                break;
            case ChatResponseFormatJson { Schema: null }:
                result = result with { ResponseFormat = ResponseFormat.JsonObject, JsonSchema = null };
                break;
            case ChatResponseFormatJson { Schema: { } schema }:
                try
                {
                    result = (result with { ResponseFormat = ResponseFormat.JsonSchema, JsonSchema = schema.GetRawText() }).Validate();
                }
                catch (ArgumentException e)
                {
                    throw new ArgumentException($"ChatOptions.ResponseFormat: {e.Message}", nameof(options), e);
                }
                break;
            default:
                throw new ArgumentException($"ChatOptions.ResponseFormat: {options.ResponseFormat.GetType().Name} is not supported; use ChatResponseFormat.Text or ChatResponseFormat.Json.", nameof(options));
        }
        if (RequiredFunctions(options) is { } functions)
        {
            if (options.ResponseFormat is ChatResponseFormatJson)
                throw new ArgumentException("ChatOptions.ResponseFormat cannot be combined with a required tool call (ChatOptions.ToolMode): the reply is the call.", nameof(options));
            if (options.StopSequences is { Count: > 0 })
                throw new ArgumentException("ChatOptions.StopSequences cannot be combined with a required tool call (ChatOptions.ToolMode): a stop sequence would cut the call.", nameof(options));
            if (options.AdditionalProperties?.TryGetValue(IlgpuMedusaChatOptionKeys.Logprobs, out var wanted) == true && wanted is not null and not JsonElement { ValueKind: JsonValueKind.Null })
                throw new ArgumentException($"ChatOptions.AdditionalProperties[\"{IlgpuMedusaChatOptionKeys.Logprobs}\"] cannot be combined with a required tool call (ChatOptions.ToolMode): the call comes whole, without its tokens.", nameof(options));
            try
            {
                result = (result with { ResponseFormat = ResponseFormat.JsonSchema, JsonSchema = ToolCalls.CallSchema(functions) }).Validate();
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"ChatOptions.Tools: {e.Message}", nameof(options), e);
            }
        }
        if (options.StopSequences is { Count: > 0 } stops)
        {
            if (stops.Any(string.IsNullOrEmpty)) throw new ArgumentException("ChatOptions.StopSequences must not contain empty strings.", nameof(options));
            result = result with { StopSequences = [.. stops] };
        }
        if (options.AdditionalProperties is { } properties)
        {
            if (properties.TryGetValue(IlgpuMedusaChatOptionKeys.Medusa, out var medusa)) result = result with { UseMedusa = ReadSwitch(medusa) };
            if (properties.TryGetValue(IlgpuMedusaChatOptionKeys.Tree, out var tree))
            {
                var name = ReadString(IlgpuMedusaChatOptionKeys.Tree, tree);
                result = Keyed(IlgpuMedusaChatOptionKeys.Tree, () => (result with { Tree = name ?? Defaults.Tree }).Validate());
            }
            if (properties.TryGetValue(IlgpuMedusaChatOptionKeys.Logprobs, out var logprobs))
            {
                int? count = logprobs switch
                {
                    null => null,
                    int i => i,
                    long l when l is >= int.MinValue and <= int.MaxValue => (int)l,
                    JsonElement { ValueKind: JsonValueKind.Null } => null,
                    JsonElement { ValueKind: JsonValueKind.Number } e when e.TryGetInt32(out int i) => i,
                    _ => throw new ArgumentException($"ChatOptions.AdditionalProperties[\"{IlgpuMedusaChatOptionKeys.Logprobs}\"] must be an integer from 0 to {GenerationOptions.MaxTopLogprobs}, got {logprobs}.", nameof(options)),
                };
                result = Keyed(IlgpuMedusaChatOptionKeys.Logprobs, () => (result with { Logprobs = count }).Validate());
            }
            if (properties.TryGetValue(IlgpuMedusaChatOptionKeys.RepetitionPenalty, out var repetition) && repetition is not null)
            {
                float penalty = repetition switch
                {
                    float f => f,
                    double d => (float)d,
                    int i => i,
                    JsonElement { ValueKind: JsonValueKind.Number } e => e.GetSingle(),
                    _ => throw new ArgumentException($"ChatOptions.AdditionalProperties[\"{IlgpuMedusaChatOptionKeys.RepetitionPenalty}\"] must be a number, got {repetition}.", nameof(options)),
                };
                result = Keyed(IlgpuMedusaChatOptionKeys.RepetitionPenalty, () => (result with { RepetitionPenalty = penalty }).Validate());
            }
            if (properties.TryGetValue(IlgpuMedusaChatOptionKeys.LogitBias, out var bias) && bias is not null)
            {
                var biases = ReadLogitBias(bias);
                result = Keyed(IlgpuMedusaChatOptionKeys.LogitBias, () => (result with { LogitBias = biases }).Validate());
            }
            if (properties.TryGetValue(IlgpuMedusaChatOptionKeys.Acceptance, out var acceptance))
            {
                var text = ReadString(IlgpuMedusaChatOptionKeys.Acceptance, acceptance);
                result = Keyed(IlgpuMedusaChatOptionKeys.Acceptance,
                    () => result with { Acceptance = text is null ? Defaults.Acceptance : IlgpuMedusa.Medusa.Acceptance.Parse(text) });
                if (text is not null && result.ChangesLogits && result.Acceptance is IlgpuMedusa.Medusa.Acceptance.TypicalAcceptance && result.UseMedusa)
                    Keyed(IlgpuMedusaChatOptionKeys.Acceptance, () => throw new ArgumentException(
                        "typical acceptance judges guesses by the unadjusted distribution and cannot be combined with penalties, a logit bias or JSON mode; use greedy.", nameof(options)));
            }
        }
        // Typical acceptance judges guesses by the unadjusted distribution: a request with penalties or a bias that did
        // not ask for it (the client's default) verifies its trees greedily; one that did was refused above.
        if (result.ChangesLogits && result.Acceptance is IlgpuMedusa.Medusa.Acceptance.TypicalAcceptance)
            result = result with { Acceptance = IlgpuMedusa.Medusa.Acceptance.Greedy };
        return result.Validate();
    }

    /// <summary>
    /// The functions a reply must call one of: with <see cref="ChatToolMode.RequireAny"/> every function of
    /// <see cref="ChatOptions.Tools"/>, with <see cref="ChatToolMode.RequireSpecific"/> the one it names; null when no call
    /// is required (<see cref="ChatToolMode.Auto"/>, <see cref="ChatToolMode.None"/> or no mode: the reply is text).
    /// </summary>
    private static List<AIFunctionDeclaration>? RequiredFunctions(ChatOptions? options)
    {
        if (options?.ToolMode is not RequiredChatToolMode required) return null;
        var functions = options.Tools?.OfType<AIFunctionDeclaration>().ToList() ?? [];
        if (required.RequiredFunctionName is { } name)
        {
            functions = functions.Where(f => f.Name == name).Take(1).ToList();
            if (functions.Count == 0) throw new ArgumentException($"ChatOptions.ToolMode requires function '{name}', which ChatOptions.Tools does not hold.", nameof(options));
        }
        if (functions.Count == 0) throw new ArgumentException("ChatOptions.ToolMode requires a tool call but ChatOptions.Tools holds no functions.", nameof(options));
        return functions;
    }

    /// <summary>The reply as a message: a tool call when one was required and the text is a whole call; else the text.</summary>
    private static (ChatMessage Message, ChatFinishReason Finish) Reply(string text, bool callRequired, GenerationStats stats, string messageId)
    {
        if (callRequired && stats.FinishReason == FinishReason.EndToken && ToolCalls.TryParse(text, out var name, out var arguments))
            return (new ChatMessage(ChatRole.Assistant, [new FunctionCallContent("call_" + NewId()[..24], name, arguments)]) { MessageId = messageId }, ChatFinishReason.ToolCalls);
        return (new ChatMessage(ChatRole.Assistant, text) { MessageId = messageId }, FinishReasonOf(stats));
    }

    /// <summary>Runs <paramref name="map"/>; an <see cref="ArgumentException"/> is rethrown naming the property.</summary>
    private static GenerationOptions Keyed(string key, Func<GenerationOptions> map)
    {
        try
        {
            return map();
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"ChatOptions.AdditionalProperties[\"{key}\"]: {e.Message}", key, e);
        }
    }

    /// <summary>
    /// The prompt ids of <paramref name="messages"/> under <see cref="Template"/> (with a required tool call, the functions
    /// described in the system prompt: <see cref="ToolCalls.Describe"/>), checked against the context.
    /// </summary>
    public IReadOnlyList<int> EncodeMessages(IEnumerable<ChatMessage> messages, ChatOptions? options = null)
    {
        // A required call: the system prompt tells the model of the functions (their names, descriptions, parameters).
        var instructions = RequiredFunctions(options) is { } functions
            ? string.IsNullOrWhiteSpace(options!.Instructions) ? ToolCalls.Describe(functions) : options.Instructions + "\n" + ToolCalls.Describe(functions)
            : options?.Instructions;
        var ids = ChatTemplate.Encode(Segments(messages, instructions), _engine.Tokenizer);
        if (ids.Count >= _engine.Config.MaxSequenceLength)
            throw new ArgumentException(
                $"the prompt is {ids.Count} tokens but the model's context is {_engine.Config.MaxSequenceLength}: it must leave room for at least one generated token.",
                nameof(messages));
        return ids;
    }

    /// <inheritdoc />
    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var (ids, generation) = Prepare(messages, options);
        var stats = new GenerationStats();
        var text = new StringBuilder();
        var pieces = new List<GeneratedPiece>();
        await foreach (var piece in _engine.GenerateAsync(ids, generation, stats, cancellationToken).ConfigureAwait(false))
        {
            text.Append(piece.Text);
            pieces.Add(piece);
        }
        var reply = text.ToString();
        if (Template != ChatTemplateKind.Plain) reply = reply.TrimStart();
        var (message, finish) = Reply(reply, RequiredFunctions(options) is not null, stats, NewId());
        return new ChatResponse(message)
        {
            ResponseId = NewId(),
            ModelId = ModelId,
            CreatedAt = DateTimeOffset.UtcNow,
            FinishReason = finish,
            Usage = UsageOf(stats),
            AdditionalProperties = PropertiesOf(stats),
            RawRepresentation = pieces,
        };
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var (ids, generation) = Prepare(messages, options);
        var stats = new GenerationStats();
        string responseId = NewId(), messageId = NewId();
        var created = DateTimeOffset.UtcNow;
        bool started = Template == ChatTemplateKind.Plain; // a chat reply's first space is the template's, not the answer's
        // A required tool call comes whole, in the last update (its text is read as a call once it is complete).
        var call = RequiredFunctions(options) is not null ? new StringBuilder() : null;
        await foreach (var piece in _engine.GenerateAsync(ids, generation, stats, cancellationToken).ConfigureAwait(false))
        {
            var text = started ? piece.Text : piece.Text.TrimStart();
            started |= text.Length > 0;
            if (call is not null)
            {
                call.Append(text);
                continue;
            }
            // A piece with no text yet (half a character) still carries its tokens' log-probabilities when asked for.
            if (text.Length == 0 && piece.Logprobs is not { Count: > 0 }) continue;
            yield return new ChatResponseUpdate(ChatRole.Assistant, text)
            {
                ResponseId = responseId,
                MessageId = messageId,
                ModelId = ModelId,
                CreatedAt = created,
                RawRepresentation = piece,
            };
        }
        var finish = FinishReasonOf(stats);
        List<AIContent> last = [new UsageContent(UsageOf(stats))];
        if (call is not null)
        {
            var (message, callFinish) = Reply(call.ToString(), callRequired: true, stats, messageId);
            last.InsertRange(0, message.Contents);
            finish = callFinish;
        }
        yield return new ChatResponseUpdate(ChatRole.Assistant, last)
        {
            ResponseId = responseId,
            MessageId = messageId,
            ModelId = ModelId,
            CreatedAt = created,
            FinishReason = finish,
            AdditionalProperties = PropertiesOf(stats),
        };
    }

    /// <inheritdoc />
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return _metadata;
        if (serviceType.IsInstanceOfType(this)) return this;
        if (serviceType.IsInstanceOfType(_engine)) return _engine;
        return null;
    }

    /// <summary>Nothing to free: the engine belongs to whoever created it (the DI container, or the caller).</summary>
    public void Dispose()
    {
    }

    private (IReadOnlyList<int> Ids, GenerationOptions Options) Prepare(IEnumerable<ChatMessage> messages, ChatOptions? options)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var generation = ToGenerationOptions(options);
        return (EncodeMessages(messages, options), generation);
    }

    internal static ChatFinishReason FinishReasonOf(GenerationStats stats) => stats.FinishReason switch
    {
        FinishReason.MaxTokens or FinishReason.ContextFull => ChatFinishReason.Length,
        _ => ChatFinishReason.Stop,
    };

    private static UsageDetails UsageOf(GenerationStats stats) => new()
    {
        InputTokenCount = stats.PromptTokens,
        CachedInputTokenCount = stats.CachedPromptTokens,
        OutputTokenCount = stats.GeneratedTokens,
        TotalTokenCount = stats.PromptTokens + stats.GeneratedTokens,
    };

    /// <summary>Decoding statistics, for callers who want them: tokens/s, steps, and Medusa's mean accepted tokens per step.</summary>
    internal static AdditionalPropertiesDictionary PropertiesOf(GenerationStats stats)
    {
        var properties = new AdditionalPropertiesDictionary
        {
            ["decode_tokens_per_second"] = Math.Round(stats.DecodeTokensPerSecond, 2),
            ["prefill_seconds"] = Math.Round(stats.PrefillSeconds, 4),
            ["decode_seconds"] = Math.Round(stats.DecodeSeconds, 4),
            ["medusa"] = stats.Medusa is not null,
        };
        if (stats.Medusa is { } medusa)
        {
            properties["medusa_tree"] = stats.Tree;
            properties["medusa_steps"] = medusa.Steps;
            properties["medusa_mean_accepted"] = Math.Round(medusa.MeanAccepted, 3);
        }
        return properties;
    }

    private static string NewId() => Guid.NewGuid().ToString("N");

    private static IReadOnlyDictionary<int, float> ReadLogitBias(object value)
    {
        switch (value)
        {
            case IReadOnlyDictionary<int, float> biases:
                return biases;
            case IDictionary<int, float> biases:
                return new Dictionary<int, float>(biases);
            case JsonElement { ValueKind: JsonValueKind.Object } e:
                var result = new Dictionary<int, float>();
                foreach (var property in e.EnumerateObject())
                {
                    if (!int.TryParse(property.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int token) ||
                        property.Value.ValueKind != JsonValueKind.Number)
                        throw new ArgumentException($"ChatOptions.AdditionalProperties[\"{IlgpuMedusaChatOptionKeys.LogitBias}\"]: expected \"token id\": number pairs, got \"{property.Name}\".", nameof(value));
                    result[token] = property.Value.GetSingle();
                }
                return result;
            default:
                throw new ArgumentException($"ChatOptions.AdditionalProperties[\"{IlgpuMedusaChatOptionKeys.LogitBias}\"] must map token ids to biases, got {value}.", nameof(value));
        }
    }

    private static bool ReadSwitch(object? value) => value switch
    {
        bool b => b,
        string s when s.Equals("on", StringComparison.OrdinalIgnoreCase) || s.Equals("true", StringComparison.OrdinalIgnoreCase) => true,
        string s when s.Equals("off", StringComparison.OrdinalIgnoreCase) || s.Equals("false", StringComparison.OrdinalIgnoreCase) => false,
        JsonElement { ValueKind: JsonValueKind.True } => true,
        JsonElement { ValueKind: JsonValueKind.False } => false,
        JsonElement { ValueKind: JsonValueKind.String } e => ReadSwitch(e.GetString()),
        _ => throw new ArgumentException($"ChatOptions.AdditionalProperties[\"{IlgpuMedusaChatOptionKeys.Medusa}\"] must be true/false (or \"on\"/\"off\"), got {value ?? "null"}.", nameof(value)),
    };

    private static string? ReadString(string key, object? value) => value switch
    {
        null => null,
        string s => s,
        JsonElement { ValueKind: JsonValueKind.String } e => e.GetString(),
        JsonElement { ValueKind: JsonValueKind.Null } => null,
        _ => throw new ArgumentException($"ChatOptions.AdditionalProperties[\"{key}\"] must be a string, got {value}.", nameof(value)),
    };
}
