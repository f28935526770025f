using System.Reflection;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;

namespace IlgpuMedusa.Compute.Ilgpu;

/// <summary>One accelerator ILGPU can see, as listed by <see cref="IlgpuDevices.Describe"/>.</summary>
/// <param name="Kind">Cuda, OpenCL or CpuEmulator.</param>
/// <param name="Index">Index among the devices of that kind (what <see cref="DeviceOptions.Index"/> selects).</param>
/// <param name="Name">Device name.</param>
/// <param name="Details">Platform, device type, versions (for people).</param>
/// <param name="IsCpu">True for a CPU device (a CPU OpenCL such as PoCL, or the emulator).</param>
/// <param name="MemoryBytes">Device memory in bytes (0 when unknown or unbounded).</param>
/// <param name="WarpSize">Threads per warp (OpenCL: what ILGPU measures on an accelerator; 0 when none could be created).</param>
/// <param name="MaxGroupSize">Most threads per group.</param>
/// <param name="Multiprocessors">Streaming multiprocessors / compute units.</param>
/// <param name="Usable">Whether the backend can run on it with the given options.</param>
/// <param name="Reason">Why not (or a note when usable).</param>
public sealed record IlgpuDeviceInfo(
    DeviceKind Kind, int Index, string Name, string Details, bool IsCpu, long MemoryBytes, int WarpSize, int MaxGroupSize,
    int Multiprocessors, bool Usable, string? Reason)
{
    /// <summary>One line for listings, e.g. "opencl #0 'pthread-…' (CPU, warp 8): not usable: …".</summary>
    public string Summary =>
        $"{KindText(Kind)} #{Index} '{Name}' ({(IsCpu ? "CPU" : "GPU")}, {MemoryText}, warp {(WarpSize > 0 ? WarpSize.ToString(System.Globalization.CultureInfo.InvariantCulture) : "unknown")}, {Multiprocessors} units)" +
        (Usable ? Reason is null ? "" : $": {Reason}" : $": not usable: {Reason}");

    private string MemoryText => MemoryBytes is > 0 and < long.MaxValue ? $"{MemoryBytes / (1024.0 * 1024 * 1024):0.#} GiB" : "host memory";

    /// <summary>The kind as <c>--device</c> spells it.</summary>
    public static string KindText(DeviceKind kind) => kind switch
    {
        DeviceKind.Cuda => "cuda",
        DeviceKind.OpenCL => "opencl",
        DeviceKind.CpuEmulator => "cpu-emulator",
        DeviceKind.Host => "host",
        _ => kind.ToString().ToLowerInvariant(),
    };
}

/// <summary>
/// Finds the accelerators ILGPU can use: CUDA GPUs, OpenCL devices, and ILGPU's CPU emulator (configured like an NVIDIA
/// GPU: warp size 32). Selection rules live here: <see cref="DeviceKind.Auto"/> takes a CUDA GPU, then an OpenCL GPU
/// ILGPU accepts, else none (the caller falls back to the host backend). A CPU OpenCL (PoCL) is used only with
/// <see cref="DeviceOptions.CpuOpenCLAllowed"/>, and then needs ILGPU's generic-address-space check overridden.
/// </summary>
public static class IlgpuDevices
{
    /// <summary>Threads per warp of the emulator (matches NVIDIA GPUs).</summary>
    public const int EmulatorWarpSize = 32;

    /// <summary>
    /// The emulator device: warp 32, 8 warps per multiprocessor (groups up to 256: the tensor-core kernels' four warps and
    /// the tile attention kernel's eight, as on GPUs), one multiprocessor per core.
    /// </summary>
    internal static CPUDevice EmulatorDevice { get; } = new(EmulatorWarpSize, 8, Math.Max(1, Environment.ProcessorCount));

    /// <summary>Lists every device with whether it is usable under <paramref name="options"/> (default options when null) and why not.
    /// Creates and frees an accelerator on each candidate to be sure; takes a second or so.</summary>
    public static IReadOnlyList<IlgpuDeviceInfo> Describe(DeviceOptions? options = null)
    {
        options ??= new DeviceOptions();
        using var context = CreateContext(out var cudaError);
        var result = new List<IlgpuDeviceInfo>();
        foreach (var (kind, index, device) in Enumerate(context))
        {
            string? reason = StaticReason(device, options);
            bool usable = reason is null;
            int? warpSize = null;
            if (usable)
            {
                try
                {
                    using var accelerator = CreateAccelerator(context, device);
                    warpSize = accelerator.WarpSize; // OpenCL devices report theirs only once an accelerator exists
                }
                catch (Exception e)
                {
                    usable = false;
                    reason = $"{e.GetType().Name}: {e.Message}";
                }
            }
            if (usable && kind == DeviceKind.CpuEmulator) reason = "tests only: an emulator, about 1 µs per thread";
            if (usable && device is CLDevice { DeviceType: var type } && type.HasFlag(CLDeviceType.CL_DEVICE_TYPE_CPU))
                reason = "CPU OpenCL, allowed by option";
            result.Add(Info(kind, index, device, usable, reason, warpSize));
        }
        if (cudaError is not null)
            result.Insert(0, new IlgpuDeviceInfo(DeviceKind.Cuda, -1, "(CUDA)", cudaError, false, 0, 0, 0, 0, false, $"CUDA could not be initialised: {cudaError}"));
        return result;
    }

    /// <summary>A one-line list of what can be used, for error messages.</summary>
    internal static string AvailableText(IReadOnlyList<IlgpuDeviceInfo> devices)
    {
        var lines = new List<string> { "host (the CPU backend, always available)" };
        lines.AddRange(devices.Select(d => d.Summary));
        if (!devices.Any(d => d.Kind == DeviceKind.OpenCL))
            lines.Add("no OpenCL device found (an OpenCL runtime needs libOpenCL.so: e.g. apt-get install ocl-icd-opencl-dev plus a driver or pocl-opencl-icd)");
        if (!devices.Any(d => d.Kind == DeviceKind.Cuda))
            lines.Add("no CUDA device found (needs an NVIDIA GPU and driver, libcuda.so on the loader path)");
        return string.Join("; ", lines);
    }

    /// <summary>Creates a context that sees every accelerator kind; a CUDA driver ILGPU rejects is reported, not thrown.</summary>
    internal static Context CreateContext(out string? cudaError, bool profiling = false)
    {
        string? error = null;
        var context = Context.Create(builder =>
        {
            try
            {
                builder.Cuda();
            }
            catch (Exception e)
            {
                error = $"{e.GetType().Name}: {e.Message}";
            }
            builder.OpenCL(_ => true).CPU(EmulatorDevice).EnableAlgorithms()
                // O2 runs ILGPU's kernel address-space inference: pointers become global/local instead of generic,
                // which OpenCL C 1.2 compilers such as PoCL's reject.
                .Optimize(OptimizationLevel.O2);
            if (profiling) builder.Profiling();
        });
        cudaError = error;
        return context;
    }

    /// <summary>Devices with their kind and per-kind index, in ILGPU's order (CUDA, OpenCL, emulator).</summary>
    internal static IEnumerable<(DeviceKind Kind, int Index, Device Device)> Enumerate(Context context)
    {
        int cuda = 0, openCL = 0, emulator = 0;
        foreach (var device in context.Devices)
        {
            switch (device)
            {
                case CudaDevice: yield return (DeviceKind.Cuda, cuda++, device); break;
                case CLDevice: yield return (DeviceKind.OpenCL, openCL++, device); break;
                case CPUDevice: yield return (DeviceKind.CpuEmulator, emulator++, device); break;
            }
        }
    }

    /// <summary>Why a device cannot be used without trying it (null when it may be).</summary>
    internal static string? StaticReason(Device device, DeviceOptions options)
    {
        if (device is not CLDevice cl) return null;
        if (cl.CLStdVersion < ILGPU.Backends.OpenCL.CLBackend.MinimumVersion)
            return $"OpenCL C {cl.CLStdVersion} is older than ILGPU's minimum {ILGPU.Backends.OpenCL.CLBackend.MinimumVersion}";
        bool cpu = cl.DeviceType.HasFlag(CLDeviceType.CL_DEVICE_TYPE_CPU);
        if (cpu && !options.CpuOpenCLAllowed)
            return "a CPU OpenCL (e.g. PoCL) is slower than the host backend and lacks the generic address space ILGPU asks for; " +
                "allow it with --allow-cpu-opencl (DeviceOptions.AllowCpuOpenCL in the library) or ILGPU_MEDUSA_ALLOW_CPU_OPENCL=1";
        if (!cpu && !cl.Capabilities.GenericAddressSpace)
            return "the device lacks the OpenCL generic address space ILGPU requires";
        return null;
    }

    /// <summary>Creates an accelerator; for a CPU OpenCL first switches ILGPU's generic-address-space check off (see FACTS.md).</summary>
    internal static Accelerator CreateAccelerator(Context context, Device device)
    {
        switch (device)
        {
            case CPUDevice cpu:
                return cpu.CreateCPUAccelerator(context, CPUAcceleratorMode.Parallel);
            case CLDevice cl when cl.DeviceType.HasFlag(CLDeviceType.CL_DEVICE_TYPE_CPU) && !cl.Capabilities.GenericAddressSpace:
                ForceGenericAddressSpace(cl);
                return cl.CreateAccelerator(context);
            default:
                return device.CreateAccelerator(context);
        }
    }

    /// <summary>
    /// PoCL reports no generic address space and ILGPU refuses such devices, although the kernels (compiled at O2, where
    /// address spaces are inferred) never need it. The setter is not public, hence reflection; only behind the opt-in.
    /// </summary>
    private static void ForceGenericAddressSpace(CLDevice device)
    {
        var property = typeof(CLCapabilityContext).GetProperty(nameof(CLCapabilityContext.GenericAddressSpace), BindingFlags.Public | BindingFlags.Instance)
            ?? throw new InvalidOperationException("ILGPU's CLCapabilityContext.GenericAddressSpace property is missing (ILGPU version changed?)");
        property.SetValue(device.Capabilities, true);
    }

    private static IlgpuDeviceInfo Info(DeviceKind kind, int index, Device device, bool usable, string? reason, int? warpSize)
    {
        string details = device switch
        {
            CLDevice cl => $"{cl.PlatformName}, {cl.VendorName}, {cl.DeviceType}, OpenCL {cl.DeviceVersion}, OpenCL C {cl.CVersion}",
            CudaDevice cuda => $"{cuda.Architecture}, {cuda.InstructionSet}, driver {cuda.DriverVersion}",
            CPUDevice => $"ILGPU CPU emulator, {EmulatorDevice.NumMultiprocessors} multiprocessors",
            _ => device.AcceleratorType.ToString(),
        };
        bool isCpu = device is CPUDevice || (device is CLDevice c && c.DeviceType.HasFlag(CLDeviceType.CL_DEVICE_TYPE_CPU));
        long memory = device is CPUDevice ? 0 : device.MemorySize;
        return new IlgpuDeviceInfo(kind, index, device.Name, details, isCpu, memory, warpSize ?? device.WarpSize, device.MaxNumThreadsPerGroup,
            device.NumMultiprocessors, usable, reason);
    }
}
