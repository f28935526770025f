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
        var learningRate = new Option<float>("--learning-rate", "--lr") { Description = "Peak AdamW learning rate.", DefaultValueFactory = _ => defaults.LearningRate };
        var weightDecay = new Option<float>("--weight-decay") { Description = "AdamW weight decay.", DefaultValueFactory = _ => defaults.WeightDecay };
        var batch = new Option<int>("--batch") { Description = "Positions per step.", DefaultValueFactory = _ => defaults.BatchSize };
        var epochs = new Option<int?>("--epochs") { Description = $"Passes over the training positions (default {HeadTrainingOptions.DefaultEpochs} unless --steps is given)." };
        var steps = new Option<int?>("--steps") { Description = "Optimizer steps (wins over --epochs)." };
        var seed = new Option<int>("--seed") { Description = "Seed of data, initialisation and batch order.", DefaultValueFactory = _ => defaults.Seed };
        var data = new Option<string>("--data") { Description = "self (the model writes its own training text) or a UTF-8 text file.", DefaultValueFactory = _ => "self" };
        var tokens = new Option<int?>("--tokens") { Description = $"Training tokens to generate (default {HeadTrainingOptions.DefaultGeneratedTokens}), or the most to read from --data FILE." };
        var evalTokens = new Option<int>("--eval-tokens") { Description = "Held-out tokens the model generates for the accuracy report.", DefaultValueFactory = _ => defaults.HeldOutTokens };
        var temperature = new Option<float>("--temperature") { Description = "Sampling temperature of self-distillation.", DefaultValueFactory = _ => defaults.Temperature };
        var streams = new Option<int>("--streams") { Description = "Sequences generated side by side.", DefaultValueFactory = _ => defaults.Streams };
        var initScale = new Option<float>("--init-scale") { Description = "Standard deviation of the initial ResBlock weights (0: Medusa's zero initialisation).", DefaultValueFactory = _ => defaults.InitScale };
        var threads = new Option<int?>("--threads") { Description = "Host threads (default: all cores)." };
        var dtype = new Option<string>("--dtype") { Description = "Element type of the written heads: f16, bf16 or f32.", DefaultValueFactory = _ => "f16" };
        var command = new Command("train-heads", "Train Medusa heads for a model on the CPU (frozen backbone, self-distillation by default).")
        {
            model, output, heads, layers, shared, learningRate, weightDecay, batch, epochs, steps, seed, data, tokens, evalTokens, temperature, streams, initScale,
            threads, dtype,
        };
        command.SetAction((parse, cancellationToken) =>
        {
            var dataValue = parse.GetValue(data)!;
            var options = new HeadTrainingOptions
            {
                Heads = parse.GetValue(heads),
                Layers = parse.GetValue(layers),
                SharedLmHead = parse.GetValue(shared),
                LearningRate = parse.GetValue(learningRate),
                WeightDecay = parse.GetValue(weightDecay),
                BatchSize = parse.GetValue(batch),
                Epochs = parse.GetValue(epochs),
                Steps = parse.GetValue(steps),
                Seed = parse.GetValue(seed),
                DataFile = dataValue.Equals("self", StringComparison.OrdinalIgnoreCase) ? null : dataValue,
                Tokens = parse.GetValue(tokens),
                HeldOutTokens = parse.GetValue(evalTokens),
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

    private static string Quote(string arg) => arg.Length > 0 && arg.All(ch => char.IsLetterOrDigit(ch) || "-_./=:+,".Contains(ch)) ? arg : "\"" + arg.Replace("\"", "\\\"") + "\"";

    private static void Print(HeadTrainingReport report, double seconds)
    {
        var inv = CultureInfo.InvariantCulture;
        Console.WriteLine(string.Create(inv, $"data: {report.Data}, {report.TrainingTokens} tokens, {report.TrainingPositions} positions ({report.DataSeconds:0.0} s to make, held-out text included)"));
        Console.WriteLine(string.Create(inv, $"training: {report.Steps} steps, {report.Epochs:0.##} epochs, {report.TrainingSeconds:0.0} s; total {seconds:0.0} s"));
        Console.WriteLine(string.Create(inv, $"held-out accuracy on {report.HeldOutPositions} positions of generated text (before -> after training):"));
        Console.WriteLine("head  predicts  top-1            top-5            loss");
        for (int h = 0; h < report.After.Count; h++)
        {
            var b = report.Before[h];
            var a = report.After[h];
            Console.WriteLine(string.Create(inv,
                $"{h,4}  t+{h + 2,-7} {b.Top1Accuracy,6:P1} -> {a.Top1Accuracy,6:P1}  {b.Top5Accuracy,6:P1} -> {a.Top5Accuracy,6:P1}  {b.Loss,5:0.00} -> {a.Loss,5:0.00}"));
        }
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
