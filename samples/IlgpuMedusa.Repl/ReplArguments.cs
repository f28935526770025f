using System.Globalization;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Hosting;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Repl;

/// <summary>The REPL's command line: <c>[--model DIR] [--device KIND] [--heads SPEC] [--kv-dtype f32|f16] [--no-prefix-cache] [--max-tokens N] [--template KIND]</c>.</summary>
internal sealed record ReplArguments
{
    public const string Usage = """
        usage: IlgpuMedusa.Repl [--model DIR] [--device auto|cuda|opencl|host|cpu-emulator] [--heads auto|none|FILE]
                                [--kv-dtype f32|f16] [--no-prefix-cache] [--max-tokens N]
                                [--template auto|model|plain|llama2-chat|vicuna|llama3|chatml]
          --model DIR       model directory (default: the demo model in models/stories15M, fetched when missing)
          --device KIND     device (default auto: CUDA, then an OpenCL GPU, then the CPU)
          --heads SPEC      Medusa heads: auto (those in the model directory), none, or a heads file
          --kv-dtype TYPE   KV cache elements: f32 (default) or f16 (half the memory; attention still in float32)
          --no-prefix-cache compute each turn's whole prompt (by default the earlier turns' KV is reused)
          --max-tokens N    most tokens per reply (default 200)
          --template KIND   chat template (default auto: plain completion for base models such as the demo model)
        """;

    /// <summary>The model directory; null means the demo model.</summary>
    public string? ModelPath { get; init; }
    public DeviceKind Device { get; init; } = DeviceKind.Auto;
    public string? Heads { get; init; }
    public DType KvCacheType { get; init; } = DType.F32;
    public bool PrefixCaching { get; init; } = true;
    public int MaxTokens { get; init; } = 200;
    public ChatTemplateKind Template { get; init; } = ChatTemplateKind.Auto;
    public bool Help { get; init; }

    /// <summary>Parses the arguments; throws <see cref="ArgumentException"/> naming the bad one.</summary>
    public static ReplArguments Parse(IReadOnlyList<string> args)
    {
        var result = new ReplArguments();
        for (int i = 0; i < args.Count; i++)
        {
            string name = args[i];
            string Value() => i + 1 < args.Count ? args[++i] : throw new ArgumentException($"{name} needs a value.");
            result = name switch
            {
                "-h" or "--help" => result with { Help = true },
                "--model" or "-m" => result with { ModelPath = Value() },
                "--device" => result with { Device = DeviceOptions.ParseKind(Value()) },
                "--heads" => result with { Heads = Value() },
                "--kv-dtype" => result with { KvCacheType = EngineOptions.ParseKvCacheType(Value(), "--kv-dtype") },
                "--no-prefix-cache" => result with { PrefixCaching = false },
                "--max-tokens" or "-n" => result with { MaxTokens = ParseMaxTokens(Value()) },
                "--template" => result with { Template = ParseTemplate(Value()) },
                _ => throw new ArgumentException($"unknown argument '{name}'."),
            };
        }
        return result;
    }

    private static int ParseMaxTokens(string text) =>
        int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n > 0
            ? n
            : throw new ArgumentException($"--max-tokens must be a positive number of tokens, got '{text}'.");

    private static ChatTemplateKind ParseTemplate(string text) => text.ToLowerInvariant() switch
    {
        "auto" => ChatTemplateKind.Auto,
        "plain" => ChatTemplateKind.Plain,
        "llama2-chat" or "llama2chat" => ChatTemplateKind.Llama2Chat,
        "vicuna" => ChatTemplateKind.Vicuna,
        "llama3" or "llama-3" => ChatTemplateKind.Llama3,
        "chatml" => ChatTemplateKind.ChatML,
        "model" => ChatTemplateKind.Model,
        _ => throw new ArgumentException($"--template: unknown template '{text}'; expected auto, model, plain, llama2-chat, vicuna, llama3 or chatml."),
    };
}
