using System.Diagnostics;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Hosting;
using Microsoft.Extensions.AI;
using Xunit.Abstractions;

namespace IlgpuMedusa.Tests.Hosting;

/// <summary>
/// 1,000 short generations leave managed memory and the KV pool where they started. About two minutes on two cores, so
/// it is kept out of the default run: <c>dotnet test --filter "Category!=Long"</c> skips it, <c>--filter "Category=Long"</c> runs it.
/// </summary>
[Trait("Category", "Long")]
public class GenerationLoopMemoryTests(ITestOutputHelper output)
{
    private const int Generations = 1000;
    private const int WarmUpGenerations = 50;

    [Fact]
    public async Task ThousandShortGenerations_LeaveManagedMemoryFlat_AndEveryBlockFree()
    {
        using var engine = HostingTestSupport.LoadEngine();
        var chat = new IlgpuMedusaChatClient(engine);
        var options = new GenerationOptions { MaxTokens = 6 };
        int freeAtStart = engine.Pool.FreeBlocks;

        for (int i = 0; i < WarmUpGenerations; i++) await OneAsync(engine, chat, options, i);
        var (managedStart, workingSetStart) = Measure();
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < Generations; i++) await OneAsync(engine, chat, options, i);
        double seconds = clock.Elapsed.TotalSeconds;
        var (managedEnd, workingSetEnd) = Measure();
        int freeAtEnd = engine.Pool.FreeBlocks;

        output.WriteLine($"{Generations} generations (after {WarmUpGenerations} warm-up) in {seconds:0.0} s");
        output.WriteLine($"GC.GetTotalMemory after forced collections: {managedStart / 1024.0:0} KiB -> {managedEnd / 1024.0:0} KiB ({(managedEnd - managedStart) / 1024.0:+0;-0} KiB)");
        output.WriteLine($"working set: {workingSetStart / 1048576.0:0.0} MiB -> {workingSetEnd / 1048576.0:0.0} MiB ({(workingSetEnd - workingSetStart) / 1048576.0:+0.0;-0.0} MiB)");
        output.WriteLine($"KV pool free blocks: {freeAtStart} at start, {freeAtEnd} at end (of {engine.Pool.BlockCount})");

        Assert.Equal(freeAtStart, freeAtEnd);
        Assert.True(managedEnd - managedStart < 1024 * 1024, $"managed memory grew by {(managedEnd - managedStart) / 1024} KiB over {Generations} generations");
        Assert.True(workingSetEnd - workingSetStart < 64L * 1024 * 1024, $"the working set grew by {(workingSetEnd - workingSetStart) / 1048576} MiB");
    }

    /// <summary>A mix: streamed to the end, abandoned after the first piece, and through the chat client.</summary>
    private static async Task OneAsync(InferenceEngine engine, IChatClient chat, GenerationOptions options, int i)
    {
        switch (i % 3)
        {
            case 0:
                int tokens = 0;
                await foreach (var piece in engine.GenerateAsync(HostingTestSupport.Prompt, options)) tokens += piece.TokenIds.Count;
                Assert.Equal(6, tokens);
                break;
            case 1:
                await foreach (var _ in engine.GenerateAsync(HostingTestSupport.Prompt, options)) break;
                break;
            default:
                var response = await chat.GetResponseAsync(HostingTestSupport.Prompt, new ChatOptions { MaxOutputTokens = 6 });
                Assert.Equal(6, response.Usage!.OutputTokenCount);
                break;
        }
    }

    private static (long Managed, long WorkingSet) Measure()
    {
        for (int i = 0; i < 3; i++)
        {
            GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
            GC.WaitForPendingFinalizers();
        }
        using var process = Process.GetCurrentProcess();
        return (GC.GetTotalMemory(forceFullCollection: true), process.WorkingSet64);
    }
}
