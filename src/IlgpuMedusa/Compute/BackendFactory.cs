using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Compute.Ilgpu;

namespace IlgpuMedusa.Compute;

/// <summary>What device to run on and how.</summary>
public sealed record DeviceOptions
{
    /// <summary>The device kind; <see cref="DeviceKind.Auto"/> picks CUDA, then an OpenCL GPU, then the host.</summary>
    public DeviceKind Kind { get; init; } = DeviceKind.Auto;
    /// <summary>Index among the devices of that kind (for machines with several).</summary>
    public int Index { get; init; }
    /// <summary>Allow a CPU OpenCL implementation (PoCL). Also enabled by ILGPU_MEDUSA_ALLOW_CPU_OPENCL=1.</summary>
    public bool AllowCpuOpenCL { get; init; }
    /// <summary>Host backend threads (default: all cores).</summary>
    public int? HostThreads { get; init; }
    /// <summary>
    /// Create the accelerator with device profiling, so that <see cref="IDeviceDiagnostics.StartOpTimings"/> can stamp
    /// every op (for `profile --op-times`; markers slow the launches down). Ignored by the host backend.
    /// </summary>
    public bool OpTimings { get; init; }
    /// <summary>
    /// Use the ILGPU backend's fused kernels (RMSNorm + matmul, RMSNorm + gate/up + SwiGLU, RoPE + KV write) where they
    /// apply (default). False, or the environment variable ILGPU_MEDUSA_FUSED=0, runs the separate ops instead (to measure
    /// what the fusion buys on a device). Ignored by the host backend.
    /// </summary>
    public bool FusedOps { get; init; } = true;

    /// <summary>True when the fused kernels are on: <see cref="FusedOps"/> and not ILGPU_MEDUSA_FUSED=0.</summary>
    public bool FusedOpsEnabled => FusedOps && Environment.GetEnvironmentVariable("ILGPU_MEDUSA_FUSED") != "0";

    /// <summary>True when CPU OpenCL is allowed by the option or the environment.</summary>
    public bool CpuOpenCLAllowed => AllowCpuOpenCL || Environment.GetEnvironmentVariable("ILGPU_MEDUSA_ALLOW_CPU_OPENCL") == "1";

    /// <summary>Parses --device text.</summary>
    public static DeviceKind ParseKind(string text) => text.ToLowerInvariant() switch
    {
        "auto" => DeviceKind.Auto,
        "host" or "cpu" => DeviceKind.Host,
        "cuda" => DeviceKind.Cuda,
        "opencl" => DeviceKind.OpenCL,
        "cpu-emulator" => DeviceKind.CpuEmulator,
        _ => throw new ArgumentException($"--device: unknown device '{text}'; expected auto, cuda, opencl, host or cpu-emulator.", nameof(text)),
    };
}

/// <summary>Creates the backend for <see cref="DeviceOptions"/>.</summary>
public static class BackendFactory
{
    /// <summary>
    /// Hook for the accelerator backends; returns null when none fits (then Auto falls back to the host). Defaults to the
    /// ILGPU backend, which throws <see cref="ArgumentException"/> listing what is available when a requested device
    /// cannot be used.
    /// </summary>
    internal static Func<DeviceOptions, IComputeBackend?>? AcceleratorFactory { get; set; } = IlgpuBackend.TryCreate;

    /// <summary>Creates a backend. Throws <see cref="ArgumentException"/> listing what is available when the device cannot be used.</summary>
    public static IComputeBackend Create(DeviceOptions options)
    {
        if (options.Kind == DeviceKind.Host) return new HostBackend(options.HostThreads);
        var accelerator = AcceleratorFactory?.Invoke(options);
        if (accelerator is not null) return accelerator;
        if (options.Kind == DeviceKind.Auto) return new HostBackend(options.HostThreads);
        throw new ArgumentException($"--device {options.Kind}: no such device is available (only the host backend is).", nameof(options));
    }
}
