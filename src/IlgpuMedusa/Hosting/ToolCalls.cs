using System.Text;
using System.Text.Json;
using IlgpuMedusa.Generation.Constraints;
using Microsoft.Extensions.AI;

namespace IlgpuMedusa.Hosting;

/// <summary>
/// Tool calls as structured output. When a request requires a call (<see cref="ChatToolMode.RequireAny"/>, or
/// <see cref="ChatToolMode.RequireSpecific"/> a function), the reply is constrained to one JSON object
/// <c>{"name": "&lt;function&gt;", "arguments": {...}}</c> whose arguments follow that function's parameter schema (the
/// name tells the functions apart as it is read), so any model writes a well-formed call; what it
/// chooses is the model's. Calls and results in a conversation's history are laid out in the template as the same JSON
/// text. A model trained for a tool-call format of its own is not read in that format: <see cref="ChatToolMode.Auto"/>
/// leaves the reply free text.
/// </summary>
public static class ToolCalls
{
    /// <summary>Microsoft.Extensions.AI's serializer options, compact: how calls, arguments and results are written as text.</summary>
    public static JsonSerializerOptions JsonOptions { get; } = new(AIJsonUtilities.DefaultOptions) { WriteIndented = false };

    /// <summary>
    /// The JSON schema a required call follows: for each function, an object with <c>name</c> (the function's, as a
    /// const) and <c>arguments</c> (its parameters; an object without parameters when it declares none). Throws
    /// <see cref="ArgumentException"/> naming the function whose parameters fall outside the supported subset
    /// (<see cref="Generation.ResponseFormat.JsonSchema"/>) or when two functions share a name.
    /// </summary>
    public static string CallSchema(IReadOnlyList<AIFunctionDeclaration> functions)
    {
        ArgumentNullException.ThrowIfNull(functions);
        if (functions.Count == 0) throw new ArgumentException("a tool call needs at least one function.", nameof(functions));
        var names = new HashSet<string>(StringComparer.Ordinal);
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteStartArray("anyOf");
            int index = 0;
            foreach (var function in functions)
            {
                if (string.IsNullOrEmpty(function.Name)) throw new ArgumentException("a function has no name.", nameof(functions));
                if (!names.Add(function.Name)) throw new ArgumentException($"two functions are named '{function.Name}'.", nameof(functions));
                w.WriteStartObject();
                w.WriteString("type", "object");
                w.WritePropertyName("properties");
                w.WriteStartObject();
                w.WritePropertyName("name");
                w.WriteStartObject();
                w.WriteString("const", function.Name);
                w.WriteEndObject();
                w.WritePropertyName("arguments");
                WriteParameters(w, function.JsonSchema, $"#/anyOf/{index++}/properties/arguments");
                w.WriteEndObject();
                w.WriteStartArray("required");
                w.WriteStringValue("name");
                w.WriteStringValue("arguments");
                w.WriteEndArray();
                w.WriteBoolean("additionalProperties", false);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        var schema = Encoding.UTF8.GetString(buffer.ToArray());
        try
        {
            CompiledJsonSchema.Compile(schema);
        }
        catch (ArgumentException)
        {
            // Name the function whose parameters are the trouble.
            foreach (var function in functions)
            {
                if (functions.Count == 1) throw;
                try
                {
                    CallSchema([function]);
                }
                catch (ArgumentException e)
                {
                    throw new ArgumentException($"function '{function.Name}': {ParameterMessage(e.Message)}", nameof(functions), e);
                }
            }
            throw;
        }
        return schema;
    }

    /// <summary>
    /// A schema error about one function's call schema, with its paths as they are in the function's parameters
    /// (<c>$.properties.city</c>, not the call schema's <c>$.anyOf[0].properties.arguments.properties.city</c>).
    /// </summary>
    public static string ParameterMessage(string message) =>
        message.Replace("$.anyOf[0].properties.arguments", "$", StringComparison.Ordinal).Replace("#/anyOf/0/properties/arguments", "#", StringComparison.Ordinal)
            .Replace("JsonSchema at $: ", "JsonSchema: ", StringComparison.Ordinal);

    /// <summary>
    /// A function's parameters: its schema (references within it pointed at where it now stands, <paramref name="at"/>),
    /// or an object without properties when it declares none (no schema, or <c>{"type": "object"}</c> with only annotations).
    /// </summary>
    private static void WriteParameters(Utf8JsonWriter w, JsonElement parameters, string at)
    {
        bool empty = parameters.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null ||
            (parameters.ValueKind == JsonValueKind.Object &&
             parameters.TryGetProperty("type", out var type) && type.ValueKind == JsonValueKind.String && type.GetString() == "object" &&
             parameters.EnumerateObject().All(p => p.Name is "type" or "title" or "description" or "$schema" or "$comment" ||
                 (p.Name == "additionalProperties" && p.Value.ValueKind == JsonValueKind.False)));
        if (!empty)
        {
            WriteRelocated(w, parameters, at);
            return;
        }
        w.WriteStartObject();
        w.WriteString("type", "object");
        w.WritePropertyName("properties");
        w.WriteStartObject();
        w.WriteEndObject();
        w.WriteBoolean("additionalProperties", false);
        w.WriteEndObject();
    }

    /// <summary>Writes <paramref name="schema"/> with every local reference (<c>"$ref": "#..."</c>) moved under <paramref name="at"/>.</summary>
    private static void WriteRelocated(Utf8JsonWriter w, JsonElement schema, string at)
    {
        switch (schema.ValueKind)
        {
            case JsonValueKind.Object:
                w.WriteStartObject();
                foreach (var property in schema.EnumerateObject())
                {
                    w.WritePropertyName(property.Name);
                    if (property.Name == "$ref" && property.Value.ValueKind == JsonValueKind.String && property.Value.GetString() is { } pointer && pointer.StartsWith('#'))
                        w.WriteStringValue(at + pointer[1..]);
                    else WriteRelocated(w, property.Value, at);
                }
                w.WriteEndObject();
                break;
            case JsonValueKind.Array:
                w.WriteStartArray();
                foreach (var item in schema.EnumerateArray()) WriteRelocated(w, item, at);
                w.WriteEndArray();
                break;
            default:
                schema.WriteTo(w);
                break;
        }
    }

    /// <summary>
    /// The tools as a system prompt tells a model of them when a call is required: each function's name, description
    /// and parameters, and the shape of a call.
    /// </summary>
    public static string Describe(IReadOnlyList<AIFunctionDeclaration> functions)
    {
        ArgumentNullException.ThrowIfNull(functions);
        var text = new StringBuilder("Answer with a call of one of these functions, written as {\"name\": ..., \"arguments\": {...}}:");
        foreach (var function in functions)
        {
            text.Append('\n').Append(JsonSerializer.Serialize(new Dictionary<string, object?>
            {
                ["name"] = function.Name,
                ["description"] = string.IsNullOrWhiteSpace(function.Description) ? null : function.Description,
                ["parameters"] = function.JsonSchema.ValueKind == JsonValueKind.Undefined ? null : function.JsonSchema,
            }, JsonOptions));
        }
        return text.ToString();
    }

    /// <summary>
    /// The call in a reply that followed <see cref="CallSchema"/>: the function's name and its arguments (as JSON values);
    /// false when the text is not a whole call (a reply cut short by the token limit).
    /// </summary>
    public static bool TryParse(string text, out string name, out Dictionary<string, object?> arguments)
    {
        name = "";
        arguments = [];
        try
        {
            using var document = JsonDocument.Parse(text);
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("name", out var n) || n.ValueKind != JsonValueKind.String ||
                !root.TryGetProperty("arguments", out var a) || a.ValueKind != JsonValueKind.Object)
                return false;
            name = n.GetString()!;
            foreach (var property in a.EnumerateObject()) arguments[property.Name] = property.Value.Clone();
            return true;
        }
        catch (JsonException)
        {
            return false;
        }
    }

    /// <summary>A call as the template shows it in a conversation's history: the JSON a required call is written as.</summary>
    public static string Render(FunctionCallContent call)
    {
        ArgumentNullException.ThrowIfNull(call);
        return JsonSerializer.Serialize(new Dictionary<string, object?> { ["name"] = call.Name, ["arguments"] = call.Arguments ?? new Dictionary<string, object?>() },
            JsonOptions);
    }

    /// <summary>A function's result as the template shows it: a string as it is, anything else as JSON.</summary>
    public static string Render(FunctionResultContent result)
    {
        ArgumentNullException.ThrowIfNull(result);
        return result.Result switch
        {
            null => "null",
            string text => text,
            JsonElement { ValueKind: JsonValueKind.String } element => element.GetString()!,
            var value => JsonSerializer.Serialize(value, JsonOptions),
        };
    }

    /// <summary>
    /// A message's text as the template lays it out: its text, then each tool call or result it carries (on lines of
    /// their own), so a conversation with tools reads as the model will write a call.
    /// </summary>
    public static string TextOf(ChatMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);
        if (!message.Contents.Any(c => c is FunctionCallContent or FunctionResultContent)) return message.Text;
        var parts = new List<string>();
        foreach (var content in message.Contents)
        {
            switch (content)
            {
                case TextContent { Text.Length: > 0 } text:
                    parts.Add(text.Text);
                    break;
                case FunctionCallContent call:
                    parts.Add(Render(call));
                    break;
                case FunctionResultContent result:
                    parts.Add(Render(result));
                    break;
            }
        }
        return string.Join('\n', parts);
    }
}
