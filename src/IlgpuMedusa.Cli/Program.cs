using System.CommandLine;
using IlgpuMedusa.Cli.Commands;

namespace IlgpuMedusa.Cli;

/// <summary>Entry point of the <c>ilgpu-medusa</c> command.</summary>
public static class Program
{
    /// <summary>Runs the command line; returns the process exit code (0 success, 1 error, 2 usage error).</summary>
    public static int Main(string[] args)
    {
        System.Globalization.CultureInfo.DefaultThreadCurrentCulture = System.Globalization.CultureInfo.InvariantCulture;
        System.Globalization.CultureInfo.DefaultThreadCurrentUICulture = System.Globalization.CultureInfo.InvariantCulture;
        System.Globalization.CultureInfo.CurrentCulture = System.Globalization.CultureInfo.InvariantCulture;
        System.Globalization.CultureInfo.CurrentUICulture = System.Globalization.CultureInfo.InvariantCulture;
        var root = new RootCommand("IlgpuMedusa: LLM inference in pure .NET with ILGPU kernels and Medusa decoding.")
        {
            FetchDemoCommand.Create(),
            GenerateCommand.Create(),
            TokenizeCommand.Create(),
            ConvertCommand.Create(),
            BenchCommand.Create(),
            TrainHeadsCommand.Create(),
            ProfileCommand.Create(),
            DevicesCommand.Create(),
            ServeCommand.Create(),
        };
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            foreach (var error in parse.Errors) Console.Error.WriteLine($"error: {error.Message}");
            Console.Error.WriteLine("Run 'ilgpu-medusa --help' for usage.");
            return 2;
        }
        try
        {
            var configuration = new InvocationConfiguration { EnableDefaultExceptionHandler = false };
            // The server lets requests in flight finish before it stops; other commands stop within System.CommandLine's default 2 s.
            if (parse.CommandResult.Command.Name == "serve") configuration.ProcessTerminationTimeout = TimeSpan.FromSeconds(ServeCommand.ShutdownSeconds);
            return parse.Invoke(configuration);
        }
        catch (Exception e) when (CliErrors.IsUserError(e))
        {
            Console.Error.WriteLine($"error: {CliErrors.Describe(e)}");
            return 1;
        }
    }
}
