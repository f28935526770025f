using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Hosting;
using IlgpuMedusa.Serving;
using IlgpuMedusa.Tests.Hosting;

namespace IlgpuMedusa.Tests.Serving;

/// <summary>One engine on the demo model (host backend) and an OpenAI server on it, shared by a class's tests.</summary>
public sealed class OpenAiServerFixture : IAsyncLifetime
{
    public InferenceEngine Engine { get; } = HostingTestSupport.LoadEngine();

    public IlgpuMedusaChatClient Chat { get; private set; } = null!;

    public OpenAiServer Server { get; private set; } = null!;

    public RecordingLoggerFactory Log { get; } = new();

    public HttpClient Http { get; } = new() { Timeout = TimeSpan.FromMinutes(2) };

    public Task InitializeAsync()
    {
        Chat = new IlgpuMedusaChatClient(Engine);
        Server = StartServer(new OpenAiServerOptions());
        Http.BaseAddress = Server.BaseAddress;
        return Task.CompletedTask;
    }

    /// <summary>Another server on the same engine, on a free port.</summary>
    public OpenAiServer StartServer(OpenAiServerOptions options)
    {
        var server = new OpenAiServer(Chat, options with { Port = FreePort() }, Log.CreateLogger("serve"));
        server.Start();
        return server;
    }

    public async Task DisposeAsync()
    {
        await Server.DisposeAsync();
        Http.Dispose();
        Chat.Dispose();
        Engine.Dispose();
    }

    /// <summary>A port nobody listens on now (the system's choice for port 0).</summary>
    public static int FreePort()
    {
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        int port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        return port;
    }
}

/// <summary>
/// The OpenAI-compatible server over real HTTP on the demo model: greedy replies equal llama2.c's reference text (an
/// independent implementation), streamed pieces add up to the same text, errors carry their status and name the
/// field, and a client that leaves or a server that stops gives every KV block back.
/// </summary>
public sealed class OpenAiServerTests(OpenAiServerFixture fixture) : IClassFixture<OpenAiServerFixture>
{
    private readonly HttpClient _http = fixture.Http;

    private static StringContent Body(string json) => new(json, Encoding.UTF8, "application/json");

    private async Task<(HttpStatusCode Status, JsonElement Json)> PostAsync(string path, string json, HttpClient? http = null)
    {
        using var response = await (http ?? _http).PostAsync(path, Body(json));
        var text = await response.Content.ReadAsStringAsync();
        Assert.StartsWith("application/json", response.Content.Headers.ContentType?.MediaType, StringComparison.Ordinal);
        using var document = JsonDocument.Parse(text);
        return (response.StatusCode, document.RootElement.Clone());
    }

    /// <summary>The data lines of a server-sent event stream, [DONE] included.</summary>
    private async Task<List<string>> StreamAsync(string path, string json)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = Body(json) };
        using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        var text = await response.Content.ReadAsStringAsync();
        var events = text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.All(events, e => Assert.StartsWith("data: ", e, StringComparison.Ordinal));
        Assert.True(text.EndsWith("\n\n", StringComparison.Ordinal), "the stream does not end with a blank line");
        return events.Select(e => e["data: ".Length..]).ToList();
    }

    [Fact]
    public async Task Completion_Greedy_IsLlama2csReference_WithUsageAndStopAtTheEndToken()
    {
        var (status, json) = await PostAsync("v1/completions", """{"model": "stories15M", "prompt": "Once upon a time", "max_tokens": 250, "temperature": 0}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("text_completion", json.GetProperty("object").GetString());
        Assert.Equal("stories15M", json.GetProperty("model").GetString());
        Assert.StartsWith("cmpl-", json.GetProperty("id").GetString(), StringComparison.Ordinal);
        var choice = Assert.Single(json.GetProperty("choices").EnumerateArray().ToList());
        Assert.Equal(HostingTestSupport.ReferenceContinuation, choice.GetProperty("text").GetString());
        Assert.Equal("stop", choice.GetProperty("finish_reason").GetString()); // the story ends with EOS before 250 tokens
        var usage = json.GetProperty("usage");
        Assert.Equal(5, usage.GetProperty("prompt_tokens").GetInt32()); // BOS + llama2.c's 4 prompt tokens
        int completion = usage.GetProperty("completion_tokens").GetInt32();
        Assert.InRange(completion, 100, 249);
        Assert.Equal(5 + completion, usage.GetProperty("total_tokens").GetInt32());
        Assert.True(json.GetProperty("ilgpu_medusa").GetProperty("medusa").GetBoolean()); // the demo's heads are used by default
    }

    [Fact]
    public async Task Chat_Greedy_IsTheReference_UnderThePlainTemplate()
    {
        var (status, json) = await PostAsync("v1/chat/completions",
            """{"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 20, "medusa": false}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("chat.completion", json.GetProperty("object").GetString());
        var choice = json.GetProperty("choices")[0];
        Assert.Equal("assistant", choice.GetProperty("message").GetProperty("role").GetString());
        var text = choice.GetProperty("message").GetProperty("content").GetString()!;
        Assert.StartsWith(", there was a little girl named Lily.", text, StringComparison.Ordinal);
        Assert.StartsWith(HostingTestSupport.Prompt + text, HostingTestSupport.Reference, StringComparison.Ordinal);
        Assert.Equal("length", choice.GetProperty("finish_reason").GetString());
        Assert.Equal(20, json.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.False(json.GetProperty("ilgpu_medusa").GetProperty("medusa").GetBoolean());
    }

    [Fact]
    public async Task Chat_Streaming_AddsUpToTheSameText_ThenFinishUsageAndDone()
    {
        var events = await StreamAsync("v1/chat/completions",
            """{"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 40, "stream": true, "stream_options": {"include_usage": true}}""");
        Assert.Equal("[DONE]", events[^1]);
        var chunks = events[..^1].Select(e => JsonDocument.Parse(e).RootElement).ToList();
        Assert.All(chunks, c => Assert.Equal("chat.completion.chunk", c.GetProperty("object").GetString()));
        Assert.Single(chunks.Select(c => c.GetProperty("id").GetString()).Distinct());
        Assert.Equal("assistant", chunks[0].GetProperty("choices")[0].GetProperty("delta").GetProperty("role").GetString());
        var usageChunk = chunks[^1];
        Assert.Equal(0, usageChunk.GetProperty("choices").GetArrayLength());
        Assert.Equal(40, usageChunk.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        var finish = chunks[^2].GetProperty("choices")[0];
        Assert.Equal("length", finish.GetProperty("finish_reason").GetString());
        var text = string.Concat(chunks[..^1].Select(c => c.GetProperty("choices")[0].GetProperty("delta"))
            .Select(d => d.TryGetProperty("content", out var content) ? content.GetString() : ""));
        Assert.True(chunks.Count >= 5, $"only {chunks.Count} chunks: the reply did not stream");
        Assert.StartsWith(HostingTestSupport.Prompt + text, HostingTestSupport.Reference, StringComparison.Ordinal);

        var (_, whole) = await PostAsync("v1/chat/completions", """{"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 40}""");
        Assert.Equal(whole.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString(), text);
    }

    [Fact]
    public async Task Completion_Streaming_AddsUpToTheReference()
    {
        var events = await StreamAsync("v1/completions", """{"prompt": "Once upon a time", "max_tokens": 250, "stream": true}""");
        Assert.Equal("[DONE]", events[^1]);
        var chunks = events[..^1].Select(e => JsonDocument.Parse(e).RootElement).ToList();
        Assert.All(chunks, c => Assert.Equal("text_completion", c.GetProperty("object").GetString()));
        var text = string.Concat(chunks.Select(c => c.GetProperty("choices")[0].GetProperty("text").GetString()));
        Assert.Equal(HostingTestSupport.ReferenceContinuation, text);
        Assert.Equal("stop", chunks[^1].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.All(chunks[..^1], c => Assert.Equal(JsonValueKind.Null, c.GetProperty("choices")[0].GetProperty("finish_reason").ValueKind));
    }

    [Fact]
    public async Task Completion_OfTokenIds_UsesThemAsTheyAre()
    {
        // llama2.c's ids for "Once upon a time" with BOS: the same continuation as the text prompt.
        var (status, json) = await PostAsync("v1/completions", """{"prompt": [1, 9038, 2501, 263, 931], "max_tokens": 20}""");
        Assert.Equal(HttpStatusCode.OK, status);
        var text = json.GetProperty("choices")[0].GetProperty("text").GetString()!;
        Assert.StartsWith(", there was a little girl named Lily.", text, StringComparison.Ordinal);
        Assert.StartsWith(HostingTestSupport.Prompt + text, HostingTestSupport.Reference, StringComparison.Ordinal);
        Assert.Equal(5, json.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        var (tooLong, error) = await PostAsync("v1/completions", JsonSerializer.Serialize(new { prompt = Enumerable.Repeat(9038, 256) }));
        Assert.Equal(HttpStatusCode.BadRequest, tooLong);
        Assert.Contains("256 tokens leave no room in the model's context of 256", error.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
    }

    /// <summary>The completion <c>logprobs</c> object's arrays.</summary>
    private static (List<string> Tokens, List<double?> Logprobs, List<Dictionary<string, double>?> Top, List<int> Offsets) CompletionLogprobs(JsonElement choice)
    {
        var l = choice.GetProperty("logprobs");
        return (l.GetProperty("tokens").EnumerateArray().Select(t => t.GetString()!).ToList(),
            l.GetProperty("token_logprobs").EnumerateArray().Select(t => t.ValueKind == JsonValueKind.Null ? (double?)null : t.GetDouble()).ToList(),
            l.GetProperty("top_logprobs").EnumerateArray()
                .Select(t => t.ValueKind == JsonValueKind.Null ? null : t.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetDouble())).ToList(),
            l.GetProperty("text_offset").EnumerateArray().Select(t => t.GetInt32()).ToList());
    }

    [Fact]
    public async Task Completion_Logprobs_ListTheReferenceTokens_AndScoringThemAsAPromptGivesTheSameValues()
    {
        var (status, json) = await PostAsync("v1/completions", """{"prompt": "Once upon a time", "max_tokens": 30, "logprobs": 3}""");
        Assert.Equal(HttpStatusCode.OK, status);
        var choice = json.GetProperty("choices")[0];
        var text = choice.GetProperty("text").GetString()!;
        Assert.StartsWith(HostingTestSupport.Prompt + text, HostingTestSupport.Reference, StringComparison.Ordinal);
        var (tokens, logprobs, top, offsets) = CompletionLogprobs(choice);
        Assert.Equal(30, tokens.Count);
        Assert.Equal(text, string.Concat(tokens)); // the continuation's tokens spell it
        for (int i = 0; i < tokens.Count; i++)
        {
            // Greedy: the token is its position's most likely one; the map holds the 3 best, the token among them.
            Assert.InRange(top[i]!.Count, 1, 4);
            Assert.Equal(logprobs[i]!.Value, top[i]![tokens[i]]);
            Assert.Equal(top[i]!.Values.Max(), logprobs[i]!.Value);
        }
        AssertOffsetsIndexTheText(text, tokens, offsets);

        // Scoring the prompt and that continuation as one text (ids, max_tokens 0, echo) gives the same numbers from the
        // prefill's rows that decoding gave one step at a time.
        var ids = new List<int> { 1, 9038, 2501, 263, 931 };
        foreach (var token in tokens) ids.Add(fixture.Engine.Tokenizer.Encode("x" + token, addBos: false).Skip(1).Single());
        var (scoreStatus, scored) = await PostAsync("v1/completions", JsonSerializer.Serialize(new { prompt = ids, max_tokens = 0, echo = true, logprobs = 1 }));
        Assert.Equal(HttpStatusCode.OK, scoreStatus);
        var scoredChoice = scored.GetProperty("choices")[0];
        Assert.Equal(HostingTestSupport.Prompt + text, scoredChoice.GetProperty("text").GetString());
        Assert.Equal("length", scoredChoice.GetProperty("finish_reason").GetString());
        Assert.Equal(0, scored.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.Equal(ids.Count, scored.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        var (scoredTokens, scores, scoredTop, _) = CompletionLogprobs(scoredChoice);
        Assert.Equal(["", " Once", " upon", " a", " time", .. tokens], scoredTokens);
        Assert.Null(scores[0]);
        Assert.Null(scoredTop[0]);
        for (int i = 0; i < tokens.Count; i++) Assert.True(Math.Abs(logprobs[i]!.Value - scores[5 + i]!.Value) < 1e-3, $"token {i}: {logprobs[i]} decoded, {scores[5 + i]} scored");
    }

    [Fact]
    public async Task ScoringAPromptThatFillsTheWholeContext_IsAllowed_AndOneTokenMoreIsNot()
    {
        // Evaluation harnesses score rolling windows of exactly the model's context (256 tokens here): nothing is generated,
        // so the whole context is the prompt's.
        int[] ids = [.. fixture.Engine.Tokenizer.Encode(HostingTestSupport.Reference + " " + HostingTestSupport.Reference, true).Take(256)];
        var (status, scored) = await PostAsync("v1/completions", JsonSerializer.Serialize(new { prompt = ids, max_tokens = 0, echo = true, logprobs = 0 }));
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(256, scored.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(0, scored.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        var (tokens, scores, _, _) = CompletionLogprobs(scored.GetProperty("choices")[0]);
        Assert.Equal(256, tokens.Count);
        Assert.Null(scores[0]);
        Assert.All(scores.Skip(1), s => Assert.True(s is < 0 and > -30, $"log-probability {s}"));
        var (tooLong, error) = await PostAsync("v1/completions", JsonSerializer.Serialize(new { prompt = ids.Append(263), max_tokens = 0, echo = true, logprobs = 0 }));
        Assert.Equal(HttpStatusCode.BadRequest, tooLong);
        Assert.Contains("257 tokens leave no room in the model's context of 256", error.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Chat_Logprobs_StreamedAndWhole_AreTheSame()
    {
        const string request = """{"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 25, "logprobs": true, "top_logprobs": 4""";
        var (_, whole) = await PostAsync("v1/chat/completions", request + "}");
        var choice = whole.GetProperty("choices")[0];
        var content = choice.GetProperty("logprobs").GetProperty("content").EnumerateArray().ToList();
        Assert.Equal(JsonValueKind.Null, choice.GetProperty("logprobs").GetProperty("refusal").ValueKind);
        Assert.Equal(25, content.Count);
        Assert.Equal(choice.GetProperty("message").GetProperty("content").GetString(), string.Concat(content.Select(c => c.GetProperty("token").GetString())));
        foreach (var token in content)
        {
            var alternatives = token.GetProperty("top_logprobs").EnumerateArray().ToList();
            Assert.Equal(4, alternatives.Count);
            Assert.Equal(token.GetProperty("token").GetString(), alternatives[0].GetProperty("token").GetString());
            Assert.Equal(token.GetProperty("logprob").GetDouble(), alternatives[0].GetProperty("logprob").GetDouble());
            Assert.True(alternatives.Zip(alternatives.Skip(1)).All(p => p.First.GetProperty("logprob").GetDouble() >= p.Second.GetProperty("logprob").GetDouble()));
        }

        var events = await StreamAsync("v1/chat/completions", request + """, "stream": true}""");
        var streamed = events[..^1].Select(e => JsonDocument.Parse(e).RootElement)
            .Select(c => c.GetProperty("choices")[0].GetProperty("logprobs"))
            .Where(l => l.ValueKind != JsonValueKind.Null)
            .SelectMany(l => l.GetProperty("content").EnumerateArray()).ToList();
        Assert.Equal(content.Select(c => c.GetRawText()), streamed.Select(c => c.GetRawText()));

        var (_, plain) = await PostAsync("v1/chat/completions", """{"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 5}""");
        Assert.Equal(JsonValueKind.Null, plain.GetProperty("choices")[0].GetProperty("logprobs").ValueKind);
    }

    [Fact]
    public async Task Completion_StreamedWithEcho_StartsWithThePromptAndItsScores()
    {
        var events = await StreamAsync("v1/completions", """{"prompt": "Once upon a time", "max_tokens": 12, "stream": true, "echo": true, "logprobs": 0}""");
        var choices = events[..^1].Select(e => JsonDocument.Parse(e).RootElement.GetProperty("choices")[0]).ToList();
        Assert.Equal(HostingTestSupport.Prompt, choices[0].GetProperty("text").GetString());
        var (promptTokens, promptScores, _, _) = CompletionLogprobs(choices[0]);
        Assert.Equal(["", " Once", " upon", " a", " time"], promptTokens);
        Assert.Null(promptScores[0]);
        var text = string.Concat(choices.Select(c => c.GetProperty("text").GetString()));
        Assert.StartsWith(text, HostingTestSupport.Reference, StringComparison.Ordinal);
        var listed = choices.Where(c => c.GetProperty("logprobs").ValueKind != JsonValueKind.Null).Select(CompletionLogprobs).ToList();
        Assert.Equal(5 + 12, listed.Sum(l => l.Tokens.Count));
        // Offsets run on across the chunks and index the text: the prompt's first word without its leading space.
        AssertOffsetsIndexTheText(text, listed.SelectMany(l => l.Tokens).ToList(), listed.SelectMany(l => l.Offsets).ToList());
        Assert.Equal([0, 0, 4, 9, 11, 16], listed.SelectMany(l => l.Offsets).Take(6));
    }

    /// <summary>Each listed token stands at its text_offset in the reply's text (a text's first word without its leading space; a byte token where its character is).</summary>
    private static void AssertOffsetsIndexTheText(string text, List<string> tokens, List<int> offsets)
    {
        Assert.Equal(tokens.Count, offsets.Count);
        for (int i = 0; i < tokens.Count; i++)
        {
            Assert.InRange(offsets[i], i == 0 ? 0 : offsets[i - 1], text.Length);
            if (tokens[i].StartsWith("bytes:", StringComparison.Ordinal) || tokens[i].Length == 0) continue;
            var token = offsets[i] == 0 ? tokens[i].TrimStart() : tokens[i];
            Assert.True(text[offsets[i]..].StartsWith(token, StringComparison.Ordinal), $"token {i} '{tokens[i]}' is not at {offsets[i]} in '{text}'");
        }
    }

    [Fact]
    public async Task TextOffsets_IndexTheReply_ForByteTokensAndAnEmptyPrompt()
    {
        var (_, snowman) = await PostAsync("v1/completions", """{"prompt": "The ☃ melted", "max_tokens": 4, "echo": true, "logprobs": 0}""");
        var choice = snowman.GetProperty("choices")[0];
        var text = choice.GetProperty("text").GetString()!;
        var (tokens, _, _, offsets) = CompletionLogprobs(choice);
        Assert.Contains(tokens, t => t.StartsWith("bytes:\\x", StringComparison.Ordinal)); // the snowman is three byte tokens
        AssertOffsetsIndexTheText(text, tokens, offsets);
        int snow = text.IndexOf('☃', StringComparison.Ordinal);
        Assert.Equal(Enumerable.Repeat(snow, 3), tokens.Select((t, i) => (t, i)).Where(p => p.t.StartsWith("bytes:", StringComparison.Ordinal)).Select(p => offsets[p.i]));

        var (_, empty) = await PostAsync("v1/completions", """{"prompt": "", "max_tokens": 3, "logprobs": 0}""");
        var emptyChoice = empty.GetProperty("choices")[0];
        var emptyText = emptyChoice.GetProperty("text").GetString()!;
        var (emptyTokens, _, _, emptyOffsets) = CompletionLogprobs(emptyChoice);
        Assert.Equal("Once upon a", emptyText);
        Assert.Equal([0, 4, 9], emptyOffsets);
        AssertOffsetsIndexTheText(emptyText, emptyTokens, emptyOffsets);
    }

    [Fact]
    public async Task Penalties_AndLogitBias_ShapeTheReply_WithOrWithoutMedusa()
    {
        var (_, forced) = await PostAsync("v1/completions", """{"prompt": "Once upon a time", "max_tokens": 5, "logit_bias": {"3186": 100}}""");
        Assert.Equal(" world world world world world", forced.GetProperty("choices")[0].GetProperty("text").GetString());
        const string penalised = """{"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 60, "frequency_penalty": 1.0, "repetition_penalty": 1.2""";
        var (_, medusa) = await PostAsync("v1/chat/completions", penalised + "}");
        var (_, plain) = await PostAsync("v1/chat/completions", penalised + """, "medusa": false}""");
        var text = medusa.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;
        Assert.Equal(plain.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString(), text);
        Assert.False(HostingTestSupport.Reference.StartsWith(HostingTestSupport.Prompt + text, StringComparison.Ordinal), "the penalties changed nothing");
        var (status, error) = await PostAsync("v1/chat/completions", """{"messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"32000": 5}}""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("logit_bias", error.GetProperty("error").GetProperty("param").GetString());
        var (typicalStatus, typical) = await PostAsync("v1/completions", """{"prompt": "Hi", "presence_penalty": 1, "medusa_acceptance": "typical"}""");
        Assert.Equal(HttpStatusCode.BadRequest, typicalStatus);
        Assert.Contains("typical", typical.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
        Assert.Equal("medusa_acceptance", typical.GetProperty("error").GetProperty("param").GetString());
    }

    [Fact]
    public async Task JsonMode_TheReplyIsJson_StreamedOrWhole_WithOrWithoutMedusa()
    {
        const string request = """{"messages": [{"role": "user", "content": "Write Lily's name and age as JSON."}], "max_tokens": 40, "response_format": {"type": "json_object"}""";
        var (status, medusa) = await PostAsync("v1/chat/completions", request + "}");
        Assert.Equal(HttpStatusCode.OK, status);
        var (_, plain) = await PostAsync("v1/chat/completions", request + """, "medusa": false}""");
        string text = medusa.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;
        Assert.Equal(plain.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString(), text);
        Assert.StartsWith("{", text, StringComparison.Ordinal); // JSON mode: the reply is the object, from its brace
        var reader = new Utf8JsonReader(System.Text.Encoding.UTF8.GetBytes(text), isFinalBlock: false, state: default);
        while (reader.Read())
        {
        }
        Assert.True(reader.CurrentDepth >= 1 || reader.TokenType == JsonTokenType.EndObject, text); // a JSON prefix System.Text.Json reads without error
        // Streamed, the same text.
        var events = await StreamAsync("v1/chat/completions", request + """, "stream": true}""");
        Assert.Equal("[DONE]", events[^1]);
        var streamed = string.Concat(events[..^1].Select(e => JsonDocument.Parse(e).RootElement.GetProperty("choices")[0].GetProperty("delta"))
            .Select(d => d.TryGetProperty("content", out var content) ? content.GetString() : ""));
        Assert.Equal(text, streamed);
        // Completions take it too.
        var (completionStatus, completion) = await PostAsync("v1/completions", """{"prompt": "Once upon a time", "max_tokens": 20, "response_format": {"type": "json_object"}}""");
        Assert.Equal(HttpStatusCode.OK, completionStatus);
        Assert.Contains('{', completion.GetProperty("choices")[0].GetProperty("text").GetString()!);
        // A schema: the reply starts with its first property.
        var (schemaStatus, schema) = await PostAsync("v1/chat/completions", """{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 20, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": {"type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}, "n": {"type": "integer"}}, "required": ["mood", "n"], "additionalProperties": false}}}}""");
        Assert.Equal(HttpStatusCode.OK, schemaStatus);
        Assert.Matches("^\\{\\s?\"mood\"\\s?:\\s?\"(happy|sad)\"", schema.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString());
        var (badStatus, bad) = await PostAsync("v1/chat/completions", """{"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"anyOf": []}}}}}}""");
        Assert.Equal(HttpStatusCode.BadRequest, badStatus);
        Assert.Equal("response_format.json_schema.schema", bad.GetProperty("error").GetProperty("param").GetString());
        Assert.Contains("$.properties.a.anyOf: expected a non-empty array of schemas", bad.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
        // A Pydantic-shaped schema (a nested model under $defs, optional as anyOf with null): followed, not refused.
        var (pydanticStatus, pydantic) = await PostAsync("v1/chat/completions", """{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12, "response_format": {"type": "json_schema", "json_schema": {"name": "Owner", "strict": true, "schema": {"$defs": {"Pet": {"type": "object", "properties": {"kind": {"type": "string"}}, "required": ["kind"], "additionalProperties": false}}, "type": "object", "properties": {"pet": {"anyOf": [{"$ref": "#/$defs/Pet"}, {"type": "null"}], "default": null}}, "required": ["pet"], "additionalProperties": false}}}}""");
        Assert.Equal(HttpStatusCode.OK, pydanticStatus);
        Assert.Matches("^\\{\\s?\"pet\"\\s?:\\s?(\\{\\s?\"kind\"|n)", pydantic.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString());
    }

    [Fact]
    public async Task ASecondRequestWithTheSamePrompt_ReportsItsCachedPromptTokens_AndAnswersTheSame()
    {
        // A prompt no other test sends: 2 full blocks of 16 and more; the second request finds them all (the last prompt
        // token is always computed) in the chat shape and the completion shape of usage alike.
        const string prompt = "The prefix cache keeps what a prompt computed. Once upon a time, a small red fox lived in a quiet wood by a river. Every morning the fox walked to the water and looked at the fish swimming there.";
        string body = $$"""{"prompt": "{{prompt}}", "max_tokens": 12, "temperature": 0}""";
        var (_, first) = await PostAsync("v1/completions", body);
        var (status, second) = await PostAsync("v1/completions", body);
        Assert.Equal(HttpStatusCode.OK, status);
        int promptTokens = second.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();
        Assert.True(promptTokens > 33, $"{promptTokens} prompt tokens");
        Assert.Equal(0, first.GetProperty("usage").GetProperty("prompt_tokens_details").GetProperty("cached_tokens").GetInt32());
        Assert.Equal((promptTokens - 1) / 16 * 16, second.GetProperty("usage").GetProperty("prompt_tokens_details").GetProperty("cached_tokens").GetInt32());
        Assert.Equal(first.GetProperty("choices")[0].GetProperty("text").GetString(), second.GetProperty("choices")[0].GetProperty("text").GetString());

        var chat = $$"""{"messages": [{"role": "user", "content": "{{prompt}}"}], "max_tokens": 12, "temperature": 0}""";
        var (_, reply) = await PostAsync("v1/chat/completions", chat);
        var usage = reply.GetProperty("usage");
        Assert.Equal(promptTokens, usage.GetProperty("prompt_tokens").GetInt32()); // the demo's template is plain text
        Assert.Equal((promptTokens - 1) / 16 * 16, usage.GetProperty("prompt_tokens_details").GetProperty("cached_tokens").GetInt32());
        Assert.Equal(first.GetProperty("choices")[0].GetProperty("text").GetString(), reply.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString());

        // Several choices of a new prompt: the first computes it, the other two start once it has and find it cached. (Not
        // a proof of the head start: on this small machine the choices rarely reach the scheduler in the same step anyway.)
        const string other = "Several choices share one prompt. Once upon a time, a tall giraffe named Gina lived in a sunny field. She ate green leaves from the top of the trees every day.";
        long hitsBefore = fixture.Engine.SchedulerStats.PrefixHitTokens;
        var (choicesStatus, three) = await PostAsync("v1/completions", $$"""{"prompt": "{{other}}", "max_tokens": 6, "temperature": 1, "seed": 3, "n": 3}""");
        Assert.Equal(HttpStatusCode.OK, choicesStatus);
        int otherTokens = three.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();
        Assert.True(otherTokens > 33, $"{otherTokens} prompt tokens");
        Assert.Equal(3, three.GetProperty("choices").GetArrayLength());
        Assert.Equal(2L * ((otherTokens - 1) / 16 * 16), fixture.Engine.SchedulerStats.PrefixHitTokens - hitsBefore);
    }

    [Fact]
    public async Task SeveralChoices_AreTheRepliesOfSeedsSeedPlusOne_AndTheirUsageAddsUp()
    {
        const string sampled = """{"prompt": "Once upon a time", "max_tokens": 24, "temperature": 1.0, "seed": 7""";
        var (status, three) = await PostAsync("v1/completions", sampled + """, "n": 3}""");
        Assert.Equal(HttpStatusCode.OK, status);
        var choices = three.GetProperty("choices").EnumerateArray().ToList();
        Assert.Equal([0, 1, 2], choices.Select(c => c.GetProperty("index").GetInt32()));
        var texts = choices.Select(c => c.GetProperty("text").GetString()!).ToList();
        for (int i = 0; i < 3; i++)
        {
            var (_, alone) = await PostAsync("v1/completions", sampled.Replace("\"seed\": 7", $"\"seed\": {7 + i}", StringComparison.Ordinal) + "}");
            Assert.Equal(alone.GetProperty("choices")[0].GetProperty("text").GetString(), texts[i]);
        }
        Assert.Equal(3, texts.Distinct().Count());
        var usage = three.GetProperty("usage");
        Assert.Equal(5, usage.GetProperty("prompt_tokens").GetInt32()); // the prompt is counted once
        Assert.Equal(3 * 24, usage.GetProperty("completion_tokens").GetInt32());
        Assert.Equal(5 + 3 * 24, usage.GetProperty("total_tokens").GetInt32());

        // Greedy choices are all the reference.
        var (_, greedy) = await PostAsync("v1/chat/completions", """{"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 20, "n": 2}""");
        var replies = greedy.GetProperty("choices").EnumerateArray().Select(c => c.GetProperty("message").GetProperty("content").GetString()!).ToList();
        Assert.Equal(2, replies.Count);
        Assert.All(replies, r => Assert.StartsWith(HostingTestSupport.Prompt + r, HostingTestSupport.Reference, StringComparison.Ordinal));
    }

    [Fact]
    public async Task SeveralChoices_Stream_Interleaved_EachAddingUpToItsReply()
    {
        const string request = """{"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 30, "temperature": 0.9, "seed": 3, "n": 3""";
        var (_, whole) = await PostAsync("v1/chat/completions", request + "}");
        var expected = whole.GetProperty("choices").EnumerateArray().Select(c => c.GetProperty("message").GetProperty("content").GetString()).ToList();
        var events = await StreamAsync("v1/chat/completions", request + """, "stream": true, "stream_options": {"include_usage": true}}""");
        Assert.Equal("[DONE]", events[^1]);
        var chunks = events[..^1].Select(e => JsonDocument.Parse(e).RootElement).ToList();
        var choices = chunks.Where(c => c.GetProperty("choices").GetArrayLength() > 0).Select(c => c.GetProperty("choices")[0]).ToList();
        for (int i = 0; i < 3; i++)
        {
            var mine = choices.Where(c => c.GetProperty("index").GetInt32() == i).ToList();
            Assert.Equal("assistant", mine[0].GetProperty("delta").GetProperty("role").GetString());
            Assert.Equal(expected[i], string.Concat(mine.Select(c => c.GetProperty("delta").TryGetProperty("content", out var t) ? t.GetString() : "")));
            Assert.Single(mine, c => c.GetProperty("finish_reason").ValueKind == JsonValueKind.String);
            Assert.Equal("length", mine[^1].GetProperty("finish_reason").GetString());
        }
        Assert.Equal(90, chunks[^1].GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        // The three were generated side by side: some chunk of choice 1 or 2 comes before choice 0's last.
        int lastOfFirst = choices.FindLastIndex(c => c.GetProperty("index").GetInt32() == 0);
        Assert.Contains(choices.Take(lastOfFirst), c => c.GetProperty("index").GetInt32() > 0 && c.GetProperty("delta").TryGetProperty("content", out _));

        // Completions too, with echo: each choice starts with the prompt.
        var completion = await StreamAsync("v1/completions", """{"prompt": "Once upon a time", "max_tokens": 8, "n": 2, "echo": true, "stream": true}""");
        var pieces = completion[..^1].Select(e => JsonDocument.Parse(e).RootElement.GetProperty("choices")[0]).ToList();
        for (int i = 0; i < 2; i++)
        {
            var text = string.Concat(pieces.Where(p => p.GetProperty("index").GetInt32() == i).Select(p => p.GetProperty("text").GetString()));
            Assert.StartsWith(HostingTestSupport.Prompt + ",", text, StringComparison.Ordinal);
            Assert.StartsWith(text, HostingTestSupport.Reference, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task AClientThatLeavesAStreamOfSeveralChoices_CancelsThemAll()
    {
        int free = fixture.Engine.Pool.FreeBlocks;
        using var http = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = fixture.Server.BaseAddress };
        using (var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions")
               {
                   Content = Body("""{"prompt": "Once upon a time", "max_tokens": 250, "stream": true, "medusa": false, "n": 4, "temperature": 1}"""),
               })
        using (var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead))
        {
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            Assert.StartsWith("data: ", await reader.ReadLineAsync(), StringComparison.Ordinal);
        }
        await WaitUntil(() => fixture.Server.RequestsInFlight == 0 && fixture.Engine.Pool.FreeBlocks == free);
        Assert.Equal(0, fixture.Engine.SchedulerStats.Running);
    }

    [Fact]
    public async Task Tokenize_AndDetokenize_AsVllmDoes()
    {
        // llama2.c's ids for "Once upon a time", BOS first.
        var (status, json) = await PostAsync("tokenize", """{"prompt": "Once upon a time", "return_token_strs": true}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal([1, 9038, 2501, 263, 931], json.GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()));
        Assert.Equal(5, json.GetProperty("count").GetInt32());
        Assert.Equal(256, json.GetProperty("max_model_len").GetInt32());
        Assert.Equal(["", " Once", " upon", " a", " time"], json.GetProperty("token_strs").EnumerateArray().Select(t => t.GetString()));
        var (_, noBos) = await PostAsync("tokenize", """{"prompt": "Once upon a time", "add_special_tokens": false}""");
        Assert.Equal([9038, 2501, 263, 931], noBos.GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()));
        Assert.False(noBos.TryGetProperty("token_strs", out _));
        // A conversation: the ids the chat route generates from (its usage counts them).
        var (_, chat) = await PostAsync("tokenize", """{"messages": [{"role": "user", "content": "Once upon a time"}]}""");
        var (_, reply) = await PostAsync("v1/chat/completions", """{"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 1}""");
        Assert.Equal(reply.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), chat.GetProperty("count").GetInt32());

        var (_, text) = await PostAsync("detokenize", """{"tokens": [1, 9038, 2501, 263, 931, 29892]}""");
        Assert.Equal("Once upon a time,", text.GetProperty("prompt").GetString());
        var (_, empty) = await PostAsync("detokenize", """{"tokens": []}""");
        Assert.Equal("", empty.GetProperty("prompt").GetString());

        foreach (var (path, body, param) in new[]
                 {
                     ("tokenize", """{"prompt": "x", "messages": [{"role": "user", "content": "x"}]}""", "messages"),
                     ("tokenize", """{}""", "prompt"),
                     ("tokenize", """{"prompt": 5}""", "prompt"),
                     ("tokenize", """{"prompt": "x", "add_special_tokens": "no"}""", "add_special_tokens"),
                     ("detokenize", """{"tokens": [1, 32000]}""", "tokens[1]"),
                     ("detokenize", """{"tokens": "1 2"}""", "tokens"),
                 })
        {
            var (bad, error) = await PostAsync(path, body);
            Assert.Equal(HttpStatusCode.BadRequest, bad);
            Assert.Equal(param, error.GetProperty("error").GetProperty("param").GetString());
        }
        using var get = await _http.GetAsync("tokenize");
        Assert.Equal(HttpStatusCode.MethodNotAllowed, get.StatusCode);
    }

    [Fact]
    public async Task StopSequence_EndsTheReplyBeforeIt()
    {
        var (_, json) = await PostAsync("v1/completions", """{"prompt": "Once upon a time", "max_tokens": 50, "stop": ["Lily"]}""");
        Assert.Equal(", there was a little girl named ", json.GetProperty("choices")[0].GetProperty("text").GetString());
        Assert.Equal("stop", json.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
    }

    [Fact]
    public async Task Sampling_WithASeed_IsRepeatable()
    {
        const string request = """{"prompt": "Once upon a time", "max_tokens": 30, "temperature": 1.0, "top_p": 0.9, "seed": 7}""";
        var (_, first) = await PostAsync("v1/completions", request);
        var (_, second) = await PostAsync("v1/completions", request);
        Assert.Equal(first.GetProperty("choices")[0].GetProperty("text").GetString(), second.GetProperty("choices")[0].GetProperty("text").GetString());
    }

    [Fact]
    public async Task ConcurrentRequests_EachGetTheirOwnReply()
    {
        // Batched together on the engine's scheduler: every greedy reply is still the reference prefix of its length.
        int[] lengths = [10, 25, 40, 60];
        var replies = await Task.WhenAll(lengths.Select(n => PostAsync("v1/completions", $$"""{"prompt": "Once upon a time", "max_tokens": {{n}}}""")));
        for (int i = 0; i < lengths.Length; i++)
        {
            Assert.Equal(HttpStatusCode.OK, replies[i].Status);
            Assert.Equal(lengths[i], replies[i].Json.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
            Assert.StartsWith(HostingTestSupport.Prompt + replies[i].Json.GetProperty("choices")[0].GetProperty("text").GetString(),
                HostingTestSupport.Reference, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Models_ListsTheOneModel()
    {
        var list = JsonDocument.Parse(await _http.GetStringAsync("v1/models")).RootElement;
        Assert.Equal("list", list.GetProperty("object").GetString());
        var model = Assert.Single(list.GetProperty("data").EnumerateArray().ToList());
        Assert.Equal("stories15M", model.GetProperty("id").GetString());
        Assert.Equal("model", model.GetProperty("object").GetString());
        Assert.Equal(256, model.GetProperty("max_model_len").GetInt32()); // the demo's context (llama2.c header seq_len)
        Assert.Equal("stories15M", JsonDocument.Parse(await _http.GetStringAsync("v1/models/stories15M")).RootElement.GetProperty("id").GetString());
        using var other = await _http.GetAsync("v1/models/gpt-4o");
        Assert.Equal(HttpStatusCode.NotFound, other.StatusCode);
        Assert.Equal("""{"status":"ok"}""", await _http.GetStringAsync("health"));
    }

    [Theory]
    [InlineData("v1/chat/completions", """{"messages": [{"role": "user", "content": "Hi"}], "temperature": -1}""", HttpStatusCode.BadRequest, "temperature")]
    [InlineData("v1/chat/completions", """{"model": "llama-3", "messages": [{"role": "user", "content": "Hi"}]}""", HttpStatusCode.NotFound, "model")]
    [InlineData("v1/completions", """{"prompt": "Once upon a time", "medusa_tree": "../../etc/tree.json"}""", HttpStatusCode.BadRequest, "medusa_tree")]
    [InlineData("v1/completions", """{"prompt": "Once upon a time", "medusa_tree": "chain-03"}""", HttpStatusCode.BadRequest, "medusa_tree")]
    [InlineData("v1/completions", """{"prompt": "Once \ud800 upon"}""", HttpStatusCode.BadRequest, "prompt")]
    [InlineData("v1/chat/completions", """{"messages": [{"role": "user\udc00", "content": "Hi"}]}""", HttpStatusCode.BadRequest, "messages[0].role")]
    [InlineData("v1/completions", """{"prompt": "Hi", "top_p": 1e-300}""", HttpStatusCode.BadRequest, "top_p")]
    public async Task BadRequests_GetTheirStatus_AndNameTheField(string path, string json, HttpStatusCode expected, string param)
    {
        var (status, body) = await PostAsync(path, json);
        Assert.Equal(expected, status);
        var error = body.GetProperty("error");
        Assert.Equal(param, error.GetProperty("param").GetString());
        Assert.Contains(param, error.GetProperty("message").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task MalformedAndOversizedBodies_Are400And413()
    {
        var (status, json) = await PostAsync("v1/chat/completions", """{"messages": [""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("not valid JSON", json.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);

        (status, json) = await PostAsync("v1/completions", "");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("no body", json.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);

        var huge = $$"""{"prompt": "{{new string('a', 5 << 20)}}"}""";
        (status, json) = await PostAsync("v1/completions", huge);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, status);
        Assert.Contains("at most 1048576", json.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task AFieldNameThatIsNotText_IsA400()
    {
        var (status, json) = await PostAsync("v1/completions", """{"\ud800": 1, "prompt": "Hi"}""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("not valid Unicode text", json.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task InvalidUtf8_IsA400()
    {
        using var content = new ByteArrayContent([.. "{\"prompt\": \"Hi "u8, 0xFF, .. "\"}"u8]);
        using var response = await _http.PostAsync("v1/completions", content);
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Contains("not valid UTF-8", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task AHugePrompt_IsRefusedBeforeItIsTokenized()
    {
        var prompt = new string('x', 900_000); // under the 1 MiB body limit; far more than 256 tokens could hold
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var (status, json) = await PostAsync("v1/completions", JsonSerializer.Serialize(new { prompt }));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("prompt", json.GetProperty("error").GetProperty("param").GetString());
        Assert.Contains("900000 characters cannot fit the model's context of 256 tokens", json.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
        var messages = new[] { new { role = "user", content = prompt } };
        (status, json) = await PostAsync("v1/chat/completions", JsonSerializer.Serialize(new { messages }));
        Assert.Equal("messages", json.GetProperty("error").GetProperty("param").GetString());
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"took {clock.Elapsed}"); // tokenizing would take far longer on a loaded CI machine too
    }

    [Fact]
    public async Task ATruncatedBody_IsA400_NotAnEmptyReply()
    {
        var reply = await RawAsync(fixture.Server.BaseAddress,
            "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\":", closeSending: true);
        Assert.True(reply.StartsWith("HTTP/1.1 400", StringComparison.Ordinal), reply + string.Join("\n", fixture.Log.Messages));
        Assert.Contains("the request body ended after 10 of its 100 bytes", reply, StringComparison.Ordinal);
    }

    [Fact]
    public async Task CrossOriginRequests_AreRefused_UnlessTheOriginIsAllowed()
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent("""{"prompt": "Once upon a time", "max_tokens": 3}""") };
        request.Headers.Add("Origin", "https://evil.example");
        using var refused = await _http.SendAsync(request);
        Assert.Equal(HttpStatusCode.Forbidden, refused.StatusCode);
        Assert.Contains("cross-origin request from 'https://evil.example' refused", await refused.Content.ReadAsStringAsync(), StringComparison.Ordinal);

        await using var server = fixture.StartServer(new OpenAiServerOptions { AllowedOrigins = ["https://app.example"] });
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        using var preflight = new HttpRequestMessage(HttpMethod.Options, "v1/chat/completions");
        preflight.Headers.Add("Origin", "https://app.example");
        preflight.Headers.Add("Access-Control-Request-Method", "POST");
        using var answer = await http.SendAsync(preflight);
        Assert.Equal(HttpStatusCode.NoContent, answer.StatusCode);
        Assert.Equal("https://app.example", answer.Headers.GetValues("Access-Control-Allow-Origin").Single());
        Assert.Contains("POST", answer.Headers.GetValues("Access-Control-Allow-Methods").Single(), StringComparison.Ordinal);
        using var allowed = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = Body("""{"prompt": "Once upon a time", "max_tokens": 3}""") };
        allowed.Headers.Add("Origin", "https://app.example");
        using var served = await http.SendAsync(allowed);
        Assert.Equal(HttpStatusCode.OK, served.StatusCode);
        Assert.Equal("https://app.example", served.Headers.GetValues("Access-Control-Allow-Origin").Single());
    }

    [Fact]
    public async Task AClientsNewline_CannotForgeALogLine()
    {
        var (status, _) = await PostAsync("v1/completions", """{"model": "x\n[12:00:00] POST /v1/completions 200 0.001 s: forged", "prompt": "Hi"}""");
        Assert.Equal(HttpStatusCode.NotFound, status);
        await WaitUntil(() => fixture.Log.Messages.Any(m => m.Contains("forged", StringComparison.Ordinal))); // logged after the answer is sent
        var line = Assert.Single(fixture.Log.Messages, m => m.Contains("forged", StringComparison.Ordinal));
        Assert.DoesNotContain('\n', line);
        Assert.Contains("model 'x\\u000a[12:00:00]", line, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Stopping_IsNotHeldUpByAClientThatNeverSendsItsBody()
    {
        var server = fixture.StartServer(new OpenAiServerOptions { ShutdownGrace = TimeSpan.Zero });
        using var client = new TcpClient();
        await client.ConnectAsync(IPAddress.Loopback, server.BaseAddress.Port);
        var stream = client.GetStream();
        await stream.WriteAsync(Encoding.ASCII.GetBytes("POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{"));
        await WaitUntil(() => server.RequestsInFlight == 1);
        var stop = server.StopAsync();
        var finished = await Task.WhenAny(stop, Task.Delay(TimeSpan.FromSeconds(20)));
        Assert.True(finished == stop, "StopAsync waited on the stalled upload");
        Assert.Equal(0, server.RequestsInFlight);
    }

    [Fact]
    public async Task AServerWhoseDefaultTreeFileIsMissing_DoesNotStart()
    {
        var missing = Path.Combine(TestModels.TempDirectory("tree"), "no-such-tree.json");
        using var chat = new IlgpuMedusaChatClient(fixture.Engine, defaults: new GenerationOptions { Tree = missing });
        await using var server = new OpenAiServer(chat, new OpenAiServerOptions { Port = OpenAiServerFixture.FreePort() });
        var e = Assert.ThrowsAny<IOException>(server.Start);
        Assert.Contains("no-such-tree.json", e.Message, StringComparison.Ordinal);
    }

    /// <summary>Sends raw bytes (optionally closing the sending side) and returns everything the server answers.</summary>
    private static async Task<string> RawAsync(Uri server, string request, bool closeSending)
    {
        using var client = new TcpClient();
        await client.ConnectAsync(IPAddress.Loopback, server.Port);
        var stream = client.GetStream();
        await stream.WriteAsync(Encoding.UTF8.GetBytes(request));
        if (closeSending) client.Client.Shutdown(SocketShutdown.Send);
        using var reader = new StreamReader(stream);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        return await reader.ReadToEndAsync(timeout.Token);
    }

    [Fact]
    public async Task APromptLongerThanTheContext_IsA400()
    {
        var prompt = string.Join(' ', Enumerable.Repeat("dragon", 400)); // far more tokens than the demo's 256
        var (status, json) = await PostAsync("v1/completions", JsonSerializer.Serialize(new { prompt }));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("the model's context is 256", json.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task ARequestLargerThanTheWholeKvCache_IsA400_ThatSaysSo()
    {
        // 1 MiB holds about 75 of the demo's positions (6 layers x 2 x 288 floats each): 200 tokens can never fit.
        using var small = InferenceEngine.Load(new EngineOptions
        {
            ModelPath = TestModels.Stories15MDirectory, Device = new DeviceOptions { Kind = DeviceKind.Host }, KvBudgetMb = 1,
        });
        using var chat = new IlgpuMedusaChatClient(small);
        await using var server = new OpenAiServer(chat, new OpenAiServerOptions { Port = OpenAiServerFixture.FreePort() });
        server.Start();
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        var (status, json) = await PostAsync("v1/chat/completions",
            """{"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 200, "stream": true}""", http);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        var error = json.GetProperty("error");
        Assert.Equal("kv_budget_exceeded", error.GetProperty("code").GetString());
        Assert.Contains("does not fit the server's KV cache", error.GetProperty("message").GetString(), StringComparison.Ordinal);
        var (ok, reply) = await PostAsync("v1/completions", """{"prompt": "Once upon a time", "max_tokens": 20}""", http);
        Assert.Equal(HttpStatusCode.OK, ok); // a request that fits is served
        Assert.Equal(20, reply.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    [Fact]
    public async Task WrongMethodAndUnknownRoute_Are405And404()
    {
        using var get = await _http.GetAsync("v1/chat/completions");
        Assert.Equal(HttpStatusCode.MethodNotAllowed, get.StatusCode);
        Assert.Equal("POST", string.Join(",", get.Content.Headers.Allow));
        using var missing = await _http.PostAsync("v1/embeddings", Body("{}"));
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        Assert.Contains("no route POST /v1/embeddings", await missing.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task ApiKey_IsRequiredOnV1_ButNotForHealth()
    {
        await using var server = fixture.StartServer(new OpenAiServerOptions { ApiKey = "s3cret" });
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        using var none = await http.GetAsync("v1/models");
        Assert.Equal(HttpStatusCode.Unauthorized, none.StatusCode);
        Assert.Contains("Authorization: Bearer", await none.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "wrong");
        using var wrong = await http.GetAsync("v1/models");
        Assert.Equal(HttpStatusCode.Unauthorized, wrong.StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await http.GetAsync("metrics")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("health")).StatusCode);
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "s3cret");
        var (status, json) = await PostAsync("v1/completions", """{"prompt": "Once upon a time", "max_tokens": 3}""", http);
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(3, json.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("metrics")).StatusCode);
    }

    [Fact]
    public async Task Metrics_InPrometheusTextFormat_CountRequestsTokensAndTheScheduler()
    {
        // A server of its own, so that the counts are this test's.
        await using var server = fixture.StartServer(new OpenAiServerOptions());
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        var (ok, _) = await PostAsync("v1/completions", """{"prompt": "Once upon a time", "max_tokens": 7, "n": 2}""", http);
        Assert.Equal(HttpStatusCode.OK, ok);
        var (bad, _) = await PostAsync("v1/completions", """{"prompt": "x", "temperature": -1}""", http);
        Assert.Equal(HttpStatusCode.BadRequest, bad);
        await http.GetAsync("v1/models/stories15M");
        await http.GetAsync("no/such/route");

        // A request is counted once its answer is sent, and leaves the in-flight count a moment after: read until the
        // last one shows (at most 5 s).
        Dictionary<string, double> samples = [];
        for (var clock = System.Diagnostics.Stopwatch.StartNew(); ; await Task.Delay(50))
        {
            samples = await ReadMetricsAsync(http);
            if ((samples.ContainsKey("ilgpu_medusa_http_requests_total{route=\"other\",status=\"404\"}") && samples["ilgpu_medusa_http_requests_in_flight"] == 1) ||
                clock.Elapsed > TimeSpan.FromSeconds(5)) break;
        }
        Assert.Equal(1, samples["ilgpu_medusa_http_requests_total{route=\"/v1/completions\",status=\"200\"}"]);
        Assert.Equal(1, samples["ilgpu_medusa_http_requests_total{route=\"/v1/completions\",status=\"400\"}"]);
        Assert.Equal(1, samples["ilgpu_medusa_http_requests_total{route=\"/v1/models\",status=\"200\"}"]);
        Assert.Equal(1, samples["ilgpu_medusa_http_requests_total{route=\"other\",status=\"404\"}"]);
        Assert.Equal(5, samples["ilgpu_medusa_prompt_tokens_total"]);
        Assert.Equal(14, samples["ilgpu_medusa_completion_tokens_total"]); // two choices of 7
        Assert.Equal(1, samples["ilgpu_medusa_request_duration_seconds_count"]);
        Assert.Equal(1, samples["ilgpu_medusa_request_duration_seconds_bucket{le=\"+Inf\"}"]);
        Assert.Equal(1, samples["ilgpu_medusa_time_to_first_token_seconds_count"]);
        Assert.True(samples["ilgpu_medusa_time_to_first_token_seconds_sum"] <= samples["ilgpu_medusa_request_duration_seconds_sum"]);
        Assert.Equal(0, samples["ilgpu_medusa_sequences_running"]);
        Assert.Equal(fixture.Engine.Pool.BlockCount, samples["ilgpu_medusa_kv_blocks_free"]);
        Assert.True(samples["ilgpu_medusa_generated_tokens_total"] >= 14);
        Assert.True(samples["ilgpu_medusa_tokens_per_sequence_step"] >= 1);
        var scheduler = fixture.Engine.SchedulerStats; // other tests share the engine: its counters only grow
        Assert.InRange(samples["ilgpu_medusa_prefix_cache_queries_total"], 5, scheduler.PrefixQueryTokens);
        Assert.InRange(samples["ilgpu_medusa_prefix_cache_hits_total"], 0, samples["ilgpu_medusa_prefix_cache_queries_total"]);
        Assert.InRange(samples["ilgpu_medusa_kv_blocks_cached"], 0, samples["ilgpu_medusa_kv_blocks_free"]);
        Assert.Equal(1, samples["ilgpu_medusa_http_requests_in_flight"]); // this request
    }

    /// <summary>GET /metrics, checked for Prometheus' text format, as name{labels} → value.</summary>
    private static async Task<Dictionary<string, double>> ReadMetricsAsync(HttpClient http)
    {
        using var response = await http.GetAsync("metrics");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/plain", response.Content.Headers.ContentType?.MediaType);
        Assert.Contains(response.Content.Headers.ContentType!.Parameters, p => p.Name == "version" && p.Value == "0.0.4");
        var text = await response.Content.ReadAsStringAsync();
        var samples = new Dictionary<string, double>();
        var typed = new HashSet<string>();
        foreach (var line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            if (line.StartsWith("# TYPE ", StringComparison.Ordinal)) typed.Add(line.Split(' ')[2]);
            if (line.StartsWith('#')) continue;
            var match = System.Text.RegularExpressions.Regex.Match(line, @"^([a-z_]+)(\{[^}]*\})? (\S+)$");
            Assert.True(match.Success, $"not a sample line: '{line}'");
            string name = match.Groups[1].Value;
            Assert.Contains(typed, t => name == t || name.StartsWith(t + "_", StringComparison.Ordinal));
            samples[name + match.Groups[2].Value] = double.Parse(match.Groups[3].Value, System.Globalization.CultureInfo.InvariantCulture);
        }
        return samples;
    }

    [Fact]
    public async Task ARequestBeyondTheLimit_Is429_WhileTheFirstStreams()
    {
        await using var server = fixture.StartServer(new OpenAiServerOptions { MaxConcurrentRequests = 1 });
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        using var first = new HttpRequestMessage(HttpMethod.Post, "v1/completions")
        {
            Content = Body("""{"prompt": "Once upon a time", "max_tokens": 250, "stream": true, "medusa": false}"""),
        };
        using var streaming = await http.SendAsync(first, HttpCompletionOption.ResponseHeadersRead);
        using var reader = new StreamReader(await streaming.Content.ReadAsStreamAsync());
        Assert.StartsWith("data: ", await reader.ReadLineAsync(), StringComparison.Ordinal); // the first request holds the only place now
        using var second = await http.PostAsync("v1/completions", Body("""{"prompt": "Once upon a time", "max_tokens": 3}"""));
        Assert.Equal(HttpStatusCode.TooManyRequests, second.StatusCode);
        Assert.Equal("1", second.Headers.GetValues("Retry-After").Single());
        Assert.Contains("already answering 1 requests", await second.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        var rest = await reader.ReadToEndAsync();
        Assert.EndsWith("data: [DONE]\n\n", rest, StringComparison.Ordinal);
    }

    [Fact]
    public async Task EveryChoiceTakesARequestPlace()
    {
        await using var server = fixture.StartServer(new OpenAiServerOptions { MaxConcurrentRequests = 2 });
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        var (never, error) = await PostAsync("v1/completions", """{"prompt": "Once upon a time", "max_tokens": 3, "n": 3}""", http);
        Assert.Equal(HttpStatusCode.BadRequest, never);
        Assert.Equal("n", error.GetProperty("error").GetProperty("param").GetString());
        Assert.Contains("3 choices need 3 of the server's 2 request places", error.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
        using var first = new HttpRequestMessage(HttpMethod.Post, "v1/completions")
        {
            Content = Body("""{"prompt": "Once upon a time", "max_tokens": 250, "stream": true, "medusa": false}"""),
        };
        using var streaming = await http.SendAsync(first, HttpCompletionOption.ResponseHeadersRead);
        using var reader = new StreamReader(await streaming.Content.ReadAsStreamAsync());
        Assert.StartsWith("data: ", await reader.ReadLineAsync(), StringComparison.Ordinal); // one of the two places is taken
        var (busy, _) = await PostAsync("v1/chat/completions", """{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "n": 2}""", http);
        Assert.Equal(HttpStatusCode.TooManyRequests, busy);
        var (one, _) = await PostAsync("v1/chat/completions", """{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}""", http);
        Assert.Equal(HttpStatusCode.OK, one); // the places of the refused choices were given back
        Assert.EndsWith("data: [DONE]\n\n", await reader.ReadToEndAsync(), StringComparison.Ordinal);
        var (both, _) = await PostAsync("v1/chat/completions", """{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "n": 2}""", http);
        Assert.Equal(HttpStatusCode.OK, both);
    }

    [Fact]
    public async Task AClientThatLeavesMidStream_CancelsItsGeneration_AndEveryBlockComesBack()
    {
        int free = fixture.Engine.Pool.FreeBlocks;
        // No draining: by default HttpClient reads up to 1 MB of a disposed response to keep the connection.
        using var http = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = fixture.Server.BaseAddress };
        using (var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions")
               {
                   Content = Body("""{"prompt": "Once upon a time", "max_tokens": 250, "stream": true, "medusa": false}"""),
               })
        using (var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead))
        {
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            Assert.StartsWith("data: ", await reader.ReadLineAsync(), StringComparison.Ordinal);
        } // disposing the response closes the connection mid-stream
        await WaitUntil(() => fixture.Server.RequestsInFlight == 0 && fixture.Engine.Pool.FreeBlocks == free);
        Assert.True(fixture.Log.Messages.Any(m => m.Contains("POST /v1/completions 200", StringComparison.Ordinal) && m.Contains("client disconnected", StringComparison.Ordinal)), string.Join("\n", fixture.Log.Messages));
    }

    [Fact]
    public async Task Stopping_CancelsRequestsInFlight_WithAnErrorEvent_AndFreesTheirBlocks()
    {
        int free = fixture.Engine.Pool.FreeBlocks;
        var server = fixture.StartServer(new OpenAiServerOptions { ShutdownGrace = TimeSpan.Zero });
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
        {
            Content = Body("""{"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 250, "stream": true, "medusa": false}"""),
        };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        Assert.StartsWith("data: ", await reader.ReadLineAsync(), StringComparison.Ordinal);
        await server.StopAsync();
        var rest = await reader.ReadToEndAsync();
        Assert.True(rest.Contains("\"code\":\"shutting_down\"", StringComparison.Ordinal), rest + string.Join("\n", fixture.Log.Messages));
        Assert.EndsWith("data: [DONE]\n\n", rest, StringComparison.Ordinal);
        Assert.Equal(free, fixture.Engine.Pool.FreeBlocks);
        Assert.Equal(0, server.RequestsInFlight);
        await Assert.ThrowsAsync<HttpRequestException>(() => http.GetAsync("health")); // no longer listening
    }

    private static async Task WaitUntil(Func<bool> condition)
    {
        for (int i = 0; i < 200 && !condition(); i++) await Task.Delay(50);
        Assert.True(condition(), "the condition did not hold within 10 s");
    }
}
