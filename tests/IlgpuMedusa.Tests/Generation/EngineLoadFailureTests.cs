using System.Diagnostics;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;

namespace IlgpuMedusa.Tests.Generation;

/// <summary>A load that fails late (a bad heads file, after the KV cache exists) gives back everything it took.</summary>
public class EngineLoadFailureTests
{
    [Fact]
    public void AFailedLoadFreesItsKvCache()
    {
        var heads = Path.Combine(TestModels.TempDirectory("bad-heads"), "medusa_lm_head.safetensors");
        File.WriteAllBytes(heads, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        var options = new EngineOptions
        {
            ModelPath = TestModels.Stories15MDirectory,
            Device = new DeviceOptions { Kind = DeviceKind.Host },
            Heads = heads,
            KvBudgetMb = 1024, // the host zeroes its cache: 1 GiB resident for as long as it is held
        };
        Assert.Throws<InvalidDataException>(() => InferenceEngine.Load(options).Dispose()); // warm-up: code, mapped files
        long before = WorkingSet();
        for (int i = 0; i < 2; i++)
        {
            var e = Assert.Throws<InvalidDataException>(() => InferenceEngine.Load(options).Dispose());
            Assert.Contains(heads, e.Message, StringComparison.Ordinal);
        }
        long grown = WorkingSet() - before;
        // Before the fix each failed load kept its 1 GiB cache (+2 GiB here).
        Assert.True(grown < 600L * 1024 * 1024, $"the working set grew by {grown / 1048576} MiB over two failed loads");
    }

    private static long WorkingSet()
    {
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        using var process = Process.GetCurrentProcess();
        return process.WorkingSet64;
    }
}
