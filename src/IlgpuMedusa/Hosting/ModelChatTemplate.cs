using System.Text.Json;
using IlgpuMedusa.Hosting.Jinja;
using IlgpuMedusa.Tokenization;
using Microsoft.Extensions.AI;

namespace IlgpuMedusa.Hosting;

/// <summary>
/// A model's own chat template: the Jinja source of <c>chat_template.jinja</c> or of tokenizer_config.json's
/// <c>chat_template</c>, rendered as transformers' <c>apply_chat_template</c> renders it (messages as role/content
/// objects, <c>add_generation_prompt</c> true, the tokenizer's special token strings such as <c>bos_token</c>), by
/// <see cref="JinjaTemplate"/>. The rendered text is cut at the special tokens the template itself wrote, which become
/// ids; text that came from messages never does (<see cref="JinjaText"/> keeps track), so a user who types
/// <c>&lt;|im_end|&gt;</c> gets text, not the marker.
/// </summary>
public sealed class ModelChatTemplate
{
    /// <summary>The file transformers 4.43 and later write a model's template to.</summary>
    public const string JinjaFileName = "chat_template.jinja";
    /// <summary>The tokenizer configuration that holds the template otherwise, and the special token strings.</summary>
    public const string TokenizerConfigFileName = "tokenizer_config.json";
    /// <summary>Older models' file of special token strings (tokenizer_config.json's take precedence).</summary>
    public const string SpecialTokensMapFileName = "special_tokens_map.json";

    private readonly JinjaTemplate _template;
    private readonly Dictionary<string, object?> _specialStrings;

    private ModelChatTemplate(JinjaTemplate template, string source, string origin, Dictionary<string, object?> specialStrings)
    {
        _template = template;
        Source = source;
        Origin = origin;
        _specialStrings = specialStrings;
    }

    /// <summary>The template's Jinja source.</summary>
    public string Source { get; }

    /// <summary>The file it came from (for messages).</summary>
    public string Origin { get; }

    /// <summary>The clock <c>strftime_now</c> reads (Llama 3.2's template writes today's date); tests pin it.</summary>
    public Func<DateTime> Now { get; init; } = () => DateTime.Now;

    /// <summary>
    /// The template of <paramref name="modelDirectory"/>, or null when it has none. A template that does not parse is an
    /// <see cref="InvalidDataException"/> naming the file and line.
    /// </summary>
    public static ModelChatTemplate? TryLoad(string modelDirectory)
    {
        ArgumentNullException.ThrowIfNull(modelDirectory);
        var configPath = Path.Combine(modelDirectory, TokenizerConfigFileName);
        JsonElement? config = null;
        JsonDocument? document = null;
        try
        {
            if (File.Exists(configPath))
            {
                try
                {
                    document = JsonDocument.Parse(File.ReadAllBytes(configPath));
                    if (document.RootElement.ValueKind == JsonValueKind.Object) config = document.RootElement;
                }
                catch (JsonException e)
                {
                    throw new InvalidDataException($"{configPath}: not valid JSON: {e.Message}", e);
                }
            }
            string? source = null, origin = null;
            var jinjaPath = Path.Combine(modelDirectory, JinjaFileName);
            if (File.Exists(jinjaPath))
            {
                source = File.ReadAllText(jinjaPath);
                origin = jinjaPath;
            }
            else if (config is { } c && c.TryGetProperty("chat_template", out var t))
            {
                origin = configPath;
                source = t.ValueKind switch
                {
                    JsonValueKind.String => t.GetString(),
                    // A list of named templates: the one named "default" (transformers' choice without tools), else the first.
                    JsonValueKind.Array => t.EnumerateArray()
                        .Where(e => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("template", out var x) && x.ValueKind == JsonValueKind.String)
                        .OrderBy(e => e.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String && n.GetString() == "default" ? 0 : 1)
                        .Select(e => e.GetProperty("template").GetString())
                        .FirstOrDefault(),
                    JsonValueKind.Null => null,
                    _ => throw new InvalidDataException($"{configPath}: field 'chat_template' must be a string or a list of {{name, template}} objects, found {t.ValueKind}"),
                };
            }
            if (source is null) return null;
            // The special token strings the template may print: special_tokens_map.json's, then tokenizer_config.json's over them.
            var specials = new Dictionary<string, object?>(StringComparer.Ordinal);
            var mapPath = Path.Combine(modelDirectory, SpecialTokensMapFileName);
            if (File.Exists(mapPath))
            {
                try
                {
                    using var map = JsonDocument.Parse(File.ReadAllBytes(mapPath));
                    if (map.RootElement.ValueKind == JsonValueKind.Object) ReadSpecials(map.RootElement, specials);
                }
                catch (JsonException e)
                {
                    throw new InvalidDataException($"{mapPath}: not valid JSON: {e.Message}", e);
                }
            }
            if (config is { } cfg) ReadSpecials(cfg, specials);
            try
            {
                return new ModelChatTemplate(JinjaTemplate.Parse(source), source, origin!, specials);
            }
            catch (JinjaException e)
            {
                throw new InvalidDataException($"{origin}: the chat template cannot be read: {e.Message}", e);
            }
        }
        finally
        {
            document?.Dispose();
        }
    }

    private static void ReadSpecials(JsonElement root, Dictionary<string, object?> specials)
    {
        foreach (var name in new[] { "bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token" })
        {
            if (!root.TryGetProperty(name, out var value)) continue;
            string? text = value.ValueKind switch
            {
                JsonValueKind.String => value.GetString(),
                JsonValueKind.Object when value.TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.String => content.GetString(),
                _ => null,
            };
            if (text is not null) specials[name] = new JinjaText(text);
        }
    }

    /// <summary>
    /// Renders <paramref name="messages"/> (and <paramref name="instructions"/>, a system prompt placed first): system
    /// messages join the instructions in one leading system message, tool calls and results are JSON text
    /// (<see cref="ToolCalls.TextOf"/>) with results in role "tool". The prompt ends with the template's generation prompt.
    /// Throws <see cref="ArgumentException"/> when the template refuses the conversation (its <c>raise_exception</c>) or
    /// fails on it, naming the template's file.
    /// </summary>
    public JinjaText Render(IEnumerable<ChatMessage> messages, string? instructions = null)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var list = messages.ToList();
        var items = new List<object?>();
        var system = new List<string>();
        if (!string.IsNullOrWhiteSpace(instructions)) system.Add(instructions.Trim());
        system.AddRange(list.Where(m => m.Role == ChatRole.System).Select(m => m.Text.Trim()).Where(t => t.Length > 0));
        if (system.Count > 0) items.Add(Message("system", string.Join('\n', system)));
        foreach (var m in list.Where(m => m.Role != ChatRole.System))
        {
            bool result = m.Contents.Any(c => c is FunctionResultContent);
            string role = result ? "tool" : m.Role == ChatRole.Assistant ? "assistant" : m.Role == ChatRole.User ? "user" : m.Role.Value;
            items.Add(Message(role, ToolCalls.TextOf(m)));
        }
        var variables = new Dictionary<string, object?>(_specialStrings, StringComparer.Ordinal)
        {
            ["messages"] = items,
            ["add_generation_prompt"] = true,
        };
        try
        {
            return _template.Render(variables, Now);
        }
        catch (JinjaException e)
        {
            throw new ArgumentException($"{Origin}: the model's chat template failed on this conversation: {e.Message}", nameof(messages), e);
        }

        // Roles come from the caller too: marked as data, like the content.
        static JinjaDict Message(string role, string content) =>
            new JinjaDict().With("role", JinjaText.FromData(role)).With("content", JinjaText.FromData(content));
    }

    /// <summary>
    /// The prompt as segments: the rendered text cut at each special token of <paramref name="tokenizer"/> that the
    /// template wrote (longest first at each position), those tokens as special segments, the text between as text.
    /// </summary>
    public IReadOnlyList<ChatPromptSegment> Apply(IEnumerable<ChatMessage> messages, string? instructions, ITextTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        return Segments(Render(messages, instructions), tokenizer.SpecialTokens);
    }

    /// <summary>Cuts <paramref name="rendered"/> at the clean occurrences of <paramref name="specialTokens"/>.</summary>
    public static IReadOnlyList<ChatPromptSegment> Segments(JinjaText rendered, IReadOnlyCollection<string> specialTokens)
    {
        ArgumentNullException.ThrowIfNull(rendered);
        var tokens = specialTokens.Where(t => t.Length > 0).OrderByDescending(t => t.Length).ToArray();
        var firsts = new HashSet<char>(tokens.Select(t => t[0]));
        var text = rendered.Text;
        var segments = new List<ChatPromptSegment>();
        int from = 0;
        for (int i = 0; i < text.Length; i++)
        {
            if (!firsts.Contains(text[i])) continue;
            string? match = null;
            foreach (var token in tokens)
            {
                if (string.CompareOrdinal(text, i, token, 0, token.Length) != 0) continue;
                bool clean = true;
                for (int k = 0; k < token.Length && clean; k++) clean = !rendered.IsData(i + k);
                if (!clean) continue;
                match = token;
                break;
            }
            if (match is null) continue;
            if (i > from) segments.Add(new ChatPromptSegment(text[from..i], Bos: false, Eos: false));
            segments.Add(ChatPromptSegment.Special(match));
            from = i + match.Length;
            i = from - 1;
        }
        if (from < text.Length) segments.Add(new ChatPromptSegment(text[from..], Bos: false, Eos: false));
        return segments;
    }
}
