using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using IlgpuMedusa.Generation;

namespace IlgpuMedusa.Cli.Commands;

/// <summary>
/// <c>bench</c>: decodes a set of prompts greedily and reports prefill and decode tokens/s and peak memory.
/// Runs are interleaved prompt by prompt so that machine noise hits every configuration alike.
/// </summary>
internal static class BenchCommand
{
    private static readonly string[] DefaultPrompts =
    [
        "Once upon a time",
        "The little dog",
        "Tom and his sister went to the park",
        "One day, a bird",
    ];

    public static Command Create()
    {
        var common = new CommonOptions();
        var prompts = new Option<string?>("--prompts") { Description = "File with one prompt per line (default: four built-in story openings)." };
        var maxTokens = new Option<int>("--max-tokens", "-n") { Description = "Tokens to generate per prompt.", DefaultValueFactory = _ => 128 };
        var runs = new Option<int>("--runs") { Description = "Passes over the prompts (the first pass is a warm-up and is not counted).", DefaultValueFactory = _ => 3 };
        var json = new Option<bool>("--json") { Description = "Print one JSON object." };
        var command = new Command("bench", "Measure prefill and decode speed and peak memory.") { prompts, maxTokens, runs, json };
        common.AddTo(command);
        command.SetAction((parse, cancellationToken) =>
        {
            var promptList = parse.GetValue(prompts) is { } file ? ReadPrompts(file) : DefaultPrompts;
            int n = parse.GetValue(maxTokens), passes = parse.GetValue(runs);
            if (n <= 0) throw new ArgumentOutOfRangeException(nameof(maxTokens), n, "--max-tokens must be positive.");
            if (passes < 2) throw new ArgumentOutOfRangeException(nameof(runs), passes, "--runs must be at least 2 (one warm-up pass plus one measured pass).");
            using var engine = CommonOptions.LoadEngine(common.ToEngineOptions(parse));
            var result = Measure(engine, promptList, n, passes, cancellationToken);
            if (parse.GetValue(json)) Console.WriteLine(JsonSerializer.Serialize(result));
            else Print(result);
            return Task.FromResult(0);
        });
        return command;
    }

    private static string[] ReadPrompts(string file)
    {
        if (!File.Exists(file)) throw new FileNotFoundException($"--prompts: file '{file}' not found.", file);
        var lines = File.ReadAllLines(file).Where(l => l.Trim().Length > 0).ToArray();
        return lines.Length > 0 ? lines : throw new InvalidDataException($"--prompts: file '{file}' has no prompts.");
    }

    private static Dictionary<string, object> Measure(InferenceEngine engine, string[] prompts, int maxTokens, int passes, CancellationToken cancellationToken)
    {
        var options = new GenerationOptions { MaxTokens = maxTokens, Sampling = Sampling.Greedy };
        var decodeRates = new List<double>();
        var prefillRates = new List<double>();
        long generated = 0;
        double decodeSeconds = 0;
        for (int pass = 0; pass < passes; pass++)
        {
            foreach (var prompt in prompts)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var stats = new GenerationStats();
                foreach (var _ in engine.Generate(engine.EncodePrompt(prompt, options), options, stats, cancellationToken))
                {
                }
                if (pass == 0) continue; // warm-up: JIT, page faults of the mapped weights
                decodeRates.Add(stats.DecodeTokensPerSecond);
                prefillRates.Add(stats.PromptTokens / Math.Max(stats.PrefillSeconds, 1e-9));
                generated += stats.GeneratedTokens;
                decodeSeconds += stats.DecodeSeconds;
            }
        }
        using var self = Process.GetCurrentProcess();
        self.Refresh();
        long weightsBytes = Directory.GetFiles(engine.Options.ModelPath).Where(f => f.EndsWith(".bin", StringComparison.Ordinal) && !f.EndsWith("tokenizer.bin", StringComparison.Ordinal) || f.EndsWith(".safetensors", StringComparison.Ordinal)).Sum(f => new FileInfo(f).Length);
        return new Dictionary<string, object>
        {
            ["device"] = engine.DeviceName,
            ["prompts"] = prompts.Length,
            ["max_tokens"] = maxTokens,
            ["measured_passes"] = passes - 1,
            ["generated_tokens"] = generated,
            ["decode_tokens_per_second"] = Math.Round(generated / Math.Max(decodeSeconds, 1e-9), 2),
            ["decode_tokens_per_second_median"] = Math.Round(Median(decodeRates), 2),
            ["prefill_tokens_per_second_median"] = Math.Round(Median(prefillRates), 2),
            ["peak_working_set_mb"] = Math.Round(self.PeakWorkingSet64 / 1048576.0, 1),
            ["weights_file_mb"] = Math.Round(weightsBytes / 1048576.0, 1),
            ["kv_cache_mb"] = Math.Round(engine.Pool.Layout.TotalBytes / 1048576.0, 1),
        };
    }

    private static double Median(List<double> values)
    {
        if (values.Count == 0) return 0;
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    private static void Print(Dictionary<string, object> result)
    {
        foreach (var (key, value) in result) Console.WriteLine($"{key,-34} {value}");
    }
}
