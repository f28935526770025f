using System.Text.Json;
using System.Text.Json.Nodes;

namespace IlgpuMedusa.Tests.Hosting;

/// <summary>
/// @huggingface/jinja (Hugging Face's JavaScript Jinja, written for chat templates; tests/tools/hf-jinja, installed by
/// scripts/test.sh), run by node through render.mjs: the independent renderer our <c>JinjaTemplate</c> is compared with.
/// </summary>
internal static class JinjaReference
{
    private static readonly NodeTool Tool = new("hf-jinja", "@huggingface/jinja", nodeVersion: 18);

    /// <summary>The clock both sides read (strftime_now), local time.</summary>
    public static readonly DateTime Now = new(2026, 12, 8, 10, 0, 0, DateTimeKind.Local);

    /// <summary>Renders each (template, context) pair; a case whose template raised or failed gives null.</summary>
    public static IReadOnlyList<string?> Render(IReadOnlyList<(string Template, JsonObject Context)> cases)
    {
        var input = new JsonObject
        {
            ["now"] = Now.ToString("yyyy-MM-ddTHH:mm:ss", System.Globalization.CultureInfo.InvariantCulture),
            ["cases"] = new JsonArray(cases.Select(c => (JsonNode)new JsonObject { ["template"] = c.Template, ["context"] = c.Context.DeepClone() }).ToArray()),
        };
        var output = Tool.Run("render.mjs", input.ToJsonString(), TimeSpan.FromSeconds(120));
        using var document = JsonDocument.Parse(output);
        return document.RootElement.GetProperty("results").EnumerateArray()
            .Select(r => r.TryGetProperty("text", out var text) ? text.GetString() : null)
            .ToList();
    }
}
