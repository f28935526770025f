using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using IlgpuMedusa.Tests;

namespace IlgpuMedusa.Kernels.Tests;

/// <summary>
/// Every kernel, compiled to PTX as on a GPU, is assembled offline by NVIDIA's ptxas for sm_80 (A100) and sm_90
/// (H100/H200): the inline PTX (tensor cores) must be accepted, and no kernel may use local memory (a stack frame or
/// register spills, which cost a trip to memory per access). No GPU or driver needed: ptxas comes from
/// <c>scripts/get-ptxas.sh</c> (run by scripts/test.sh). The registers and shared memory of each kernel are what
/// <c>GpuCheck --ptxas</c> tabulates.
/// </summary>
public sealed class PtxasChecks : IDisposable
{
    private readonly Context _context = Context.Create(b => b.EnableAlgorithms().Optimize(OptimizationLevel.O2));

    /// <summary>The kernels, by name.</summary>
    public static TheoryData<string> Kernels { get; } = new(KernelCatalog.All.Select(k => k.Name));

    /// <summary>Assembles for sm_80 and sm_90 with no stack frame and no spills.</summary>
    [Theory]
    [MemberData(nameof(Kernels))]
    public void Assembles_for_SM80_and_SM90_without_local_memory(string kernel)
    {
        string ptxas = LocatePtxas();
        var entry = KernelCatalog.All.Single(k => k.Name == kernel);
        foreach (var architecture in new[] { CudaArchitecture.SM_80, CudaArchitecture.SM_90 })
        {
            var report = Ptxas.Assemble(ptxas, Ptxas.Compile(_context, entry, architecture), architecture);
            Assert.True(report.Succeeded, $"{kernel}: ptxas -arch={Ptxas.Target(architecture)} failed:\n{report.Output}");
            Assert.True(report.StackBytes == 0 && report.SpillStoreBytes == 0 && report.SpillLoadBytes == 0,
                $"{kernel} on {Ptxas.Target(architecture)} uses local memory: {report.StackBytes} bytes stack frame, " +
                $"{report.SpillStoreBytes} bytes spill stores, {report.SpillLoadBytes} bytes spill loads ({report.Registers} registers)\n{report.Output}");
            Assert.InRange(report.Registers, 1, 255);
        }
    }

    /// <summary>The harness fails what it should: a wrong inline instruction is rejected, local memory is seen.</summary>
    [Fact]
    public void Rejects_bad_PTX_and_sees_local_memory()
    {
        string ptxas = LocatePtxas();
        var tensor = KernelCatalog.All.First(k => k.Name.Contains("TensorCore", StringComparison.Ordinal));
        string ptx = Ptxas.Compile(_context, tensor, CudaArchitecture.SM_90);
        Assert.Contains("mma.sync.aligned.m16n8k16", ptx, StringComparison.Ordinal);
        var good = Ptxas.Assemble(ptxas, ptx, CudaArchitecture.SM_90);
        Assert.True(good.Succeeded, good.Output);
        var bad = Ptxas.Assemble(ptxas, ptx.Replace("mma.sync.aligned.m16n8k16", "mma.sync.aligned.m16n8k17", StringComparison.Ordinal), CudaArchitecture.SM_90);
        Assert.False(bad.Succeeded, "ptxas accepted an mma shape that does not exist");

        var local = typeof(PtxasChecks).GetMethod(nameof(LocalArrayKernel), System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Static)!;
        var report = Ptxas.Assemble(ptxas, Ptxas.Compile(_context, new KernelCatalog.Entry("local array", local, true, false), CudaArchitecture.SM_90), CudaArchitecture.SM_90);
        Assert.True(report.Succeeded, report.Output);
        Assert.True(report.StackBytes > 0, $"a dynamically indexed local array should need a stack frame:\n{report.Output}");
    }

    // A kernel that needs local memory: an array indexed by a value known only at run time.
    private static void LocalArrayKernel(Index1D i, ArrayView<float> data, int pick)
    {
        var scratch = LocalMemory.Allocate<float>(64);
        for (int j = 0; j < 64; j++) scratch[j] = data[(i + j) % data.Length];
        data[i] = scratch[(pick + i) & 63];
    }

    private static string LocatePtxas()
    {
        var candidates = Ptxas.Candidates(TestModels.RepositoryRoot);
        return Ptxas.Locate(TestModels.RepositoryRoot) ?? throw new Xunit.Sdk.XunitException(
            $"ptxas (NVIDIA's PTX assembler) is missing. Get it with: bash scripts/get-ptxas.sh (scripts/test.sh runs it), or set {Ptxas.Variable}. Looked at: {candidates[0]}{(candidates.Count > 1 ? " and PATH" : "")}");
    }

    /// <summary>Frees the context.</summary>
    public void Dispose() => _context.Dispose();
}

