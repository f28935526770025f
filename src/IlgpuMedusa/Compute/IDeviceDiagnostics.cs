namespace IlgpuMedusa.Compute;

/// <summary>Measurements of the device itself, for benchmarks (optional on a backend).</summary>
public interface IDeviceDiagnostics
{
    /// <summary>
    /// Device-to-device copy bandwidth in GB/s (10⁹ bytes), counting bytes read plus bytes written, measured by copying a
    /// buffer of <paramref name="bytes"/> bytes <paramref name="repeats"/> times; the median repeat is reported.
    /// </summary>
    double MeasureCopyBandwidth(long bytes, int repeats);

    /// <summary>True when <see cref="StartOpTimings"/> works: the backend was created with <see cref="DeviceOptions.OpTimings"/>.</summary>
    bool CanTimeOps => false;

    /// <summary>Starts stamping every op's start and end on the device (see <see cref="StopOpTimings"/>).</summary>
    void StartOpTimings() => throw new NotSupportedException("this backend does not time ops; create it with DeviceOptions.OpTimings");

    /// <summary>Waits for the device and returns the device time of each op kind and shape since <see cref="StartOpTimings"/>.</summary>
    /// <param name="steps">How many forward steps were recorded (the report divides by it).</param>
    OpTimingReport StopOpTimings(int steps) => throw new NotSupportedException("this backend does not time ops; create it with DeviceOptions.OpTimings");
}

/// <summary>Device time of one op with one shape over the recorded steps.</summary>
/// <param name="Op">The op (matmul, attention, rmsnorm, ...).</param>
/// <param name="Shape">Its shape, e.g. "4096x4096 F16 T=1".</param>
/// <param name="Calls">Launches recorded.</param>
/// <param name="DeviceMs">Total device time between the op's markers, in milliseconds.</param>
/// <param name="BytesPerCall">Weight bytes one call streams (matmuls), else 0.</param>
public sealed record OpTiming(string Op, string Shape, int Calls, double DeviceMs, long BytesPerCall)
{
    /// <summary>Mean device time of one call, in microseconds.</summary>
    public double MicrosecondsPerCall => Calls > 0 ? DeviceMs * 1000 / Calls : 0;

    /// <summary>Weight bytes per second of device time, in GB/s (0 for ops without weights).</summary>
    public double WeightGBPerSecond => DeviceMs > 0 ? BytesPerCall * (double)Calls / (DeviceMs / 1000) / 1e9 : 0;
}

/// <summary>What <see cref="IDeviceDiagnostics.StopOpTimings"/> measured.</summary>
/// <param name="Steps">Forward steps recorded.</param>
/// <param name="Ops">Per op and shape, in order of first launch.</param>
/// <param name="GapMs">Device time between one op's end and the next op's start: the device waiting for the host.</param>
/// <param name="SpanMs">Device time from the first op's start to the last op's end.</param>
public sealed record OpTimingReport(int Steps, IReadOnlyList<OpTiming> Ops, double GapMs, double SpanMs)
{
    /// <summary>Sum of the ops' device time.</summary>
    public double DeviceMs => Ops.Sum(o => o.DeviceMs);
}
