using IlgpuMedusa.Compute;
using IlgpuMedusa.Compute.Ilgpu;
using IlgpuMedusa.Models;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Tests.Medusa;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Kernels.Tests;

/// <summary>
/// `profile --op-times`: the ILGPU backend stamps every op on the device (OpenCL on PoCL here, whose queues then run with
/// profiling) and the report counts each op of a forward exactly once per launch; with the fused kernels switched off
/// (DeviceOptions.FusedOps, ILGPU_MEDUSA_FUSED=0) the same forward runs as separate ops and gives the same hidden states.
/// </summary>
[Collection(AcceleratorCollection.Name)]
public sealed class OpTimingTests(Accelerators accelerators)
{
    private const int Steps = 2;

    [Fact]
    public void OneForwardIsTimedOpByOp_FusedAndNot()
    {
        string directory = TinyRandomModel.Write(TinyRandomModel.Config, seed: 11, projectionScale: 0.3f, outputScale: 0.2f);
        try
        {
            var (fused, fusedHidden, layers) = Run(directory, fusedOps: true);
            int Calls(OpTimingReport report, string op) => report.Ops.Where(o => o.Op == op).Sum(o => o.Calls);

            // Per layer: norm + QKV, RoPE + KV write, attention, output projection, norm + gate/up + SwiGLU, down projection.
            Assert.Equal(Steps, fused.Steps);
            Assert.Equal(Steps * layers, Calls(fused, "norm+matmul"));
            Assert.Equal(Steps * layers, Calls(fused, "norm+matmul+swiglu"));
            Assert.Equal(Steps * 2 * layers, Calls(fused, "matmul"));
            Assert.Equal(2, fused.Ops.Count(o => o.Op == "matmul"));      // one row per weight shape
            Assert.Equal(Steps * layers, Calls(fused, "attention"));
            Assert.Equal(Steps * layers, Calls(fused, "rope+kvwrite"));
            Assert.Equal(0, Calls(fused, "rope") + Calls(fused, "kvwrite") + Calls(fused, "swiglu"));
            Assert.Equal(Steps, Calls(fused, "rmsnorm"));                        // the final norm
            Assert.Equal(Steps, Calls(fused, "embedding"));
            Assert.Equal(Steps, Calls(fused, "upload")); // the step's token and position: one launch, no copy
            var c = TinyRandomModel.Config;
            Assert.Contains(fused.Ops, o => o.Op == "norm+matmul+swiglu" && o.Shape == $"{c.HiddenDim * 2}x{c.Dim} F32 T=1" && o.BytesPerCall == 2L * c.HiddenDim * c.Dim * 4);
            Assert.All(fused.Ops, o => Assert.True(o.DeviceMs >= 0, $"{o.Op} {o.Shape}: {o.DeviceMs} ms"));
            Assert.True(fused.DeviceMs > 0);
            Assert.True(fused.SpanMs + 1e-6 >= fused.DeviceMs, $"span {fused.SpanMs} ms < ops {fused.DeviceMs} ms");

            var (separate, separateHidden, _) = Run(directory, fusedOps: false);
            Assert.Equal(Steps * 4 * layers, Calls(separate, "matmul"));
            Assert.Equal(Steps * (2 * layers + 1), Calls(separate, "rmsnorm"));
            Assert.Equal(Steps * layers, Calls(separate, "rope"));
            Assert.Equal(Steps * layers, Calls(separate, "kvwrite"));
            Assert.Equal(Steps * layers, Calls(separate, "swiglu"));
            Assert.Equal(0, Calls(separate, "norm+matmul") + Calls(separate, "norm+matmul+swiglu") + Calls(separate, "rope+kvwrite"));

            // The same model and tokens: the same final hidden states, fused or not (float32 summation order aside).
            Twin.AssertClose(separateHidden, fusedHidden, new Tolerance(1e-5, 1e-4), "final hidden states, fused vs separate ops");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    /// <summary>Loads the model on a fresh PoCL backend with profiling, prefills, times <see cref="Steps"/> decode steps.</summary>
    private static (OpTimingReport Report, float[] Hidden, int Layers) Run(string directory, bool fusedOps)
    {
        using var backend = IlgpuBackend.TryCreate(Accelerators.OpenCLOptions with { OpTimings = true, FusedOps = fusedOps })
            ?? throw new InvalidOperationException("no OpenCL backend");
        Assert.True(backend.CanTimeOps);
        Assert.Equal(fusedOps, backend.FusedOps);
        using var checkpoint = HuggingFaceCheckpoint.Open(directory);
        using var model = LlamaModel.Load(checkpoint, backend);
        var c = model.Config;
        using var pool = KvBlockPool.FromBudget(backend, c.Layers, c.KvHeads, c.HeadDim, 16, 2L * 64 * 2 * c.Layers * c.KvDim * sizeof(float));
        using var workspace = new ForwardWorkspace(backend, c, 8, 8);
        using var sequence = pool.CreateSequence(32);
        model.Forward(workspace, workspace.Prepare([1, 5, 9], [0, 1, 2]), sequence, 0); // not recorded
        backend.Synchronize();

        backend.StartOpTimings();
        DeviceTensor hidden = null!;
        for (int step = 0; step < Steps; step++)
            hidden = model.Forward(workspace, workspace.Prepare([7 + step], [3 + step]), sequence, 3 + step);
        var report = backend.StopOpTimings(Steps);
        var values = Twin.Read(hidden);

        // Not recording any more: ops run untimed, and a second stop is an error.
        model.Forward(workspace, workspace.Prepare([7], [5]), sequence, 5);
        Assert.Throws<InvalidOperationException>(() => backend.StopOpTimings(1));
        return (report, values, c.Layers);
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
