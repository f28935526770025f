using System.ComponentModel;
using System.Text.Json;
using IlgpuMedusa.Hosting;
using Microsoft.Extensions.AI;

namespace IlgpuMedusa.Tests.Hosting;

/// <summary>
/// Tool calls through the <see cref="IChatClient"/>: with a required <see cref="ChatOptions.ToolMode"/> the reply is a
/// <see cref="FunctionCallContent"/>, and Microsoft.Extensions.AI's own function invocation (an independent caller)
/// binds its arguments to a .NET method, runs it, and sends the result back for the next reply.
/// </summary>
public sealed class ToolCallChatClientTests(DemoEngineFixture fixture) : IClassFixture<DemoEngineFixture>
{
    public enum Unit { Celsius, Fahrenheit }

    private readonly List<(string City, Unit Unit)> _calls = [];

    [Description("The weather in a city.")]
    private string GetWeather([Description("The city.")] string city, Unit unit)
    {
        _calls.Add((city, unit));
        return $"-3 degrees {unit} in {city}";
    }

    [Fact]
    public async Task ARequiredCall_IsAFunctionCall_ThatFunctionInvocationBindsAndRuns()
    {
        using var client = new IlgpuMedusaChatClient(fixture.Engine);
        var weather = AIFunctionFactory.Create(GetWeather, "get_weather");
        // A bias toward the quote helps the story model close the city's string.
        var bias = new Dictionary<int, float> { [fixture.Engine.Tokenizer.Encode("\"", addBos: false)[^1]] = 4f };
        var options = new ChatOptions
        {
            Tools = [weather], ToolMode = ChatToolMode.RequireSpecific("get_weather"), MaxOutputTokens = 250,
            AdditionalProperties = new() { [IlgpuMedusaChatOptionKeys.LogitBias] = bias },
        };
        var messages = new List<ChatMessage> { new(ChatRole.User, "What is the weather in Oslo?") };

        var response = await client.GetResponseAsync(messages, options);
        Assert.Equal(ChatFinishReason.ToolCalls, response.FinishReason);
        var call = Assert.IsType<FunctionCallContent>(Assert.Single(response.Messages.Single().Contents));
        Assert.Equal("get_weather", call.Name);
        Assert.Equal(["city", "unit"], call.Arguments!.Keys);
        var unit = Assert.IsType<JsonElement>(call.Arguments["unit"]).GetString();
        Assert.Contains(unit, (string[])["Celsius", "Fahrenheit"]); // the enum's schema, as System.Text.Json writes it for the parameter

        // Microsoft.Extensions.AI's function invocation: it reads the call, binds the arguments to GetWeather's parameters,
        // runs it, and asks again with the result in the conversation (then with the tool no longer required).
        using var invoking = new ChatClientBuilder(client).UseFunctionInvocation().Build();
        var final = await invoking.GetResponseAsync(messages, options.Clone());
        var (city, invokedUnit) = Assert.Single(_calls);
        Assert.Equal(unit, invokedUnit.ToString());
        Assert.False(string.IsNullOrEmpty(city));
        Assert.Contains(final.Messages, m => m.Contents.OfType<FunctionResultContent>().Any(r => r.Result!.ToString()!.Contains(city, StringComparison.Ordinal)));
        Assert.NotEqual(ChatFinishReason.ToolCalls, final.FinishReason);
    }

    [Fact]
    public async Task Streamed_TheCallComesInTheLastUpdate()
    {
        using var client = new IlgpuMedusaChatClient(fixture.Engine);
        var options = new ChatOptions
        {
            Tools = [AIFunctionFactory.Create(GetWeather, "get_weather"), AIFunctionFactory.Create(() => "pong", "ping")],
            ToolMode = ChatToolMode.RequireAny,
            MaxOutputTokens = 120,
        };
        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in client.GetStreamingResponseAsync([new ChatMessage(ChatRole.User, "Hi")], options)) updates.Add(update);
        Assert.All(updates.SkipLast(1), u => Assert.Empty(u.Text));
        Assert.Equal(ChatFinishReason.ToolCalls, updates[^1].FinishReason);
        var call = Assert.Single(updates[^1].Contents.OfType<FunctionCallContent>());
        Assert.Contains(call.Name, (string[])["get_weather", "ping"]);
    }

    [Fact]
    public void ToolOptions_AreCheckedNamingTheOption()
    {
        using var client = new IlgpuMedusaChatClient(fixture.Engine);
        var weather = AIFunctionFactory.Create(GetWeather, "get_weather");
        var e = Assert.Throws<ArgumentException>(() => client.ToGenerationOptions(new ChatOptions { Tools = [weather], ToolMode = ChatToolMode.RequireSpecific("other") }));
        Assert.Contains("requires function 'other'", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<ArgumentException>(() => client.ToGenerationOptions(new ChatOptions { ToolMode = ChatToolMode.RequireAny }));
        Assert.Contains("holds no functions", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<ArgumentException>(() => client.ToGenerationOptions(new ChatOptions { Tools = [weather], ToolMode = ChatToolMode.RequireAny, ResponseFormat = ChatResponseFormat.Json }));
        Assert.Contains("cannot be combined with a required tool call", e.Message, StringComparison.Ordinal);
        var pattern = AIFunctionFactory.CreateDeclaration("f", null, JsonDocument.Parse("""{"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}""").RootElement);
        e = Assert.Throws<ArgumentException>(() => client.ToGenerationOptions(new ChatOptions { Tools = [pattern], ToolMode = ChatToolMode.RequireAny }));
        Assert.Contains("ChatOptions.Tools", e.Message, StringComparison.Ordinal);
        Assert.Contains("pattern", e.Message, StringComparison.Ordinal);
        // Auto: the tools are not offered; the reply is text.
        Assert.Equal(IlgpuMedusa.Generation.ResponseFormat.Text, client.ToGenerationOptions(new ChatOptions { Tools = [weather], ToolMode = ChatToolMode.Auto }).ResponseFormat);
    }

    /// <summary>With a required call the system prompt describes the functions (name, description, parameters); with Auto it does not.</summary>
    [Fact]
    public void ARequiredCall_TellsTheModelOfTheFunctions()
    {
        using var client = new IlgpuMedusaChatClient(fixture.Engine);
        var weather = AIFunctionFactory.Create(GetWeather, "get_weather");
        ChatMessage[] messages = [new(ChatRole.User, "Hi")];
        string required = fixture.Engine.Tokenizer.Decode(client.EncodeMessages(messages, new ChatOptions { Tools = [weather], ToolMode = ChatToolMode.RequireAny }));
        Assert.Contains("get_weather", required, StringComparison.Ordinal);
        Assert.Contains("The weather in a city.", required, StringComparison.Ordinal);
        Assert.Contains("The city.", required, StringComparison.Ordinal); // a parameter's description
        string auto = fixture.Engine.Tokenizer.Decode(client.EncodeMessages(messages, new ChatOptions { Tools = [weather], ToolMode = ChatToolMode.Auto }));
        Assert.DoesNotContain("get_weather", auto, StringComparison.Ordinal);
        var e = Assert.Throws<ArgumentException>(() => client.ToGenerationOptions(new ChatOptions { Tools = [weather], ToolMode = ChatToolMode.RequireAny, StopSequences = ["x"] }));
        Assert.Contains("StopSequences cannot be combined", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void CallsAndResultsInTheHistory_AreLaidOutAsJsonText()
    {
        var call = new FunctionCallContent("c1", "get_weather", new Dictionary<string, object?> { ["city"] = "Oslo" });
        var segments = ChatTemplate.Apply(ChatTemplateKind.Llama2Chat,
        [
            new ChatMessage(ChatRole.User, "Weather?"),
            new ChatMessage(ChatRole.Assistant, [call]),
            new ChatMessage(ChatRole.Tool, [new FunctionResultContent("c1", "-3")]),
        ]);
        Assert.Equal("<s>[INST] Weather? [/INST] {\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}} </s><s>[INST] -3 [/INST]", ChatTemplate.Render(segments));
    }
}
