using System.Runtime.ExceptionServices;

namespace IlgpuMedusa.Compute.Host;

/// <summary>
/// A small fork-join pool for the host backend, in the style of OpenMP: workers spin briefly between parallel
/// regions (a decode step runs about 25 regions in a few milliseconds, shorter than the thread pool's wake-up
/// latency) and block only when idle for longer. The calling thread takes part in every region. No allocation per
/// region: two region records alternate, and a record is reused only once no worker is inside any region.
/// </summary>
internal sealed class HostWorkers : IDisposable
{
    private const int SpinIterations = 20_000;

    private sealed class Region
    {
        public Action<int>? Body;
        public int Chunks;
        public int Next;
        public int Remaining;
        public ExceptionDispatchInfo? Failure;
    }

    private readonly Thread[] _threads;
    private readonly Region[] _regions = [new(), new()];
    private readonly Lock _gate = new();
    private readonly object _signal = new();
    private Region? _current;
    private int _count;
    private int _generation;
    private int _waiters;
    private int _inside;
    private volatile bool _disposed;

    /// <summary>Creates <paramref name="threads"/> − 1 workers (the caller is the last thread).</summary>
    public HostWorkers(int threads)
    {
        _threads = new Thread[Math.Max(0, threads - 1)];
        for (int i = 0; i < _threads.Length; i++)
        {
            _threads[i] = new Thread(Work) { IsBackground = true, Name = $"ilgpu-medusa host worker {i + 1}" };
            _threads[i].Start();
        }
    }

    /// <summary>Threads taking part in a region, the caller included.</summary>
    public int Threads => _threads.Length + 1;

    /// <summary>Runs body(0) .. body(chunks − 1) across the workers and the caller; returns when all are done.</summary>
    public void For(int chunks, Action<int> body)
    {
        if (chunks <= 0) return;
        if (_threads.Length == 0 || chunks == 1)
        {
            for (int i = 0; i < chunks; i++) body(i);
            return;
        }
        lock (_gate)
        {
            var spinner = new SpinWait();
            while (Volatile.Read(ref _inside) > 0) spinner.SpinOnce(sleep1Threshold: -1); // stragglers of an earlier region
            var region = _regions[_count++ & 1];
            region.Body = body;
            region.Chunks = chunks;
            region.Next = 0;
            region.Failure = null;
            region.Remaining = chunks;
            Volatile.Write(ref _current, region);
            Interlocked.Increment(ref _generation); // full fence: workers that see the new generation see the region
            if (Volatile.Read(ref _waiters) > 0)
            {
                lock (_signal) Monitor.PulseAll(_signal);
            }
            Run(region);
            spinner = new SpinWait();
            while (Volatile.Read(ref region.Remaining) > 0) spinner.SpinOnce(sleep1Threshold: -1);
            region.Body = null;
            region.Failure?.Throw();
        }
    }

    private static void Run(Region region)
    {
        var body = Volatile.Read(ref region.Body);
        if (body is null) return;
        int chunks = region.Chunks, i;
        while ((i = Interlocked.Increment(ref region.Next) - 1) < chunks)
        {
            try
            {
                body(i);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref region.Failure, ExceptionDispatchInfo.Capture(e), null);
            }
            Interlocked.Decrement(ref region.Remaining);
        }
    }

    private void Work()
    {
        int seen = Volatile.Read(ref _generation);
        while (!_disposed)
        {
            int spins = 0, generation;
            var spinner = new SpinWait();
            while ((generation = Volatile.Read(ref _generation)) == seen)
            {
                if (_disposed) return;
                if (spins++ < SpinIterations)
                {
                    spinner.SpinOnce(sleep1Threshold: -1);
                    continue;
                }
                lock (_signal)
                {
                    Interlocked.Increment(ref _waiters); // full fence: a publisher either sees us waiting or we see its generation
                    while (Volatile.Read(ref _generation) == seen && !_disposed) Monitor.Wait(_signal);
                    Interlocked.Decrement(ref _waiters);
                }
                spins = 0;
            }
            seen = generation;
            Interlocked.Increment(ref _inside);
            var region = Volatile.Read(ref _current);
            if (region is not null) Run(region);
            Interlocked.Decrement(ref _inside);
        }
    }

    /// <summary>Stops the workers.</summary>
    public void Dispose()
    {
        _disposed = true;
        lock (_signal) Monitor.PulseAll(_signal);
    }
}
