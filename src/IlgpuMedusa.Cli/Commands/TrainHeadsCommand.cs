using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using IlgpuMedusa.Medusa.Training;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Cli.Commands;

/// <summary>
/// <c>train-heads --model DIR --out FILE</c>: trains Medusa heads for a model on the host (frozen backbone, self-distillation
/// or a text file), shows progress on stderr and prints each head's held-out accuracy.
/// </summary>
internal static class TrainHeadsCommand
{
    public static Command Create()
    {
        var defaults = new HeadTrainingOptions();
        var model = new Option<string>("--model", "-m") { Description = "Model directory (Hugging Face or llama2.c layout).", Required = true };
        var output = new Option<string>("--out", "-o") { Description = $"Heads file to write (use {MedusaHeadsCheckpoint.ReleasedFileName} in the model directory to have it found automatically).", Required = true };
        var heads = new Option<int>("--heads") { Description = "Number of heads.", DefaultValueFactory = _ => defaults.Heads };
        var layers = new Option<int>("--layers") { Description = "ResBlocks per head.", DefaultValueFactory = _ => defaults.Layers };
        var shared = new Option<bool>("--shared-lm-head")
        {
            Description = "true: heads use the base lm_head, only ResBlocks train (compact file); false: each head trains its own lm_head, initialised from the base one (Medusa's released format).",
            DefaultValueFactory = _ => defaults.SharedLmHead,
        };
        var nextToken = new Option<bool?>("--next-token")
        {
            Description = "true: each head also takes the embedding of the base model's next token (the pending token its guess follows); false: plain Medusa heads (default: true with --shared-lm-head true).",
        };
        var contextAttention = new Option<bool>("--context-attention")
        {
            Description = "true: each head first attends to the keys and values the base model's last layer cached for the text so far (needs --next-token).",
            DefaultValueFactory = _ => defaults.ContextAttention,
        };
        var previousToken = new Option<bool>("--previous-token")
        {
            Description = "true: each head after the first also takes the embedding of the token before its target, at run time the previous head's best guess (Hydra-style; the heads then run one after another; needs --next-token, not with --context-attention).",
        };
        var softLabels = new Option<float>("--soft-labels")
        {
            Description = "α: each head also learns the base model's own distribution at the position before its target, weighted α against the target itself (0: targets only).",
            DefaultValueFactory = _ => defaults.SoftLabels,
        };
        var learningRate = new Option<float>("--learning-rate", "--lr") { Description = "Peak AdamW learning rate.", DefaultValueFactory = _ => defaults.LearningRate };
        var weightDecay = new Option<float>("--weight-decay") { Description = "AdamW weight decay.", DefaultValueFactory = _ => defaults.WeightDecay };
        var batch = new Option<int>("--batch") { Description = "Positions per step.", DefaultValueFactory = _ => defaults.BatchSize };
        var epochs = new Option<int?>("--epochs") { Description = $"Passes over the training positions (default {HeadTrainingOptions.DefaultEpochs} unless --steps is given)." };
        var steps = new Option<int?>("--steps") { Description = "Optimizer steps (wins over --epochs)." };
        var seed = new Option<int>("--seed") { Description = "Seed of data, initialisation and batch order.", DefaultValueFactory = _ => defaults.Seed };
        var data = new Option<string>("--data") { Description = "self (the model writes its own training text) or a UTF-8 text file.", DefaultValueFactory = _ => "self" };
        var tokens = new Option<int?>("--tokens") { Description = $"Training tokens to generate (default {HeadTrainingOptions.DefaultGeneratedTokens}), or the most to read from --data FILE." };
        var evalTokens = new Option<int>("--eval-tokens") { Description = "Held-out greedy-path tokens the model generates (another seed) for the accuracy report.", DefaultValueFactory = _ => defaults.HeldOutTokens };
        var distill = new Option<string>("--distill")
        {
            Description = "Self-distillation text: greedy (a few sampled opening tokens, then the greedy continuation; only targets on a greedy path train) or sampled (temperature sampling throughout).",
            DefaultValueFactory = _ => defaults.Distill.ToString().ToLowerInvariant(),
        };
        var prefixTokens = new Option<int>("--prefix-tokens") { Description = "Greedy text: up to this many tokens sampled after each opening before going greedy.", DefaultValueFactory = _ => defaults.PrefixTokens };
        var prefixMin = new Option<int>("--prefix-min") { Description = "Greedy text: at least this many tokens sampled after each opening.", DefaultValueFactory = _ => defaults.MinPrefixTokens };
        var explore = new Option<float>("--explore") { Description = "Greedy text: chance that a later token is sampled instead of the argmax (its targets are left out).", DefaultValueFactory = _ => defaults.Explore };
        var shortlist = new Option<int?>("--shortlist")
        {
            Description = $"Tokens the heads score: the N most frequent training targets (0: the whole vocabulary; default {HeadTrainingOptions.DefaultShortlist} with --shared-lm-head true, else 0).",
        };
        var temperature = new Option<float>("--temperature") { Description = "Sampling temperature of --distill sampled.", DefaultValueFactory = _ => defaults.Temperature };
        var streams = new Option<int>("--streams") { Description = "Sequences generated side by side.", DefaultValueFactory = _ => defaults.Streams };
        var initScale = new Option<float>("--init-scale") { Description = "Standard deviation of the initial ResBlock weights (0: Medusa's zero initialisation).", DefaultValueFactory = _ => defaults.InitScale };
        var threads = new Option<int?>("--threads") { Description = "Host threads (default: all cores)." };
        var dtype = new Option<string>("--dtype") { Description = "Element type of the written heads: f16, bf16 or f32.", DefaultValueFactory = _ => "f16" };
        var command = new Command("train-heads", "Train Medusa heads for a model on the CPU (frozen backbone, self-distillation by default).")
        {
            model, output, heads, layers, shared, nextToken, contextAttention, previousToken, softLabels, learningRate, weightDecay, batch, epochs, steps, seed, data, tokens, evalTokens, distill, prefixTokens, prefixMin, explore,
            shortlist, temperature, streams, initScale, threads, dtype,
        };
        command.Subcommands.Add(CreateGrowTrees());
        command.SetAction((parse, cancellationToken) =>
        {
            var dataValue = parse.GetValue(data)!;
            var options = new HeadTrainingOptions
            {
                Heads = parse.GetValue(heads),
                Layers = parse.GetValue(layers),
                SharedLmHead = parse.GetValue(shared),
                NextTokenInput = parse.GetValue(nextToken),
                ContextAttention = parse.GetValue(contextAttention),
                PreviousTokenInput = parse.GetValue(previousToken),
                SoftLabels = parse.GetValue(softLabels),
                LearningRate = parse.GetValue(learningRate),
                WeightDecay = parse.GetValue(weightDecay),
                BatchSize = parse.GetValue(batch),
                Epochs = parse.GetValue(epochs),
                Steps = parse.GetValue(steps),
                Seed = parse.GetValue(seed),
                DataFile = dataValue.Equals("self", StringComparison.OrdinalIgnoreCase) ? null : dataValue,
                Tokens = parse.GetValue(tokens),
                HeldOutTokens = parse.GetValue(evalTokens),
                Distill = ParseDistill(parse.GetValue(distill)!),
                PrefixTokens = parse.GetValue(prefixTokens),
                MinPrefixTokens = parse.GetValue(prefixMin),
                Explore = parse.GetValue(explore),
                Shortlist = parse.GetValue(shortlist),
                Temperature = parse.GetValue(temperature),
                Streams = parse.GetValue(streams),
                InitScale = parse.GetValue(initScale),
                Threads = parse.GetValue(threads),
            }.Validate();
            var storeAs = DTypeInfo.ParseFloat(parse.GetValue(dtype)!, "--dtype");
            var commandLine = "ilgpu-medusa " + string.Join(' ', Environment.GetCommandLineArgs().Skip(1).Select(Quote));
            var clock = Stopwatch.StartNew();
            HeadTrainingReport report;
            using (var display = new TrainingDisplay())
                report = HeadTrainer.Run(parse.GetValue(model)!, parse.GetValue(output)!, options, storeAs, commandLine, display, cancellationToken);
            Print(report, clock.Elapsed.TotalSeconds);
            return Task.FromResult(0);
        });
        return command;
    }

    /// <summary>
    /// <c>train-heads grow-trees --model DIR --heads FILE [--out DIR]</c>: measures how often each candidate path of the
    /// heads is accepted on greedy-path text from training-style openings (another seed than training and held-out text),
    /// prints the expected tokens per step of the preset trees, and writes greedily grown trees <c>small-N.json</c>.
    /// </summary>
    private static Command CreateGrowTrees()
    {
        var defaults = new DistillationPolicy();
        var model = new Option<string>("--model", "-m") { Description = "Model directory.", Required = true };
        var heads = new Option<string>("--heads") { Description = "Medusa heads file to measure.", Required = true };
        var output = new Option<string?>("--out", "-o") { Description = "Directory for the grown trees small-N.json (omit to only report)." };
        var sizes = new Option<string>("--sizes") { Description = "Tree sizes to grow (nodes, root included), comma-separated.", DefaultValueFactory = _ => "4,6,8,10,12,16" };
        var tokens = new Option<int>("--tokens") { Description = "Greedy-path tokens to generate and measure on.", DefaultValueFactory = _ => 40_000 };
        var seed = new Option<int>("--seed") { Description = "Seed of that text (training uses --seed 1 and held-out text 7920 by default).", DefaultValueFactory = _ => 104_729 };
        var prefixTokens = new Option<int>("--prefix-tokens") { Description = "Up to this many sampled tokens after each opening.", DefaultValueFactory = _ => defaults.PrefixTokens };
        var prefixMin = new Option<int>("--prefix-min") { Description = "At least this many sampled tokens after each opening.", DefaultValueFactory = _ => defaults.MinPrefixTokens };
        var explore = new Option<float>("--explore") { Description = "Chance that a later token is sampled.", DefaultValueFactory = _ => defaults.Explore };
        var prompts = new Option<string?>("--prompts")
        {
            Description = "Measure on the greedy continuations of these prompts (one a line, # comments) instead; report only, trees are never grown on evaluation prompts.",
        };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Tokens generated per prompt with --prompts.", DefaultValueFactory = _ => 128 };
        var trees = new Option<string[]>("--tree") { Description = "Also report these trees (JSON files of paths, or a directory of them).", AllowMultipleArgumentsPerToken = true };
        var threads = new Option<int?>("--threads") { Description = "Host threads (default: all cores)." };
        var command = new Command("grow-trees", "Measure the heads' per-path acceptance on greedy-path text and grow small candidate trees from it.")
        {
            model, heads, output, sizes, tokens, seed, prefixTokens, prefixMin, explore, prompts, maxTokens, trees, threads,
        };
        command.SetAction((parse, cancellationToken) =>
        {
            var inv = CultureInfo.InvariantCulture;
            var nodeCounts = parse.GetValue(sizes)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(x => int.TryParse(x, NumberStyles.None, inv, out int n) && n is >= 2 and <= 256 ? n : throw new ArgumentException($"--sizes: '{x}' is not a node count between 2 and 256."))
                .ToArray();
            var promptFile = parse.GetValue(prompts);
            var outDir = parse.GetValue(output);
            if (promptFile is not null && outDir is not null)
                throw new ArgumentException("--out with --prompts: trees are grown on training-style openings, never on the prompts they are evaluated on; drop one of them.");
            string[]? promptLines = null;
            if (promptFile is not null)
            {
                if (!File.Exists(promptFile)) throw new FileNotFoundException($"--prompts: file '{promptFile}' not found.", promptFile);
                promptLines = File.ReadAllLines(promptFile).Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToArray();
                if (promptLines.Length == 0) throw new InvalidDataException($"--prompts: '{promptFile}' holds no prompt.");
            }
            if (parse.GetValue(maxTokens) < 1) throw new ArgumentOutOfRangeException("--max-tokens", parse.GetValue(maxTokens), "--max-tokens must be at least 1.");
            if (outDir is not null)
            {
                // Checked before minutes of measuring, not after.
                if (File.Exists(outDir)) throw new IOException($"--out: '{outDir}' is a file; name the folder the tree files go to.");
                try
                {
                    Directory.CreateDirectory(outDir);
                    using (File.Create(Path.Combine(outDir, ".probe-" + Guid.NewGuid().ToString("N")[..8]), 1, FileOptions.DeleteOnClose))
                    {
                    }
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException)
                {
                    throw new IOException($"--out: cannot write tree files to '{outDir}': {e.Message}", e);
                }
            }
            var policy = new DistillationPolicy { PrefixTokens = parse.GetValue(prefixTokens), MinPrefixTokens = parse.GetValue(prefixMin), Explore = parse.GetValue(explore) };
            new HeadTrainingOptions
            {
                PrefixTokens = policy.PrefixTokens, MinPrefixTokens = policy.MinPrefixTokens, Explore = policy.Explore, Tokens = parse.GetValue(tokens), Threads = parse.GetValue(threads),
            }.Validate();
            AcceptanceProfile profile;
            using (var display = new TrainingDisplay())
                profile = TreeGrower.Profile(parse.GetValue(model)!, parse.GetValue(heads)!, parse.GetValue(tokens), policy, parse.GetValue(seed), promptLines,
                    parse.GetValue(maxTokens), parse.GetValue(threads), (stage, fraction) => display.Report(new HeadTrainingProgress(stage, fraction)), cancellationToken);
            if (profile.Positions == 0)
                throw new InvalidDataException("no position of the generated text could be measured (every one was cut short); measure on more text (--tokens, or --max-tokens with --prompts).");
            Console.WriteLine(string.Create(inv, $"measured on {profile.Positions} positions of greedy-path text ({(promptLines is null ? "training-style openings, seed " + parse.GetValue(seed) : promptLines.Length + " prompts")})"));
            Console.WriteLine("head  top-1    top-" + Medusa.MedusaHeads.TopK);
            for (int h = 0; h < profile.Depth; h++) Console.WriteLine(string.Create(inv, $"{h,4}  {profile.Top1(h),6:P1}  {profile.TopK(h),6:P1}"));
            Console.WriteLine("tree                 nodes  expected tokens/step");
            foreach (var name in Medusa.TreePresets.Names)
            {
                // dynamic-N trees have no fixed paths to score: they depend on the heads' probabilities at each step
                if (!Medusa.TreePresets.TryGet(name, out var paths) || paths.Max(p => p.Length) > profile.Depth) continue;
                Console.WriteLine(string.Create(inv, $"{name,-20} {paths.Count + 1,5}  {profile.ExpectedAccepted(paths),6:0.000}"));
            }
            foreach (var file in (parse.GetValue(trees) ?? []).SelectMany(t => Directory.Exists(t) ? Directory.GetFiles(t, "*.json").Order(StringComparer.Ordinal).ToArray() : new[] { t }))
            {
                var tree = Medusa.TreeTopology.Resolve(file, profile.Depth);
                Console.WriteLine(string.Create(inv, $"{Path.GetFileName(file),-20} {tree.NodeCount,5}  {profile.ExpectedAccepted(tree.Choices),6:0.000}"));
            }
            var grown = new List<(string Label, string Json)>();
            foreach (int n in nodeCounts)
            {
                var tree = profile.Grow(n);
                string label = $"small-{n}";
                Console.WriteLine(string.Create(inv, $"{label,-20} {tree.Count + 1,5}  {profile.ExpectedAccepted(tree),6:0.000}  {AcceptanceProfile.ToJson(tree)}"));
                if (outDir is not null && tree.Count + 1 < n)
                    throw new InvalidDataException($"only {tree.Count + 1} nodes were ever accepted; measure on more text (--tokens) to grow a tree of {n} (no tree file was written).");
                grown.Add((label, AcceptanceProfile.ToJson(tree)));
            }
            // Every size grown and checked first: a run writes all its tree files or none.
            if (outDir is not null)
                foreach (var (label, treeJson) in grown) File.WriteAllText(Path.Combine(outDir, label + ".json"), treeJson + "\n");
            if (outDir is not null) Console.WriteLine($"wrote {string.Join(", ", nodeCounts.Select(n => $"small-{n}.json"))} to {outDir}");
            return Task.FromResult(0);
        });
        return command;
    }

    private static DistillationText ParseDistill(string text) => text.ToLowerInvariant() switch
    {
        "greedy" => DistillationText.Greedy,
        "sampled" => DistillationText.Sampled,
        _ => throw new ArgumentException($"--distill: unknown text '{text}'; expected greedy or sampled."),
    };

    private static string Quote(string arg) => arg.Length > 0 && arg.All(ch => char.IsLetterOrDigit(ch) || "-_./=:+,".Contains(ch)) ? arg : "\"" + arg.Replace("\"", "\\\"") + "\"";

    private static void Print(HeadTrainingReport report, double seconds)
    {
        var inv = CultureInfo.InvariantCulture;
        Console.WriteLine(string.Create(inv, $"data: {report.Data}, {report.TrainingTokens} tokens, {report.TrainingPositions} positions ({report.DataSeconds:0.0} s to make, held-out text included)"));
        Console.WriteLine(report.ShortlistSize is int n
            ? string.Create(inv, $"shortlist: the heads score the {n} most frequent target tokens ({report.ShortlistCoverage:P2} of the training targets; {report.DistinctTargets} distinct)")
            : string.Create(inv, $"shortlist: none (the heads score the whole vocabulary; {report.DistinctTargets} distinct training targets)"));
        Console.WriteLine(string.Create(inv, $"training: {report.Steps} steps, {report.Epochs:0.##} epochs, {report.TrainingSeconds:0.0} s; total {seconds:0.0} s"));
        Console.WriteLine(string.Create(inv, $"held-out accuracy on {report.HeldOutPositions} positions of greedy-path text (before -> after training; targets outside the shortlist count as misses):"));
        Console.WriteLine("head  predicts  top-1            top-5            loss");
        for (int h = 0; h < report.After.Count; h++)
        {
            var b = report.Before[h];
            var a = report.After[h];
            Console.WriteLine(string.Create(inv,
                $"{h,4}  t+{h + 2,-7} {b.Top1Accuracy,6:P1} -> {a.Top1Accuracy,6:P1}  {b.Top5Accuracy,6:P1} -> {a.Top5Accuracy,6:P1}  {b.Loss,5:0.00} -> {a.Loss,5:0.00}"));
        }
        Console.WriteLine(string.Create(inv, $"a chain of the heads' best guesses: {report.ChainTokensPerStep:0.000} tokens per step on the held-out text"));
        Console.WriteLine(string.Create(inv, $"wrote {report.OutputPath} ({new FileInfo(report.OutputPath).Length / 1024.0:0} KiB)"));
    }

    /// <summary>
    /// Progress on stderr: one line rewritten in place on a terminal; otherwise a line every 15 seconds and at each stage's end.
    /// </summary>
    private sealed class TrainingDisplay : IProgress<HeadTrainingProgress>, IDisposable
    {
        private readonly bool _interactive = !Console.IsErrorRedirected;
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private string? _stage;
        private string _last = "";
        private double _lastShown = double.NegativeInfinity;
        private int _width;

        public void Report(HeadTrainingProgress value)
        {
            if (value.Stage != _stage)
            {
                End();
                _stage = value.Stage;
                _lastShown = double.NegativeInfinity;
            }
            _last = Format(value);
            double now = _clock.Elapsed.TotalSeconds;
            if (_interactive)
            {
                if (now - _lastShown < 0.2 && value.Fraction < 1) return;
                _lastShown = now;
                Console.Error.Write("\r" + _last.PadRight(_width));
                _width = Math.Max(_width, _last.Length);
            }
            else if (now - _lastShown >= 15)
            {
                _lastShown = now;
                Console.Error.WriteLine(_last);
            }
        }

        private static string Format(HeadTrainingProgress p)
        {
            var inv = CultureInfo.InvariantCulture;
            var text = string.Create(inv, $"{p.Stage}: {p.Fraction,4:P0}");
            if (p.TokensPerSecond is double rate) text += string.Create(inv, $" | {rate:0} {(p.Stage == "training" ? "positions" : "tokens")}/s");
            if (p.HeadLosses is { } losses) text += " | loss " + string.Join(' ', losses.Select(l => l.ToString("0.00", inv)));
            if (p.Remaining is TimeSpan left) text += $" | {(int)left.TotalMinutes}m{left.Seconds:00}s left";
            return text;
        }

        private void End()
        {
            if (_stage is null) return;
            if (_interactive) Console.Error.WriteLine();
            else Console.Error.WriteLine(_last);
            _width = 0;
        }

        public void Dispose() => End();
    }
}
