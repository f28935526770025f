using System.Diagnostics;

namespace IlgpuMedusa.Tests.Packaging;

/// <summary>Runs a program (dotnet, an installed tool) and returns what it printed; a time-out is a failure.</summary>
public static class DotnetCommand
{
    public sealed record Result(int ExitCode, string StandardOutput, string StandardError)
    {
        public string Both => StandardOutput + "\n" + StandardError;
    }

    /// <summary>The configuration the tests were built in, so packing reuses that build (--no-build).</summary>
    public const string Configuration =
#if DEBUG
        "Debug";
#else
        "Release";
#endif

    public static Result Run(string workingDirectory, string fileName, IEnumerable<string> args, TimeSpan timeout)
    {
        var start = new ProcessStartInfo(fileName)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = workingDirectory,
        };
        foreach (var a in args) start.ArgumentList.Add(a);
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1";
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{fileName} {string.Join(' ', args)} did not finish within {timeout.TotalSeconds:0} s:\n{stdout.Result}\n{stderr.Result}");
        }
        return new Result(process.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>Runs dotnet and fails the test with its output when it exits with an error.</summary>
    public static Result Dotnet(string workingDirectory, TimeSpan timeout, params string[] args)
    {
        var result = Run(workingDirectory, "dotnet", args, timeout);
        Assert.True(result.ExitCode == 0, $"dotnet {string.Join(' ', args)} exited with {result.ExitCode}:\n{result.Both}");
        return result;
    }
}
