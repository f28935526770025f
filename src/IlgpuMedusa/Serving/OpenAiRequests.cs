using System.Globalization;
using System.Net;
using System.Text.Json;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Hosting;
using IlgpuMedusa.Medusa;
using Microsoft.Extensions.AI;

namespace IlgpuMedusa.Serving;

/// <summary>A parsed <c>POST /v1/chat/completions</c> body.</summary>
/// <param name="Messages">The conversation, in order.</param>
/// <param name="Options">Sampling, length, stop sequences and Medusa settings, for <see cref="IlgpuMedusaChatClient"/>.</param>
/// <param name="Stream">Whether the reply streams as server-sent events.</param>
/// <param name="IncludeUsage">With <paramref name="Stream"/>: whether a last chunk carries the token usage.</param>
/// <param name="TopLogprobs">
/// With <c>"logprobs": true</c>: how many alternatives each token lists (<c>top_logprobs</c>, 0 when absent); null when
/// log-probabilities were not asked for. Also in <paramref name="Options"/> under <see cref="IlgpuMedusaChatOptionKeys.Logprobs"/>.
/// </param>
/// <param name="Choices"><c>n</c>: how many replies to generate (1..<see cref="OpenAiRequests.MaxChoices"/>); choice i samples with seed + i.</param>
public sealed record ChatCompletionRequest(IReadOnlyList<ChatMessage> Messages, ChatOptions Options, bool Stream, bool IncludeUsage, int? TopLogprobs = null,
    int Choices = 1);

/// <summary>A parsed <c>POST /v1/completions</c> body.</summary>
/// <param name="Prompt">The text to continue (BOS is put first), or "" when <paramref name="PromptIds"/> is given.</param>
/// <param name="Options">As for chat; the server turns them into generation options the same way.</param>
/// <param name="Stream">Whether the reply streams as server-sent events.</param>
/// <param name="IncludeUsage">With <paramref name="Stream"/>: whether a last chunk carries the token usage.</param>
/// <param name="PromptIds">The prompt as token ids, used as they are (no BOS added), or null for a text prompt.</param>
/// <param name="Logprobs">
/// <c>logprobs</c>: how many alternatives each token lists besides itself (0..<see cref="GenerationOptions.MaxTopLogprobs"/>),
/// or null for no log-probabilities.
/// </param>
/// <param name="Echo"><c>echo</c>: the reply starts with the prompt (and, with <paramref name="Logprobs"/>, the prompt tokens' scores).</param>
/// <param name="ScoreOnly">
/// <c>"max_tokens": 0</c> (only with <paramref name="Echo"/>): nothing is generated, the reply is the scored prompt.
/// <paramref name="Options"/> then asks for one token, which the server runs and drops (the prefill computes it anyway).
/// </param>
/// <param name="Choices"><c>n</c>: how many continuations to generate (1..<see cref="OpenAiRequests.MaxChoices"/>); choice i samples with seed + i.</param>
public sealed record CompletionRequest(string Prompt, ChatOptions Options, bool Stream, bool IncludeUsage, IReadOnlyList<int>? PromptIds = null,
    int? Logprobs = null, bool Echo = false, bool ScoreOnly = false, int Choices = 1);

/// <summary>A parsed <c>POST /tokenize</c> body (vLLM's route): a text, or a conversation laid out by the chat template.</summary>
/// <param name="Prompt">The text, or null when <paramref name="Messages"/> is given.</param>
/// <param name="Messages">The conversation, or null for a text.</param>
/// <param name="AddSpecialTokens">Whether BOS is put before a text (<c>add_special_tokens</c>, default true; a conversation's template decides).</param>
/// <param name="ReturnTokenStrings">Whether the reply lists each token's text too (<c>return_token_strs</c>).</param>
public sealed record TokenizeRequest(string? Prompt, IReadOnlyList<ChatMessage>? Messages, bool AddSpecialTokens, bool ReturnTokenStrings);

/// <summary>
/// Reads OpenAI-style request bodies into <see cref="ChatCompletionRequest"/> and <see cref="CompletionRequest"/>. Every
/// field this server acts on is checked for type and range, and an error names the field (OpenAI's <c>param</c>) and
/// what was expected. Fields a request may carry but that would change the result in ways this runtime does not
/// implement (penalties, logit biases, tools, several choices, JSON output, audio) are refused unless they hold
/// their neutral value, rather than silently ignored; any other field is ignored (<c>user</c>, <c>metadata</c>,
/// <c>store</c>, ...).
/// </summary>
public static class OpenAiRequests
{
    /// <summary>Most stop sequences one request may give (OpenAI allows 4; a few more cost nothing here).</summary>
    public const int MaxStopSequences = 16;

    /// <summary>Most choices (<c>n</c>) one request may ask for: each is a sequence of its own in the batch and the KV cache.</summary>
    public const int MaxChoices = 16;

    /// <summary>Most entries a <c>logit_bias</c> may have.</summary>
    public const int MaxLogitBiases = 1024;

    /// <summary>Parses a chat completion request.</summary>
    /// <param name="body">The request's JSON.</param>
    /// <param name="modelId">The model this server serves: a <c>model</c> field naming another is answered with 404.</param>
    /// <param name="vocabularySize">The model's vocabulary: token ids in <c>logit_bias</c> must be below it.</param>
    /// <exception cref="OpenAiErrorException">The body is not a valid request; the message names the field.</exception>
    public static ChatCompletionRequest ParseChat(JsonElement body, string modelId, int vocabularySize = int.MaxValue)
    {
        CheckObject(body);
        CheckModel(body, modelId);
        if (!body.TryGetProperty("messages", out var messages) || messages.ValueKind == JsonValueKind.Null)
            throw OpenAiErrorException.BadRequest("messages", "required: an array of {\"role\", \"content\"} objects.");
        if (messages.ValueKind != JsonValueKind.Array) throw OpenAiErrorException.BadRequest("messages", $"expected an array, got {Describe(messages)}.");
        if (messages.GetArrayLength() == 0) throw OpenAiErrorException.BadRequest("messages", "must hold at least one message.");
        var list = new List<ChatMessage>();
        int index = 0;
        foreach (var message in messages.EnumerateArray()) list.Add(ParseMessage(message, $"messages[{index++}]"));
        RefuseUnsupported(body, chat: true);
        var options = ParseOptions(body, chat: true, vocabularySize);
        ParseTools(body, options);
        var (stream, includeUsage) = ParseStream(body);
        bool logprobs = body.TryGetProperty("logprobs", out var lp) && lp.ValueKind != JsonValueKind.Null && ReadBool(lp, "logprobs");
        int? top = body.TryGetProperty("top_logprobs", out var tl) && tl.ValueKind != JsonValueKind.Null
            ? ReadInt(tl, "top_logprobs", 0, GenerationOptions.MaxTopLogprobs)
            : null;
        if (top > 0 && !logprobs) throw OpenAiErrorException.BadRequest("top_logprobs", "only allowed with \"logprobs\": true.");
        int? topLogprobs = logprobs ? top ?? 0 : null;
        if (topLogprobs is { } count) (options.AdditionalProperties ??= [])[IlgpuMedusaChatOptionKeys.Logprobs] = count;
        return new ChatCompletionRequest(list, options, stream, includeUsage, topLogprobs, ReadChoices(body));
    }

    /// <summary>Parses a (legacy) text completion request.</summary>
    /// <param name="body">The request's JSON.</param>
    /// <param name="modelId">The model this server serves.</param>
    /// <param name="vocabularySize">The model's vocabulary: token ids in a prompt must be below it.</param>
    /// <exception cref="OpenAiErrorException">The body is not a valid request; the message names the field.</exception>
    public static CompletionRequest ParseCompletion(JsonElement body, string modelId, int vocabularySize)
    {
        CheckObject(body);
        CheckModel(body, modelId);
        if (!body.TryGetProperty("prompt", out var prompt) || prompt.ValueKind == JsonValueKind.Null)
            throw OpenAiErrorException.BadRequest("prompt", "required: the text to continue.");
        IReadOnlyList<int>? ids = null;
        string text = prompt.ValueKind switch
        {
            JsonValueKind.String => Text(prompt, "prompt"),
            // One prompt per request: a batch of prompts is several requests here (they are batched on the device anyway).
            JsonValueKind.Array when prompt.GetArrayLength() == 1 && prompt[0].ValueKind == JsonValueKind.String => Text(prompt[0], "prompt[0]"),
            JsonValueKind.Array when prompt.GetArrayLength() > 0 && prompt[0].ValueKind == JsonValueKind.Number => "",
            JsonValueKind.Array when prompt.GetArrayLength() == 1 && prompt[0].ValueKind == JsonValueKind.Array => "",
            JsonValueKind.Array => throw OpenAiErrorException.BadRequest("prompt",
                "expected a string, an array of token ids, or an array holding one of those; several prompts in one request are not supported: send one request per prompt."),
            _ => throw OpenAiErrorException.BadRequest("prompt", $"expected a string, got {Describe(prompt)}."),
        };
        if (prompt.ValueKind == JsonValueKind.Array && text.Length == 0 && prompt[0].ValueKind != JsonValueKind.String)
            ids = prompt[0].ValueKind == JsonValueKind.Array ? ReadIds(prompt[0], "prompt[0]", vocabularySize) : ReadIds(prompt, "prompt", vocabularySize);
        bool echo = body.TryGetProperty("echo", out var echoValue) && echoValue.ValueKind != JsonValueKind.Null && ReadBool(echoValue, "echo");
        int? logprobs = body.TryGetProperty("logprobs", out var lp) && lp.ValueKind != JsonValueKind.Null
            ? ReadInt(lp, "logprobs", 0, GenerationOptions.MaxTopLogprobs)
            : null;
        if (body.TryGetProperty("top_logprobs", out var top) && top.ValueKind != JsonValueKind.Null)
            throw OpenAiErrorException.BadRequest("top_logprobs", "a chat completion field: on /v1/completions, \"logprobs\" is the number of alternatives.");
        // "max_tokens": 0 with echo scores the prompt and generates nothing (how evaluation scripts score a text).
        bool scoreOnly = body.TryGetProperty("max_tokens", out var maxTokens) && maxTokens.ValueKind == JsonValueKind.Number &&
                         maxTokens.TryGetInt64(out long max) && max == 0;
        if (scoreOnly && !echo) throw OpenAiErrorException.BadRequest("max_tokens", "0 is only allowed with \"echo\": true (to score the prompt); otherwise at least 1.");
        if (scoreOnly && ReadChoices(body) > 1)
            throw OpenAiErrorException.BadRequest("n", "scoring a prompt (\"max_tokens\": 0) gives the same result for every choice: send \"n\": 1.");
        if (body.TryGetProperty("suffix", out var suffix) && suffix.ValueKind != JsonValueKind.Null)
            throw OpenAiErrorException.BadRequest("suffix", "not supported (no fill-in-the-middle).");
        if (body.TryGetProperty("best_of", out var bestOf) && bestOf.ValueKind != JsonValueKind.Null && ReadInt(bestOf, "best_of", 1, int.MaxValue) != 1)
            throw OpenAiErrorException.BadRequest("best_of", "only 1 is supported.");
        RefuseUnsupported(body, chat: false);
        var options = ParseOptions(body, chat: false, vocabularySize, minTokens: scoreOnly ? 0 : 1);
        if (scoreOnly) options.MaxOutputTokens = 1; // a valid chat option; the server runs the prompt only (MaxTokens 0)
        var (stream, includeUsage) = ParseStream(body);
        return new CompletionRequest(text, options, stream, includeUsage, ids, logprobs, echo, scoreOnly, ReadChoices(body));
    }

    /// <summary>Parses a <c>POST /tokenize</c> body: <c>prompt</c> (a string) or <c>messages</c> (as for chat), <c>add_special_tokens</c>, <c>return_token_strs</c>.</summary>
    /// <exception cref="OpenAiErrorException">The body is not a valid request; the message names the field.</exception>
    public static TokenizeRequest ParseTokenize(JsonElement body, string modelId)
    {
        CheckObject(body);
        CheckModel(body, modelId);
        bool hasPrompt = body.TryGetProperty("prompt", out var prompt) && prompt.ValueKind != JsonValueKind.Null;
        bool hasMessages = body.TryGetProperty("messages", out var messages) && messages.ValueKind != JsonValueKind.Null;
        if (hasPrompt == hasMessages)
            throw OpenAiErrorException.BadRequest(hasPrompt ? "messages" : "prompt", "give either \"prompt\" (a string) or \"messages\" (a conversation), not both.");
        bool addSpecial = !body.TryGetProperty("add_special_tokens", out var special) || special.ValueKind == JsonValueKind.Null || ReadBool(special, "add_special_tokens");
        bool strings = body.TryGetProperty("return_token_strs", out var strs) && strs.ValueKind != JsonValueKind.Null && ReadBool(strs, "return_token_strs");
        if (hasPrompt)
        {
            if (prompt.ValueKind != JsonValueKind.String) throw OpenAiErrorException.BadRequest("prompt", $"expected a string, got {Describe(prompt)}.");
            return new TokenizeRequest(Text(prompt, "prompt"), null, addSpecial, strings);
        }
        if (messages.ValueKind != JsonValueKind.Array || messages.GetArrayLength() == 0)
            throw OpenAiErrorException.BadRequest("messages", $"expected a non-empty array of messages, got {Describe(messages)}.");
        var list = new List<ChatMessage>();
        int index = 0;
        foreach (var message in messages.EnumerateArray()) list.Add(ParseMessage(message, $"messages[{index++}]"));
        return new TokenizeRequest(null, list, addSpecial, strings);
    }

    /// <summary>Parses a <c>POST /detokenize</c> body: <c>tokens</c>, ids below <paramref name="vocabularySize"/>.</summary>
    /// <exception cref="OpenAiErrorException">The body is not a valid request; the message names the field.</exception>
    public static int[] ParseDetokenize(JsonElement body, string modelId, int vocabularySize)
    {
        CheckObject(body);
        CheckModel(body, modelId);
        if (!body.TryGetProperty("tokens", out var tokens) || tokens.ValueKind != JsonValueKind.Array)
            throw OpenAiErrorException.BadRequest("tokens", "required: an array of token ids.");
        return tokens.GetArrayLength() == 0 ? [] : ReadIds(tokens, "tokens", vocabularySize);
    }

    /// <summary>Token ids, each in [0, <paramref name="vocabularySize"/>); at least one.</summary>
    private static int[] ReadIds(JsonElement array, string name, int vocabularySize)
    {
        var ids = new int[array.GetArrayLength()];
        if (ids.Length == 0) throw OpenAiErrorException.BadRequest(name, "expected at least one token id.");
        int i = 0;
        foreach (var item in array.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt32(out int id) || id < 0 || id >= vocabularySize)
                throw OpenAiErrorException.BadRequest($"{name}[{i}]", $"expected a token id from 0 to {vocabularySize - 1}, got {Describe(item)}.");
            ids[i++] = id;
        }
        return ids;
    }

    private static void CheckObject(JsonElement body)
    {
        if (body.ValueKind != JsonValueKind.Object)
            throw new OpenAiErrorException(HttpStatusCode.BadRequest, $"the request body must be a JSON object, got {Describe(body)}.");
    }

    private static void CheckModel(JsonElement body, string modelId)
    {
        if (!body.TryGetProperty("model", out var model) || model.ValueKind == JsonValueKind.Null) return; // the one model served
        if (model.ValueKind != JsonValueKind.String) throw OpenAiErrorException.BadRequest("model", $"expected a string, got {Describe(model)}.");
        var name = Text(model, "model");
        if (!string.Equals(name, modelId, StringComparison.Ordinal))
            throw new OpenAiErrorException(HttpStatusCode.NotFound, $"model '{Shorten(name)}' is not served here; this server serves '{modelId}' (see GET /v1/models).",
                "model", code: "model_not_found");
    }

    private static ChatMessage ParseMessage(JsonElement message, string path)
    {
        if (message.ValueKind != JsonValueKind.Object) throw OpenAiErrorException.BadRequest(path, $"expected an object with \"role\" and \"content\", got {Describe(message)}.");
        if (!message.TryGetProperty("role", out var roleElement) || roleElement.ValueKind != JsonValueKind.String)
            throw OpenAiErrorException.BadRequest($"{path}.role", "required: \"system\", \"developer\", \"user\" or \"assistant\".");
        var roleName = Text(roleElement, $"{path}.role");
        ChatRole role = roleName switch
        {
            "system" or "developer" => ChatRole.System,
            "user" => ChatRole.User,
            "assistant" => ChatRole.Assistant,
            "tool" => ChatRole.Tool,
            "function" => throw OpenAiErrorException.BadRequest($"{path}.role", "'function' (the deprecated function calling) is not supported; use tools and the 'tool' role."),
            _ => throw OpenAiErrorException.BadRequest($"{path}.role", $"unknown role '{Shorten(roleName)}'; expected \"system\", \"developer\", \"user\", \"assistant\" or \"tool\"."),
        };
        var calls = new List<AIContent>();
        if (message.TryGetProperty("tool_calls", out var toolCalls) && toolCalls.ValueKind != JsonValueKind.Null)
        {
            if (role != ChatRole.Assistant) throw OpenAiErrorException.BadRequest($"{path}.tool_calls", "only an assistant message carries tool calls.");
            if (toolCalls.ValueKind != JsonValueKind.Array) throw OpenAiErrorException.BadRequest($"{path}.tool_calls", $"expected an array, got {Describe(toolCalls)}.");
            int c = 0;
            foreach (var call in toolCalls.EnumerateArray()) calls.Add(ParseToolCall(call, $"{path}.tool_calls[{c++}]"));
        }
        if (role == ChatRole.Tool)
        {
            if (!message.TryGetProperty("tool_call_id", out var callId) || callId.ValueKind != JsonValueKind.String)
                throw OpenAiErrorException.BadRequest($"{path}.tool_call_id", "required: the id of the call this message answers.");
            var result = message.TryGetProperty("content", out var resultContent) ? MessageText(resultContent, role, path) : "";
            return new ChatMessage(ChatRole.Tool, [new FunctionResultContent(Text(callId, $"{path}.tool_call_id"), result)]);
        }
        if (!message.TryGetProperty("content", out var content))
        {
            if (calls.Count > 0) return new ChatMessage(role, calls);
            throw OpenAiErrorException.BadRequest($"{path}.content", "required: a string or an array of text parts.");
        }
        string text = MessageText(content, role, path);
        if (calls.Count == 0) return new ChatMessage(role, text);
        if (text.Length > 0) calls.Insert(0, new TextContent(text));
        return new ChatMessage(role, calls);
    }

    /// <summary>An assistant message's tool call: <c>{"id", "type": "function", "function": {"name", "arguments"}}</c>, the arguments a JSON object as a string.</summary>
    private static FunctionCallContent ParseToolCall(JsonElement call, string path)
    {
        if (call.ValueKind != JsonValueKind.Object) throw OpenAiErrorException.BadRequest(path, $"expected an object {{\"id\", \"type\": \"function\", \"function\"}}, got {Describe(call)}.");
        if (!call.TryGetProperty("id", out var id) || id.ValueKind != JsonValueKind.String) throw OpenAiErrorException.BadRequest($"{path}.id", "required: a string.");
        if (call.TryGetProperty("type", out var type) && type.ValueKind != JsonValueKind.Null && !(type.ValueKind == JsonValueKind.String && type.GetString() == "function"))
            throw OpenAiErrorException.BadRequest($"{path}.type", "only \"function\" is supported.");
        if (!call.TryGetProperty("function", out var function) || function.ValueKind != JsonValueKind.Object)
            throw OpenAiErrorException.BadRequest($"{path}.function", "required: an object {\"name\", \"arguments\"}.");
        if (!function.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String) throw OpenAiErrorException.BadRequest($"{path}.function.name", "required: a string.");
        var arguments = new Dictionary<string, object?>();
        if (function.TryGetProperty("arguments", out var text) && text.ValueKind != JsonValueKind.Null && !(text.ValueKind == JsonValueKind.String && text.GetString()!.Trim().Length == 0))
        {
            if (text.ValueKind != JsonValueKind.String) throw OpenAiErrorException.BadRequest($"{path}.function.arguments", $"expected a JSON object as a string, got {Describe(text)}.");
            try
            {
                using var document = JsonDocument.Parse(Text(text, $"{path}.function.arguments"), new JsonDocumentOptions { MaxDepth = 64 });
                if (document.RootElement.ValueKind != JsonValueKind.Object) throw new JsonException("not an object");
                foreach (var property in document.RootElement.EnumerateObject()) arguments[property.Name] = property.Value.Clone();
            }
            catch (JsonException e)
            {
                throw OpenAiErrorException.BadRequest($"{path}.function.arguments", $"expected a JSON object as a string ({e.Message}).");
            }
        }
        return new FunctionCallContent(Text(id, $"{path}.id"), Text(name, $"{path}.function.name"), arguments);
    }

    /// <summary>A message's content: a string, an array of text parts, or (an assistant's, a tool's) null.</summary>
    private static string MessageText(JsonElement content, ChatRole role, string path)
    {
        string text;
        switch (content.ValueKind)
        {
            case JsonValueKind.String:
                text = Text(content, $"{path}.content");
                break;
            case JsonValueKind.Null when role == ChatRole.Assistant || role == ChatRole.Tool:
                text = "";
                break;
            case JsonValueKind.Array:
                var parts = new System.Text.StringBuilder();
                int i = 0;
                foreach (var part in content.EnumerateArray())
                {
                    var partPath = $"{path}.content[{i++}]";
                    if (part.ValueKind != JsonValueKind.Object || !part.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String)
                        throw OpenAiErrorException.BadRequest(partPath, "expected an object {\"type\": \"text\", \"text\": ...}.");
                    var typeName = Text(type, $"{partPath}.type");
                    if (typeName != "text")
                        throw OpenAiErrorException.BadRequest($"{partPath}.type", $"'{Shorten(typeName)}' is not supported: this model reads text only.");
                    if (!part.TryGetProperty("text", out var partText) || partText.ValueKind != JsonValueKind.String)
                        throw OpenAiErrorException.BadRequest($"{partPath}.text", "required: a string.");
                    parts.Append(Text(partText, $"{partPath}.text"));
                }
                text = parts.ToString();
                break;
            default:
                throw OpenAiErrorException.BadRequest($"{path}.content", $"expected a string or an array of text parts, got {Describe(content)}.");
        }
        return text;
    }

    /// <summary>Most functions one request may offer.</summary>
    public const int MaxTools = 128;

    /// <summary>
    /// <c>tools</c> (functions: name, description, parameters as a JSON schema), <c>tool_choice</c> (<c>"none"</c>,
    /// <c>"auto"</c>, <c>"required"</c> or <c>{"type": "function", "function": {"name": ...}}</c>) and
    /// <c>parallel_tool_calls</c> (read; a reply makes one call). A required call constrains the reply to one
    /// (<see cref="ToolCalls"/>; the functions' parameters are checked then); with "auto" the tools are not offered to the
    /// model and the reply is text. With a required call, <c>response_format</c>, <c>stop</c> and <c>logprobs</c> are refused.
    /// </summary>
    private static void ParseTools(JsonElement body, ChatOptions options)
    {
        var declarations = new List<AIFunctionDeclaration>();
        if (body.TryGetProperty("tools", out var tools) && tools.ValueKind != JsonValueKind.Null)
        {
            if (tools.ValueKind != JsonValueKind.Array) throw OpenAiErrorException.BadRequest("tools", $"expected an array of {{\"type\": \"function\", \"function\": {{...}}}} objects, got {Describe(tools)}.");
            if (tools.GetArrayLength() > MaxTools) throw OpenAiErrorException.BadRequest("tools", $"at most {MaxTools} tools, got {tools.GetArrayLength()}.");
            int i = 0;
            foreach (var tool in tools.EnumerateArray())
            {
                string path = $"tools[{i++}]";
                if (tool.ValueKind != JsonValueKind.Object) throw OpenAiErrorException.BadRequest(path, $"expected an object {{\"type\": \"function\", \"function\": {{...}}}}, got {Describe(tool)}.");
                if (!tool.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String || type.GetString() != "function")
                    throw OpenAiErrorException.BadRequest($"{path}.type", "only \"function\" tools are supported.");
                if (!tool.TryGetProperty("function", out var function) || function.ValueKind != JsonValueKind.Object)
                    throw OpenAiErrorException.BadRequest($"{path}.function", "required: an object {\"name\", \"description\", \"parameters\"}.");
                if (!function.TryGetProperty("name", out var nameElement) || nameElement.ValueKind != JsonValueKind.String)
                    throw OpenAiErrorException.BadRequest($"{path}.function.name", "required: a string.");
                string name = Text(nameElement, $"{path}.function.name");
                if (name.Length is 0 or > 64 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-'))
                    throw OpenAiErrorException.BadRequest($"{path}.function.name", $"'{Shorten(name)}': 1 to 64 letters, digits, underscores or dashes.");
                if (declarations.Any(d => d.Name == name)) throw OpenAiErrorException.BadRequest($"{path}.function.name", $"'{name}' is the name of an earlier tool too.");
                string? description = function.TryGetProperty("description", out var d) && d.ValueKind == JsonValueKind.String ? Text(d, $"{path}.function.description") : null;
                var parameters = function.TryGetProperty("parameters", out var p) && p.ValueKind != JsonValueKind.Null ? p.Clone() : default;
                if (parameters.ValueKind is not (JsonValueKind.Undefined or JsonValueKind.Object))
                    throw OpenAiErrorException.BadRequest($"{path}.function.parameters", $"expected a JSON schema object, got {Describe(parameters)}.");
                if (function.TryGetProperty("strict", out var strict) && strict.ValueKind is not (JsonValueKind.True or JsonValueKind.False or JsonValueKind.Null))
                    throw OpenAiErrorException.BadRequest($"{path}.function.strict", $"expected true or false, got {Describe(strict)}.");
                declarations.Add(AIFunctionFactory.CreateDeclaration(name, description, parameters.ValueKind == JsonValueKind.Undefined ? EmptyParameters : parameters));
            }
        }
        if (body.TryGetProperty("parallel_tool_calls", out var parallel) && parallel.ValueKind != JsonValueKind.Null) ReadBool(parallel, "parallel_tool_calls");
        ChatToolMode? mode = declarations.Count > 0 ? ChatToolMode.Auto : null;
        if (body.TryGetProperty("tool_choice", out var choice) && choice.ValueKind != JsonValueKind.Null)
        {
            if (choice.ValueKind == JsonValueKind.String)
            {
                mode = Text(choice, "tool_choice") switch
                {
                    "none" => ChatToolMode.None,
                    "auto" => declarations.Count > 0 ? ChatToolMode.Auto : null,
                    "required" when declarations.Count > 0 => ChatToolMode.RequireAny,
                    "required" => throw OpenAiErrorException.BadRequest("tool_choice", "\"required\" needs \"tools\" to choose from."),
                    var other => throw OpenAiErrorException.BadRequest("tool_choice", $"unknown choice '{Shorten(other)}'; expected \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}."),
                };
            }
            else
            {
                if (choice.ValueKind != JsonValueKind.Object || !choice.TryGetProperty("function", out var chosen) || chosen.ValueKind != JsonValueKind.Object ||
                    !chosen.TryGetProperty("name", out var chosenName) || chosenName.ValueKind != JsonValueKind.String)
                    throw OpenAiErrorException.BadRequest("tool_choice", $"expected \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {Describe(choice)}.");
                string name = Text(chosenName, "tool_choice.function.name");
                if (!declarations.Any(f => f.Name == name))
                    throw OpenAiErrorException.BadRequest("tool_choice.function.name", $"'{Shorten(name)}' is not one of the request's tools.");
                mode = ChatToolMode.RequireSpecific(name);
            }
        }
        if (mode is RequiredChatToolMode required)
        {
            if (options.ResponseFormat is ChatResponseFormatJson)
                throw OpenAiErrorException.BadRequest("response_format", "cannot be combined with a required tool call (tool_choice): the reply is the call.");
            if (options.StopSequences is { Count: > 0 })
                throw OpenAiErrorException.BadRequest("stop", "cannot be combined with a required tool call (tool_choice): a stop sequence would cut the call.");
            if (body.TryGetProperty("logprobs", out var lp) && lp.ValueKind == JsonValueKind.True)
                throw OpenAiErrorException.BadRequest("logprobs", "cannot be combined with a required tool call (tool_choice): the call comes whole, without its tokens.");
            // The functions a call may name are checked now (those of "auto" are never offered to the model): each alone,
            // naming it, then together.
            var callable = required.RequiredFunctionName is { } only ? declarations.Where(d => d.Name == only).ToList() : declarations;
            foreach (var declaration in callable)
            {
                try
                {
                    ToolCalls.CallSchema([declaration]);
                }
                catch (ArgumentException e)
                {
                    throw OpenAiErrorException.BadRequest($"tools[{declarations.IndexOf(declaration)}].function.parameters", ToolCalls.ParameterMessage(e.Message));
                }
            }
            try
            {
                ToolCalls.CallSchema(callable);
            }
            catch (ArgumentException e)
            {
                throw OpenAiErrorException.BadRequest("tools", $"the tools' call schema: {e.Message}");
            }
        }
        if (declarations.Count > 0) options.Tools = [.. declarations];
        options.ToolMode = mode;
    }

    private static readonly JsonElement EmptyParameters = JsonDocument.Parse("""{"type": "object", "properties": {}}""").RootElement.Clone();

    /// <summary>Fields that would change the output in ways this runtime does not implement: refused unless neutral.</summary>
    private static void RefuseUnsupported(JsonElement body, bool chat)
    {
        if (!chat) return;
        foreach (var legacy in (string[])["functions", "function_call"])
            if (body.TryGetProperty(legacy, out var value) && value.ValueKind != JsonValueKind.Null &&
                !(value.ValueKind == JsonValueKind.Array && value.GetArrayLength() == 0))
                throw OpenAiErrorException.BadRequest(legacy, "the deprecated function calling is not supported; use \"tools\" and \"tool_choice\".");
        if (body.TryGetProperty("modalities", out var modalities) && modalities.ValueKind != JsonValueKind.Null &&
            !(modalities.ValueKind == JsonValueKind.Array && modalities.EnumerateArray().All(m => m.ValueKind == JsonValueKind.String && Text(m, "modalities") == "text")))
            throw OpenAiErrorException.BadRequest("modalities", "only [\"text\"] is supported.");
        if (body.TryGetProperty("audio", out var audio) && audio.ValueKind != JsonValueKind.Null)
            throw OpenAiErrorException.BadRequest("audio", "not supported: this model reads and writes text only.");
    }

    /// <summary>
    /// The length, sampling, stop and Medusa fields. Ranges are checked here so that the chat client's own checks never
    /// see a bad value (its messages name .NET properties, not request fields).
    /// </summary>
    private static ChatOptions ParseOptions(JsonElement body, bool chat, int vocabularySize, int minTokens = 1)
    {
        var options = new ChatOptions();
        // Chat requests name the length max_completion_tokens now and max_tokens before; either is read, the newer first.
        foreach (var name in chat ? (string[])["max_completion_tokens", "max_tokens"] : ["max_tokens"])
            if (body.TryGetProperty(name, out var max) && max.ValueKind != JsonValueKind.Null)
            {
                options.MaxOutputTokens = ReadInt(max, name, minTokens, int.MaxValue);
                break;
            }
        if (body.TryGetProperty("temperature", out var temperature) && temperature.ValueKind != JsonValueKind.Null)
        {
            double t = ReadNumber(temperature, "temperature");
            if (!(t >= 0 && t <= 2)) throw OpenAiErrorException.BadRequest("temperature", $"expected a number from 0 (greedy) to 2, got {Format(t)}.");
            options.Temperature = (float)t;
        }
        if (body.TryGetProperty("top_p", out var topP) && topP.ValueKind != JsonValueKind.Null)
        {
            double p = ReadNumber(topP, "top_p");
            // Checked as the float it becomes: 1e-300 is above 0 but rounds to 0f.
            if (!((float)p > 0 && p <= 1)) throw OpenAiErrorException.BadRequest("top_p", $"expected a number in (0, 1], got {Format(p)}.");
            options.TopP = (float)p;
        }
        if (body.TryGetProperty("top_k", out var topK) && topK.ValueKind != JsonValueKind.Null)
        {
            // vLLM's extension: -1 (or 0) keeps every token.
            int k = ReadInt(topK, "top_k", -1, int.MaxValue);
            if (k > 0) options.TopK = k;
        }
        if (body.TryGetProperty("seed", out var seed) && seed.ValueKind != JsonValueKind.Null)
        {
            if (seed.ValueKind != JsonValueKind.Number || !seed.TryGetInt64(out long value))
                throw OpenAiErrorException.BadRequest("seed", $"expected a 64-bit integer, got {Describe(seed)}.");
            options.Seed = value;
        }
        if (body.TryGetProperty("stop", out var stop) && stop.ValueKind != JsonValueKind.Null)
            options.StopSequences = ReadStops(stop);
        ReadMedusa(body, options);
        ReadPenalties(body, options, vocabularySize);
        ReadResponseFormat(body, options);
        return options;
    }

    /// <summary>
    /// <c>response_format</c>: <c>{"type": "text"}</c>, <c>{"type": "json_object"}</c> (JSON mode: the reply is one JSON
    /// object) or <c>{"type": "json_schema", ...}</c> (structured output; the supported subset of JSON Schema is
    /// <see cref="IlgpuMedusa.Generation.Constraints.CompiledJsonSchema"/>'s). Read on completions too, as vLLM does.
    /// </summary>
    private static void ReadResponseFormat(JsonElement body, ChatOptions options)
    {
        if (!body.TryGetProperty("response_format", out var format) || format.ValueKind == JsonValueKind.Null) return;
        if (format.ValueKind != JsonValueKind.Object || !format.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String)
            throw OpenAiErrorException.BadRequest("response_format", $"expected an object {{\"type\": \"text\"}}, {{\"type\": \"json_object\"}} or {{\"type\": \"json_schema\", ...}}, got {Describe(format)}.");
        options.ResponseFormat = Text(type, "response_format.type") switch
        {
            "text" => ChatResponseFormat.Text,
            "json_object" => ChatResponseFormat.Json,
            "json_schema" => ReadJsonSchema(format),
            var other => throw OpenAiErrorException.BadRequest("response_format.type", $"unknown type '{Shorten(other)}'; expected \"text\", \"json_object\" or \"json_schema\"."),
        };
    }

    /// <summary><c>{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}</c>: the schema compiled here, so that an unsupported one is a 400 naming it.</summary>
    private static ChatResponseFormatJson ReadJsonSchema(JsonElement format)
    {
        if (!format.TryGetProperty("json_schema", out var definition) || definition.ValueKind != JsonValueKind.Object)
            throw OpenAiErrorException.BadRequest("response_format.json_schema", "required with \"type\": \"json_schema\": an object {\"name\": ..., \"schema\": {...}}.");
        if (!definition.TryGetProperty("schema", out var schema) || schema.ValueKind != JsonValueKind.Object)
            throw OpenAiErrorException.BadRequest("response_format.json_schema.schema", "required: the JSON schema, an object.");
        if (definition.TryGetProperty("strict", out var strict) && strict.ValueKind is not (JsonValueKind.True or JsonValueKind.False or JsonValueKind.Null))
            throw OpenAiErrorException.BadRequest("response_format.json_schema.strict", $"expected true or false, got {Describe(strict)}.");
        string? name = definition.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String ? Text(n, "response_format.json_schema.name") : null;
        string? description = definition.TryGetProperty("description", out var d) && d.ValueKind == JsonValueKind.String ? Text(d, "response_format.json_schema.description") : null;
        try
        {
            IlgpuMedusa.Generation.Constraints.CompiledJsonSchema.Compile(schema.GetRawText());
        }
        catch (ArgumentException e)
        {
            throw OpenAiErrorException.BadRequest("response_format.json_schema.schema", e.Message);
        }
        return ChatResponseFormat.ForJsonSchema(schema.Clone(), name, description);
    }

    /// <summary>
    /// OpenAI's <c>frequency_penalty</c>, <c>presence_penalty</c> (−2 to 2) and <c>logit_bias</c> (token id → −100 to 100),
    /// and vLLM's <c>repetition_penalty</c> (above 0).
    /// </summary>
    private static void ReadPenalties(JsonElement body, ChatOptions options, int vocabularySize)
    {
        foreach (var name in (string[])["frequency_penalty", "presence_penalty"])
        {
            if (!body.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) continue;
            double penalty = ReadNumber(value, name);
            if (!(penalty >= -2 && penalty <= 2)) throw OpenAiErrorException.BadRequest(name, $"expected a number from -2 to 2, got {Format(penalty)}.");
            if (name == "frequency_penalty") options.FrequencyPenalty = (float)penalty;
            else options.PresencePenalty = (float)penalty;
        }
        if (body.TryGetProperty(IlgpuMedusaChatOptionKeys.RepetitionPenalty, out var repetition) && repetition.ValueKind != JsonValueKind.Null)
        {
            double penalty = ReadNumber(repetition, IlgpuMedusaChatOptionKeys.RepetitionPenalty);
            if (!((float)penalty > 0 && double.IsFinite(penalty) && penalty <= 100))
                throw OpenAiErrorException.BadRequest(IlgpuMedusaChatOptionKeys.RepetitionPenalty, $"expected a number above 0 and at most 100 (1: no penalty), got {Format(penalty)}.");
            (options.AdditionalProperties ??= [])[IlgpuMedusaChatOptionKeys.RepetitionPenalty] = (float)penalty;
        }
        if (body.TryGetProperty("logit_bias", out var bias) && bias.ValueKind != JsonValueKind.Null)
        {
            if (bias.ValueKind != JsonValueKind.Object) throw OpenAiErrorException.BadRequest("logit_bias", $"expected an object mapping token ids to biases, got {Describe(bias)}.");
            var biases = new Dictionary<int, float>();
            foreach (var entry in bias.EnumerateObject())
            {
                if (biases.Count == MaxLogitBiases) throw OpenAiErrorException.BadRequest("logit_bias", $"at most {MaxLogitBiases} entries.");
                var key = entry.Name;
                if (!int.TryParse(key, NumberStyles.None, CultureInfo.InvariantCulture, out int token) || token >= vocabularySize)
                    throw OpenAiErrorException.BadRequest("logit_bias", $"keys must be token ids from 0 to {vocabularySize - 1}, got \"{Shorten(key)}\".");
                double value = ReadNumber(entry.Value, $"logit_bias[{token}]");
                if (!(value >= -100 && value <= 100))
                    throw OpenAiErrorException.BadRequest($"logit_bias[{token}]", $"expected a number from -100 to 100, got {Format(value)}.");
                biases[token] = (float)value;
            }
            if (biases.Count > 0) (options.AdditionalProperties ??= [])[IlgpuMedusaChatOptionKeys.LogitBias] = biases;
        }
    }

    private static List<string> ReadStops(JsonElement stop)
    {
        var stops = new List<string>();
        if (stop.ValueKind == JsonValueKind.String) stops.Add(Text(stop, "stop"));
        else if (stop.ValueKind == JsonValueKind.Array)
        {
            int i = 0;
            foreach (var item in stop.EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.String) throw OpenAiErrorException.BadRequest($"stop[{i}]", $"expected a string, got {Describe(item)}.");
                stops.Add(Text(item, $"stop[{i}]"));
                i++;
            }
        }
        else throw OpenAiErrorException.BadRequest("stop", $"expected a string or an array of strings, got {Describe(stop)}.");
        if (stops.Count > MaxStopSequences) throw OpenAiErrorException.BadRequest("stop", $"at most {MaxStopSequences} stop sequences, got {stops.Count}.");
        if (stops.Any(string.IsNullOrEmpty)) throw OpenAiErrorException.BadRequest("stop", "stop sequences must not be empty strings.");
        return stops;
    }

    /// <summary>
    /// This server's own fields: <c>medusa</c> (bool), <c>medusa_tree</c> (a preset name; never a file path, which would
    /// let a client make the server read its files) and <c>medusa_acceptance</c> (greedy or typical).
    /// </summary>
    private static void ReadMedusa(JsonElement body, ChatOptions options)
    {
        var extra = new AdditionalPropertiesDictionary();
        if (body.TryGetProperty(IlgpuMedusaChatOptionKeys.Medusa, out var medusa) && medusa.ValueKind != JsonValueKind.Null)
            extra[IlgpuMedusaChatOptionKeys.Medusa] = ReadBool(medusa, IlgpuMedusaChatOptionKeys.Medusa);
        if (body.TryGetProperty(IlgpuMedusaChatOptionKeys.Tree, out var tree) && tree.ValueKind != JsonValueKind.Null)
        {
            if (tree.ValueKind != JsonValueKind.String) throw OpenAiErrorException.BadRequest(IlgpuMedusaChatOptionKeys.Tree, $"expected a preset name, got {Describe(tree)}.");
            var name = Text(tree, IlgpuMedusaChatOptionKeys.Tree);
            if (!TreePresets.IsKnown(name))
                throw OpenAiErrorException.BadRequest(IlgpuMedusaChatOptionKeys.Tree, $"unknown tree '{Shorten(name)}'; {TreePresets.Choices}.");
            extra[IlgpuMedusaChatOptionKeys.Tree] = name;
        }
        if (body.TryGetProperty(IlgpuMedusaChatOptionKeys.Acceptance, out var acceptance) && acceptance.ValueKind != JsonValueKind.Null)
        {
            var text = acceptance.ValueKind == JsonValueKind.String ? Text(acceptance, IlgpuMedusaChatOptionKeys.Acceptance) : "";
            if (text is not ("greedy" or "typical"))
                throw OpenAiErrorException.BadRequest(IlgpuMedusaChatOptionKeys.Acceptance, $"expected \"greedy\" or \"typical\", got {Describe(acceptance)}.");
            extra[IlgpuMedusaChatOptionKeys.Acceptance] = text;
        }
        if (extra.Count > 0) options.AdditionalProperties = extra;
    }

    private static int ReadChoices(JsonElement body) =>
        body.TryGetProperty("n", out var n) && n.ValueKind != JsonValueKind.Null ? ReadInt(n, "n", 1, MaxChoices) : 1;

    private static (bool Stream, bool IncludeUsage) ParseStream(JsonElement body)
    {
        bool stream = body.TryGetProperty("stream", out var s) && s.ValueKind != JsonValueKind.Null && ReadBool(s, "stream");
        bool usage = false;
        if (body.TryGetProperty("stream_options", out var so) && so.ValueKind != JsonValueKind.Null)
        {
            if (so.ValueKind != JsonValueKind.Object) throw OpenAiErrorException.BadRequest("stream_options", $"expected an object, got {Describe(so)}.");
            if (!stream) throw OpenAiErrorException.BadRequest("stream_options", "only allowed with \"stream\": true.");
            usage = so.TryGetProperty("include_usage", out var u) && u.ValueKind != JsonValueKind.Null && ReadBool(u, "stream_options.include_usage");
        }
        return (stream, usage);
    }

    private static bool ReadBool(JsonElement value, string name) => value.ValueKind switch
    {
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => throw OpenAiErrorException.BadRequest(name, $"expected true or false, got {Describe(value)}."),
    };

    private static double ReadNumber(JsonElement value, string name)
    {
        if (value.ValueKind != JsonValueKind.Number) throw OpenAiErrorException.BadRequest(name, $"expected a number, got {Describe(value)}.");
        return value.GetDouble();
    }

    private static int ReadInt(JsonElement value, string name, int min, int max)
    {
        if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt64(out long n) || n < min || n > max)
            throw OpenAiErrorException.BadRequest(name, $"expected an integer from {min} to {max}, got {Describe(value)}.");
        return (int)n;
    }

    /// <summary>A string field's text; an escaped lone surrogate (valid JSON, not valid text) is a 400 naming the field.</summary>
    private static string Text(JsonElement value, string name)
    {
        try
        {
            return value.GetString()!;
        }
        catch (InvalidOperationException)
        {
            throw OpenAiErrorException.BadRequest(name, "the string is not valid Unicode text (an unpaired surrogate escape).");
        }
    }

    /// <summary>A client's value in a message, cut to 80 characters.</summary>
    internal static string Shorten(string text) => text.Length <= 80 ? text : text[..80] + "…";

    private static string Format(double value) => value.ToString("R", CultureInfo.InvariantCulture);

    /// <summary>A short description of a JSON value for error messages (the value itself when short).</summary>
    internal static string Describe(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => value.GetRawText() is { Length: <= 42 } raw && !raw.Contains('\\') ? $"the string {raw}" : "a string",
        JsonValueKind.Number => value.GetRawText().Length <= 40 ? value.GetRawText() : "a number",
        JsonValueKind.True => "true",
        JsonValueKind.False => "false",
        _ => "null",
    };
}
