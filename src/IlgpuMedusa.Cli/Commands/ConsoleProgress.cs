namespace IlgpuMedusa.Cli.Commands;

/// <summary>A one-line progress display on standard error (only when it is a terminal; otherwise one line at the end).</summary>
internal sealed class ConsoleProgress : IProgress<double>, IDisposable
{
    private readonly string _label;
    private readonly bool _interactive = !Console.IsErrorRedirected;
    private readonly System.Diagnostics.Stopwatch _clock = System.Diagnostics.Stopwatch.StartNew();
    private int _lastPercent = -1;
    private string _stage;

    public ConsoleProgress(string label)
    {
        _label = label;
        _stage = label;
    }

    public void Report(double value) => Report(_label, value);

    public void Report(string stage, double? value)
    {
        if (stage != _stage)
        {
            if (_interactive && _lastPercent >= 0) Console.Error.WriteLine();
            _stage = stage;
            _lastPercent = -1;
            if (value is null) Console.Error.WriteLine($"{stage}...");
        }
        if (value is not double v) return;
        int percent = (int)Math.Clamp(v * 100, 0, 100);
        if (percent == _lastPercent) return;
        _lastPercent = percent;
        if (_interactive) Console.Error.Write($"\r{stage}: {percent,3}%");
    }

    public void Dispose()
    {
        if (_interactive && _lastPercent >= 0) Console.Error.WriteLine();
        else if (_lastPercent >= 0) Console.Error.WriteLine($"{_stage}: done in {_clock.Elapsed.TotalSeconds:0.0} s");
    }
}
