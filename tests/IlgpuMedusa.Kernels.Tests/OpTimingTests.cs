using IlgpuMedusa.Compute;
using IlgpuMedusa.Compute.Ilgpu;
using IlgpuMedusa.Models;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Tests.Medusa;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Kernels.Tests;

/// <summary>
/// `profile --op-times`: the ILGPU backend stamps every op on the device (OpenCL on PoCL here, whose queues then run with
/// profiling) and the report counts each op of a forward exactly once per launch.
/// </summary>
[Collection(AcceleratorCollection.Name)]
public sealed class OpTimingTests(Accelerators accelerators)
{
    [Fact]
    public void OneForwardIsTimedOpByOp()
    {
        string directory = TinyRandomModel.Write(TinyRandomModel.Config, seed: 11, projectionScale: 0.3f, outputScale: 0.2f);
        try
        {
            using var backend = IlgpuBackend.TryCreate(Accelerators.OpenCLOptions with { OpTimings = true })
                ?? throw new InvalidOperationException("no OpenCL backend");
            Assert.True(backend.CanTimeOps);
            using var checkpoint = HuggingFaceCheckpoint.Open(directory);
            using var model = LlamaModel.Load(checkpoint, backend);
            var c = model.Config;
            using var pool = KvBlockPool.FromBudget(backend, c.Layers, c.KvHeads, c.HeadDim, 16, 2L * 64 * 2 * c.Layers * c.KvDim * sizeof(float));
            using var workspace = new ForwardWorkspace(backend, c, 8, 8);
            using var sequence = pool.CreateSequence(32);
            model.Forward(workspace, workspace.Prepare([1, 5, 9], [0, 1, 2]), sequence, 0); // not recorded
            backend.Synchronize();

            const int Steps = 2;
            backend.StartOpTimings();
            for (int step = 0; step < Steps; step++)
                model.Forward(workspace, workspace.Prepare([7], [3 + step]), sequence, 3 + step);
            var report = backend.StopOpTimings(Steps);

            int Calls(string op) => report.Ops.Where(o => o.Op == op).Sum(o => o.Calls);
            Assert.Equal(Steps, report.Steps);
            // Per layer: norm + QKV, RoPE + KV write, attention, output projection, norm + gate/up + SwiGLU, down projection.
            Assert.Equal(Steps * c.Layers, Calls("norm+matmul"));
            Assert.Equal(Steps * c.Layers, Calls("norm+matmul+swiglu"));
            Assert.Equal(Steps * 2 * c.Layers, Calls("matmul"));
            Assert.Equal(2, report.Ops.Count(o => o.Op == "matmul"));      // one row per weight shape
            Assert.Equal(0, Calls("swiglu"));
            Assert.Equal(Steps * c.Layers, Calls("attention"));
            Assert.Equal(Steps * c.Layers, Calls("rope+kvwrite"));
            Assert.Equal(0, Calls("rope") + Calls("kvwrite"));
            Assert.Equal(Steps, Calls("rmsnorm"));                        // the final norm
            Assert.Equal(Steps, Calls("embedding"));
            Assert.Contains(report.Ops, o => o.Op == "norm+matmul+swiglu" && o.Shape == $"{c.HiddenDim * 2}x{c.Dim} F32 T=1" && o.BytesPerCall == 2L * c.HiddenDim * c.Dim * 4);
            Assert.All(report.Ops, o => Assert.True(o.DeviceMs >= 0, $"{o.Op} {o.Shape}: {o.DeviceMs} ms"));
            Assert.True(report.DeviceMs > 0);
            Assert.True(report.SpanMs + 1e-6 >= report.DeviceMs, $"span {report.SpanMs} ms < ops {report.DeviceMs} ms");

            // Not recording any more: ops run untimed, and a second stop is an error.
            model.Forward(workspace, workspace.Prepare([7], [5]), sequence, 5);
            Assert.Throws<InvalidOperationException>(() => backend.StopOpTimings(1));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public void WithoutProfilingTheBackendSaysSo()
    {
        Assert.False(accelerators.Emulator.CanTimeOps);
        var e = Assert.Throws<InvalidOperationException>(() => accelerators.Emulator.StartOpTimings());
        Assert.Contains("DeviceOptions.OpTimings", e.Message);
        Assert.False(accelerators.Host is IDeviceDiagnostics { CanTimeOps: true });
    }
}
