namespace IlgpuMedusa.Kernels.Tests;

/// <summary>(Copied from tests/IlgpuMedusa.Tests so the projects stay independent.) Where the tests find the demo model. A missing model is a failure that says how to get it, never a skip.</summary>
public static class TestModels
{
    /// <summary>The repository root (the folder holding IlgpuMedusa.sln).</summary>
    public static string RepositoryRoot { get; } = FindRoot();

    /// <summary>models/stories15M under the repository root, or ILGPU_MEDUSA_DEMO_MODEL when set.</summary>
    public static string Stories15MDirectory
    {
        get
        {
            var dir = Environment.GetEnvironmentVariable("ILGPU_MEDUSA_DEMO_MODEL") ?? Path.Combine(RepositoryRoot, "models", "stories15M");
            if (!File.Exists(Path.Combine(dir, "stories15M.bin")) || !File.Exists(Path.Combine(dir, "tokenizer.bin")))
                Assert.Fail($"The demo model is missing from '{dir}'. Get it with: dotnet run --project src/IlgpuMedusa.Cli -c Release -- fetch-demo --dir models/stories15M");
            return dir;
        }
    }

    private static string FindRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "IlgpuMedusa.sln"))) dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException("cannot find the repository root (IlgpuMedusa.sln) above " + AppContext.BaseDirectory);
    }

    /// <summary>A fresh empty temporary directory.</summary>
    public static string TempDirectory(string name)
    {
        var dir = Path.Combine(Path.GetTempPath(), "ilgpu-medusa-tests", name + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        return dir;
    }
}
