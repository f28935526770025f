using System.Net;
using System.Text.Json;
using IlgpuMedusa.Hosting;
using IlgpuMedusa.Serving;
using Microsoft.Extensions.AI;

namespace IlgpuMedusa.Tests.Serving;

/// <summary>Request bodies of the OpenAI routes: what each field becomes, and errors that name the field.</summary>
public class OpenAiRequestsTests
{
    private const string Model = "stories15M";

    private static ChatCompletionRequest Chat(string json)
    {
        using var document = JsonDocument.Parse(json);
        return OpenAiRequests.ParseChat(document.RootElement.Clone(), Model);
    }

    private static CompletionRequest Completion(string json)
    {
        using var document = JsonDocument.Parse(json);
        return OpenAiRequests.ParseCompletion(document.RootElement.Clone(), Model, vocabularySize: 32000);
    }

    [Fact]
    public void Chat_ReadsEveryField()
    {
        var request = Chat("""
            {"model": "stories15M", "messages": [
               {"role": "system", "content": "Be brief."},
               {"role": "developer", "content": [{"type": "text", "text": "Tell "}, {"type": "text", "text": "stories."}]},
               {"role": "user", "content": "Once upon a time", "name": "kid"},
               {"role": "assistant", "content": null}],
             "max_completion_tokens": 12, "max_tokens": 99, "temperature": 0.7, "top_p": 0.9, "seed": -5,
             "stop": ["The end", "\n\n"], "stream": true, "stream_options": {"include_usage": true},
             "n": 1, "tool_choice": "none", "modalities": ["text"], "frequency_penalty": 0, "presence_penalty": 0.0, "logprobs": false, "tools": [], "response_format": {"type": "text"},
             "user": "ignored", "metadata": {"a": "b"},
             "medusa": false, "medusa_tree": "dynamic-8", "medusa_acceptance": "typical"}
            """);
        Assert.Equal([ChatRole.System, ChatRole.System, ChatRole.User, ChatRole.Assistant], request.Messages.Select(m => m.Role));
        Assert.Equal(["Be brief.", "Tell stories.", "Once upon a time", ""], request.Messages.Select(m => m.Text));
        var o = request.Options;
        Assert.Equal(12, o.MaxOutputTokens); // the newer field wins over max_tokens
        Assert.Equal(0.7f, o.Temperature);
        Assert.Equal(0.9f, o.TopP);
        Assert.Equal(-5L, o.Seed);
        Assert.Equal(["The end", "\n\n"], o.StopSequences!);
        Assert.True(request.Stream);
        Assert.True(request.IncludeUsage);
        Assert.Equal(false, o.AdditionalProperties![IlgpuMedusaChatOptionKeys.Medusa]);
        Assert.Equal("dynamic-8", o.AdditionalProperties[IlgpuMedusaChatOptionKeys.Tree]);
        Assert.Equal("typical", o.AdditionalProperties[IlgpuMedusaChatOptionKeys.Acceptance]);
    }

    [Fact]
    public void Chat_LeavesOutWhatTheRequestLeavesOut()
    {
        var request = Chat("""{"messages": [{"role": "user", "content": "Hi"}]}""");
        var o = request.Options;
        Assert.Null(o.MaxOutputTokens);
        Assert.Null(o.Temperature);
        Assert.Null(o.TopP);
        Assert.Null(o.Seed);
        Assert.Null(o.StopSequences);
        Assert.Null(o.AdditionalProperties);
        Assert.False(request.Stream);
        Assert.False(request.IncludeUsage);
        Assert.Equal(7, Chat("""{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 7}""").Options.MaxOutputTokens);
        Assert.Equal(["x"], Chat("""{"messages": [{"role": "user", "content": "Hi"}], "stop": "x"}""").Options.StopSequences!);
    }

    [Theory]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "temperature": 2.5}""", "temperature", "from 0 (greedy) to 2, got 2.5")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "temperature": "hot"}""", "temperature", "expected a number, got the string \"hot\"")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "top_p": 0}""", "top_p", "(0, 1], got 0")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "top_k": -2}""", "top_k", "integer from -1 to 2147483647, got -2")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "top_k": 2.5}""", "top_k", "got 2.5")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 0}""", "max_tokens", "integer from 1 to 2147483647, got 0")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 1.5}""", "max_completion_tokens", "got 1.5")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3000000000}""", "max_tokens", "got 3000000000")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "seed": 1.5}""", "seed", "64-bit integer")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "stop": [""]}""", "stop", "must not be empty")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "stop": ["a", 3]}""", "stop[1]", "expected a string, got 3")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "stop": ["1","2","3","4","5","6","7","8","9","10","11","12","13","14","15","16","17"]}""", "stop", "at most 16")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "n": 17}""", "n", "integer from 1 to 16, got 17")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "n": 0}""", "n", "got 0")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "frequency_penalty": 2.5}""", "frequency_penalty", "from -2 to 2, got 2.5")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "presence_penalty": "high"}""", "presence_penalty", "expected a number")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "repetition_penalty": 0}""", "repetition_penalty", "above 0")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "logit_bias": [1, 2]}""", "logit_bias", "expected an object")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"hello": 1}}""", "logit_bias", "keys must be token ids")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"-1": 1}}""", "logit_bias", "keys must be token ids")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"5": 101}}""", "logit_bias[5]", "from -100 to 100, got 101")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"5": "ban"}}""", "logit_bias[5]", "expected a number")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "logprobs": 1}""", "logprobs", "expected true or false, got 1")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 3}""", "top_logprobs", "only allowed with \"logprobs\": true")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "logprobs": true, "top_logprobs": 21}""", "top_logprobs", "integer from 0 to 20, got 21")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "tools": [{"type": "function"}]}""", "tools[0].function", "required: an object")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_schema"}}""", "response_format.json_schema", "required")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}""", "response_format.json_schema.schema", "required")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}""", "response_format.json_schema.schema", "needs a 'type'")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": "yes", "schema": {"type": "object", "properties": {}}}}}""", "response_format.json_schema.strict", "expected true or false")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}}}}""", "response_format.json_schema.schema", "$.properties.a: keyword 'pattern' is not supported")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "yaml"}}""", "response_format.type", "unknown type 'yaml'")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "response_format": "json_object"}""", "response_format", "expected an object")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "tool_choice": "required"}""", "tool_choice", "\"required\" needs \"tools\"")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "modalities": ["text", "audio"]}""", "modalities", "only [\"text\"]")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "audio": {"voice": "alloy"}}""", "audio", "text only")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "stream_options": {"include_usage": true}}""", "stream_options", "only allowed with \"stream\": true")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "stream": "yes"}""", "stream", "expected true or false")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "medusa": 1}""", "medusa", "expected true or false")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "medusa_acceptance": "lenient"}""", "medusa_acceptance", "\"greedy\" or \"typical\"")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}], "model": 7}""", "model", "expected a string")]
    [InlineData("""{"messages": "Hi"}""", "messages", "expected an array, got the string \"Hi\"")]
    [InlineData("""{"messages": []}""", "messages", "at least one message")]
    [InlineData("""{"model": "stories15M"}""", "messages", "required")]
    [InlineData("""{"messages": [{"content": "Hi"}]}""", "messages[0].role", "required")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "42"}]}""", "messages[1].tool_call_id", "required: the id of the call")]
    [InlineData("""{"messages": [{"role": "user", "content": "Hi"}, {"role": "function", "content": "42"}]}""", "messages[1].role", "use tools and the 'tool' role")]
    [InlineData("""{"messages": [{"role": "robot", "content": "Hi"}]}""", "messages[0].role", "unknown role 'robot'")]
    [InlineData("""{"messages": [{"role": "user"}]}""", "messages[0].content", "required")]
    [InlineData("""{"messages": [{"role": "user", "content": null}]}""", "messages[0].content", "expected a string or an array of text parts, got null")]
    [InlineData("""{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}""", "messages[0].content[0].type", "reads text only")]
    [InlineData("""{"messages": [{"role": "user", "content": [{"type": "text"}]}]}""", "messages[0].content[0].text", "required")]
    [InlineData("""{"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]}""", "messages[0].tool_calls[0].function", "required: an object")]
    public void Chat_BadField_IsA400NamingIt(string json, string param, string expected)
    {
        var e = Assert.Throws<OpenAiErrorException>(() => Chat(json));
        Assert.Equal(HttpStatusCode.BadRequest, e.Status);
        Assert.Equal(param, e.Param);
        Assert.Equal("invalid_request_error", e.Type);
        Assert.StartsWith(param + ": ", e.Message, StringComparison.Ordinal);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Chat_TreeMustBeAPreset_NeverAFileOnTheServer()
    {
        var path = Path.Combine(TestModels.TempDirectory("tree"), "tree.json");
        File.WriteAllText(path, "[[0], [0, 0]]"); // a valid tree file: still refused over HTTP
        foreach (var tree in new[] { path, "/etc/passwd", "../tree.json" })
        {
            var e = Assert.Throws<OpenAiErrorException>(() => Chat($$"""{"messages": [{"role": "user", "content": "Hi"}], "medusa_tree": {{JsonSerializer.Serialize(tree)}}}"""));
            Assert.Equal("medusa_tree", e.Param);
            Assert.Contains($"unknown tree '{tree}'", e.Message, StringComparison.Ordinal);
        }
        Assert.Equal("mc_sim_7b_63", Chat("""{"messages": [{"role": "user", "content": "Hi"}], "medusa_tree": "mc_sim_7b_63"}""").Options.AdditionalProperties![IlgpuMedusaChatOptionKeys.Tree]);
    }

    [Fact]
    public void Chat_AnotherModel_Is404ModelNotFound()
    {
        var e = Assert.Throws<OpenAiErrorException>(() => Chat("""{"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}"""));
        Assert.Equal(HttpStatusCode.NotFound, e.Status);
        Assert.Equal("model_not_found", e.Code);
        Assert.Equal("model", e.Param);
        Assert.Contains("'gpt-4o' is not served here; this server serves 'stories15M'", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Body_MustBeAnObject()
    {
        var e = Assert.Throws<OpenAiErrorException>(() => Chat("[1, 2]"));
        Assert.Equal(HttpStatusCode.BadRequest, e.Status);
        Assert.Contains("must be a JSON object, got an array", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Completion_ReadsPromptAndFields()
    {
        var request = Completion("""{"model": "stories15M", "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0, "stream": true, "echo": false, "best_of": 1, "logprobs": 0}""");
        Assert.Equal("Once upon a time", request.Prompt);
        Assert.Equal(5, request.Options.MaxOutputTokens);
        Assert.Equal(0f, request.Options.Temperature);
        Assert.True(request.Stream);
        Assert.Equal("x", Completion("""{"prompt": ["x"], "echo": null, "suffix": null, "best_of": null, "logprobs": null, "n": null}""").Prompt);
        Assert.Null(Completion("""{"prompt": ["x"]}""").PromptIds);
        Assert.Equal("", Completion("""{"prompt": ""}""").Prompt);
        Assert.Equal([1, 9038, 2501, 263, 931], Completion("""{"prompt": [1, 9038, 2501, 263, 931]}""").PromptIds!);
        Assert.Equal([0, 31999], Completion("""{"prompt": [[0, 31999]]}""").PromptIds!);
    }

    [Fact]
    public void LogprobFields_BecomeOptions()
    {
        Assert.Null(Chat("""{"messages": [{"role": "user", "content": "Hi"}], "logprobs": false, "top_logprobs": 0}""").TopLogprobs);
        var chat = Chat("""{"messages": [{"role": "user", "content": "Hi"}], "logprobs": true}""");
        Assert.Equal(0, chat.TopLogprobs);
        Assert.Equal(0, chat.Options.AdditionalProperties![IlgpuMedusaChatOptionKeys.Logprobs]);
        Assert.Equal(20, Chat("""{"messages": [{"role": "user", "content": "Hi"}], "logprobs": true, "top_logprobs": 20}""").TopLogprobs);
    }

    [Fact]
    public void ResponseFormat_JsonObject_IsJsonMode_OnChatAndCompletions()
    {
        var chat = Chat("""{"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_object"}}""").Options.ResponseFormat;
        Assert.Null(Assert.IsType<ChatResponseFormatJson>(chat).Schema);
        Assert.IsType<ChatResponseFormatJson>(Completion("""{"prompt": "x", "response_format": {"type": "json_object"}}""").Options.ResponseFormat);
        Assert.IsType<ChatResponseFormatText>(Chat("""{"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "text"}}""").Options.ResponseFormat);
        Assert.Null(Chat("""{"messages": [{"role": "user", "content": "Hi"}], "response_format": null}""").Options.ResponseFormat);
        var e = Assert.Throws<OpenAiErrorException>(() => Completion("""{"prompt": "x", "response_format": {"type": "json_schema"}}"""));
        Assert.Equal("response_format.json_schema", e.Param);
        var schema = Chat("""{"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_schema", "json_schema": {"name": "card", "description": "d", "strict": true, "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}}""").Options.ResponseFormat;
        var json = Assert.IsType<ChatResponseFormatJson>(schema);
        Assert.Equal("card", json.SchemaName);
        Assert.Equal("d", json.SchemaDescription);
        Assert.Equal("integer", json.Schema!.Value.GetProperty("properties").GetProperty("a").GetProperty("type").GetString());
    }

    [Fact]
    public void Penalties_AndLogitBias_BecomeOptions()
    {
        var options = Chat("""{"messages": [{"role": "user", "content": "Hi"}], "frequency_penalty": 0.5, "presence_penalty": -1, "repetition_penalty": 1.2, "logit_bias": {"13": -100, "7": 2.5}}""").Options;
        Assert.Equal(0.5f, options.FrequencyPenalty);
        Assert.Equal(-1f, options.PresencePenalty);
        Assert.Equal(1.2f, options.AdditionalProperties![IlgpuMedusaChatOptionKeys.RepetitionPenalty]);
        var biases = Assert.IsAssignableFrom<IReadOnlyDictionary<int, float>>(options.AdditionalProperties[IlgpuMedusaChatOptionKeys.LogitBias]);
        Assert.Equal(-100f, biases[13]);
        Assert.Equal(2.5f, biases[7]);
        Assert.False(Chat("""{"messages": [{"role": "user", "content": "Hi"}], "logit_bias": {}}""").Options.AdditionalProperties?.ContainsKey(IlgpuMedusaChatOptionKeys.LogitBias) ?? false);
        var e = Assert.Throws<OpenAiErrorException>(() => Completion("""{"prompt": "x", "logit_bias": {"32000": 1}}"""));
        Assert.Equal("logit_bias", e.Param);
        Assert.Contains("from 0 to 31999, got \"32000\"", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void N_IsTheNumberOfChoices()
    {
        Assert.Equal(1, Chat("""{"messages": [{"role": "user", "content": "Hi"}]}""").Choices);
        Assert.Equal(16, Chat("""{"messages": [{"role": "user", "content": "Hi"}], "n": 16}""").Choices);
        Assert.Equal(3, Completion("""{"prompt": "x", "n": 3}""").Choices);
    }

    [Fact]
    public void TopK_IsReadAsVllmDoes()
    {
        Assert.Equal(40, Chat("""{"messages": [{"role": "user", "content": "Hi"}], "top_k": 40}""").Options.TopK);
        Assert.Null(Chat("""{"messages": [{"role": "user", "content": "Hi"}], "top_k": -1}""").Options.TopK);
        Assert.Null(Completion("""{"prompt": "x", "top_k": 0}""").Options.TopK);

        var plain = Completion("""{"prompt": "x"}""");
        Assert.Null(plain.Logprobs);
        Assert.False(plain.Echo);
        Assert.False(plain.ScoreOnly);
        var scoring = Completion("""{"prompt": "x", "max_tokens": 0, "echo": true, "logprobs": 5}""");
        Assert.Equal(5, scoring.Logprobs);
        Assert.True(scoring.Echo);
        Assert.True(scoring.ScoreOnly);
        Assert.Equal(1, scoring.Options.MaxOutputTokens); // the one token the prefill gives, run and dropped
        var echo = Completion("""{"prompt": "x", "max_tokens": 3, "echo": true}""");
        Assert.True(echo.Echo);
        Assert.False(echo.ScoreOnly);
        Assert.Null(echo.Logprobs);
    }

    [Theory]
    [InlineData("""{"max_tokens": 5}""", "prompt", "required")]
    [InlineData("""{"prompt": ["a", "b"]}""", "prompt", "one request per prompt")]
    [InlineData("""{"prompt": [[1, 2], [3]]}""", "prompt", "one request per prompt")]
    [InlineData("""{"prompt": []}""", "prompt", "one request per prompt")]
    [InlineData("""{"prompt": [[]]}""", "prompt[0]", "at least one token id")]
    [InlineData("""{"prompt": [1, "a"]}""", "prompt[1]", "token id from 0 to 31999, got the string \"a\"")]
    [InlineData("""{"prompt": [1, 32000]}""", "prompt[1]", "got 32000")]
    [InlineData("""{"prompt": [[1, -1]]}""", "prompt[0][1]", "got -1")]
    [InlineData("""{"prompt": [1.5]}""", "prompt[0]", "got 1.5")]
    [InlineData("""{"prompt": 5}""", "prompt", "expected a string, got 5")]
    [InlineData("""{"prompt": "x", "echo": 1}""", "echo", "expected true or false")]
    [InlineData("""{"prompt": "x", "max_tokens": 0}""", "max_tokens", "only allowed with \"echo\": true")]
    [InlineData("""{"prompt": "x", "max_tokens": 0, "echo": true, "n": 2}""", "n", "send \"n\": 1")]
    [InlineData("""{"prompt": "x", "logprobs": true}""", "logprobs", "integer from 0 to 20, got true")]
    [InlineData("""{"prompt": "x", "logprobs": 21}""", "logprobs", "got 21")]
    [InlineData("""{"prompt": "x", "logprobs": 2, "top_logprobs": 2}""", "top_logprobs", "\"logprobs\" is the number of alternatives")]
    [InlineData("""{"prompt": "x", "suffix": "y"}""", "suffix", "not supported")]
    [InlineData("""{"prompt": "x", "best_of": 3}""", "best_of", "only 1")]
    [InlineData("""{"prompt": "x", "max_tokens": -1}""", "max_tokens", "got -1")]
    public void Completion_BadField_IsA400NamingIt(string json, string param, string expected)
    {
        var e = Assert.Throws<OpenAiErrorException>(() => Completion(json));
        Assert.Equal(HttpStatusCode.BadRequest, e.Status);
        Assert.Equal(param, e.Param);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }
}
