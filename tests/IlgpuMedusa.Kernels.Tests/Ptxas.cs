using System.Diagnostics;
using System.Text.RegularExpressions;
using ILGPU;
using ILGPU.Backends;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace IlgpuMedusa.Kernels.Tests;

/// <summary>Offline PTX compilation and assembly (ptxas -v) of the kernels; used by the tests and GpuCheck's report.</summary>
public static partial class Ptxas
{
    /// <summary>Environment variable naming a ptxas to use instead of .tools/ptxas/ptxas.</summary>
    public const string Variable = "ILGPU_MEDUSA_PTXAS";

    /// <summary>Where ptxas is looked for: only <see cref="Variable"/> when it is set, else .tools/ptxas/ptxas under the repository, then PATH.</summary>
    public static List<string> Candidates(string repositoryRoot)
    {
        var candidates = new List<string>();
        if (Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } named) return [named];
        candidates.Add(Path.Combine(repositoryRoot, ".tools", "ptxas", "ptxas"));
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
            candidates.Add(Path.Combine(dir, "ptxas"));
        return candidates;
    }

    /// <summary>The first of <see cref="Candidates"/> that exists, or null.</summary>
    public static string? Locate(string repositoryRoot) => Candidates(repositoryRoot).FirstOrDefault(File.Exists);

    /// <summary>"sm_80" or "sm_90".</summary>
    public static string Target(CudaArchitecture architecture) => $"sm_{architecture.Major}{architecture.Minor}";

    /// <summary>
    /// The kernel's PTX as ILGPU generates it for the architecture (context settings as the backend's), declared as PTX
    /// ISA 7.8, the newest the CUDA 11.8 ptxas reads (the kernels use nothing newer).
    /// </summary>
    public static string Compile(Context context, KernelCatalog.Entry kernel, CudaArchitecture architecture)
    {
        using var backend = new PTXBackend(context, new CudaCapabilityContext(architecture), architecture, CudaInstructionSet.ISA_78, null);
        var entry = kernel.ImplicitlyGrouped
            ? EntryPointDescription.FromImplicitlyGroupedKernel(kernel.Method)
            : EntryPointDescription.FromExplicitlyGroupedKernel(kernel.Method);
        return ((PTXCompiledKernel)backend.Compile(entry, KernelSpecialization.Empty)).PTXAssembly;
    }

    /// <summary>What ptxas -v said of one kernel.</summary>
    /// <param name="Succeeded">Exit code 0.</param>
    /// <param name="Registers">Registers per thread.</param>
    /// <param name="SharedBytes">Static shared memory per group.</param>
    /// <param name="StackBytes">Stack frame (local memory) per thread.</param>
    /// <param name="SpillStoreBytes">Spill stores per thread.</param>
    /// <param name="SpillLoadBytes">Spill loads per thread.</param>
    /// <param name="Output">ptxas's output.</param>
    public sealed record Report(bool Succeeded, int Registers, int SharedBytes, int StackBytes, int SpillStoreBytes, int SpillLoadBytes, string Output);

    /// <summary>Runs ptxas -v on the PTX for the architecture and parses its resource report.</summary>
    public static Report Assemble(string ptxas, string ptx, CudaArchitecture architecture)
    {
        var dir = Directory.CreateTempSubdirectory("ilgpu-medusa-ptxas-");
        try
        {
            var source = Path.Combine(dir.FullName, "kernel.ptx");
            File.WriteAllText(source, ptx);
            var start = new ProcessStartInfo(ptxas) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var arg in new[] { "-v", $"-arch={Target(architecture)}", source, "-o", Path.Combine(dir.FullName, "kernel.cubin") })
                start.ArgumentList.Add(arg);
            using var process = Process.Start(start)!;
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            if (!process.WaitForExit(120_000))
            {
                process.Kill(entireProcessTree: true);
                return new Report(false, 0, 0, 0, 0, 0, "ptxas ran past 120 s");
            }
            string output = stdout.Result + stderr.Result;
            // Every function's figures count (an entry and any non-inlined .func): the largest of each is reported.
            int Largest(Regex pattern) => pattern.Matches(output)
                .Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).DefaultIfEmpty(0).Max();
            return new Report(process.ExitCode == 0, Largest(RegistersPattern()), Largest(SharedPattern()), Largest(StackPattern()),
                Largest(SpillStoresPattern()), Largest(SpillLoadsPattern()), output);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    /// <summary>
    /// Warps of this kernel resident on one multiprocessor of compute capability 9.0 (H100/H200) at groups of
    /// <paramref name="groupSize"/> threads: 65,536 registers allocated per warp in units of 256 (8 per thread), 228 KB of
    /// shared memory with 1 KB reserved per group, at most 64 warps and 32 groups (NVIDIA's occupancy rules for sm_90).
    /// </summary>
    public static int ResidentWarps(Report report, int groupSize)
    {
        int warpsPerGroup = (groupSize + 31) / 32;
        int registersPerWarp = (report.Registers + 7) / 8 * 8 * 32;
        int byRegisters = 65536 / registersPerWarp / warpsPerGroup;
        int byShared = 233472 / (report.SharedBytes + 1024);
        int groups = Math.Min(Math.Min(byRegisters, byShared), Math.Min(32, 64 / warpsPerGroup));
        return groups * warpsPerGroup;
    }

    [GeneratedRegex(@"Used (\d+) registers")]
    private static partial Regex RegistersPattern();

    [GeneratedRegex(@"(\d+) bytes smem")]
    private static partial Regex SharedPattern();

    [GeneratedRegex(@"(\d+) bytes stack frame")]
    private static partial Regex StackPattern();

    [GeneratedRegex(@"(\d+) bytes spill stores")]
    private static partial Regex SpillStoresPattern();

    [GeneratedRegex(@"(\d+) bytes spill loads")]
    private static partial Regex SpillLoadsPattern();
}
