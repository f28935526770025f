using ILGPU.Runtime;

namespace IlgpuMedusa.Compute.Ilgpu;

/// <summary>
/// Device timestamps around every op of <see cref="IlgpuBackend"/> while it records (profiling only: the context must
/// have been created with profiling on, see <see cref="DeviceOptions.OpTimings"/>). Each op gets a marker before and
/// after its launches on the backend's stream; the device stamps them when the stream reaches them, so
/// (after − before) is the op's time on the device, and (before − the previous op's after) is time the device waited
/// for the host (launch overhead, host work, copies). Markers cost host time themselves, so steps run slower while
/// recording; the split between ops is what this is for.
/// </summary>
internal sealed class OpTimer : IDisposable
{
    private readonly AcceleratorStream _stream;
    private readonly List<Entry> _entries = [];

    private record struct Entry(string Op, string Shape, long Bytes, ProfilingMarker Before, ProfilingMarker? After);

    public OpTimer(AcceleratorStream stream) => _stream = stream;

    /// <summary>Places the op's first marker; returns the handle for <see cref="End"/>.</summary>
    public int Begin(string op, string shape, long bytes)
    {
        _entries.Add(new Entry(op, shape, bytes, _stream.AddProfilingMarker(), null));
        return _entries.Count - 1;
    }

    /// <summary>Places the op's second marker.</summary>
    public void End(int handle)
    {
        var entry = _entries[handle];
        _entries[handle] = entry with { After = _stream.AddProfilingMarker() };
    }

    /// <summary>Waits for the stream and sums device time per (op, shape), in order of first appearance.</summary>
    public OpTimingReport Finish(int steps)
    {
        _stream.Synchronize();
        var rows = new List<OpTiming>();
        var index = new Dictionary<(string, string), int>();
        double gapMs = 0, spanMs = 0;
        ProfilingMarker? previous = null;
        foreach (var e in _entries)
        {
            if (e.After is null) continue;
            double ms = e.After.MeasureFrom(e.Before).TotalMilliseconds;
            if (previous is not null) gapMs += Math.Max(0, e.Before.MeasureFrom(previous).TotalMilliseconds);
            previous = e.After;
            if (!index.TryGetValue((e.Op, e.Shape), out int i))
            {
                index[(e.Op, e.Shape)] = i = rows.Count;
                rows.Add(new OpTiming(e.Op, e.Shape, 0, 0, e.Bytes));
            }
            rows[i] = rows[i] with { Calls = rows[i].Calls + 1, DeviceMs = rows[i].DeviceMs + ms };
        }
        var first = _entries.FirstOrDefault().Before;
        if (first is not null && previous is not null) spanMs = previous.MeasureFrom(first).TotalMilliseconds;
        return new OpTimingReport(Math.Max(1, steps), rows, gapMs, spanMs);
    }

    public void Dispose()
    {
        foreach (var e in _entries)
        {
            e.Before.Dispose();
            e.After?.Dispose();
        }
        _entries.Clear();
    }
}
