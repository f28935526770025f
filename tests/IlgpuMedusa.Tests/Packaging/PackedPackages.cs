using System.Globalization;

namespace IlgpuMedusa.Tests.Packaging;

/// <summary>
/// The library package and the CLI tool package, packed once for the packaging tests from the build the tests run on
/// (<c>dotnet pack --no-build</c>), under a version of their own so that the machine's NuGet cache never serves a stale
/// copy. That version's folders are removed from the cache afterwards.
/// </summary>
public sealed class PackedPackages : IDisposable
{
    public PackedPackages()
    {
        Version = "0.1.0-test." + DateTime.UtcNow.ToString("yyyyMMddHHmmss", CultureInfo.InvariantCulture) + "." + Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
        Root = TestModels.TempDirectory("packaging");
        Feed = Path.Combine(Root, "feed");
        Directory.CreateDirectory(Feed);
        foreach (var project in new[] { "src/IlgpuMedusa/IlgpuMedusa.csproj", "src/IlgpuMedusa.Cli/IlgpuMedusa.Cli.csproj" })
            DotnetCommand.Dotnet(TestModels.RepositoryRoot, TimeSpan.FromMinutes(3),
                "pack", project, "-c", DotnetCommand.Configuration, "--no-build", "-o", Feed, $"-p:PackageVersion={Version}");
    }

    /// <summary>The prerelease version of this run's packages.</summary>
    public string Version { get; }
    /// <summary>A temporary folder for the test's projects.</summary>
    public string Root { get; }
    /// <summary>The local package source holding the packed .nupkg files.</summary>
    public string Feed { get; }

    public string LibraryPackage => Path.Combine(Feed, $"IlgpuMedusa.{Version}.nupkg");
    public string ToolPackage => Path.Combine(Feed, $"IlgpuMedusa.Cli.{Version}.nupkg");

    /// <summary>A nuget.config whose sources are the local feed and nuget.org (for ILGPU and the other dependencies).</summary>
    public void WriteNuGetConfig(string directory) => File.WriteAllText(Path.Combine(directory, "nuget.config"), $"""
        <?xml version="1.0" encoding="utf-8"?>
        <configuration>
          <packageSources>
            <clear />
            <add key="local" value="{Feed}" />
            <add key="nuget.org" value="https://api.nuget.org/v3/index.json" protocolVersion="3" />
          </packageSources>
        </configuration>
        """);

    public void Dispose()
    {
        var cache = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        foreach (var id in new[] { "ilgpumedusa", "ilgpumedusa.cli" })
        {
            TryDelete(Path.Combine(cache, id, Version.ToLowerInvariant()));
            if (Directory.Exists(Path.Combine(cache, id)) && !Directory.EnumerateFileSystemEntries(Path.Combine(cache, id)).Any())
                TryDelete(Path.Combine(cache, id));
        }
        TryDelete(Root);
    }

    private static void TryDelete(string directory)
    {
        try
        {
            if (Directory.Exists(directory)) Directory.Delete(directory, recursive: true);
        }
        catch (IOException)
        {
            // a leftover temporary folder is harmless
        }
    }
}
