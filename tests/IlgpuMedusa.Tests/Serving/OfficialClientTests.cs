using System.Text;
using System.Text.Json;
using IlgpuMedusa.Tests.Hosting;

namespace IlgpuMedusa.Tests.Serving;

/// <summary>
/// OpenAI's own JavaScript SDK (npm package openai, run by node through tests/tools/openai-client/client.mjs) as the
/// client: its request building, response parsing, server-sent event reader and error objects are an independent
/// check that the server speaks the API, not just what these tests expect of it.
/// </summary>
public sealed class OfficialClientTests(OpenAiServerFixture fixture) : IClassFixture<OpenAiServerFixture>
{
    private static readonly NodeTool Tool = new("openai-client", "openai", nodeVersion: 20);

    [Fact]
    public void TheOfficialSdk_ListsChatsStreamsCompletes_AndReadsErrors()
    {
        var result = RunClient(new Uri(fixture.Server.BaseAddress, "v1").ToString(), "stories15M", HostingTestSupport.Prompt);
        Assert.Equal(["stories15M"], result.GetProperty("models").EnumerateArray().Select(m => m.GetString()));

        // 30 greedy tokens of the plain template / the completion: llama2.c's reference text, through each route.
        foreach (var name in new[] { "chat", "chatStream", "completion", "completionStream" })
        {
            var text = result.GetProperty(name).GetProperty("text").GetString()!;
            Assert.True(text.Length > 60, $"{name}: only '{text}'");
            Assert.StartsWith(HostingTestSupport.Prompt + text, HostingTestSupport.Reference, StringComparison.Ordinal);
        }
        Assert.Equal(result.GetProperty("chat").GetProperty("text").GetString(), result.GetProperty("chatStream").GetProperty("text").GetString());
        Assert.Equal(result.GetProperty("completion").GetProperty("text").GetString(), result.GetProperty("completionStream").GetProperty("text").GetString());
        Assert.Equal("length", result.GetProperty("chat").GetProperty("finish").GetString());
        Assert.Equal("length", result.GetProperty("chatStream").GetProperty("finish").GetString());
        Assert.Equal("length", result.GetProperty("completion").GetProperty("finish").GetString());
        foreach (var name in new[] { "chat", "chatStream", "completion" })
        {
            var usage = result.GetProperty(name).GetProperty("usage");
            Assert.Equal(5, usage.GetProperty("prompt_tokens").GetInt32());
            Assert.Equal(30, usage.GetProperty("completion_tokens").GetInt32());
            Assert.Equal(35, usage.GetProperty("total_tokens").GetInt32());
        }
        Assert.True(result.GetProperty("chatStream").GetProperty("chunks").GetInt32() >= 5, "the chat reply did not stream");

        // Log-probabilities as the SDK reads them: each greedy token is the first of its alternatives, the tokens spell
        // the reply, and scoring the prompt (max_tokens 0, echo) lists its tokens with no score for the first (BOS).
        var scored = result.GetProperty("chatLogprobs");
        var content = scored.GetProperty("content").EnumerateArray().ToList();
        Assert.Equal(10, content.Count);
        Assert.Equal(scored.GetProperty("text").GetString(), string.Concat(content.Select(t => t.GetProperty("token").GetString())));
        foreach (var token in content)
        {
            Assert.Equal(token.GetProperty("token").GetString(), token.GetProperty("top")[0].GetString());
            Assert.Equal(2, token.GetProperty("top").GetArrayLength());
            Assert.InRange(token.GetProperty("logprob").GetDouble(), -20, 0);
            Assert.Equal(Encoding.UTF8.GetBytes(token.GetProperty("token").GetString()!), token.GetProperty("bytes").EnumerateArray().Select(b => (byte)b.GetInt32()));
        }
        var prompt = result.GetProperty("promptScores");
        Assert.Equal(HostingTestSupport.Prompt, prompt.GetProperty("text").GetString());
        Assert.Equal(["", " Once", " upon", " a", " time"], prompt.GetProperty("tokens").EnumerateArray().Select(t => t.GetString()));
        var scores = prompt.GetProperty("tokenLogprobs").EnumerateArray().ToList();
        Assert.Equal(JsonValueKind.Null, scores[0].ValueKind);
        Assert.All(scores.Skip(1), s => Assert.InRange(s.GetDouble(), -20, 0));
        Assert.Equal(0, prompt.GetProperty("usage").GetProperty("completion_tokens").GetInt32());

        var bad = result.GetProperty("badTemperature");
        Assert.Equal(400, bad.GetProperty("status").GetInt32());
        Assert.Equal("temperature", bad.GetProperty("param").GetString());
        Assert.Contains("from 0 (greedy) to 2, got 3", bad.GetProperty("message").GetString(), StringComparison.Ordinal);
        var other = result.GetProperty("otherModel");
        Assert.Equal(404, other.GetProperty("status").GetInt32());
        Assert.Equal("model_not_found", other.GetProperty("code").GetString());

        // Structured output and JSON mode as the SDK sends them: the reply starts with the schema's first key, or an object.
        Assert.Matches("^\\{\\s?\"mood\"\\s?:\\s?\"(happy|sad)\"", result.GetProperty("structured").GetProperty("text").GetString());
        Assert.StartsWith("{", result.GetProperty("jsonMode").GetProperty("text").GetString(), StringComparison.Ordinal);
        var badSchema = result.GetProperty("badSchema");
        Assert.Equal(400, badSchema.GetProperty("status").GetInt32());
        Assert.Equal("response_format.json_schema.schema", badSchema.GetProperty("param").GetString());
        Assert.Contains("$.properties.a: keyword 'not' is not supported", badSchema.GetProperty("message").GetString(), StringComparison.Ordinal);

        // The SDK's zod helper: its schema uses anyOf with null for nullable fields, and parse() validated the reply
        // against the zod schema (it throws otherwise). The small schema always closes within the token limit.
        var zod = result.GetProperty("zod");
        Assert.Contains("anyOf", zod.GetProperty("schema").GetRawText(), StringComparison.Ordinal);
        Assert.Equal("stop", zod.GetProperty("finish").GetString());
        var parsed = zod.GetProperty("parsed");
        Assert.Contains(parsed.GetProperty("size").GetString(), (string[])["S", "M"]);
        Assert.Contains(parsed.GetProperty("ok").ValueKind, (JsonValueKind[])[JsonValueKind.True, JsonValueKind.False, JsonValueKind.Null]);
        Assert.Matches("^\\{\\s?\"ok\"", zod.GetProperty("text").GetString());

        // A required tool call, declared with the SDK's zod function helper: its arguments passed the zod schema in parse().
        var tool = result.GetProperty("tool");
        Assert.Equal("tool_calls", tool.GetProperty("finish").GetString());
        Assert.Equal(JsonValueKind.Null, tool.GetProperty("content").ValueKind);
        Assert.Equal("get_weather", tool.GetProperty("name").GetString());
        Assert.Contains(tool.GetProperty("parsed").GetProperty("city").GetString(), (string[])["Paris", "Oslo"]);
    }

    private static JsonElement RunClient(params string[] args) =>
        JsonDocument.Parse(Tool.Run("client.mjs", null, TimeSpan.FromMinutes(3), args)).RootElement.Clone();
}
