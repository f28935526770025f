using System.IO.Compression;
using System.Xml.Linq;
using IlgpuMedusa.Tests.Hosting;

namespace IlgpuMedusa.Tests.Packaging;

/// <summary>
/// <c>dotnet pack</c> gives the IlgpuMedusa library package (the kernels assembly inside it, every dependency declared)
/// and the <c>ilgpu-medusa</c> dotnet tool; both install from a local folder into places that have never seen this
/// repository, and work there.
/// </summary>
public class PackageTests(PackedPackages packages) : IClassFixture<PackedPackages>
{
    private static readonly TimeSpan Slow = TimeSpan.FromMinutes(3);

    [Fact]
    public void LibraryPackage_HasItsMetadata_Readme_KernelsAssembly_AndTheKernelsDependencies()
    {
        using var zip = ZipFile.OpenRead(packages.LibraryPackage);
        var files = zip.Entries.Select(e => e.FullName).ToHashSet();
        Assert.Contains("README.md", files);
        Assert.Contains("lib/net10.0/IlgpuMedusa.dll", files);
        Assert.Contains("lib/net10.0/IlgpuMedusa.xml", files);
        Assert.Contains("lib/net10.0/IlgpuMedusa.Kernels.dll", files);

        var nuspec = XDocument.Load(zip.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal)).Open());
        XNamespace ns = nuspec.Root!.Name.Namespace;
        var metadata = nuspec.Root.Element(ns + "metadata")!;
        string Field(string name) => metadata.Element(ns + name)?.Value ?? "";
        Assert.Equal("IlgpuMedusa", Field("id"));
        Assert.Equal(packages.Version, Field("version"));
        Assert.Equal("MIT", Field("license"));
        Assert.Equal("expression", metadata.Element(ns + "license")!.Attribute("type")!.Value);
        Assert.Equal("README.md", Field("readme"));
        Assert.Contains("Medusa", Field("description"), StringComparison.Ordinal);
        Assert.Contains("medusa", Field("tags"), StringComparison.Ordinal);
        Assert.StartsWith("https://github.com/", metadata.Element(ns + "repository")!.Attribute("url")!.Value, StringComparison.Ordinal);
        Assert.Equal("git", metadata.Element(ns + "repository")!.Attribute("type")!.Value);

        var dependencies = metadata.Descendants(ns + "dependency").Select(d => d.Attribute("id")!.Value).ToHashSet(StringComparer.OrdinalIgnoreCase);
        Assert.DoesNotContain("IlgpuMedusa.Kernels", dependencies); // shipped inside, not a package of its own
        foreach (var id in new[] { "ILGPU", "Microsoft.ML.Tokenizers", "Microsoft.Extensions.AI.Abstractions", "Microsoft.Extensions.Options.ConfigurationExtensions" })
            Assert.Contains(id, dependencies);
        // The kernels assembly needs its own package references at run time: each must be a dependency of this package.
        var kernelsProject = XDocument.Load(Path.Combine(TestModels.RepositoryRoot, "kernels", "IlgpuMedusa.Kernels", "IlgpuMedusa.Kernels.csproj"));
        foreach (var reference in kernelsProject.Descendants("PackageReference").Select(r => r.Attribute("Include")!.Value))
            Assert.True(dependencies.Contains(reference),
                $"the kernels project references {reference}, which the IlgpuMedusa package does not declare: add <PackageReference Include=\"{reference}\" /> to src/IlgpuMedusa/IlgpuMedusa.csproj");
    }

    [Fact]
    public void LibraryPackage_InstallsIntoAFreshProject_AndChatsOnTheDemoModel()
    {
        var app = Path.Combine(packages.Root, "consumer");
        Directory.CreateDirectory(app);
        packages.WriteNuGetConfig(app);
        File.WriteAllText(Path.Combine(app, "Consumer.csproj"), """
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType>
                <TargetFramework>net10.0</TargetFramework>
                <ImplicitUsings>enable</ImplicitUsings>
                <Nullable>enable</Nullable>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="Microsoft.Extensions.DependencyInjection" Version="11.0.0" />
              </ItemGroup>
            </Project>
            """);
        var model = TestModels.Stories15MDirectory.Replace("\"", "\"\"", StringComparison.Ordinal);
        File.WriteAllText(Path.Combine(app, "Program.cs"), $$"""
            using IlgpuMedusa.Compute;
            using IlgpuMedusa.Hosting;
            using Microsoft.Extensions.AI;
            using Microsoft.Extensions.DependencyInjection;

            var services = new ServiceCollection();
            services.AddIlgpuMedusa(o => { o.ModelPath = @"{{model}}"; o.Device = DeviceKind.Host; });
            await using var provider = services.BuildServiceProvider();
            var chat = provider.GetRequiredService<IChatClient>();
            var response = await chat.GetResponseAsync("Once upon a time", new ChatOptions { MaxOutputTokens = 20 });
            Console.WriteLine("TEXT:" + response.Text);
            Console.WriteLine($"USAGE:{response.Usage?.InputTokenCount}/{response.Usage?.OutputTokenCount}/{response.FinishReason}");
            """);

        DotnetCommand.Dotnet(app, Slow, "add", "package", "IlgpuMedusa", "--version", packages.Version);
        var run = DotnetCommand.Dotnet(app, Slow, "run", "-c", "Release");

        var lines = run.StandardOutput.Split('\n').Select(l => l.TrimEnd('\r')).ToList();
        var text = lines.SingleOrDefault(l => l.StartsWith("TEXT:", StringComparison.Ordinal))?["TEXT:".Length..];
        Assert.True(text is not null, $"the consumer printed no TEXT line:\n{run.Both}");
        Assert.StartsWith(", there was a little girl named Lily.", text, StringComparison.Ordinal);
        Assert.StartsWith(HostingTestSupport.Prompt + text, HostingTestSupport.Reference, StringComparison.Ordinal);
        Assert.Contains("USAGE:5/20/length", lines);
        // The package came from the local folder, not from a project reference or another source.
        Assert.Contains($"\"IlgpuMedusa/{packages.Version}\"", File.ReadAllText(Path.Combine(app, "obj", "project.assets.json")), StringComparison.Ordinal);
    }

    [Fact]
    public void CliPackage_InstallsAsTheDotnetTool_IlgpuMedusa_AndRuns()
    {
        var work = Path.Combine(packages.Root, "tool");
        var toolPath = Path.Combine(work, "bin");
        Directory.CreateDirectory(work);
        packages.WriteNuGetConfig(work);
        DotnetCommand.Dotnet(work, Slow, "tool", "install", "IlgpuMedusa.Cli", "--tool-path", toolPath, "--version", packages.Version);

        var tool = Path.Combine(toolPath, OperatingSystem.IsWindows() ? "ilgpu-medusa.exe" : "ilgpu-medusa");
        Assert.True(File.Exists(tool), $"the tool's command ilgpu-medusa is missing from {toolPath}");
        var result = DotnetCommand.Run(work, tool, ["tokenize", "--model", TestModels.Stories15MDirectory, "--text", "Once upon a time"], Slow);
        Assert.True(result.ExitCode == 0, result.Both);
        Assert.Equal("[1,9038,2501,263,931]", result.StandardOutput.Trim());

        var generate = DotnetCommand.Run(work, tool,
            ["generate", "--model", TestModels.Stories15MDirectory, "--prompt", "Once upon a time", "--max-tokens", "10", "--device", "host"], Slow);
        Assert.True(generate.ExitCode == 0, generate.Both);
        Assert.StartsWith("Once upon a time, there was a little girl named Lily.", generate.StandardOutput, StringComparison.Ordinal);
    }

    [Fact]
    public void CliPackage_IsADotnetTool_WithTheKernelsAndTheReadme()
    {
        using var zip = ZipFile.OpenRead(packages.ToolPackage);
        var files = zip.Entries.Select(e => e.FullName).ToHashSet();
        Assert.Contains("README.md", files);
        Assert.Contains("tools/net10.0/any/DotnetToolSettings.xml", files);
        Assert.Contains("tools/net10.0/any/ilgpu-medusa.dll", files);
        Assert.Contains("tools/net10.0/any/IlgpuMedusa.dll", files);
        Assert.Contains("tools/net10.0/any/IlgpuMedusa.Kernels.dll", files);
        Assert.Contains("tools/net10.0/any/ILGPU.dll", files);
        var settings = XDocument.Load(zip.GetEntry("tools/net10.0/any/DotnetToolSettings.xml")!.Open());
        Assert.Equal("ilgpu-medusa", settings.Descendants("Command").Single().Attribute("Name")!.Value);
        var nuspec = XDocument.Load(zip.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal)).Open());
        XNamespace ns = nuspec.Root!.Name.Namespace;
        Assert.Equal("DotnetTool", nuspec.Descendants(ns + "packageType").Single().Attribute("name")!.Value);
        Assert.Equal("MIT", nuspec.Descendants(ns + "license").Single().Value);
    }
}
