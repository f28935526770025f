using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Medusa;

namespace IlgpuMedusa.Cli.Commands;

/// <summary>
/// <c>bench</c>: decodes the same prompts greedily, autoregressively and with Medusa, alternating configuration by
/// configuration within each prompt so that machine noise hits all alike. Reports decode tokens/s of each and their ratio,
/// Medusa's mean accepted tokens per step and per-head hit rates, prefill tokens/s and peak memory. With
/// <c>--sweep-trees</c> every tree preset (and each <c>--tree</c> file) is measured the same way and the fastest is
/// recommended.
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
        var runs = new Option<int>("--runs") { Description = "Measured passes over the prompts.", DefaultValueFactory = _ => 1 };
        var warmup = new Option<int>("--warmup") { Description = "Prompts decoded first with every configuration and not counted (JIT, page faults).", DefaultValueFactory = _ => 2 };
        var tree = new Option<string[]>("--tree")
        {
            Description = $"Medusa tree: a preset ({string.Join(", ", TreePresets.Names)}), a JSON file of paths, or (with --sweep-trees) a folder of JSON files. Repeatable with --sweep-trees.",
            AllowMultipleArgumentsPerToken = false,
        };
        var sweep = new Option<bool>("--sweep-trees") { Description = "Measure every tree preset (plus each --tree) and recommend the fastest." };
        var json = new Option<bool>("--json") { Description = "Print one JSON object." };
        var concurrency = new Option<string?>("--concurrency") { Description = "Comma-separated numbers of simultaneous requests (e.g. 1,2,4,8,16): total and per-sequence tokens/s with and without Medusa under continuous batching (prefix caching off: the prompts repeat)." };
        var prefixCache = new Option<bool>("--prefix-cache")
        {
            Description = "Measure the prefix cache instead: requests that share a long opening (the model's own story), each cold (cache cleared) and warm, " +
                "alternating: time to first token, request time, their ratios, and whether warm and cold requests give the same tokens.",
        };
        var prefixTokens = new Option<int?>("--prefix-tokens") { Description = "With --prefix-cache: tokens of the shared opening (default: all the context the prompts and --max-tokens leave)." };
        var responseFormat = new Option<string>("--response-format")
        {
            Description = "Decode under a constraint: text (none), json (JSON mode) or json_schema (with --json-schema FILE).",
            DefaultValueFactory = _ => "text",
        };
        var jsonSchema = new Option<FileInfo?>("--json-schema") { Description = "A JSON schema file the outputs follow (implies --response-format json_schema)." };
        var command = new Command("bench", "Measure autoregressive and Medusa decoding side by side (tokens/s, accepted tokens per step, memory).")
        {
            prompts, maxTokens, runs, warmup, tree, sweep, json, concurrency, prefixCache, prefixTokens, responseFormat, jsonSchema,
        };
        common.AddTo(command);
        command.SetAction((parse, cancellationToken) =>
        {
            var promptList = parse.GetValue(prompts) is { } file ? ReadPrompts(file) : DefaultPrompts;
            int n = parse.GetValue(maxTokens), passes = parse.GetValue(runs), warm = parse.GetValue(warmup);
            // The first token comes from the prompt's forward: decoding speed needs at least one decode step after it.
            if (n < 2) throw new ArgumentOutOfRangeException(nameof(maxTokens), n, "--max-tokens must be at least 2 (the first token comes from the prefill; decode speed is measured on the rest).");
            if (passes < 1) throw new ArgumentOutOfRangeException(nameof(runs), passes, "--runs must be at least 1.");
            if (warm < 0) throw new ArgumentOutOfRangeException(nameof(warmup), warm, "--warmup must be >= 0.");
            var trees = parse.GetValue(tree) ?? [];
            bool sweepTrees = parse.GetValue(sweep);
            if (!sweepTrees && trees.Length > 1) throw new ArgumentException("--tree: give one tree, or several with --sweep-trees.");
            var levels = parse.GetValue(concurrency) is { } text ? ConcurrencyBench.Parse(text) : null;
            bool measurePrefixCache = parse.GetValue(prefixCache);
            if (measurePrefixCache && (levels is not null || sweepTrees))
                throw new ArgumentException("--prefix-cache measures something else than --concurrency and --sweep-trees; give one of them.");
            if (!measurePrefixCache && parse.GetValue(prefixTokens) is not null) throw new ArgumentException("--prefix-tokens goes with --prefix-cache.");
            var engineOptions = common.ToEngineOptions(parse);
            // Requests of a level repeat the prompts: with prefix caching the repeats would skip work the first ones did,
            // and the figures would not compare with batching of distinct work (bench --prefix-cache measures that).
            if (levels is not null) engineOptions = engineOptions with { PrefixCaching = false };
            using var engine = CommonOptions.LoadEngine(engineOptions);
            if (measurePrefixCache)
            {
                var measured = PrefixCacheBench.Measure(engine, promptList, parse.GetValue(prefixTokens), n, passes, cancellationToken);
                if (parse.GetValue(json)) Console.WriteLine(JsonSerializer.Serialize(measured));
                else PrefixCacheBench.Print(measured);
                return Task.FromResult(0);
            }
            if (levels is not null)
            {
                if (trees.Length > 0 && engine.Heads is null)
                    throw new ArgumentException("--tree needs Medusa heads: the model directory has no medusa_lm_head.safetensors; train some with train-heads or pass --heads FILE.");
                if (sweepTrees) throw new ArgumentException("--sweep-trees and --concurrency measure different things; give one of them.");
                foreach (var prompt in promptList) engine.EncodePrompt(prompt, new GenerationOptions { Tree = trees.FirstOrDefault() }); // bad prompts and trees fail here, not in a worker
                var batched = ConcurrencyBench.Measure(engine, promptList, levels, n, trees.FirstOrDefault(), cancellationToken);
                Console.WriteLine(parse.GetValue(json) ? JsonSerializer.Serialize(batched) : string.Join(Environment.NewLine, ((List<Dictionary<string, object>>)batched["levels"]).Select(r => string.Join("  ", r.Select(p => $"{p.Key}={p.Value}")))));
                return Task.FromResult(0);
            }
            var constraint = new GenerationOptions().WithResponseFormat(parse.GetValue(responseFormat)!, parse.GetValue(jsonSchema)).Validate();
            if (constraint.ResponseFormat != ResponseFormat.Text && (measurePrefixCache || levels is not null))
                throw new ArgumentException("--response-format goes with the autoregressive-vs-Medusa comparison, not with --prefix-cache or --concurrency.");
            var configurations = Configurations(engine, trees, sweepTrees);
            var result = Measure(engine, promptList, configurations, n, passes, warm, constraint, cancellationToken);
            if (parse.GetValue(json)) Console.WriteLine(JsonSerializer.Serialize(result));
            else Print(result);
            return Task.FromResult(0);
        });
        return command;
    }

    private static string[] ReadPrompts(string file)
    {
        if (!File.Exists(file)) throw new FileNotFoundException($"--prompts: file '{file}' not found.", file);
        var lines = File.ReadAllLines(file).Where(l => l.Trim().Length > 0 && !l.TrimStart().StartsWith('#')).ToArray();
        return lines.Length > 0 ? lines : throw new InvalidDataException($"--prompts: file '{file}' has no prompts.");
    }

    /// <summary>A decoding configuration: autoregressive (Tree null) or Medusa with a tree.</summary>
    private sealed record Configuration(string Name, string? Tree, int Nodes);

    private static List<Configuration> Configurations(InferenceEngine engine, string[] trees, bool sweep)
    {
        var list = new List<Configuration> { new("autoregressive", null, 1) };
        if (engine.Heads is not { } heads)
        {
            if (trees.Length > 0 || sweep)
                throw new ArgumentException("--tree/--sweep-trees need Medusa heads: the model directory has no medusa_lm_head.safetensors; train some with train-heads or pass --heads FILE.");
            return list;
        }
        var names = new List<string>();
        if (sweep)
        {
            foreach (var preset in TreePresets.Names)
                if (TreePresets.IsDynamic(preset, out _) || (TreePresets.TryGet(preset, out var paths) && paths.Max(p => p.Length) <= heads.HeadCount)) names.Add(preset);
        }
        foreach (var t in trees)
        {
            if (sweep && Directory.Exists(t)) names.AddRange(Directory.GetFiles(t, "*.json").Order(StringComparer.Ordinal));
            else names.Add(t);
        }
        if (names.Count == 0) names.Add(engine.DefaultTree);
        foreach (var name in names.Distinct())
        {
            var tree = CandidateTree.Resolve(name, heads.HeadCount, MedusaHeads.TopK);
            if (tree.NodeCount > InferenceEngine.MaxTreeNodes)
                throw new ArgumentException($"tree '{name}' has {tree.NodeCount} nodes; at most {InferenceEngine.MaxTreeNodes} are verified in one forward.");
            list.Add(new Configuration("medusa " + tree.Name, name, tree.NodeCount));
        }
        return list;
    }

    /// <summary>Counters of one configuration over all measured prompts.</summary>
    private sealed class Totals
    {
        public long Generated;
        public long Decoded;
        public long DecodeSteps;
        public double DecodeSeconds;
        public long MedusaSteps;
        public long MedusaTokens;
        public long ForcedTokens;
        public long[] Histogram = [];
        public long[] Guesses = [];
        public readonly List<double> Rates = [];
        public readonly List<double> PrefillRates = [];
        public int Identical;
        public int Compared;
        public long Waits;
        public long Drains;
    }

    private static Dictionary<string, object> Measure(InferenceEngine engine, string[] prompts, List<Configuration> configurations, int maxTokens, int passes, int warmup,
        GenerationOptions constraint, CancellationToken cancellationToken)
    {
        var totals = configurations.Select(_ => new Totals()).ToArray();
        var encoded = prompts.Select(p => engine.EncodePrompt(p, new GenerationOptions())).ToArray();
        var warmupPrompts = Enumerable.Range(0, Math.Min(warmup, prompts.Length)).Select(i => (i, false));
        var measured = Enumerable.Range(0, passes).SelectMany(_ => Enumerable.Range(0, prompts.Length).Select(i => (i, true)));
        var order = warmupPrompts.Concat(measured).ToArray();
        using var progress = new ConsoleProgress("bench");
        int done = 0;
        foreach (var (index, counted) in order)
        {
            List<int>? reference = null;
            for (int c = 0; c < configurations.Count; c++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var config = configurations[c];
                var options = constraint with { MaxTokens = maxTokens, Sampling = Sampling.Greedy, UseMedusa = config.Tree is not null, Tree = config.Tree };
                var stats = new GenerationStats();
                var tokens = new List<int>(maxTokens);
                var device = engine.Backend as Compute.Ilgpu.IlgpuBackend;
                long waits = device?.HostWaits ?? 0, drains = device?.HostDrains ?? 0;
                engine.ClearPrefixCache(); // every configuration prefills the whole prompt: prefill rates are cold ones
                foreach (var piece in engine.Generate(encoded[index], options, stats, cancellationToken)) tokens.AddRange(piece.TokenIds);
                if (!counted) continue;
                var t = totals[c];
                t.Waits += (device?.HostWaits ?? 0) - waits;
                t.Drains += (device?.HostDrains ?? 0) - drains;
                t.Generated += stats.GeneratedTokens;
                t.Decoded += stats.DecodedTokens; // the first token is the prefill's: rates count the decode steps' tokens
                t.DecodeSeconds += stats.DecodeSeconds;
                t.DecodeSteps += stats.Steps;
                t.Rates.Add(stats.DecodeTokensPerSecond);
                t.PrefillRates.Add(stats.PromptTokens / Math.Max(stats.PrefillSeconds, 1e-9));
                if (stats.Medusa is { } m)
                {
                    t.MedusaSteps += m.Steps;
                    t.MedusaTokens += m.Tokens;
                    t.ForcedTokens += m.ForcedTokens;
                    if (t.Histogram.Length < m.AcceptHistogram.Count) Array.Resize(ref t.Histogram, m.AcceptHistogram.Count);
                    for (int k = 0; k < m.AcceptHistogram.Count; k++) t.Histogram[k] += m.AcceptHistogram[k];
                    if (t.Guesses.Length < m.GuessHistogram.Count) Array.Resize(ref t.Guesses, m.GuessHistogram.Count);
                    for (int g = 0; g < m.GuessHistogram.Count; g++) t.Guesses[g] += m.GuessHistogram[g];
                }
                if (reference is null) reference = tokens;
                else
                {
                    t.Compared++;
                    if (reference.SequenceEqual(tokens)) t.Identical++;
                }
            }
            progress.Report(++done / (double)order.Length);
        }

        using var self = Process.GetCurrentProcess();
        self.Refresh();
        var rows = new List<Dictionary<string, object>>();
        double baseline = Rate(totals[0]);
        for (int c = 0; c < configurations.Count; c++)
        {
            var t = totals[c];
            var config = configurations[c];
            double rate = Rate(t);
            var row = new Dictionary<string, object>
            {
                ["name"] = config.Name,
                ["tree_nodes"] = config.Tree is null ? 0 : config.Nodes,
                ["generated_tokens"] = t.Generated,
                ["decoded_tokens"] = t.Decoded,
                ["decode_tokens_per_second"] = Math.Round(rate, 2),
                ["decode_tokens_per_second_median"] = Math.Round(Median(t.Rates), 2),
                ["speedup"] = Math.Round(rate / Math.Max(baseline, 1e-9), 3),
                ["ms_per_step"] = Math.Round(1000 * t.DecodeSeconds / Math.Max(1, t.DecodeSteps), 3),
            };
            if (engine.Backend is Compute.Ilgpu.IlgpuBackend)
            {
                // How often the host waited for the device, and how often that drained queued work, per decode step (the
                // prefill's few waits included): each drain leaves a GPU idle until the host queues the next launches.
                row["host_waits_per_step"] = Math.Round(t.Waits / (double)Math.Max(1, t.DecodeSteps), 3);
                row["host_drains_per_step"] = Math.Round(t.Drains / (double)Math.Max(1, t.DecodeSteps), 3);
            }
            if (config.Tree is not null)
            {
                double meanAccepted = t.MedusaSteps == 0 ? 0 : (double)t.MedusaTokens / t.MedusaSteps;
                row["mean_accepted"] = Math.Round(meanAccepted, 3);
                row["step_cost_vs_autoregressive"] = Math.Round(meanAccepted / Math.Max(rate / Math.Max(baseline, 1e-9), 1e-9), 3);
                row["accept_histogram"] = t.Histogram;
                row["forced_tokens"] = t.ForcedTokens; // accepted tokens of text a constraint forced, not guessed
                row["head_hit_rates"] = HitRates(t).Select(r => Math.Round(r, 3)).ToArray();
                row["identical_to_autoregressive"] = $"{t.Identical}/{t.Compared}";
            }
            rows.Add(row);
        }
        long weightsBytes = Directory.GetFiles(engine.Options.ModelPath)
            .Where(f => (f.EndsWith(".bin", StringComparison.Ordinal) && !f.EndsWith("tokenizer.bin", StringComparison.Ordinal) || f.EndsWith(".safetensors", StringComparison.Ordinal))
                && !Path.GetFileName(f).Equals(Models.MedusaHeadsCheckpoint.ReleasedFileName, StringComparison.Ordinal)) // the base model's weights, not the heads
            .Sum(f => new FileInfo(f).Length);
        var result = new Dictionary<string, object>
        {
            ["device"] = engine.DeviceName,
            ["heads"] = engine.Heads is { } h ? $"{h.HeadCount} heads x {h.LayerCount} ResBlocks ({h.Source})" : "none",
            ["prompts"] = prompts.Length,
            ["max_tokens"] = maxTokens,
            ["response_format"] = constraint.ResponseFormat.ToString(),
            ["measured_passes"] = passes,
            ["prefill_tokens_per_second_median"] = Math.Round(Median(totals[0].PrefillRates), 2),
            ["peak_working_set_mb"] = Math.Round(self.PeakWorkingSet64 / 1048576.0, 1),
            ["weights_file_mb"] = Math.Round(weightsBytes / 1048576.0, 1),
            ["kv_cache_mb"] = Math.Round(engine.Pool.Layout.TotalBytes / 1048576.0, 1),
            ["kv_dtype"] = engine.Pool.Layout.ElementType.ToString().ToLowerInvariant(),
            ["configurations"] = rows,
        };
        if (configurations.Count > 2)
        {
            var best = rows.Skip(1).MaxBy(r => (double)r["decode_tokens_per_second"])!;
            result["recommended_tree"] = configurations[rows.IndexOf(best)].Tree!;
        }
        // Whether any measured tree decoded faster than autoregressive decoding: on a device where none does (a small
        // model on a GPU, where every step is launch overhead), Medusa is better left off.
        if (rows.Count > 1) result["medusa_pays_off"] = rows.Skip(1).Any(r => (double)r["speedup"] > 1);
        return result;
    }

    private static double Rate(Totals t) => t.Decoded / Math.Max(t.DecodeSeconds, 1e-9);

    /// <summary>Head i's hit rate: the fraction of steps whose accepted path held a guess of head i (forced text is not a guess).</summary>
    private static double[] HitRates(Totals t) => MedusaStats.HitRates(t.Guesses);

    private static double Median(List<double> values)
    {
        if (values.Count == 0) return 0;
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    private static void Print(Dictionary<string, object> result)
    {
        var inv = CultureInfo.InvariantCulture;
        foreach (var (key, value) in result)
            if (key is not "configurations" and not "recommended_tree" and not "medusa_pays_off") Console.WriteLine($"{key,-34} {value}");
        var rows = (List<Dictionary<string, object>>)result["configurations"];
        Console.WriteLine();
        Console.WriteLine($"{"configuration",-32} {"nodes",5} {"tok/s",8} {"median",8} {"speedup",7} {"ms/step",8} {"accepted",8}  {"head hit rates",-24} identical");
        foreach (var r in rows)
        {
            string accepted = r.TryGetValue("mean_accepted", out var a) ? ((double)a).ToString("0.00", inv) : "1.00";
            string hits = r.TryGetValue("head_hit_rates", out var h) ? string.Join(' ', ((double[])h).Select(x => x.ToString("0.00", inv))) : "";
            string identical = r.TryGetValue("identical_to_autoregressive", out var i) ? (string)i : "";
            Console.WriteLine(string.Create(inv,
                $"{(string)r["name"],-32} {r["tree_nodes"],5} {(double)r["decode_tokens_per_second"],8:0.0} {(double)r["decode_tokens_per_second_median"],8:0.0} {(double)r["speedup"],6:0.00}x {(double)r["ms_per_step"],8:0.00} {accepted,8}  {hits,-24} {identical}"));
        }
        if (result.TryGetValue("recommended_tree", out var best))
        {
            var row = rows.First(r => (string)r["name"] != "autoregressive" && (double)r["decode_tokens_per_second"] == rows.Skip(1).Max(x => (double)x["decode_tokens_per_second"]));
            Console.WriteLine();
            Console.WriteLine(string.Create(inv, $"recommended tree on this device: {best} ({(double)row["decode_tokens_per_second"]:0.0} tok/s, {(double)row["speedup"]:0.00}x autoregressive)"));
        }
        if (result.TryGetValue("medusa_pays_off", out var pays) && !(bool)pays)
        {
            Console.WriteLine();
            Console.WriteLine("no Medusa tree measured here decoded faster than autoregressive decoding: on this device, model and " +
                "heads, decode without Medusa (--heads none; in the library, GenerationOptions.UseMedusa = false)");
        }
    }
}
