using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.OpenCL;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Compute.Ilgpu;

namespace IlgpuMedusa.Kernels.Tests;

/// <summary>Device listing, selection rules and the errors for devices that are unknown or unavailable.</summary>
[Collection(AcceleratorCollection.Name)]
public sealed class DeviceSelectionTests(Accelerators accelerators)
{
    /// <summary>An unknown device name names the valid ones.</summary>
    [Fact]
    public void Unknown_device_name_lists_the_choices()
    {
        var error = Assert.Throws<ArgumentException>(() => DeviceOptions.ParseKind("tpu"));
        Assert.Contains("cuda", error.Message, StringComparison.Ordinal);
        Assert.Contains("opencl", error.Message, StringComparison.Ordinal);
    }

    /// <summary>A device that does not exist: the error lists what is available (host, OpenCL, the emulator).</summary>
    [Fact]
    public void Unavailable_device_error_lists_what_is_available()
    {
        var error = Assert.Throws<ArgumentException>(() => BackendFactory.Create(new DeviceOptions { Kind = DeviceKind.Cuda, Index = 99 }));
        Assert.Contains("no cuda device #99", error.Message, StringComparison.Ordinal);
        Assert.Contains("Available: host", error.Message, StringComparison.Ordinal);
        Assert.Contains("cpu-emulator #0", error.Message, StringComparison.Ordinal);
        Assert.True(error.Message.Contains("opencl #0", StringComparison.Ordinal),
            $"no OpenCL device listed; {Accelerators.OpenCLInstallHint}. Message: {error.Message}");
    }

    /// <summary>A CPU OpenCL (PoCL) needs the opt-in; without it the error says how to allow it.</summary>
    [Fact]
    public void Cpu_OpenCL_needs_the_opt_in()
    {
        var cpuOpenCL = IlgpuDevices.Describe(Accelerators.OpenCLOptions).FirstOrDefault(d => d.Kind == DeviceKind.OpenCL && d.IsCpu);
        Assert.True(cpuOpenCL is not null, $"no CPU OpenCL device found; {Accelerators.OpenCLInstallHint}");
        var withoutOptIn = new DeviceOptions { Kind = DeviceKind.OpenCL, Index = cpuOpenCL.Index };
        if (withoutOptIn.CpuOpenCLAllowed)
        {
            // ILGPU_MEDUSA_ALLOW_CPU_OPENCL=1 is set in this environment: the environment is the opt-in.
            using var backend = BackendFactory.Create(withoutOptIn);
            Assert.Equal(DeviceKind.OpenCL, backend.Kind);
            return;
        }
        var error = Assert.Throws<ArgumentException>(() => BackendFactory.Create(withoutOptIn));
        Assert.Contains("ILGPU_MEDUSA_ALLOW_CPU_OPENCL=1", error.Message, StringComparison.Ordinal);
        Assert.Contains("Available: host", error.Message, StringComparison.Ordinal);
    }

    /// <summary>The listing reports the emulator (warp 32) and a usable OpenCL device when allowed.</summary>
    [Fact]
    public void Describe_reports_kind_name_memory_warp_and_usability()
    {
        var devices = IlgpuDevices.Describe(Accelerators.OpenCLOptions);
        var emulator = Assert.Single(devices, d => d.Kind == DeviceKind.CpuEmulator);
        Assert.True(emulator.Usable, emulator.Summary);
        Assert.Equal(32, emulator.WarpSize);
        var openCL = devices.Where(d => d.Kind == DeviceKind.OpenCL).ToList();
        Assert.True(openCL.Count > 0, $"no OpenCL device listed; {Accelerators.OpenCLInstallHint}");
        Assert.True(openCL.Any(d => d.Usable), string.Join("\n", openCL.Select(d => d.Summary)));
        Assert.All(devices, d => Assert.False(string.IsNullOrEmpty(d.Name)));
    }

    /// <summary>Auto takes CUDA or an OpenCL GPU, never a CPU OpenCL or the emulator; with neither it is the host backend.</summary>
    [Fact]
    public void Auto_never_picks_a_CPU_OpenCL_or_the_emulator()
    {
        using var backend = BackendFactory.Create(new DeviceOptions { Kind = DeviceKind.Auto, AllowCpuOpenCL = true });
        Assert.NotEqual(DeviceKind.CpuEmulator, backend.Kind);
        if (backend is IlgpuBackend { Accelerator: CLAccelerator cl })
            Assert.True(cl.DeviceType.HasFlag(CLDeviceType.CL_DEVICE_TYPE_GPU), backend.DeviceName);
    }

    /// <summary>A kernel that fails to build on the device surfaces with its name and the OpenCL build log.</summary>
    [Fact]
    public void Kernel_build_failure_names_the_kernel_and_carries_the_build_log()
    {
        var accelerator = accelerators.OpenCL.Accelerator;
        // Atomics are outside the portable subset: PoCL's OpenCL C 1.2 rejects the code ILGPU emits for them (FACTS.md).
        var error = Assert.Throws<KernelLoadException>(() => KernelLoader.Load(accelerator, (Action<Index1D, ArrayView<int>>)AtomicProbe,
            () => accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<int>>(AtomicProbe)));
        Assert.Contains(nameof(AtomicProbe), error.Message, StringComparison.Ordinal);
        Assert.False(string.IsNullOrWhiteSpace(error.BuildLog), error.Message);
        Assert.Contains("error", error.BuildLog, StringComparison.OrdinalIgnoreCase);
    }

    private static void AtomicProbe(Index1D index, ArrayView<int> counter) => Atomic.Add(ref counter[0], index);
}
