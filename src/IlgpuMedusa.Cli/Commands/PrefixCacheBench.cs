using System.Globalization;
using IlgpuMedusa.Generation;

namespace IlgpuMedusa.Cli.Commands;

/// <summary>
/// <c>bench --prefix-cache</c>: what the prefix cache saves when requests share a long opening (a document, a system
/// prompt, the earlier turns of a chat). The shared opening is the model's own greedy continuation of the first prompt,
/// <c>--prefix-tokens</c> long; each request is that document followed by one of the prompts. Per prompt, alternating:
/// a cold request (the cache cleared first, so the whole prompt is computed) and a warm one (the same prompt right after
/// another prompt's request, so only the document is found cached). Reports time to first token (the prefill) and whole
/// request time of each, their ratios, the cached tokens, and whether warm and cold requests generated the same tokens.
/// </summary>
internal static class PrefixCacheBench
{
    public static Dictionary<string, object> Measure(InferenceEngine engine, string[] prompts, int? prefixTokensAsked, int maxTokens, int passes, CancellationToken cancellationToken)
    {
        if (!engine.Pool.PrefixCaching)
            throw new ArgumentException("--prefix-cache measures the prefix cache, which --no-prefix-cache turns off: give one of them.");
        if (prompts.Length < 2) throw new ArgumentException("--prefix-cache needs at least two prompts (a warm request follows another prompt's).");
        var options = new GenerationOptions { MaxTokens = maxTokens, Sampling = Sampling.Greedy };
        var suffixes = prompts.Select(p => engine.EncodePrompt(" " + p, options).Skip(1).ToArray()).ToArray(); // without BOS
        int context = engine.Model.Config.MaxSequenceLength;
        int room = context - maxTokens - suffixes.Max(s => s.Length) - 1;
        int prefixTokens = prefixTokensAsked ?? room; // default: all the context the prompt leaves
        if (prefixTokens < 1 || prefixTokens > room)
            throw new ArgumentOutOfRangeException(nameof(prefixTokensAsked), prefixTokens,
                $"--prefix-tokens must be in 1..{room} here (the context of {context} holds the document, the longest prompt and --max-tokens {maxTokens}).");

        // The document: the model's greedy story from the first prompt, cut to the length asked for.
        var opening = engine.EncodePrompt(prompts[0], options).ToList();
        var document = new List<int>(opening);
        while (document.Count < prefixTokens + 1)
        {
            int before = document.Count;
            var more = options with { MaxTokens = Math.Min(prefixTokens + 1 - document.Count, context - document.Count - 1) };
            foreach (var piece in engine.Generate([.. document], more, new GenerationStats(), cancellationToken)) document.AddRange(piece.TokenIds);
            if (document.Count == before) document.AddRange(opening.Skip(1)); // the story ended at once: repeat the opening
        }
        int[] shared = [.. document.Take(prefixTokens)];
        int[][] requests = suffixes.Select(s => (int[])[.. shared, .. s]).ToArray();

        var cold = new List<Sample>();
        var warm = new List<Sample>();
        int identical = 0, compared = 0;
        using var progress = new ConsoleProgress("prefix-cache bench");
        // Warm-up: both paths once (JIT, first-touch of the cache), not counted.
        Run(engine, requests[0], options, clear: true, cancellationToken);
        Run(engine, requests[1], options, clear: false, cancellationToken);
        int total = passes * requests.Length, done = 0;
        for (int pass = 0; pass < passes; pass++)
        {
            for (int i = 0; i < requests.Length; i++)
            {
                var c = Run(engine, requests[i], options, clear: true, cancellationToken);
                var w = Run(engine, requests[(i + 1) % requests.Length], options, clear: false, cancellationToken);
                cold.Add(c);
                warm.Add(w);
                // Compare the warm request with a cold run of the same prompt (the next one's cold run, or the first's).
                var reference = Run(engine, requests[(i + 1) % requests.Length], options, clear: true, cancellationToken);
                compared++;
                if (reference.Tokens.SequenceEqual(w.Tokens)) identical++;
                progress.Report(++done / (double)total);
            }
        }
        double coldFirst = Median(cold.Select(s => s.FirstTokenSeconds)), warmFirst = Median(warm.Select(s => s.FirstTokenSeconds));
        double coldTotal = Median(cold.Select(s => s.TotalSeconds)), warmTotal = Median(warm.Select(s => s.TotalSeconds));
        return new Dictionary<string, object>
        {
            ["device"] = engine.DeviceName,
            ["prefix_tokens"] = prefixTokens,
            ["prompt_tokens_mean"] = Math.Round(requests.Average(r => r.Length), 1),
            ["max_tokens"] = maxTokens,
            ["requests_each"] = cold.Count,
            ["cached_prompt_tokens_warm_mean"] = Math.Round(warm.Average(s => s.Cached), 1),
            ["cached_prompt_tokens_cold_mean"] = Math.Round(cold.Average(s => s.Cached), 1),
            ["time_to_first_token_ms_cold_median"] = Math.Round(1000 * coldFirst, 2),
            ["time_to_first_token_ms_warm_median"] = Math.Round(1000 * warmFirst, 2),
            ["time_to_first_token_cold_over_warm"] = Math.Round(coldFirst / Math.Max(warmFirst, 1e-9), 2),
            ["request_ms_cold_median"] = Math.Round(1000 * coldTotal, 2),
            ["request_ms_warm_median"] = Math.Round(1000 * warmTotal, 2),
            ["request_cold_over_warm"] = Math.Round(coldTotal / Math.Max(warmTotal, 1e-9), 2),
            ["warm_tokens_identical_to_cold"] = $"{identical}/{compared}",
        };
    }

    public static void Print(Dictionary<string, object> result)
    {
        foreach (var (key, value) in result)
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{key,-38} {value}"));
    }

    private sealed record Sample(double FirstTokenSeconds, double TotalSeconds, int Cached, List<int> Tokens);

    private static Sample Run(InferenceEngine engine, int[] prompt, GenerationOptions options, bool clear, CancellationToken cancellationToken)
    {
        if (clear) engine.ClearPrefixCache();
        var stats = new GenerationStats();
        var tokens = new List<int>();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        double first = 0;
        foreach (var piece in engine.Generate(prompt, options, stats, cancellationToken))
        {
            if (tokens.Count == 0) first = clock.Elapsed.TotalSeconds;
            tokens.AddRange(piece.TokenIds);
        }
        return new Sample(first, clock.Elapsed.TotalSeconds, stats.CachedPromptTokens, tokens);
    }

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        if (sorted.Length == 0) return 0;
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }
}
