namespace IlgpuMedusa.Generation;

/// <summary>
/// Streams text while watching for stop sequences: text that could still be the start of a stop sequence is held
/// back until it is known not to be one, so the stop text itself is never emitted.
/// </summary>
internal sealed class StopSequenceFilter
{
    private readonly IReadOnlyList<string> _stops;
    private string _pending = "";

    public StopSequenceFilter(IReadOnlyList<string> stops) => _stops = stops;

    /// <summary>True once a stop sequence has appeared.</summary>
    public bool Stopped { get; private set; }

    /// <summary>Adds text; returns what can be emitted now.</summary>
    public string Push(string text)
    {
        if (_stops.Count == 0) return text;
        if (Stopped) return "";
        _pending += text;
        int earliest = -1;
        foreach (var stop in _stops)
        {
            int at = _pending.IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0 && (earliest < 0 || at < earliest)) earliest = at;
        }
        if (earliest >= 0)
        {
            Stopped = true;
            var before = _pending[..earliest];
            _pending = "";
            return before;
        }
        int hold = 0;
        foreach (var stop in _stops)
        {
            for (int n = Math.Min(stop.Length - 1, _pending.Length); n > hold; n--)
            {
                if (_pending.AsSpan(_pending.Length - n).SequenceEqual(stop.AsSpan(0, n)))
                {
                    hold = n;
                    break;
                }
            }
        }
        var emit = _pending[..^hold];
        _pending = _pending[^hold..];
        return emit;
    }

    /// <summary>Returns the held-back text at the end of generation.</summary>
    public string Flush()
    {
        var rest = Stopped ? "" : _pending;
        _pending = "";
        return rest;
    }
}
