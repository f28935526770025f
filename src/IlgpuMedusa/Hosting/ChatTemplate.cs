using System.Text;
using System.Text.Json;
using IlgpuMedusa.Tokenization;
using Microsoft.Extensions.AI;

namespace IlgpuMedusa.Hosting;

/// <summary>How chat messages become a prompt.</summary>
public enum ChatTemplateKind
{
    /// <summary>Chosen from the model directory by <see cref="ChatTemplate.Detect"/> (plain for llama2.c and other base models).</summary>
    Auto,
    /// <summary>Completion for base models: the message texts concatenated, the model continues them.</summary>
    Plain,
    /// <summary>Llama-2-chat: <c>[INST] &lt;&lt;SYS&gt;&gt;\n...\n&lt;&lt;/SYS&gt;&gt;\n\n... [/INST]</c>, each turn between BOS and EOS.</summary>
    Llama2Chat,
    /// <summary>Vicuna v1.1: <c>A chat between a curious user and an artificial intelligence assistant... USER: ... ASSISTANT:</c>.</summary>
    Vicuna,
    /// <summary>
    /// Llama 3 Instruct: <c>&lt;|begin_of_text|&gt;</c>, then per message <c>&lt;|start_header_id|&gt;role&lt;|end_header_id|&gt;\n\n</c>,
    /// the text, <c>&lt;|eot_id|&gt;</c>; the prompt ends with the assistant's header. Needs a tokenizer with those special tokens.
    /// </summary>
    Llama3,
    /// <summary>
    /// The model's own template (<c>chat_template.jinja</c>, or tokenizer_config.json's <c>chat_template</c>) rendered by
    /// <see cref="ModelChatTemplate"/> as transformers renders it: every Llama 3.x, Qwen, SmolLM... prompt exactly as the
    /// model was trained on (default system prompts, dated system blocks, reasoning blocks included). Chosen by
    /// <see cref="ChatTemplate.Detect"/> for models with a byte-level <c>tokenizer.json</c>.
    /// </summary>
    Model,
    /// <summary>
    /// ChatML (Qwen, SmolLM and others): per message <c>&lt;|im_start|&gt;role\n</c>, the text, <c>&lt;|im_end|&gt;\n</c>; the
    /// prompt ends with <c>&lt;|im_start|&gt;assistant\n</c>. Needs a tokenizer with those special tokens.
    /// </summary>
    ChatML,
}

/// <summary>
/// A piece of a templated prompt, encoded on its own so that BOS, EOS and a template's other special tokens are ids,
/// never text a user could type.
/// </summary>
/// <param name="Text">The text (encoded with the tokenizer's dummy-prefix rule), or the special token's content when <see cref="IsSpecial"/>.</param>
/// <param name="Bos">BOS goes before the text.</param>
/// <param name="Eos">EOS goes after the text.</param>
public readonly record struct ChatPromptSegment(string Text, bool Bos, bool Eos)
{
    /// <summary>Whether the segment is one special token (<see cref="Text"/> is its content, such as <c>&lt;|eot_id|&gt;</c>).</summary>
    public bool IsSpecial { get; init; }

    /// <summary>A segment that is the special token <paramref name="content"/>.</summary>
    public static ChatPromptSegment Special(string content) => new(content, Bos: false, Eos: false) { IsSpecial = true };
}

/// <summary>The chat templates: messages to prompt segments, segments to token ids.</summary>
public static class ChatTemplate
{
    /// <summary>Vicuna v1.1's system prompt, used when the conversation has none.</summary>
    public const string VicunaSystemPrompt =
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

    /// <summary>
    /// The template a model directory calls for: <see cref="ChatTemplateKind.Model"/> when it has a chat template of its
    /// own that <see cref="ModelChatTemplate"/> reads and a byte-level <c>tokenizer.json</c> (no <c>tokenizer.model</c>);
    /// else, from the <c>chat_template</c> of its tokenizer_config.json when there is one
    /// ("&lt;|start_header_id|&gt;" means Llama 3, "&lt;|im_start|&gt;" ChatML, "[INST]" Llama-2-chat, "ASSISTANT:" Vicuna), else its name or config.json's <c>_name_or_path</c> ("vicuna",
    /// or "llama-2"/"llama2" with "chat"), else <see cref="ChatTemplateKind.Plain"/> (llama2.c checkpoints and base models).
    /// SentencePiece models keep the built-in layouts: how their text between special tokens is encoded depends on
    /// tokenizer settings this runtime does not read.
    /// </summary>
    /// <param name="modelDirectory">The model directory.</param>
    /// <param name="modelTemplates">Whether the model's own template may be chosen (false: only the built-in layouts).</param>
    public static ChatTemplateKind Detect(string modelDirectory, bool modelTemplates = true)
    {
        ArgumentNullException.ThrowIfNull(modelDirectory);
        if (modelTemplates && File.Exists(Path.Combine(modelDirectory, TokenizerLoader.HuggingFaceJsonFileName))
            && !File.Exists(Path.Combine(modelDirectory, TokenizerLoader.SentencePieceFileName)))
        {
            try
            {
                if (ModelChatTemplate.TryLoad(modelDirectory) is not null) return ChatTemplateKind.Model;
            }
            catch (InvalidDataException)
            {
                // A template this interpreter cannot read: the built-in layout its markers name, below.
            }
        }
        var template = ReadJsonString(Path.Combine(modelDirectory, "tokenizer_config.json"), "chat_template");
        if (template is not null)
        {
            if (template.Contains("<|start_header_id|>", StringComparison.Ordinal)) return ChatTemplateKind.Llama3;
            if (template.Contains("<|im_start|>", StringComparison.Ordinal)) return ChatTemplateKind.ChatML;
            if (template.Contains("[INST]", StringComparison.Ordinal)) return ChatTemplateKind.Llama2Chat;
            if (template.Contains("ASSISTANT:", StringComparison.Ordinal)) return ChatTemplateKind.Vicuna;
        }
        var names = new[]
        {
            Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(modelDirectory))),
            ReadJsonString(Path.Combine(modelDirectory, "config.json"), "_name_or_path") ?? "",
        };
        foreach (var name in names.Select(n => n.ToLowerInvariant()))
        {
            if (name.Contains("vicuna", StringComparison.Ordinal)) return ChatTemplateKind.Vicuna;
            if ((name.Contains("llama-2", StringComparison.Ordinal) || name.Contains("llama2", StringComparison.Ordinal)) && name.Contains("chat", StringComparison.Ordinal))
                return ChatTemplateKind.Llama2Chat;
        }
        return ChatTemplateKind.Plain;
    }

    /// <summary>
    /// Lays out <paramref name="messages"/> (and <paramref name="instructions"/>, a system prompt placed first) in the
    /// template. System messages join the system prompt; every other role but the assistant's counts as the user's (a
    /// tool's result too). Tool calls and results are laid out as JSON text (<see cref="ToolCalls.TextOf"/>).
    /// The prompt ends where the assistant's reply begins.
    /// </summary>
    public static IReadOnlyList<ChatPromptSegment> Apply(ChatTemplateKind kind, IEnumerable<ChatMessage> messages, string? instructions = null)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var list = messages.ToList();
        return kind switch
        {
            ChatTemplateKind.Plain => [Plain(list, instructions)],
            ChatTemplateKind.Llama2Chat => Llama2Chat(System(list, instructions), Turns(list)),
            ChatTemplateKind.Vicuna => Vicuna(System(list, instructions), Turns(list)),
            ChatTemplateKind.Llama3 => Llama3(System(list, instructions), list),
            ChatTemplateKind.ChatML => ChatML(System(list, instructions), list),
            ChatTemplateKind.Model => throw new ArgumentException("the model's own template needs its ModelChatTemplate: use the overload that takes one.", nameof(kind)),
            _ => throw new ArgumentException($"chat template {kind} must be resolved to Plain, Llama2Chat, Vicuna, Llama3 or ChatML first (see ChatTemplate.Detect).", nameof(kind)),
        };
    }

    /// <summary>
    /// As <see cref="Apply(ChatTemplateKind, IEnumerable{ChatMessage}, string?)"/>, with <see cref="ChatTemplateKind.Model"/>
    /// rendered by <paramref name="model"/> and cut at <paramref name="tokenizer"/>'s special tokens.
    /// </summary>
    public static IReadOnlyList<ChatPromptSegment> Apply(ChatTemplateKind kind, ModelChatTemplate? model, IEnumerable<ChatMessage> messages, string? instructions, ITextTokenizer tokenizer)
    {
        if (kind != ChatTemplateKind.Model) return Apply(kind, messages, instructions);
        ArgumentNullException.ThrowIfNull(model);
        return model.Apply(messages, instructions, tokenizer);
    }

    /// <summary>
    /// What <see cref="ChatTemplateKind.Auto"/> means for a model: <see cref="Detect"/>, but a built-in layout when the
    /// model's tokenizer lists no special tokens (the model's own template could not be cut into markers).
    /// </summary>
    public static ChatTemplateKind Resolve(ChatTemplateKind kind, string modelDirectory, ITextTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        return kind != ChatTemplateKind.Auto ? kind : Detect(modelDirectory, modelTemplates: tokenizer.SpecialTokens.Count > 0);
    }

    /// <summary>
    /// The model's own template for <paramref name="kind"/> <see cref="ChatTemplateKind.Model"/> (null for the others);
    /// <see cref="ArgumentException"/> when the directory has none or it cannot be read.
    /// </summary>
    public static ModelChatTemplate? LoadModelTemplate(ChatTemplateKind kind, string modelDirectory, ITextTokenizer? tokenizer = null)
    {
        if (kind != ChatTemplateKind.Model) return null;
        // The rendered text is cut at the tokenizer's special tokens: one that lists none (SentencePiece, llama2.c) would
        // turn the template's markers into plain text.
        if (tokenizer is not null && tokenizer.SpecialTokens.Count == 0)
            throw new ArgumentException(
                $"the model's own chat template needs a tokenizer.json tokenizer (it lists the special tokens the template writes); the model in '{modelDirectory}' has another; choose a built-in template (--template).");
        try
        {
            return ModelChatTemplate.TryLoad(modelDirectory) ?? throw new ArgumentException(
                $"the model in '{modelDirectory}' has no chat template of its own ({ModelChatTemplate.JinjaFileName}, or chat_template in {ModelChatTemplate.TokenizerConfigFileName}); choose a built-in one (--template).");
        }
        catch (InvalidDataException e)
        {
            throw new ArgumentException(e.Message, nameof(modelDirectory), e);
        }
    }

    /// <summary>Token ids of the segments: per segment, BOS if asked, the encoded text, EOS if asked; a special segment is its token's id.</summary>
    /// <exception cref="InvalidOperationException">The template needs a special token the tokenizer does not have.</exception>
    public static IReadOnlyList<int> Encode(IEnumerable<ChatPromptSegment> segments, ITextTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(segments);
        ArgumentNullException.ThrowIfNull(tokenizer);
        var ids = new List<int>();
        foreach (var segment in segments)
        {
            if (segment.IsSpecial)
            {
                ids.Add(tokenizer.SpecialTokenId(segment.Text) ?? throw new InvalidOperationException(
                    $"the chat template needs the special token '{segment.Text}', which this model's tokenizer does not have; choose the model's own template (--template)."));
                continue;
            }
            if (segment.Text.Length > 0) ids.AddRange(tokenizer.Encode(segment.Text, segment.Bos));
            else if (segment.Bos && tokenizer.AddsBos) ids.Add(tokenizer.BosId);
            if (segment.Eos) ids.Add(tokenizer.EosId);
        }
        return ids;
    }

    /// <summary>The segments as one string with <c>&lt;s&gt;</c> and <c>&lt;/s&gt;</c> for BOS and EOS and special tokens as their content (for display and tests).</summary>
    public static string Render(IEnumerable<ChatPromptSegment> segments) =>
        string.Concat(segments.Select(s => (s.Bos ? "<s>" : "") + s.Text + (s.Eos ? "</s>" : "")));

    /// <summary>
    /// One running text for a base model to continue: user and assistant messages concatenated as they are (an assistant
    /// message continues the text before it), the instructions and system messages each on a line of their own first.
    /// </summary>
    private static ChatPromptSegment Plain(List<ChatMessage> messages, string? instructions)
    {
        var text = new StringBuilder();
        if (!string.IsNullOrWhiteSpace(instructions)) text.Append(instructions.TrimEnd()).Append('\n');
        foreach (var m in messages.Where(m => m.Role == ChatRole.System && !string.IsNullOrWhiteSpace(m.Text))) text.Append(m.Text.TrimEnd()).Append('\n');
        foreach (var m in messages.Where(m => m.Role != ChatRole.System)) text.Append(ToolCalls.TextOf(m));
        return new ChatPromptSegment(text.ToString(), Bos: true, Eos: false);
    }

    /// <summary>The system prompt: the instructions, then every system message, one per line; null when there is none.</summary>
    private static string? System(List<ChatMessage> messages, string? instructions)
    {
        var parts = new List<string>();
        if (!string.IsNullOrWhiteSpace(instructions)) parts.Add(instructions.Trim());
        parts.AddRange(messages.Where(m => m.Role == ChatRole.System).Select(m => m.Text.Trim()).Where(t => t.Length > 0));
        return parts.Count == 0 ? null : string.Join('\n', parts);
    }

    /// <summary>User/assistant turns; consecutive messages of one side are joined by a newline.</summary>
    private static List<(string User, string? Assistant)> Turns(List<ChatMessage> messages)
    {
        var turns = new List<(string User, string? Assistant)>();
        foreach (var m in messages.Where(m => m.Role != ChatRole.System))
        {
            var text = ToolCalls.TextOf(m).Trim(); // tool calls and results as JSON text
            if (m.Role == ChatRole.Assistant)
            {
                if (turns.Count == 0) turns.Add(("", text));
                else turns[^1] = (turns[^1].User, turns[^1].Assistant is null ? text : turns[^1].Assistant + "\n" + text);
            }
            else if (turns.Count > 0 && turns[^1].Assistant is null)
            {
                turns[^1] = (turns[^1].User + "\n" + text, null);
            }
            else
            {
                turns.Add((text, null));
            }
        }
        return turns;
    }

    /// <summary>
    /// Meta's chat_completion layout: "[INST] {user} [/INST] {assistant} " between BOS and EOS per answered turn, the
    /// system prompt wrapped in &lt;&lt;SYS&gt;&gt; at the start of the first user text, and "[INST] {user} [/INST]" after BOS last.
    /// </summary>
    private static List<ChatPromptSegment> Llama2Chat(string? system, List<(string User, string? Assistant)> turns)
    {
        if (turns.Count == 0 || turns[^1].Assistant is not null) turns.Add(("", null));
        if (system is not null) turns[0] = ($"<<SYS>>\n{system}\n<</SYS>>\n\n{turns[0].User}", turns[0].Assistant);
        var segments = new List<ChatPromptSegment>();
        foreach (var (user, assistant) in turns)
            segments.Add(assistant is null
                ? new ChatPromptSegment($"[INST] {user} [/INST]", Bos: true, Eos: false)
                : new ChatPromptSegment($"[INST] {user} [/INST] {assistant} ", Bos: true, Eos: true));
        return segments;
    }

    /// <summary>
    /// Meta's Llama 3 Instruct layout: BOS (<c>&lt;|begin_of_text|&gt;</c>), the system prompt when there is one, then every
    /// message as <c>&lt;|start_header_id|&gt;role&lt;|end_header_id|&gt;\n\n{text, trimmed}&lt;|eot_id|&gt;</c> (tool results
    /// as the user's, laid out as JSON), then the assistant's header, where the reply begins.
    /// </summary>
    private static List<ChatPromptSegment> Llama3(string? system, List<ChatMessage> messages)
    {
        var segments = new List<ChatPromptSegment> { ChatPromptSegment.Special("<|begin_of_text|>") };
        void Message(string role, string? text)
        {
            segments.Add(ChatPromptSegment.Special("<|start_header_id|>"));
            segments.Add(new ChatPromptSegment(role, Bos: false, Eos: false));
            segments.Add(ChatPromptSegment.Special("<|end_header_id|>"));
            if (text is null) return;
            segments.Add(new ChatPromptSegment("\n\n" + text.Trim(), Bos: false, Eos: false));
            segments.Add(ChatPromptSegment.Special("<|eot_id|>"));
        }
        if (system is not null) Message("system", system);
        foreach (var m in messages.Where(m => m.Role != ChatRole.System))
            Message(m.Role == ChatRole.Assistant ? "assistant" : "user", ToolCalls.TextOf(m));
        Message("assistant", null);
        segments.Add(new ChatPromptSegment("\n\n", Bos: false, Eos: false));
        return segments;
    }

    /// <summary>
    /// ChatML: the system prompt when there is one, then every message as <c>&lt;|im_start|&gt;role\n{text, as it is}&lt;|im_end|&gt;\n</c>
    /// (tool results as the user's, laid out as JSON), then <c>&lt;|im_start|&gt;assistant\n</c>, where the reply begins.
    /// </summary>
    private static List<ChatPromptSegment> ChatML(string? system, List<ChatMessage> messages)
    {
        var segments = new List<ChatPromptSegment>();
        void Message(string role, string? text)
        {
            segments.Add(ChatPromptSegment.Special("<|im_start|>"));
            segments.Add(new ChatPromptSegment(role + "\n" + (text ?? ""), Bos: false, Eos: false));
            if (text is null) return;
            segments.Add(ChatPromptSegment.Special("<|im_end|>"));
            segments.Add(new ChatPromptSegment("\n", Bos: false, Eos: false));
        }
        if (system is not null) Message("system", system);
        foreach (var m in messages.Where(m => m.Role != ChatRole.System))
            Message(m.Role == ChatRole.Assistant ? "assistant" : "user", ToolCalls.TextOf(m)); // as Qwen's and SmolLM's templates: not trimmed
        Message("assistant", null);
        return segments;
    }

    /// <summary>FastChat's vicuna_v1.1: "{system} USER: {user} ASSISTANT: {assistant}&lt;/s&gt;USER: ... ASSISTANT:".</summary>
    private static List<ChatPromptSegment> Vicuna(string? system, List<(string User, string? Assistant)> turns)
    {
        if (turns.Count == 0 || turns[^1].Assistant is not null) turns.Add(("", null));
        var segments = new List<ChatPromptSegment>();
        var text = new StringBuilder(system ?? VicunaSystemPrompt).Append(' ');
        bool first = true;
        foreach (var (user, assistant) in turns)
        {
            text.Append("USER: ").Append(user).Append(" ASSISTANT:");
            if (assistant is null) break;
            text.Append(' ').Append(assistant);
            segments.Add(new ChatPromptSegment(text.ToString(), Bos: first, Eos: true));
            text.Clear();
            first = false;
        }
        segments.Add(new ChatPromptSegment(text.ToString(), Bos: first, Eos: false));
        return segments;
    }

    private static string? ReadJsonString(string path, string property)
    {
        if (!File.Exists(path)) return null;
        try
        {
            using var document = JsonDocument.Parse(File.ReadAllText(path));
            if (document.RootElement.ValueKind != JsonValueKind.Object || !document.RootElement.TryGetProperty(property, out var value)) return null;
            // chat_template is a string, or a list of {name, template} objects
            return value.ValueKind switch
            {
                JsonValueKind.String => value.GetString(),
                JsonValueKind.Array => string.Join('\n', value.EnumerateArray()
                    .Where(e => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("template", out var t) && t.ValueKind == JsonValueKind.String)
                    .Select(e => e.GetProperty("template").GetString())),
                _ => null,
            };
        }
        catch (JsonException)
        {
            return null; // a broken side file does not decide the template
        }
    }
}
