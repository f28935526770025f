namespace IlgpuMedusa.Generation;

/// <summary>What the generated text must be (<see cref="GenerationOptions.ResponseFormat"/>).</summary>
public enum ResponseFormat
{
    /// <summary>Any text the model writes.</summary>
    Text,

    /// <summary>
    /// JSON mode (OpenAI's <c>json_object</c>): every token is chosen among those that keep the text a prefix of a JSON
    /// object, and once the object is closed only an end token may follow, so a generation that ends with an end token is
    /// exactly one valid JSON object, from its opening brace to its closing one (one cut short by MaxTokens, a stop
    /// sequence or the context is a prefix of one). Limits: nesting depth 64, at most 16 whitespace bytes in a row, no
    /// <c>\u</c> escape of a surrogate (such characters come as UTF-8), no U+2581 (the tokenizer's space marker, which it
    /// shows as a space); duplicate keys are not prevented. Tell the model in the prompt that JSON is wanted: the
    /// constraint decides which tokens are allowed, not what the model means by them.
    /// </summary>
    JsonObject,

    /// <summary>
    /// Structured output (OpenAI's <c>json_schema</c>, strict): as <see cref="JsonObject"/>, and the object follows
    /// <see cref="GenerationOptions.JsonSchema"/>: every property the schema lists, in its order, each value of its
    /// schema, nothing else. The supported subset (types, properties, required, additionalProperties false, items,
    /// minItems, maxItems, enum, const; formats are not enforced) is listed in docs/library.md; anything else is refused
    /// when the options are validated, naming the schema path.
    /// </summary>
    JsonSchema,
}
