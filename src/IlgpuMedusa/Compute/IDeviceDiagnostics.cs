namespace IlgpuMedusa.Compute;

/// <summary>Measurements of the device itself, for benchmarks (optional on a backend).</summary>
public interface IDeviceDiagnostics
{
    /// <summary>
    /// Device-to-device copy bandwidth in GB/s (10⁹ bytes), counting bytes read plus bytes written, measured by copying a
    /// buffer of <paramref name="bytes"/> bytes <paramref name="repeats"/> times; the median repeat is reported.
    /// </summary>
    double MeasureCopyBandwidth(long bytes, int repeats);
}
