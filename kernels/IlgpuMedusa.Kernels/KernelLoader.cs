using System.Reflection;
using System.Text;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.OpenCL;
using ILGPU.Runtime;
using ILGPU.Runtime.OpenCL;

namespace IlgpuMedusa.Kernels;

/// <summary>A kernel failed to compile or load on an accelerator. The message names the kernel and carries the backend's words.</summary>
public sealed class KernelLoadException : Exception
{
    /// <summary>Creates the exception.</summary>
    public KernelLoadException(string kernelName, string acceleratorName, string message, string? buildLog, Exception? inner)
        : base(Compose(kernelName, acceleratorName, message, buildLog), inner)
    {
        KernelName = kernelName;
        BuildLog = buildLog;
    }

    /// <summary>Creates the exception.</summary>
    public KernelLoadException()
    {
        KernelName = "";
    }

    /// <summary>Creates the exception.</summary>
    public KernelLoadException(string message) : base(message)
    {
        KernelName = "";
    }

    /// <summary>Creates the exception.</summary>
    public KernelLoadException(string message, Exception inner) : base(message, inner)
    {
        KernelName = "";
    }

    /// <summary>The kernel, e.g. "MatVecKernel.Run&lt;UInt32, F16Format&gt;".</summary>
    public string KernelName { get; }

    /// <summary>The OpenCL program build log, when the device is OpenCL and the log could be read.</summary>
    public string? BuildLog { get; }

    private static string Compose(string kernel, string accelerator, string message, string? log)
    {
        var text = new StringBuilder($"kernel {kernel} failed to compile or load on {accelerator}: {message}");
        if (!string.IsNullOrWhiteSpace(log)) text.Append("\nOpenCL build log:\n").Append(log.Trim());
        return text.ToString();
    }
}

/// <summary>
/// Loads kernels for an accelerator, turning failures into <see cref="KernelLoadException"/> with the kernel's name and,
/// on OpenCL, the program build log (ILGPU only writes it to a trace listener and throws a bare CLException).
/// </summary>
public static class KernelLoader
{
    /// <summary>
    /// Runs <paramref name="load"/> (an ILGPU Load*Kernel call for <paramref name="kernel"/>) and wraps any failure.
    /// </summary>
    public static TLauncher Load<TLauncher>(Accelerator accelerator, Delegate kernel, Func<TLauncher> load)
        where TLauncher : Delegate
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(load);
        try
        {
            return load();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            var method = kernel.Method;
            string? log = accelerator is CLAccelerator cl ? TryReadBuildLog(cl, method) : null;
            throw new KernelLoadException(NameOf(method), accelerator.Name, $"{e.GetType().Name}: {e.Message}", log, e);
        }
    }

    /// <summary>A readable kernel name: declaring type, method, generic arguments.</summary>
    public static string NameOf(MethodInfo method)
    {
        ArgumentNullException.ThrowIfNull(method);
        var name = $"{method.DeclaringType?.Name}.{method.Name}";
        return method.IsGenericMethod ? $"{name}<{string.Join(", ", method.GetGenericArguments().Select(a => a.Name))}>" : name;
    }

    /// <summary>True when the kernel's first parameter is an index (an implicitly grouped kernel).</summary>
    public static bool IsImplicitlyGrouped(MethodInfo method)
    {
        ArgumentNullException.ThrowIfNull(method);
        var parameters = method.GetParameters();
        if (parameters.Length == 0) return false;
        var first = parameters[0].ParameterType;
        return first == typeof(Index1D) || first == typeof(Index2D) || first == typeof(Index3D)
            || first == typeof(LongIndex1D) || first == typeof(LongIndex2D) || first == typeof(LongIndex3D);
    }

    /// <summary>
    /// Compiles the kernel to OpenCL C again and builds it with the device's compiler to read the build log.
    /// Returns the log, or a line saying why it could not be read.
    /// </summary>
    private static string TryReadBuildLog(CLAccelerator accelerator, MethodInfo method)
    {
        try
        {
            var entry = IsImplicitlyGrouped(method)
                ? EntryPointDescription.FromImplicitlyGroupedKernel(method)
                : EntryPointDescription.FromExplicitlyGroupedKernel(method);
            var compiled = (CLCompiledKernel)accelerator.Backend.Compile(entry, KernelSpecialization.Empty);
            var error = CLKernel.LoadKernel(accelerator, compiled.Name, compiled.Source, compiled.CVersion, out _, out _, out var log);
            return error == CLError.CL_SUCCESS
                ? "(the program builds when compiled again; the failure came after the build)"
                : $"{error}\n{log}";
        }
        catch (Exception e)
        {
            return $"(no build log: compiling to OpenCL C failed: {e.GetType().Name}: {e.Message})";
        }
    }
}
