using System.Collections.Concurrent;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using Microsoft.Extensions.Logging;

namespace IlgpuMedusa.Tests.Hosting;

/// <summary>The llama2.c reference continuation and engines on the demo model for the hosting tests.</summary>
public static class HostingTestSupport
{
    public const string Prompt = "Once upon a time";

    /// <summary>What Karpathy's run.c printed for the demo model (greedy): the prompt, then the continuation.</summary>
    public static string Reference { get; } =
        File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "TestData", "llama2c-greedy-once-upon-a-time-256.txt")).TrimEnd('\n');

    /// <summary>The continuation after the prompt.</summary>
    public static string ReferenceContinuation => Reference[Prompt.Length..];

    public static InferenceEngine LoadEngine() =>
        InferenceEngine.Load(new EngineOptions { ModelPath = TestModels.Stories15MDirectory, Device = new DeviceOptions { Kind = DeviceKind.Host } });
}

/// <summary>One engine on the demo model shared by the tests of a class (they run one at a time).</summary>
public sealed class DemoEngineFixture : IDisposable
{
    public InferenceEngine Engine { get; } = HostingTestSupport.LoadEngine();

    public void Dispose() => Engine.Dispose();
}

/// <summary>An <see cref="ILoggerFactory"/> that keeps every message.</summary>
public sealed class RecordingLoggerFactory : ILoggerFactory
{
    public ConcurrentQueue<string> Messages { get; } = new();

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void AddProvider(ILoggerProvider provider)
    {
    }

    public void Dispose()
    {
    }

    private sealed class Logger(RecordingLoggerFactory owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            owner.Messages.Enqueue($"{category} {logLevel}: {formatter(state, exception)}");
    }
}
