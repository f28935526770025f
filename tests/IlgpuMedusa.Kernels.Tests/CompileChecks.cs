using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Backends;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.OpenCL;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;

namespace IlgpuMedusa.Kernels.Tests;

/// <summary>
/// Every kernel compiles, with no device present, to PTX for SM_80 and SM_90 and to OpenCL C 3.0 for a device with the
/// generic address space, using the same context settings as the backend (ILGPU.Algorithms enabled, O2).
/// </summary>
public sealed class CompileChecks : IDisposable
{
    private readonly Context _context = Context.Create(b => b.EnableAlgorithms().Optimize(OptimizationLevel.O2));

    /// <summary>The kernels, by name.</summary>
    public static TheoryData<string> Kernels { get; } = new(KernelCatalog.All.Select(k => k.Name));

    /// <summary>The kernels of the portable subset (all but the CUDA-only variants).</summary>
    public static TheoryData<string> PortableKernels { get; } = new(KernelCatalog.All.Where(k => !k.CudaOnly).Select(k => k.Name));

    private static EntryPointDescription EntryPoint(string name)
    {
        var kernel = KernelCatalog.All.Single(k => k.Name == name);
        return kernel.ImplicitlyGrouped
            ? EntryPointDescription.FromImplicitlyGroupedKernel(kernel.Method)
            : EntryPointDescription.FromExplicitlyGroupedKernel(kernel.Method);
    }

    /// <summary>PTX for SM_80 and SM_90.</summary>
    [Theory]
    [MemberData(nameof(Kernels))]
    public void Compiles_to_PTX_for_SM80_and_SM90(string kernel)
    {
        foreach (var architecture in new[] { CudaArchitecture.SM_80, CudaArchitecture.SM_90 })
        {
            using var backend = new PTXBackend(_context, new CudaCapabilityContext(architecture), architecture, CudaInstructionSet.ISA_80, null);
            var compiled = (PTXCompiledKernel)backend.Compile(EntryPoint(kernel), KernelSpecialization.Empty);
            Assert.Contains(".entry", compiled.PTXAssembly, StringComparison.Ordinal);
            Assert.Contains(".target sm_", compiled.PTXAssembly, StringComparison.Ordinal);
        }
    }

    /// <summary>OpenCL C for an OpenCL 3.0 device with the generic address space (CUDA-only variants excepted).</summary>
    [Theory]
    [MemberData(nameof(PortableKernels))]
    public void Compiles_to_OpenCL_C(string kernel)
    {
        var capabilities = new CLCapabilityContext(float16: false, float64: false, genericAddressSpace: true, int64_Atomics: false, subGroups: false);
        using var backend = new CLBackend(_context, capabilities, CLDeviceVendor.Other, CLCVersion.CL30);
        var compiled = (CLCompiledKernel)backend.Compile(EntryPoint(kernel), KernelSpecialization.Empty);
        Assert.Contains("kernel void", compiled.Source, StringComparison.Ordinal);
    }

    /// <summary>The catalog covers every kernel method of the kernels assembly.</summary>
    [Fact]
    public void Catalog_lists_every_kernel_method()
    {
        var kernelMethods = typeof(KernelSet).Assembly.GetTypes()
            .Where(t => t.IsClass && t.IsAbstract && t.IsSealed && (t.Name.EndsWith("Kernel", StringComparison.Ordinal) || t.Name.EndsWith("Kernels", StringComparison.Ordinal)))
            .SelectMany(t => t.GetMethods(System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Static))
            .Where(m => m.ReturnType == typeof(void))
            .Select(m => $"{m.DeclaringType!.Name}.{m.Name}")
            .ToHashSet();
        var cataloged = KernelCatalog.All.Select(k => $"{k.Method.DeclaringType!.Name}.{k.Method.Name}").ToHashSet();
        Assert.Empty(kernelMethods.Except(cataloged));
    }

    /// <summary>Frees the context.</summary>
    public void Dispose() => _context.Dispose();
}
