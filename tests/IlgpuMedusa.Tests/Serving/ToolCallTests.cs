using System.Net;
using System.Text;
using System.Text.Json;

namespace IlgpuMedusa.Tests.Serving;

/// <summary>
/// Tool calls over HTTP as OpenAI's chat completions have them: with <c>tool_choice</c> "required" or a named function
/// the reply is one call (<c>message.tool_calls</c>, <c>content</c> null, <c>finish_reason</c> "tool_calls") whose
/// arguments follow the function's parameter schema, checked here with System.Text.Json against the schema by hand;
/// streamed, the call comes as a <c>delta.tool_calls</c> chunk; a conversation may carry calls and their results; bad
/// fields are 400s naming them.
/// </summary>
public sealed class ToolCallTests(OpenAiServerFixture fixture) : IClassFixture<OpenAiServerFixture>
{
    /// <summary>Two functions whose arguments the story model can finish: enums and a boolean.</summary>
    private const string Tools = """
        [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}, "celsius": {"type": "boolean"}},
                          "required": ["city", "celsius"], "additionalProperties": false}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}}}},
         {"type": "function", "function": {"name": "ping"}}]
        """;

    private async Task<(HttpStatusCode Status, JsonElement Json)> PostAsync(string json)
    {
        using var response = await fixture.Http.PostAsync("v1/chat/completions", new StringContent(json, Encoding.UTF8, "application/json"));
        using var document = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        return (response.StatusCode, document.RootElement.Clone());
    }

    private static string Request(string toolChoice, string extra = "") =>
        $$"""{"messages": [{"role": "user", "content": "What is the weather in Paris?"}], "max_tokens": 100, "tools": {{Tools}}, "tool_choice": {{toolChoice}}{{extra}}}""";

    /// <summary>The call's arguments, checked against the function's parameters as the test's schemas say (by hand).</summary>
    private static void AssertArguments(string name, string arguments)
    {
        using var document = JsonDocument.Parse(arguments);
        var args = document.RootElement;
        Assert.Equal(JsonValueKind.Object, args.ValueKind);
        switch (name)
        {
            case "get_weather":
                Assert.Equal(["city", "celsius"], args.EnumerateObject().Select(p => p.Name));
                Assert.Contains(args.GetProperty("city").GetString(), (string[])["Paris", "Oslo"]);
                Assert.Contains(args.GetProperty("celsius").ValueKind, (JsonValueKind[])[JsonValueKind.True, JsonValueKind.False]);
                break;
            case "get_time":
                Assert.Equal(["zone"], args.EnumerateObject().Select(p => p.Name));
                Assert.Contains(args.GetProperty("zone").GetString(), (string[])["UTC", "CET"]);
                break;
            case "ping":
                Assert.Empty(args.EnumerateObject());
                break;
            default:
                Assert.Fail($"'{name}' is not one of the tools");
                break;
        }
    }

    [Theory]
    [InlineData("\"required\"", null)]
    [InlineData("{\"type\": \"function\", \"function\": {\"name\": \"get_time\"}}", "get_time")]
    [InlineData("{\"type\": \"function\", \"function\": {\"name\": \"ping\"}}", "ping")]
    public async Task ARequiredCall_IsOneCallOfATool_WithArgumentsFollowingItsParameters(string toolChoice, string? expected)
    {
        var (status, json) = await PostAsync(Request(toolChoice));
        Assert.Equal(HttpStatusCode.OK, status);
        var choice = json.GetProperty("choices")[0];
        Assert.Equal("tool_calls", choice.GetProperty("finish_reason").GetString());
        var message = choice.GetProperty("message");
        Assert.Equal(JsonValueKind.Null, message.GetProperty("content").ValueKind);
        var call = Assert.Single(message.GetProperty("tool_calls").EnumerateArray());
        Assert.StartsWith("call_", call.GetProperty("id").GetString(), StringComparison.Ordinal);
        Assert.Equal("function", call.GetProperty("type").GetString());
        string name = call.GetProperty("function").GetProperty("name").GetString()!;
        if (expected is not null) Assert.Equal(expected, name);
        AssertArguments(name, call.GetProperty("function").GetProperty("arguments").GetString()!);
    }

    [Fact]
    public async Task Streamed_TheCallComesAsAToolCallsDelta_ThenFinishReasonToolCalls()
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
        {
            Content = new StringContent(Request("{\"type\": \"function\", \"function\": {\"name\": \"get_weather\"}}", ", \"stream\": true"), Encoding.UTF8, "application/json"),
        };
        using var response = await fixture.Http.SendAsync(request);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var events = (await response.Content.ReadAsStringAsync()).Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => e["data: ".Length..]).ToList();
        Assert.Equal("[DONE]", events[^1]);
        var chunks = events.SkipLast(1).Select(e => JsonDocument.Parse(e).RootElement).ToList();
        var deltas = chunks.Select(c => c.GetProperty("choices")[0].GetProperty("delta")).ToList();
        Assert.DoesNotContain(deltas, d => d.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String && c.GetString()!.Length > 0);
        var call = Assert.Single(deltas, d => d.TryGetProperty("tool_calls", out _)).GetProperty("tool_calls")[0];
        Assert.Equal(0, call.GetProperty("index").GetInt32());
        Assert.Equal("get_weather", call.GetProperty("function").GetProperty("name").GetString());
        AssertArguments("get_weather", call.GetProperty("function").GetProperty("arguments").GetString()!);
        Assert.Equal("tool_calls", chunks[^1].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
    }

    [Fact]
    public async Task AConversationWithACallAndItsResult_IsAnswered_AndAutoLeavesTheReplyText()
    {
        var body = $$$"""
            {"messages": [{"role": "user", "content": "Weather in Oslo?"},
                          {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\", \"celsius\": true}"}}]},
                          {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": -3}"}],
             "max_tokens": 8, "tools": {{{Tools}}}}
            """;
        var (status, json) = await PostAsync(body);
        Assert.Equal(HttpStatusCode.OK, status);
        var message = json.GetProperty("choices")[0].GetProperty("message");
        Assert.Equal(JsonValueKind.String, message.GetProperty("content").ValueKind); // "auto" (the default with tools): text
        Assert.False(message.TryGetProperty("tool_calls", out _));
        Assert.NotEqual("tool_calls", json.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
    }

    /// <summary>
    /// Parameters with their own definitions (what the OpenAI Python SDK's pydantic_function_tool sends: a nested model
    /// under $defs) are followed; with "auto" the tools' schemas are not compiled at all (they are never offered), so a
    /// keyword outside the subset does not refuse the request; an empty arguments string in the history is no arguments.
    /// </summary>
    [Fact]
    public async Task ParametersWithDefinitions_AreFollowed_AndAutoDoesNotCheckSchemas()
    {
        const string pydantic = """
            [{"type": "function", "function": {"name": "adopt", "strict": true, "parameters": {"$defs": {"Pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}},
              "required": ["kind"], "additionalProperties": false}}, "type": "object", "properties": {"pet": {"$ref": "#/$defs/Pet"}, "count": {"anyOf": [{"type": "boolean"}, {"type": "null"}]}},
              "required": ["pet", "count"], "additionalProperties": false}}}]
            """;
        var (status, json) = await PostAsync($$"""{"messages": [{"role": "user", "content": "Adopt one."}], "max_tokens": 200, "tools": {{pydantic}}, "tool_choice": "required"}""");
        Assert.Equal(HttpStatusCode.OK, status);
        var call = json.GetProperty("choices")[0].GetProperty("message").GetProperty("tool_calls")[0].GetProperty("function");
        Assert.Equal("adopt", call.GetProperty("name").GetString());
        using (var arguments = JsonDocument.Parse(call.GetProperty("arguments").GetString()!))
        {
            Assert.Contains(arguments.RootElement.GetProperty("pet").GetProperty("kind").GetString(), (string[])["cat", "dog"]);
            Assert.Contains(arguments.RootElement.GetProperty("count").ValueKind, (JsonValueKind[])[JsonValueKind.True, JsonValueKind.False, JsonValueKind.Null]);
        }

        const string unsupported = """[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}]""";
        (status, _) = await PostAsync($$"""{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "tools": {{unsupported}}}""");
        Assert.Equal(HttpStatusCode.OK, status);
        (status, _) = await PostAsync("""
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]},
                          {"role": "tool", "tool_call_id": "c", "content": "ok"}], "max_tokens": 4}
            """);
        Assert.Equal(HttpStatusCode.OK, status);
    }

    [Theory]
    [InlineData("\"required\"", ", \"tools\": []", "tool_choice", "\"required\" needs \"tools\"")]
    [InlineData("{\"type\": \"function\", \"function\": {\"name\": \"nope\"}}", "", "tool_choice.function.name", "'nope' is not one of the request's tools")]
    [InlineData("\"sometimes\"", "", "tool_choice", "unknown choice 'sometimes'")]
    [InlineData("\"required\"", ", \"response_format\": {\"type\": \"json_object\"}", "response_format", "cannot be combined with a required tool call")]
    public async Task BadToolChoices_Are400sNamingTheField(string toolChoice, string extra, string param, string message)
    {
        string body = extra.StartsWith(", \"tools\"", StringComparison.Ordinal)
            ? $$"""{"messages": [{"role": "user", "content": "Hi"}], "tool_choice": {{toolChoice}}{{extra}}}"""
            : Request(toolChoice, extra);
        var (status, json) = await PostAsync(body);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal(param, json.GetProperty("error").GetProperty("param").GetString());
        Assert.Contains(message, json.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("""{"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}}}], "tool_choice": "required"}""",
        "tools[0].function.parameters", "JsonSchema at $.properties.a: keyword 'pattern' is not supported")]
    [InlineData("""{"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required", "stop": ["x"]}""", "stop", "cannot be combined with a required tool call")]
    [InlineData("""{"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required", "logprobs": true}""", "logprobs", "cannot be combined with a required tool call")]
    [InlineData("""{"tools": [{"type": "function", "function": {"name": "bad name"}}]}""", "tools[0].function.name", "1 to 64 letters")]
    [InlineData("""{"tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]}""", "tools[1].function.name", "earlier tool")]
    [InlineData("""{"tools": [{"type": "retrieval"}]}""", "tools[0].type", "only \"function\" tools")]
    [InlineData("""{"functions": [{"name": "f"}]}""", "functions", "use \"tools\"")]
    [InlineData("""{"messages": [{"role": "tool", "content": "1"}]}""", "messages[0].tool_call_id", "required")]
    [InlineData("""{"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}""",
        "messages[0].tool_calls[0].function.arguments", "expected a JSON object as a string")]
    [InlineData("""{"messages": [{"role": "user", "content": "x", "tool_calls": []}]}""", "messages[0].tool_calls", "only an assistant message")]
    public async Task BadToolsAndToolMessages_Are400sNamingTheField(string fields, string param, string message)
    {
        using var document = JsonDocument.Parse(fields);
        var body = new Dictionary<string, JsonElement>(document.RootElement.EnumerateObject().Select(p => KeyValuePair.Create(p.Name, p.Value.Clone())));
        if (!body.ContainsKey("messages")) body["messages"] = JsonDocument.Parse("""[{"role": "user", "content": "Hi"}]""").RootElement.Clone();
        var (status, json) = await PostAsync(JsonSerializer.Serialize(body));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal(param, json.GetProperty("error").GetProperty("param").GetString());
        Assert.Contains(message, json.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
    }
}
