using System.Diagnostics;
using System.Globalization;
using IlgpuMedusa.Generation;

namespace IlgpuMedusa.Cli.Commands;

/// <summary>
/// <c>bench --concurrency 1,2,4,8,16</c>: N requests submitted at once to the engine's scheduler (continuous batching),
/// with and without Medusa, alternating; reports total tokens/s and mean per-sequence tokens/s for each N, and the ratio
/// of each N's total to N = 1's. The engine runs without prefix caching (BenchCommand): requests repeat the prompts.
/// </summary>
internal static class ConcurrencyBench
{
    public static int[] Parse(string text)
    {
        var levels = new List<int>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!int.TryParse(part, CultureInfo.InvariantCulture, out int n) || n < 1 || n > 256)
                throw new ArgumentException($"--concurrency: '{part}' is not a number of requests in 1..256.");
            levels.Add(n);
        }
        return levels.Count > 0 ? [.. levels] : throw new ArgumentException("--concurrency: no levels given.");
    }

    public static Dictionary<string, object> Measure(InferenceEngine engine, string[] prompts, int[] levels, int maxTokens, string? tree, CancellationToken cancellationToken)
    {
        var modes = engine.Heads is null ? new[] { false } : [false, true];
        var rows = new List<Dictionary<string, object>>();
        // Warm-up: every kernel/JIT path once.
        foreach (var medusa in modes) Run(engine, prompts, 2, Math.Min(maxTokens, 16), medusa, tree, cancellationToken);
        var baseline = new Dictionary<bool, double>();
        foreach (int n in levels)
        {
            foreach (var medusa in modes)
            {
                var (total, perSequence, tokens, seconds) = Run(engine, prompts, n, maxTokens, medusa, tree, cancellationToken);
                if (n == levels[0]) baseline[medusa] = total;
                rows.Add(new Dictionary<string, object>
                {
                    ["concurrency"] = n,
                    ["medusa"] = medusa,
                    ["tokens"] = tokens,
                    ["seconds"] = Math.Round(seconds, 3),
                    ["total_tokens_per_second"] = Math.Round(total, 1),
                    ["per_sequence_tokens_per_second"] = Math.Round(perSequence, 1),
                    ["total_vs_first_level"] = Math.Round(total / baseline[medusa], 2),
                });
                Console.Error.WriteLine($"[bench] concurrency {n,3} {(medusa ? "medusa" : "plain "),-6}: {total,8:0.0} tok/s total, {perSequence,7:0.0} per sequence ({tokens} tokens in {seconds:0.00} s)");
            }
        }
        var s = engine.SchedulerStats;
        return new Dictionary<string, object>
        {
            ["device"] = engine.DeviceName,
            ["max_tokens"] = maxTokens,
            ["tree"] = tree ?? engine.DefaultTree,
            ["levels"] = rows,
            ["preemptions"] = s.Preemptions,
            ["kv_blocks"] = engine.Pool.BlockCount,
            ["kv_dtype"] = engine.Pool.Layout.ElementType.ToString().ToLowerInvariant(),
            ["prefix_caching"] = engine.Pool.PrefixCaching,
        };
    }

    private static (double Total, double PerSequence, long Tokens, double Seconds) Run(InferenceEngine engine, string[] prompts, int n, int maxTokens, bool medusa, string? tree, CancellationToken cancellationToken)
    {
        var options = new GenerationOptions { MaxTokens = maxTokens, UseMedusa = medusa, Tree = tree };
        var clock = Stopwatch.StartNew();
        var tasks = Enumerable.Range(0, n).Select(i => Task.Run(async () =>
        {
            var stats = new GenerationStats();
            var ids = engine.EncodePrompt(prompts[i % prompts.Length], options);
            var own = Stopwatch.StartNew();
            await foreach (var _ in engine.GenerateAsync(ids, options, stats, cancellationToken).ConfigureAwait(false))
            {
            }
            return (stats.GeneratedTokens, own.Elapsed.TotalSeconds);
        }, cancellationToken)).ToArray();
        Task.WaitAll(tasks, cancellationToken);
        double seconds = clock.Elapsed.TotalSeconds;
        long tokens = tasks.Sum(t => (long)t.Result.GeneratedTokens);
        double perSequence = tasks.Average(t => t.Result.GeneratedTokens / Math.Max(t.Result.TotalSeconds, 1e-9));
        return (tokens / seconds, perSequence, tokens, seconds);
    }
}
