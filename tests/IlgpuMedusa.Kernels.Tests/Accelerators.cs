using IlgpuMedusa.Compute;
using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Compute.Ilgpu;

namespace IlgpuMedusa.Kernels.Tests;

/// <summary>
/// The backends under test, created once for the whole run (creating one compiles every kernel: on PoCL about a second
/// per kernel when its cache is cold): the host reference, ILGPU's CPU emulator (warp 32) and OpenCL on PoCL (opt-in).
/// A missing OpenCL device fails the tests that need it, with the packages to install; nothing is skipped.
/// </summary>
public sealed class Accelerators : IDisposable
{
    /// <summary>What to install when no OpenCL device is found.</summary>
    public const string OpenCLInstallHint = "install pocl-opencl-icd ocl-icd-libopencl1 ocl-icd-opencl-dev " +
        "(apt-get install -y pocl-opencl-icd ocl-icd-libopencl1 ocl-icd-opencl-dev; ILGPU loads libOpenCL.so by that exact name)";

    private readonly Lazy<IlgpuBackend> _emulator = new(() =>
        IlgpuBackend.TryCreate(new DeviceOptions { Kind = DeviceKind.CpuEmulator }, groupSize: 32)
        ?? throw new InvalidOperationException("the CPU emulator did not start"));

    private readonly Lazy<IlgpuBackend> _openCL = new(CreateOpenCL);

    /// <summary>The reference.</summary>
    public HostBackend Host { get; } = new(threads: 2);

    /// <summary>ILGPU's CPU accelerator, warp 32, groups of 32.</summary>
    public IlgpuBackend Emulator => _emulator.Value;

    /// <summary>OpenCL on the first OpenCL device (PoCL here), with the CPU OpenCL opt-in.</summary>
    public IlgpuBackend OpenCL => _openCL.Value;

    /// <summary>Options that select OpenCL with the CPU opt-in.</summary>
    public static DeviceOptions OpenCLOptions { get; } = new() { Kind = DeviceKind.OpenCL, AllowCpuOpenCL = true };

    private static IlgpuBackend CreateOpenCL()
    {
        try
        {
            return IlgpuBackend.TryCreate(OpenCLOptions) ?? throw new InvalidOperationException("no OpenCL backend");
        }
        catch (ArgumentException e)
        {
            Assert.Fail($"No usable OpenCL device: {e.Message}\nTo run the kernel tests on OpenCL, {OpenCLInstallHint}.");
            throw;
        }
    }

    /// <summary>Frees the devices.</summary>
    public void Dispose()
    {
        if (_emulator.IsValueCreated) _emulator.Value.Dispose();
        if (_openCL.IsValueCreated) _openCL.Value.Dispose();
        Host.Dispose();
    }
}

/// <summary>Tests that use <see cref="Accelerators"/> run in this collection, one at a time (they share the devices).</summary>
[CollectionDefinition(Name)]
public sealed class AcceleratorCollection : ICollectionFixture<Accelerators>
{
    /// <summary>The collection name.</summary>
    public const string Name = "Accelerators";
}
