using System.Diagnostics;
using System.Text;

namespace IlgpuMedusa.Tests;

/// <summary>
/// A node script in tests/tools/NAME with its npm packages (installed by scripts/test.sh): the independent JavaScript
/// implementations the tests compare against. A missing node or package fails the test with the command that installs
/// it, never a skip.
/// </summary>
/// <param name="name">The folder under tests/tools.</param>
/// <param name="package">The npm package the script needs (checked in node_modules).</param>
/// <param name="nodeVersion">The Node.js version the package needs, for the message when node is missing.</param>
public sealed class NodeTool(string name, string package, int nodeVersion)
{
    /// <summary>The folder holding the script and its package.json.</summary>
    public string Directory { get; } = Path.Combine(TestModels.RepositoryRoot, "tests", "tools", name);

    private string Install => $"npm ci --prefix tests/tools/{name}";

    /// <summary>Runs <c>node <paramref name="script"/> <paramref name="arguments"/></c> with <paramref name="input"/> on stdin; returns stdout, failing the test on a non-zero exit or a timeout.</summary>
    public string Run(string script, string? input, TimeSpan timeout, params string[] arguments)
    {
        if (!System.IO.Directory.Exists(Path.Combine(Directory, "node_modules", package)))
            Assert.Fail($"The npm package '{package}' is not installed in '{Directory}'. Run: {Install} (needs Node.js {nodeVersion} or newer).");
        var start = new ProcessStartInfo("node")
        {
            WorkingDirectory = Directory,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            StandardInputEncoding = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false),
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(script);
        foreach (var argument in arguments) start.ArgumentList.Add(argument);
        Process process;
        try
        {
            process = Process.Start(start) ?? throw new InvalidOperationException("Process.Start returned null");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            Assert.Fail($"Cannot start 'node' ({e.Message}). Install Node.js {nodeVersion} or newer, then run: {Install}");
            throw;
        }
        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            if (input is not null) process.StandardInput.Write(input);
            process.StandardInput.Close();
            if (!process.WaitForExit(timeout))
            {
                process.Kill(entireProcessTree: true);
                Assert.Fail($"node {script} did not finish within {timeout.TotalSeconds} s");
            }
            Assert.True(process.ExitCode == 0, $"node {script} exited with {process.ExitCode}: {stderr.Result}");
            return stdout.Result;
        }
    }
}
