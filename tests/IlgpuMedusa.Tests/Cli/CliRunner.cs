using System.Diagnostics;

namespace IlgpuMedusa.Tests.Cli;

/// <summary>Runs the real ilgpu-medusa command (built next to the tests) as a separate process.</summary>
public static class CliRunner
{
    public sealed record Result(int ExitCode, string StandardOutput, string StandardError);

    public static Result Run(params string[] args) => RunIn(TestModels.RepositoryRoot, args);

    public static Result RunIn(string workingDirectory, params string[] args) => RunWith(workingDirectory, null, args);

    /// <summary>Runs with extra environment variables (e.g. a PATH holding a fake npm).</summary>
    public static Result RunWith(string workingDirectory, IReadOnlyDictionary<string, string>? environment, params string[] args)
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "ilgpu-medusa.dll");
        Assert.True(File.Exists(dll), $"the CLI was not built next to the tests: {dll}");
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = workingDirectory,
        };
        if (environment is not null) foreach (var (key, value) in environment) start.Environment[key] = value;
        start.ArgumentList.Add(dll);
        foreach (var a in args) start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"ilgpu-medusa {string.Join(' ', args)} did not finish within 3 minutes");
        }
        return new Result(process.ExitCode, stdout.Result, stderr.Result);
    }
}
