using IlgpuMedusa.Compute;
using IlgpuMedusa.Compute.Ilgpu;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Kernels.Tests;

/// <summary>Shapes one accelerator is tested with: tiny on the emulator (about 1 µs per thread, slow barriers), moderate on PoCL.</summary>
/// <param name="Widths">Row lengths (D, F, V) around the warp and group sizes.</param>
/// <param name="MatMuls">(T, N, K) triples covering the vector (T = 1), skinny (T ≤ 16) and tiled (T &gt; 16) kernels.</param>
/// <param name="HeadDims">Attention head dimensions, including one above the group size.</param>
/// <param name="LongContext">S for the long-context attention test.</param>
/// <param name="Vocabulary">V for the argmax / top-k / softmax tests' largest row.</param>
public sealed record TestSizes(int[] Widths, (int T, int N, int K)[] MatMuls, int[] HeadDims, int LongContext, int Vocabulary);

/// <summary>
/// Every op of <see cref="IlgpuBackend"/> against <see cref="Compute.Host.HostBackend"/> on random data of awkward
/// sizes, for F32, F16 and BF16 weights. Written once; each derived class runs it on one accelerator.
/// </summary>
public abstract class ConformanceTests
{
    private static readonly int[] TopKs = [1, 5, 16];

    /// <summary>Creates the suite.</summary>
    protected ConformanceTests(Accelerators accelerators)
    {
        Accelerators = accelerators;
    }

    /// <summary>The shared backends.</summary>
    protected Accelerators Accelerators { get; }

    /// <summary>The device under test.</summary>
    protected abstract IlgpuBackend Device { get; }

    /// <summary>The shapes for this device.</summary>
    protected abstract TestSizes Sizes { get; }

    private Twin NewTwin(int seed) => new(Accelerators.Host, Device, seed);

    /// <summary>Embedding gather of every weight dtype.</summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    [InlineData(DType.BF16)]
    public void Embedding_matches_host(DType type)
    {
        using var twin = NewTwin(1);
        foreach (int d in Sizes.Widths)
        {
            const int vocabulary = 37;
            var table = twin.RandomWeight(type, vocabulary, d);
            var tokens = twin.Ints(4, 1, [0, 36, 5, 5]);
            var output = twin.Zeros(DType.F32, 4, d);
            Accelerators.Host.Embedding(output.Host, tokens.Host, table.Host);
            Device.Embedding(output.Device, tokens.Device, table.Device);
            Twin.AssertClose(output, Tolerance.Exact, $"Embedding {type} D={d}");
        }
    }

    /// <summary>Every one of the 65,536 binary16 bit patterns decodes exactly as on the host (through the embedding gather).</summary>
    [Fact]
    public void F16_decoding_is_exact_for_every_bit_pattern()
    {
        using var twin = NewTwin(23);
        var values = new float[65536];
        for (int i = 0; i < values.Length; i++) values[i] = (float)BitConverter.UInt16BitsToHalf((ushort)i);
        var table = twin.Weight(DType.F16, 2, 32768, values);
        var tokens = twin.Ints(2, 1, [0, 1]);
        var output = twin.Zeros(DType.F32, 2, 32768);
        Accelerators.Host.Embedding(output.Host, tokens.Host, table.Host);
        Device.Embedding(output.Device, tokens.Device, table.Device);
        Twin.AssertClose(output, Tolerance.Exact, "F16 decoding");
    }

    /// <summary>RMSNorm with a weight of every dtype.</summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    [InlineData(DType.BF16)]
    public void RmsNorm_matches_host(DType type)
    {
        using var twin = NewTwin(2);
        foreach (int d in Sizes.Widths)
        {
            foreach (int t in new[] { 1, 3 })
            {
                var x = twin.RandomTensor(t, d, 3f);
                var weight = twin.RandomWeight(type, 1, d);
                var output = twin.Zeros(DType.F32, t, d);
                Accelerators.Host.RmsNorm(output.Host, x.Host, weight.Host, 1e-5f);
                Device.RmsNorm(output.Device, x.Device, weight.Device, 1e-5f);
                Twin.AssertClose(output, Tolerance.ForSum(DType.F32, d), $"RmsNorm {type} T={t} D={d}");
            }
        }
    }

    /// <summary>
    /// Qwen3's per-head RMSNorm of queries and keys, in place: head dims around and above the group size, grouped-query
    /// shapes, and the values after the keys left as they were.
    /// </summary>
    [Fact]
    public void HeadRmsNorm_matches_host_and_leaves_values_alone()
    {
        using var twin = NewTwin(24);
        foreach (int dh in Sizes.HeadDims)
        {
            foreach (var (heads, kvHeads, t) in new[] { (4, 2, 3), (3, 1, 1), (2, 2, 5) })
            {
                int width = (heads + 2 * kvHeads) * dh;
                var qkv = twin.RandomTensor(t, width, 3f);
                var before = new float[t * width];
                Accelerators.Host.Download(qkv.Host, before);
                var queryWeight = twin.RandomWeight(DType.F32, 1, dh);
                var keyWeight = twin.RandomWeight(DType.F32, 1, dh);
                Accelerators.Host.HeadRmsNorm(qkv.Host, heads, kvHeads, dh, queryWeight.Host, keyWeight.Host, 1e-6f);
                Device.HeadRmsNorm(qkv.Device, heads, kvHeads, dh, queryWeight.Device, keyWeight.Device, 1e-6f);
                Twin.AssertClose(qkv, Tolerance.ForSum(DType.F32, dh), $"HeadRmsNorm Dh={dh} H={heads} Hkv={kvHeads} T={t}");
                var after = new float[t * width];
                Device.Download(qkv.Device, after);
                for (int r = 0; r < t; r++)
                    for (int j = (heads + kvHeads) * dh; j < width; j++)
                        Assert.Equal(before[r * width + j], after[r * width + j]);
            }
        }
    }

    /// <summary>Matmul through the automatic path choice, with and without accumulation.</summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    [InlineData(DType.BF16)]
    public void MatMul_matches_host(DType type)
    {
        using var twin = NewTwin(3);
        foreach (var (t, n, k) in Sizes.MatMuls)
        {
            var x = twin.RandomTensor(t, k);
            var weight = twin.RandomWeight(type, n, k);
            foreach (bool accumulate in new[] { false, true })
            {
                var output = twin.RandomTensor(t, n);
                Accelerators.Host.MatMul(output.Host, x.Host, weight.Host, accumulate);
                Device.MatMul(output.Device, x.Device, weight.Device, accumulate);
                Twin.AssertClose(output, Tolerance.ForSum(type, k), $"MatMul {type} T={t} N={n} K={k} accumulate={accumulate} ({Device.Kernels.MatMul.Choose(t)})");
            }
        }
    }

    /// <summary>
    /// RMSNorm fused into the matmul (the vector and skinny kernels read the input normalised) against the host's norm then
    /// matmul, with and without accumulation, for every T of the suite: beyond T = 4 (one pass of the skinny kernel) the
    /// backend normalises separately, and the scratch rows it writes then must hold the normalised input.
    /// </summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    [InlineData(DType.BF16)]
    public void NormMatMul_matches_host(DType type)
    {
        using var twin = NewTwin(31);
        foreach (var (t, n, k) in Sizes.MatMuls)
        {
            var x = twin.RandomTensor(t, k, 3f);
            var norm = twin.RandomWeight(DType.F32, 1, k);
            var weight = twin.RandomWeight(type, n, k);
            foreach (bool accumulate in new[] { false, true })
            {
                var output = twin.RandomTensor(t, n);
                var normed = twin.Zeros(DType.F32, t, k);
                ((IComputeBackend)Accelerators.Host).NormMatMul(output.Host, x.Host, norm.Host, 1e-5f, weight.Host, normed.Host, accumulate);
                ((IComputeBackend)Device).NormMatMul(output.Device, x.Device, norm.Device, 1e-5f, weight.Device, normed.Device, accumulate);
                bool fused = Device.FusesNorm(norm.Device, weight.Device, t);
                // The norm scales the sum: a bound for [K] products of normalised inputs (|x/rms| ≤ √K), as for the unfused pair.
                Twin.AssertClose(output, Tolerance.ForSum(type, k), $"NormMatMul {type} T={t} N={n} K={k} accumulate={accumulate} ({(fused ? "fused" : "separate")})");
                if (!fused) Twin.AssertClose(normed, Tolerance.ForSum(DType.F32, k), $"NormMatMul scratch T={t} K={k}");
            }
        }
    }

    /// <summary>
    /// A feed-forward block's first half (RMSNorm, gate and up projections, SwiGLU) against the host's three ops on stacked
    /// weights: one fused launch on interleaved weights up to T = 4, the matmul then SwiGLU on interleaved pairs beyond. F = N and D = K of the suite's matmul shapes (odd F included); weights scaled by 1/√D so that the
    /// gate and up values stay of order one.
    /// </summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    [InlineData(DType.BF16)]
    public void FfnGateUp_matches_host(DType type)
    {
        using var twin = NewTwin(33);
        foreach (var (t, f, d) in Sizes.MatMuls)
        {
            var x = twin.RandomTensor(t, d, 3f);
            var norm = twin.RandomWeight(DType.F32, 1, d);
            var gateUp = twin.GateUp(type, f, d, 1f / MathF.Sqrt(d));
            var ffn = twin.Zeros(DType.F32, t, f);
            var normed = twin.Zeros(DType.F32, t, d);
            var gateUpOut = twin.Zeros(DType.F32, t, 2 * f);
            ((IComputeBackend)Accelerators.Host).FfnGateUp(ffn.Host, x.Host, norm.Host, 1e-5f, gateUp.Host, normed.Host, gateUpOut.Host);
            ((IComputeBackend)Device).FfnGateUp(ffn.Device, x.Device, norm.Device, 1e-5f, gateUp.Device, normed.Device, gateUpOut.Device);
            var sum = Tolerance.ForSum(type, d);
            Twin.AssertClose(ffn, new Tolerance(4 * sum.Absolute, 1e-4),
                $"FfnGateUp {type} T={t} F={f} D={d} ({(Device.Kernels.MatMul.CanNormalize(t) ? "fused" : "separate")})");
        }
    }

    /// <summary>Each of the three matmul kernels forced on the same awkward shape.</summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    [InlineData(DType.BF16)]
    public void MatMul_every_kernel_path_matches_host(DType type)
    {
        using var twin = NewTwin(4);
        const int t = 5, n = 33, k = 35;
        var x = twin.RandomTensor(t, k);
        var weight = twin.RandomWeight(type, n, k);
        var expected = twin.Zeros(DType.F32, t, n);
        Accelerators.Host.MatMul(expected.Host, x.Host, weight.Host, accumulate: false);
        var reference = Twin.Read(expected.Host);
        foreach (var path in new[] { MatMulPath.Vector, MatMulPath.Skinny, MatMulPath.Tiled })
        {
            var output = Device.Allocate(DType.F32, t, n);
            try
            {
                Device.MatMul(output, x.Device, weight.Device, accumulate: false, path);
                Twin.AssertClose(reference, Twin.Read(output), Tolerance.ForSum(type, k), $"MatMul {type} via {path}");
            }
            finally
            {
                output.Dispose();
            }
        }
    }

    /// <summary>
    /// True where the tensor-core matmul runs: CUDA (mma.sync) and ILGPU's CPU emulator (the same fragments through warp
    /// shuffles). Elsewhere the launcher must refuse it with a reason and keep the float32 kernels.
    /// </summary>
    protected virtual bool TensorCoresAvailable => false;

    /// <summary>(T, N, K) for the tensor-core matmul: every token-tile count, ragged T and N, K of one to eighteen chunks.</summary>
    protected virtual (int T, int N, int K)[] TensorMatMuls { get; } = [(2, 5, 32), (13, 70, 96), (40, 33, 32), (70, 20, 64), (5, 33, 512), (20, 40, 256), (9, 20, 576)];

    /// <summary>
    /// The tensor-core kernel against the host: with split inputs (hi + lo fp16) to the float32 tolerance; with inputs
    /// rounded to fp16 once against the host given the rounded inputs (so the comparison is exact up to summation order).
    /// Each shape runs through both kernels (staged: warps split the rows, with one to four weight chunks requested ahead;
    /// direct: warps split K), with K split over the
    /// grid wherever K has room for it (a target of 1000 groups: the shapes with K ≥ 256), so split and unsplit launches,
    /// the partial sums and their reduction are covered on every device.
    /// </summary>
    [Theory]
    [InlineData(TensorCoreMode.Split)]
    [InlineData(TensorCoreMode.Rounded)]
    public void MatMul_tensor_cores_match_host(TensorCoreMode mode)
    {
        var accelerator = Device.Accelerator;
        // A target of 1000 groups splits K wherever K has room for it (K ≥ 256 here) and leaves the rest unsplit.
        var tuning = MatMulTuning.For(accelerator, Device.GroupSize) with { TensorCores = mode, TensorTargetGroups = 1000, TensorWaveSplits = false };
        using var launcher = new MatMulLauncher(accelerator, tuning);
        using var direct = new MatMulLauncher(accelerator, tuning with { TensorStaged = false });
        // Every prefetch depth of the staged kernel split (the fixed target: K = 576 leaves a last split of 3 chunks, fewer
        // than depth 4 keeps in flight; or one wave as the driver's occupancy gives it), and depth 4 unsplit too (K = 512: 16
        // chunks stream through the whole ring of registers).
        using var depth1 = new MatMulLauncher(accelerator, tuning with { TensorPrefetch = 1 });
        using var depth2 = new MatMulLauncher(accelerator, tuning with { TensorPrefetch = 2, TensorWaveSplits = true });
        using var depth3 = new MatMulLauncher(accelerator, tuning with { TensorPrefetch = 3 });
        using var depth4 = new MatMulLauncher(accelerator, tuning with { TensorPrefetch = 4 });
        using var depth4Unsplit = new MatMulLauncher(accelerator, tuning with { TensorPrefetch = 4, TensorTargetGroups = 1 });
        using var twin = NewTwin(41);
        if (!TensorCoresAvailable)
        {
            Assert.Equal(TensorCoreMode.Off, launcher.Tuning.TensorCores);
            Assert.False(string.IsNullOrEmpty(launcher.TensorCoreError));
            var w = twin.RandomWeight(DType.F16, 8, 32);
            var x0 = twin.RandomTensor(4, 32);
            var o = twin.Zeros(DType.F32, 4, 8);
            Assert.NotEqual(MatMulPath.TensorCore, launcher.Choose(((IlgpuTensor)w.Device).AsWeight(), 4));
            Assert.Throws<InvalidOperationException>(() =>
                launcher.Launch(accelerator.DefaultStream, ((IlgpuTensor)o.Device).Floats, ((IlgpuTensor)x0.Device).Floats, ((IlgpuTensor)w.Device).AsWeight(), 4, false, MatMulPath.TensorCore));
            return;
        }
        Assert.Equal(mode, launcher.Tuning.TensorCores);
        Assert.True(launcher.UsesStagedTensorKernel, "four-warp groups load the staged kernel");
        Assert.False(direct.UsesStagedTensorKernel);
        foreach (var ((t, n, k), index) in TensorMatMuls.Select((shape, i) => (shape, i)))
        {
            bool accumulate = index % 2 == 1;
            var values = twin.RandomFloats(t * k);
            var x = twin.Floats(t, k, values);
            var hostInput = mode == TensorCoreMode.Split ? x : twin.Floats(t, k, values.Select(v => (float)(System.Half)v).ToArray());
            var weight = twin.RandomWeight(DType.F16, n, k);
            var output = twin.RandomTensor(t, n);
            var view = ((IlgpuTensor)weight.Device).AsWeight();
            Assert.Equal(MatMulPath.TensorCore, launcher.Choose(view, t));
            Assert.Equal(t <= 64, launcher.RunsStaged(view, t));
            Assert.False(direct.RunsStaged(view, t));
            var start = Twin.Read(output.Device);
            Accelerators.Host.MatMul(output.Host, hostInput.Host, weight.Host, accumulate);
            foreach (var (name, l) in new[] { ("direct", direct), ("staged, 1 chunk ahead", depth1), ("staged, 2 chunks ahead, split by waves", depth2),
                ("staged, 3 chunks ahead", depth3), ("staged, 4 chunks ahead", depth4), ("staged, 4 chunks ahead, unsplit", depth4Unsplit) })
            {
                var result = Device.Allocate(DType.F32, t, n);
                try
                {
                    Device.Upload(result, start);
                    l.Launch(accelerator.DefaultStream, ((IlgpuTensor)result).Floats, ((IlgpuTensor)x.Device).Floats, view, t, accumulate, MatMulPath.TensorCore);
                    accelerator.DefaultStream.Synchronize();
                    Twin.AssertClose(Twin.Read(output.Host), Twin.Read(result), Tolerance.ForSum(DType.F16, k),
                        $"tensor-core MatMul ({mode}, {name}) T={t} N={n} K={k} accumulate={accumulate}");
                }
                finally
                {
                    result.Dispose();
                }
            }
        }
        if (mode == TensorCoreMode.Split)
        {
            // RMSNorm applied while the inputs are rounded (the backend's NormMatMul for such T): against the host's
            // norm followed by its matmul.
            foreach (var (t, n, k) in new[] { (13, 40, 96), (70, 33, 64) })
            {
                var x = twin.RandomTensor(t, k, 3f);
                var norm = twin.RandomWeight(DType.F32, 1, k);
                var weight = twin.RandomWeight(DType.F16, n, k, 1f / MathF.Sqrt(k));
                var normed = twin.Zeros(DType.F32, t, k);
                var output = twin.Zeros(DType.F32, t, n);
                ((IComputeBackend)Accelerators.Host).NormMatMul(output.Host, x.Host, norm.Host, 1e-5f, weight.Host, normed.Host, accumulate: false);
                foreach (var l in new[] { launcher, direct })
                {
                    l.LaunchNormedTensor(accelerator.DefaultStream, ((IlgpuTensor)output.Device).Floats, ((IlgpuTensor)x.Device).Floats,
                        ((IlgpuTensor)norm.Device).Floats, ((IlgpuTensor)weight.Device).AsWeight(), t, 1e-5f, accumulate: false);
                    accelerator.DefaultStream.Synchronize();
                    Twin.AssertClose(output, Tolerance.ForSum(DType.F16, k), $"tensor-core MatMul with RMSNorm T={t} N={n} K={k}");
                }
            }
        }
        // Where the kernel does not apply, the automatic choice stays on the float32 kernels.
        var odd = ((IlgpuTensor)twin.RandomWeight(DType.F16, 8, 40).Device).AsWeight();
        var wide = ((IlgpuTensor)twin.RandomWeight(DType.F32, 8, 32).Device).AsWeight();
        var half = ((IlgpuTensor)twin.RandomWeight(DType.F16, 8, 32).Device).AsWeight();
        Assert.NotEqual(MatMulPath.TensorCore, launcher.Choose(odd, 8));
        Assert.NotEqual(MatMulPath.TensorCore, launcher.Choose(wide, 8));
        Assert.Equal(MatMulPath.Vector, launcher.Choose(half, 1));
        Assert.False(launcher.ShouldNormalize(half, 3));
    }

    /// <summary>The matmul writes into row views of a larger buffer (as the model's workspaces do).</summary>
    [Fact]
    public void MatMul_on_row_views_matches_host()
    {
        using var twin = NewTwin(5);
        var x = twin.RandomTensor(6, 31);
        var weight = twin.RandomWeight(DType.F16, 9, 31);
        var output = twin.Zeros(DType.F32, 6, 9);
        Accelerators.Host.MatMul(output.Host.Slice(2, 3), x.Host.Slice(1, 3), weight.Host, accumulate: false);
        Device.MatMul(output.Device.Slice(2, 3), x.Device.Slice(1, 3), weight.Device, accumulate: false);
        Twin.AssertClose(output, Tolerance.ForSum(DType.F16, 31), "MatMul on views");
    }

    /// <summary>RoPE on the first heads of wider rows, at positions up to a few thousand.</summary>
    [Theory]
    [InlineData(2)]
    [InlineData(8)]
    [InlineData(34)]
    public void Rope_matches_host(int headDim)
    {
        using var twin = NewTwin(6);
        const int tokens = 4, heads = 3;
        int width = (heads + 1) * headDim + 1; // an unrotated head and one more column
        var x = twin.RandomTensor(tokens, width, 2f);
        var positions = twin.Ints(tokens, 1, [0, 1, 255, 4095]);
        Accelerators.Host.Rope(x.Host, positions.Host, heads, headDim, 10000f);
        Device.Rope(x.Device, positions.Device, heads, headDim, 10000f);
        // cos/sin of the same float angle: device sin/cos differ from .NET's by ~1e-7 after the exact range reduction.
        Twin.AssertClose(x, new Tolerance(2e-6, 1e-5), $"Rope Dh={headDim}");
    }

    /// <summary>RoPE with Llama 3.2's scaling (θ 500000, factor 32): the device rotates by the scaled frequencies too.</summary>
    [Fact]
    public void Scaled_rope_matches_host()
    {
        using var twin = NewTwin(6);
        const int tokens = 3, heads = 2, headDim = 64;
        var rope = new IlgpuMedusa.Models.RopeParameters(500000f, new IlgpuMedusa.Models.RopeScaling(IlgpuMedusa.Models.RopeScalingKind.Llama3, 32f, 1f, 4f, 8192));
        var x = twin.RandomTensor(tokens, heads * headDim, 2f);
        var positions = twin.Ints(tokens, 1, [3, 900, 20000]);
        Accelerators.Host.Rope(x.Host, positions.Host, heads, headDim, rope);
        Device.Rope(x.Device, positions.Device, heads, headDim, rope);
        Twin.AssertClose(x, new Tolerance(2e-6, 1e-5), "scaled Rope");
    }

    /// <summary>
    /// KV write through a scrambled block table, starting mid-block; float32 elements and binary16 ones (both sides round
    /// to nearest even: the same bits).
    /// </summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    public void KvWrite_matches_host(DType element)
    {
        using var twin = NewTwin(7);
        var layout = new KvCacheLayout(Layers: 2, KvHeads: 2, HeadDim: 3, BlockSize: 4, BlockCount: 6, element);
        var caches = twin.Cache(layout);
        var table = twin.Ints(1, 4, [5, 2, 0, 3]);
        const int heads = 4, tokens = 6;
        int qkvWidth = (heads + 2 * layout.KvHeads) * layout.HeadDim + 2;
        for (int layer = 0; layer < layout.Layers; layer++)
        {
            var qkv = twin.RandomTensor(tokens, qkvWidth);
            Accelerators.Host.KvWrite(caches.Host, layer, qkv.Host, heads, table.Host, startPosition: 3);
            Device.KvWrite(caches.Device, layer, qkv.Device, heads, table.Device, startPosition: 3);
        }
        Twin.AssertCachesClose(caches, Tolerance.Exact, $"KvWrite {element}");
    }

    /// <summary>
    /// RoPE and the KV write fused (one kernel on the device) against the host's Rope then KvWrite: rotated query and key
    /// heads in the qkv rows, rotated keys and the values in the cache, through a scrambled block table from mid-block, with
    /// RoPE positions that differ from the cache positions (as in tree verification) and grouped-query heads. With binary16
    /// elements the rotated keys (float32 rotations that differ by ~1e-7) may round to neighbouring halves: one binary16
    /// step, 2^-10 relative.
    /// </summary>
    [Theory]
    [InlineData(2, DType.F32)]
    [InlineData(6, DType.F32)]
    [InlineData(34, DType.F32)]
    [InlineData(6, DType.F16)]
    [InlineData(34, DType.F16)]
    public void RopeKvWrite_matches_host(int headDim, DType element)
    {
        using var twin = NewTwin(32);
        var layout = new KvCacheLayout(Layers: 2, KvHeads: 2, HeadDim: headDim, BlockSize: 4, BlockCount: 6, element);
        var caches = twin.Cache(layout);
        var table = twin.Ints(1, 4, [5, 2, 0, 3]);
        const int heads = 4, tokens = 5;
        int qkvWidth = (heads + 2 * layout.KvHeads) * headDim + 3;
        var positions = twin.Ints(tokens, 1, [3, 4, 4, 5, 2050]);
        for (int layer = 0; layer < layout.Layers; layer++)
        {
            var qkv = twin.RandomTensor(tokens, qkvWidth, 2f);
            ((IComputeBackend)Accelerators.Host).RopeKvWrite(qkv.Host, positions.Host, heads, headDim, 10000f, caches.Host, layer, table.Host, startPosition: 3);
            Device.RopeKvWrite(qkv.Device, positions.Device, heads, headDim, 10000f, caches.Device, layer, table.Device, startPosition: 3);
            Twin.AssertClose(qkv, new Tolerance(2e-6, 1e-5), $"RopeKvWrite Dh={headDim} qkv rows, layer {layer}");
        }
        Twin.AssertCachesClose(caches, element == DType.F16 ? new Tolerance(2e-6, 1e-3) : new Tolerance(2e-6, 1e-5), $"RopeKvWrite Dh={headDim} {element}");
    }

    /// <summary>Causal prefill from an empty cache, grouped-query heads.</summary>
    [Fact]
    public void Attention_causal_prefill_matches_host()
    {
        foreach (int dh in Sizes.HeadDims)
            CheckAttention(committed: 0, tokens: 5, heads: 4, kvHeads: 2, headDim: dh, blockSize: 4, table: [3, 0, 1], mask: null, seed: 10);
    }

    /// <summary>One new token over a committed prefix spanning several blocks of a scrambled table.</summary>
    [Fact]
    public void Attention_decode_over_scrambled_blocks_matches_host()
    {
        foreach (int dh in Sizes.HeadDims)
            CheckAttention(committed: 37, tokens: 1, heads: 2, kvHeads: 1, headDim: dh, blockSize: 8, table: [4, 1, 7, 0, 2], mask: null, seed: 11);
    }

    /// <summary>Tree verification: a hand-made tree mask over a committed prefix.</summary>
    [Fact]
    public void Attention_tree_mask_matches_host()
    {
        // Tree: 0 is the root; 1 and 2 are its children; 3 is a child of 1; 4 a child of 3. Each node sees its ancestors and itself.
        int[] mask =
        [
            1, 0, 0, 0, 0,
            1, 1, 0, 0, 0,
            1, 0, 1, 0, 0,
            1, 1, 0, 1, 0,
            1, 1, 0, 1, 1,
        ];
        foreach (int dh in Sizes.HeadDims)
            CheckAttention(committed: 9, tokens: 5, heads: 2, kvHeads: 2, headDim: dh, blockSize: 4, table: [2, 5, 0, 4], mask: mask, seed: 12);
    }

    /// <summary>
    /// More tokens than one group of the block kernel takes (8): a 21-node tree (random parents: each node sees its
    /// ancestors and itself) and a causal prefill of 19 tokens, both with a ragged last block, unsplit and split.
    /// </summary>
    [Fact]
    public void Attention_many_tokens_match_host()
    {
        const int nodes = 21;
        var random = new Random(31);
        var parent = new int[nodes];
        var mask = new int[nodes * nodes];
        for (int i = 0; i < nodes; i++)
        {
            parent[i] = i == 0 ? -1 : random.Next(i);
            for (int a = i; a >= 0; a = parent[a]) mask[i * nodes + a] = 1;
        }
        int s = 23;
        int blocks = (s + nodes + 3) / 4;
        var table = Enumerable.Range(0, blocks).Select(i => (i * 5 + 2) % blocks).ToArray();
        Assert.Equal(blocks, table.Distinct().Count());
        foreach (int? splits in new int?[] { 1, 3, null })
        {
            CheckAttention(committed: s, tokens: nodes, heads: 4, kvHeads: 2, headDim: Sizes.HeadDims[^1], blockSize: 4, table: table, mask: mask, seed: 32, splits: splits);
            CheckAttention(committed: 0, tokens: 19, heads: 2, kvHeads: 1, headDim: Sizes.HeadDims[0], blockSize: 4, table: table, mask: null, seed: 33, splits: splits);
        }
    }

    /// <summary>
    /// The portable kernels, the defaults on OpenCL, on every device: decoding with one group per (head, split) and T ≥ 2
    /// in blocks of 8 tokens (ILGPU_MEDUSA_DECODE_ATTENTION=per-token, ILGPU_MEDUSA_TREE_ATTENTION=blocks), where CUDA and
    /// the emulator default to the warp and tile kernels: decoding with splits and the one-node mask, a 21-node tree with
    /// GQA, a causal prefill.
    /// </summary>
    [Fact]
    public void Attention_per_token_decode_and_block_trees_match_host()
    {
        using var launcher = new AttentionLauncher(Device.Accelerator, Device.GroupSize, blocks: 2, warpDecode: false, tiles: false);
        Assert.False(launcher.UsesWarpDecode(1));
        Assert.False(launcher.UsesTiles(21, Sizes.HeadDims[0]));
        Assert.False(launcher.UsesBlocks(1));
        Assert.Equal(Device.GroupSize >= 2 * AttentionKernel.BlockTokens, launcher.UsesBlocks(21));
        const int nodes = 21;
        var mask = RandomTreeMask(nodes, seed: 51);
        int[] table = [.. Enumerable.Range(0, 12).Select(i => (i * 5 + 3) % 12)];
        foreach (int? splits in new int?[] { 1, 3, null })
        {
            CheckAttention(committed: 37, tokens: 1, heads: 4, kvHeads: 2, headDim: Sizes.HeadDims[^1], blockSize: 8, table: table, mask: null, seed: 52, splits: splits, launcher: launcher);
            CheckAttention(committed: 22, tokens: 1, heads: 2, kvHeads: 1, headDim: Sizes.HeadDims[0], blockSize: 8, table: table, mask: [1], seed: 53, splits: splits, launcher: launcher);
            CheckAttention(committed: 23, tokens: nodes, heads: 4, kvHeads: 2, headDim: Sizes.HeadDims[0], blockSize: 8, table: table, mask: mask, seed: 54, splits: splits, launcher: launcher);
            CheckAttention(committed: 0, tokens: 19, heads: 2, kvHeads: 1, headDim: Sizes.HeadDims[^1], blockSize: 8, table: table, mask: null, seed: 55, splits: splits, launcher: launcher);
        }
    }

    /// <summary>
    /// Decoding (T = 1) through the block kernel (ILGPU_MEDUSA_DECODE_ATTENTION=blocks): seven of the block's eight tokens
    /// are absent; unsplit, split and with the launcher's own choice.
    /// </summary>
    [Fact]
    public void Attention_decode_in_blocks_matches_host()
    {
        using var launcher = new AttentionLauncher(Device.Accelerator, Device.GroupSize, blocks: 1, warpDecode: false, tiles: false);
        Assert.Equal(Device.GroupSize >= 2 * AttentionKernel.BlockTokens, launcher.UsesBlocks(1));
        foreach (int? splits in new int?[] { 1, 4, null })
            foreach (int dh in Sizes.HeadDims)
                CheckAttention(committed: 37, tokens: 1, heads: 2, kvHeads: 1, headDim: dh, blockSize: 8, table: [4, 1, 7, 0, 2], mask: null, seed: 34, splits: splits, launcher: launcher);
    }

    /// <summary>
    /// Decoding (T = 1) through the one-warp kernel (the default where warp shuffles run): loaded there (CUDA,
    /// the emulator; elsewhere the launcher keeps the other kernels, still checked); unsplit, split, automatic; with the
    /// one-node tree mask too; head dimensions below, at and above one warp's width.
    /// </summary>
    [Fact]
    public void Attention_decode_in_warps_matches_host()
    {
        using var launcher = new AttentionLauncher(Device.Accelerator, Device.GroupSize, warpDecode: true);
        bool warps = Device.Accelerator.AcceleratorType is ILGPU.Runtime.AcceleratorType.Cuda or ILGPU.Runtime.AcceleratorType.CPU;
        Assert.Equal(warps, launcher.UsesWarpDecode(1));
        Assert.False(launcher.UsesWarpDecode(2));
        foreach (int? splits in new int?[] { 1, 3, null })
        {
            foreach (int dh in Sizes.HeadDims)
                CheckAttention(committed: 37, tokens: 1, heads: 4, kvHeads: 2, headDim: dh, blockSize: 8, table: [4, 1, 7, 0, 2], mask: null, seed: 35, splits: splits, launcher: launcher);
            CheckAttention(committed: 22, tokens: 1, heads: 2, kvHeads: 1, headDim: Sizes.HeadDims[^1], blockSize: 8, table: [2, 0, 1], mask: [1], seed: 36, splits: splits, launcher: launcher);
        }
    }

    /// <summary>
    /// T ≥ 2 through the tile kernel (the default where warp shuffles run), with tiles of 8, 16 and 32 query rows (groups
    /// of 64, 128 and 256 threads; the emulator runs groups of up to 256 threads): a 21-node tree (random parents) whose 4 query heads share 2
    /// key/value heads (42 rows per key/value head, the last tile ragged), one without GQA, a causal prefill of 19
    /// tokens, and 2 tokens whose 3 query heads share one key/value head (a tile's rows cross tokens) after 70 committed
    /// keys (three chunks of 32, the last one partial); unsplit, split, automatic; head dimensions up to the kernel's
    /// 128 (and one above, which keeps the block kernel). Loaded where warp shuffles run (CUDA, the emulator); elsewhere
    /// the launcher keeps the block kernel, still checked.
    /// </summary>
    [Theory]
    [InlineData(64)]
    [InlineData(128)]
    [InlineData(256)]
    public void Attention_in_tiles_matches_host(int tileGroupSize)
    {
        bool capable = Device.Accelerator.AcceleratorType is ILGPU.Runtime.AcceleratorType.Cuda or ILGPU.Runtime.AcceleratorType.CPU
            && Device.Accelerator.WarpSize == 32 && tileGroupSize <= Device.Accelerator.MaxNumThreadsPerGroup;
        using var launcher = new AttentionLauncher(Device.Accelerator, Device.GroupSize, tiles: capable, tileGroupSize: tileGroupSize);
        Assert.Equal(capable, launcher.UsesTiles(2, 8));
        Assert.Equal(capable, launcher.UsesTiles(64, AttentionKernel.TileMaxHeadDim));
        Assert.False(launcher.UsesTiles(1, 8));
        Assert.False(launcher.UsesTiles(2, AttentionKernel.TileMaxHeadDim + 1));
        const int nodes = 21;
        var mask = RandomTreeMask(nodes, seed: 41);
        const int blockSize = 8;
        int blocks = (70 + nodes + blockSize - 1) / blockSize;
        var table = Enumerable.Range(0, blocks).Select(i => (i * 5 + 3) % blocks).ToArray();
        Assert.Equal(blocks, table.Distinct().Count());
        int[] headDims = [.. Sizes.HeadDims.Append(120).Append(AttentionKernel.TileMaxHeadDim).Append(AttentionKernel.TileMaxHeadDim + 2).Distinct()];
        foreach (int? splits in new int?[] { 1, 3, null })
        {
            foreach (int dh in headDims)
                CheckAttention(committed: 23, tokens: nodes, heads: 4, kvHeads: 2, headDim: dh, blockSize: blockSize, table: table, mask: mask, seed: 42, splits: splits, launcher: launcher);
            CheckAttention(committed: 23, tokens: nodes, heads: 2, kvHeads: 2, headDim: Sizes.HeadDims[0], blockSize: blockSize, table: table, mask: mask, seed: 43, splits: splits, launcher: launcher);
            CheckAttention(committed: 0, tokens: 19, heads: 2, kvHeads: 1, headDim: Sizes.HeadDims[^1], blockSize: blockSize, table: table, mask: null, seed: 44, splits: splits, launcher: launcher);
            CheckAttention(committed: 70, tokens: 2, heads: 3, kvHeads: 1, headDim: Sizes.HeadDims[0], blockSize: blockSize, table: table, mask: null, seed: 45, splits: splits, launcher: launcher);
        }
    }

    /// <summary>A long committed prefix: many key chunks of the online softmax.</summary>
    [Fact]
    public void Attention_long_context_matches_host()
    {
        int s = Sizes.LongContext;
        const int blockSize = 16;
        int blocks = (s + 2 + blockSize - 1) / blockSize;
        var table = Enumerable.Range(0, blocks).Select(i => (i * 7 + 3) % blocks).ToArray(); // a permutation (7 is coprime with blocks below)
        Assert.Equal(blocks, table.Distinct().Count());
        CheckAttention(committed: s, tokens: 2, heads: 2, kvHeads: 1, headDim: Sizes.HeadDims[^1], blockSize: blockSize, table: table, mask: null, seed: 13);
    }

    /// <summary>Key splits (flash-decoding) merged by the combine kernel, including splits left empty, causal and tree mask.</summary>
    [Theory]
    [InlineData(2)]
    [InlineData(5)]
    [InlineData(64)]
    public void Attention_with_key_splits_matches_host(int splits)
    {
        int s = Sizes.LongContext;
        int blocks = (s + 5 + 15) / 16;
        var table = Enumerable.Range(0, blocks).Reverse().ToArray();
        CheckAttention(committed: s, tokens: 1, heads: 2, kvHeads: 1, headDim: Sizes.HeadDims[0], blockSize: 16, table: table, mask: null, seed: 21, splits: splits);
        int[] mask =
        [
            1, 0, 0,
            1, 1, 0,
            1, 0, 1,
        ];
        CheckAttention(committed: s, tokens: 3, heads: 2, kvHeads: 2, headDim: Sizes.HeadDims[^1], blockSize: 16, table: table, mask: mask, seed: 22, splits: Math.Min(splits, 8));
    }

    /// <summary>
    /// A binary16 KV cache (--kv-dtype f16) through every attention kernel the device loads: the launcher's defaults
    /// (on CUDA and the emulator the warp and tile kernels, decoding with ILGPU's Half conversion; on OpenCL the per-token
    /// and block kernels, decoding bit by bit) and the per-token and block kernels explicitly; decoding with splits, the
    /// one-node mask, a 21-node tree with GQA, a causal prefill. Both sides round each key and value to the same half
    /// when it is written and compute in float32, so the tolerance is float32's.
    /// </summary>
    [Fact]
    public void Attention_over_a_half_cache_matches_host()
    {
        using var portable = new AttentionLauncher(Device.Accelerator, Device.GroupSize, blocks: 2, warpDecode: false, tiles: false);
        const int nodes = 21;
        var mask = RandomTreeMask(nodes, seed: 61);
        int[] table = [.. Enumerable.Range(0, 12).Select(i => (i * 5 + 3) % 12)];
        foreach (var launcher in new AttentionLauncher?[] { null, portable })
        {
            foreach (int? splits in new int?[] { 1, null })
            {
                CheckAttention(committed: 37, tokens: 1, heads: 4, kvHeads: 2, headDim: Sizes.HeadDims[^1], blockSize: 8, table: table, mask: null, seed: 62, splits: splits, launcher: launcher, element: DType.F16);
                CheckAttention(committed: 22, tokens: 1, heads: 2, kvHeads: 1, headDim: Sizes.HeadDims[0], blockSize: 8, table: table, mask: [1], seed: 63, splits: splits, launcher: launcher, element: DType.F16);
                CheckAttention(committed: 23, tokens: nodes, heads: 4, kvHeads: 2, headDim: Sizes.HeadDims[0], blockSize: 8, table: table, mask: mask, seed: 64, splits: splits, launcher: launcher, element: DType.F16);
                CheckAttention(committed: 0, tokens: 19, heads: 2, kvHeads: 1, headDim: Sizes.HeadDims[^1], blockSize: 8, table: table, mask: null, seed: 65, splits: splits, launcher: launcher, element: DType.F16);
            }
        }
    }

    /// <summary>The [T, T] attention mask of a random tree of T nodes (node i's parent drawn from 0 .. i − 1): its ancestors and itself.</summary>
    private static int[] RandomTreeMask(int nodes, int seed)
    {
        var random = new Random(seed);
        var mask = new int[nodes * nodes];
        var parent = new int[nodes];
        for (int i = 0; i < nodes; i++)
        {
            parent[i] = i == 0 ? -1 : random.Next(i);
            for (int a = i; a >= 0; a = parent[a]) mask[i * nodes + a] = 1;
        }
        return mask;
    }

    private void CheckAttention(int committed, int tokens, int heads, int kvHeads, int headDim, int blockSize, int[] table, int[]? mask, int seed, int? splits = null,
        AttentionLauncher? launcher = null, DType element = DType.F32)
    {
        using var twin = NewTwin(seed);
        var layout = new KvCacheLayout(Layers: 2, KvHeads: kvHeads, HeadDim: headDim, BlockSize: blockSize, BlockCount: table.Max() + 1, element);
        var caches = twin.Cache(layout);
        var blockTable = twin.Ints(1, table.Length, table);
        int width = (heads + 2 * kvHeads) * headDim;
        const int layer = 1;
        if (committed > 0)
        {
            var prefix = twin.RandomTensor(committed, width);
            Accelerators.Host.KvWrite(caches.Host, layer, prefix.Host, heads, blockTable.Host, 0);
            Device.KvWrite(caches.Device, layer, prefix.Device, heads, blockTable.Device, 0);
        }
        var qkv = twin.RandomTensor(tokens, width, 2f);
        Accelerators.Host.KvWrite(caches.Host, layer, qkv.Host, heads, blockTable.Host, committed);
        Device.KvWrite(caches.Device, layer, qkv.Device, heads, blockTable.Device, committed);
        var maskPair = mask is null ? (TensorPair?)null : twin.Ints(tokens, tokens, mask);
        var output = twin.Zeros(DType.F32, tokens, heads * headDim);
        Accelerators.Host.Attention(output.Host, qkv.Host, caches.Host, layer, blockTable.Host, committed, maskPair?.Host);
        Device.Attention(output.Device, qkv.Device, caches.Device, layer, blockTable.Device, committed, maskPair?.Device, splits, launcher);
        // The output is a softmax-weighted average of values ≤ 1: its error follows the scores' (sums of Dh terms), not S.
        Twin.AssertClose(output, Tolerance.ForSum(DType.F32, headDim),
            $"Attention S={committed} T={tokens} H={heads} Hkv={kvHeads} Dh={headDim} B={blockSize} mask={(mask is null ? "causal" : "tree")} splits={splits?.ToString() ?? "auto"} kv {element}");
    }

    /// <summary>SwiGLU over awkward widths.</summary>
    [Fact]
    public void SwiGlu_matches_host()
    {
        using var twin = NewTwin(14);
        foreach (int f in Sizes.Widths)
        {
            var gateUp = twin.RandomTensor(3, 2 * f, 6f);
            var output = twin.Zeros(DType.F32, 3, f);
            Accelerators.Host.SwiGlu(output.Host, gateUp.Host);
            Device.SwiGlu(output.Device, gateUp.Device);
            Twin.AssertClose(output, Tolerance.Transcendental, $"SwiGlu F={f}");
        }
    }

    /// <summary>Medusa ResBlock residual, into a new tensor and in place.</summary>
    [Fact]
    public void SiluResidual_matches_host()
    {
        using var twin = NewTwin(21);
        foreach (int d in Sizes.Widths)
        {
            var input = twin.RandomTensor(3, d, 2f);
            var linear = twin.RandomTensor(3, d, 6f);
            var bias = twin.RandomTensor(1, d);
            var output = twin.Zeros(DType.F32, 3, d);
            Accelerators.Host.SiluResidual(output.Host, input.Host, linear.Host, bias.Host);
            Device.SiluResidual(output.Device, input.Device, linear.Device, bias.Device);
            Twin.AssertClose(output, Tolerance.Transcendental, $"SiluResidual D={d}");
            Accelerators.Host.SiluResidual(input.Host, input.Host, linear.Host, bias.Host);
            Device.SiluResidual(input.Device, input.Device, linear.Device, bias.Device);
            Twin.AssertClose(input, Tolerance.Transcendental, $"SiluResidual in place D={d}");
        }
    }

    /// <summary>
    /// A bias row per output row in SiluResidual and a one-row b added to every row in Add (several Medusa heads at
    /// once), each against the established one-row ops applied row by row on the host.
    /// </summary>
    [Fact]
    public void SiluResidual_per_row_bias_and_Add_broadcast_match_host_row_by_row()
    {
        using var twin = NewTwin(34);
        const int rows = 4;
        foreach (int d in Sizes.Widths)
        {
            var input = twin.RandomTensor(rows, d, 2f);
            var linear = twin.RandomTensor(rows, d, 6f);
            var bias = twin.RandomTensor(rows, d);
            var output = twin.Zeros(DType.F32, rows, d);
            for (int r = 0; r < rows; r++)
                Accelerators.Host.SiluResidual(output.Host.Slice(r, 1), input.Host.Slice(r, 1), linear.Host.Slice(r, 1), bias.Host.Slice(r, 1));
            Device.SiluResidual(output.Device, input.Device, linear.Device, bias.Device);
            Twin.AssertClose(output, Tolerance.Transcendental, $"SiluResidual with a bias per row, D={d}");
            var hostAtOnce = twin.Zeros(DType.F32, rows, d);
            Accelerators.Host.SiluResidual(hostAtOnce.Host, input.Host, linear.Host, bias.Host);
            Twin.AssertClose(Twin.Read(output.Host), Twin.Read(hostAtOnce.Host), Tolerance.Exact, $"host SiluResidual with a bias per row, D={d}");

            var row = twin.RandomTensor(1, d);
            var sum = twin.Zeros(DType.F32, rows, d);
            for (int r = 0; r < rows; r++) Accelerators.Host.Add(sum.Host.Slice(r, 1), input.Host.Slice(r, 1), row.Host);
            Device.Add(sum.Device, input.Device, row.Device);
            Twin.AssertClose(sum, Tolerance.Exact, $"Add of one row to {rows} rows, D={d}");
            Accelerators.Host.Add(hostAtOnce.Host, input.Host, row.Host);
            Twin.AssertClose(Twin.Read(sum.Host), Twin.Read(hostAtOnce.Host), Tolerance.Exact, $"host Add of one row to {rows} rows, D={d}");
        }
    }

    /// <summary>
    /// The grouped GEMV (several matrices stacked into one weight, one launch) against one host matmul per matrix, with an
    /// input row per group and with one shared row; a group size that is not a multiple of 4 is refused.
    /// </summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    [InlineData(DType.BF16)]
    public void GroupedMatMul_matches_one_matmul_per_group(DType type)
    {
        using var twin = NewTwin(35);
        const int groups = 3;
        foreach (var (n, k) in new[] { (4, 31), (32, 33), (36, 257) })
        {
            var values = Enumerable.Range(0, groups).Select(_ => twin.RandomFloats(n * k)).ToArray();
            var perGroup = values.Select(v => twin.Weight(type, n, k, v)).ToArray();
            var stacked = twin.Weight(type, groups * n, k, values.SelectMany(v => v).ToArray());
            Assert.True(((IComputeBackend)Device).CanGroupMatMul(n));
            foreach (bool shared in new[] { false, true })
            {
                var input = twin.RandomTensor(shared ? 1 : groups, k);
                var output = twin.Zeros(DType.F32, groups, n);
                for (int g = 0; g < groups; g++)
                    Accelerators.Host.MatMul(output.Host.Slice(g, 1), input.Host.Slice(shared ? 0 : g, 1), perGroup[g].Host, accumulate: false);
                ((IComputeBackend)Device).GroupedMatMul(output.Device, input.Device, stacked.Device);
                Twin.AssertClose(output, Tolerance.ForSum(type, k), $"GroupedMatMul {type} {groups} x [{n}, {k}] {(shared ? "shared input" : "input per group")}");
            }
        }
        Assert.False(((IComputeBackend)Device).CanGroupMatMul(6));
        var odd = twin.Weight(type, 2 * 6, 8, twin.RandomFloats(2 * 6 * 8));
        var x = twin.RandomTensor(2, 8);
        var y = twin.Zeros(DType.F32, 2, 6);
        var e = Assert.Throws<ArgumentException>(() => ((IComputeBackend)Device).GroupedMatMul(y.Device, x.Device, odd.Device));
        Assert.Contains("multiple of 4", e.Message);
        Assert.False(((IComputeBackend)Accelerators.Host).CanGroupMatMul(8));
    }

    /// <summary>Elementwise add, in place and not.</summary>
    [Fact]
    public void Add_matches_host()
    {
        using var twin = NewTwin(15);
        foreach (int d in Sizes.Widths)
        {
            var a = twin.RandomTensor(3, d);
            var b = twin.RandomTensor(3, d);
            var output = twin.Zeros(DType.F32, 3, d);
            Accelerators.Host.Add(output.Host, a.Host, b.Host);
            Device.Add(output.Device, a.Device, b.Device);
            Twin.AssertClose(output, Tolerance.Exact, $"Add D={d}");
            Accelerators.Host.Add(a.Host, a.Host, b.Host);
            Device.Add(a.Device, a.Device, b.Device);
            Twin.AssertClose(a, Tolerance.Exact, $"Add in place D={d}");
        }
    }

    /// <summary>Argmax with the maximum planted twice: the lower index wins.</summary>
    [Fact]
    public void ArgMax_matches_host_lowest_index_on_ties()
    {
        using var twin = NewTwin(16);
        foreach (int v in Sizes.Widths.Append(Sizes.Vocabulary))
        {
            var data = twin.RandomFloats(3 * v, 4f);
            if (v > 2)
            {
                data[0 * v + v - 1] = 9f; // row 0: tie between the last and a middle index
                data[0 * v + v / 2] = 9f;
                data[1 * v + 1] = 9f;     // row 1: tie between index 1 and the last
                data[1 * v + v - 1] = 9f;
            }
            var logits = twin.Floats(3, v, data);
            var output = twin.Zeros(DType.I32, 3, 1);
            Accelerators.Host.ArgMax(output.Host, logits.Host);
            Device.ArgMax(output.Device, logits.Device);
            Twin.AssertSame(output, $"ArgMax V={v}");
        }
    }

    /// <summary>Top-k for several k, with tied values: sorted descending, ties lower index first.</summary>
    [Fact]
    public void TopK_matches_host_with_ties()
    {
        using var twin = NewTwin(17);
        foreach (int v in Sizes.Widths.Append(Sizes.Vocabulary))
        {
            foreach (int k in TopKs.Where(k => k <= v))
            {
                // Values on a coarse grid so that ties are common.
                var data = twin.RandomFloats(3 * v, 8f).Select(x => MathF.Round(x)).ToArray();
                var logits = twin.Floats(3, v, data);
                var indices = twin.Zeros(DType.I32, 3, k);
                var values = twin.Zeros(DType.F32, 3, k);
                Accelerators.Host.TopK(indices.Host, values.Host, logits.Host);
                Device.TopK(indices.Device, values.Device, logits.Device);
                Twin.AssertSame(indices, $"TopK indices V={v} k={k}");
                Twin.AssertClose(values, Tolerance.Exact, $"TopK values V={v} k={k}");
            }
        }
    }

    /// <summary>Softmax statistics (max, log-sum-exp, entropy).</summary>
    [Fact]
    public void SoftmaxStats_matches_host()
    {
        using var twin = NewTwin(18);
        foreach (int v in Sizes.Widths.Append(Sizes.Vocabulary))
        {
            var logits = twin.RandomTensor(3, v, 6f);
            var output = twin.Zeros(DType.F32, 3, 3);
            Accelerators.Host.SoftmaxStats(output.Host, logits.Host);
            Device.SoftmaxStats(output.Device, logits.Device);
            // Host sums in float64; the kernel in float32 over V terms of at most 1.
            Twin.AssertClose(output, new Tolerance(1e-5 + 1e-7 * v, 1e-5), $"SoftmaxStats V={v}");
        }
    }

    /// <summary>
    /// Int uploads of up to <see cref="SmallInts.Capacity"/> values are written by a launch (<see cref="SmallWriteKernel"/>)
    /// and must land exactly, each value at its own index (every value distinct, extremes included), without touching the
    /// rows after them and without the host waiting; longer ones are copies (one wait each).
    /// </summary>
    [Fact]
    public void Small_int_uploads_land_exactly_without_a_wait()
    {
        foreach (int n in new[] { 1, 2, 9, 16, 17, 31, 32, 33, 70 })
        {
            using var tensor = Device.Allocate(DType.I32, n + 3, 1);
            var before = Enumerable.Repeat(-7, n + 3).ToArray();
            Device.Upload(tensor, before);
            var values = Enumerable.Range(0, n).Select(i => i switch
            {
                0 => int.MinValue,
                1 => int.MaxValue,
                _ => (i * 7919) ^ (i << 20),
            }).ToArray();
            long waits = Device.HostWaits;
            Device.Upload(tensor.Slice(0, n), values);
            Assert.Equal(n <= SmallInts.Capacity && Device.LaunchedUploads ? waits : waits + 1, Device.HostWaits);
            var read = new int[n + 3];
            Device.Download(tensor, read);
            Assert.Equal(values, read[..n]);
            Assert.Equal([-7, -7, -7], read[n..]);
        }
        Assert.Throws<ArgumentException>(() => new SmallInts(new int[SmallInts.Capacity + 1]));
    }

    /// <summary>
    /// GatherInts picks elements of a top-k table by flat index, through a shortlist map or not (a Medusa tree's tokens
    /// from the heads' guesses), as the host does, and queues without a wait; indices outside the source are refused.
    /// </summary>
    [Fact]
    public void GatherInts_matches_host()
    {
        const int Rows = 4, K = 10, MapLength = 50;
        var top = Enumerable.Range(0, Rows * K).Select(i => (i * 37 + 11) % MapLength).ToArray();
        var map = Enumerable.Range(0, MapLength).Select(i => 31999 - 7 * i).ToArray();
        int[] indices = [0, 1, 9, 10, 19, 25, 39, 3, 3];
        foreach (var backend in new IComputeBackend[] { Accelerators.Host, Device })
        {
            using var source = backend.Allocate(DType.I32, Rows, K);
            using var mapTensor = backend.Allocate(DType.I32, MapLength, 1);
            using var output = backend.Allocate(DType.I32, indices.Length + 2, 1);
            backend.Upload(source, top);
            backend.Upload(mapTensor, map);
            backend.Upload(output, Enumerable.Repeat(-5, indices.Length + 2).ToArray());
            var read = new int[indices.Length + 2];

            long waits = Device.HostWaits;
            backend.GatherInts(output.Slice(1, indices.Length), source, indices, mapTensor);
            if (ReferenceEquals(backend, Device)) Assert.Equal(waits, Device.HostWaits);
            backend.Download(output, read);
            Assert.Equal([-5, .. indices.Select(i => map[top[i]]), -5], read);

            backend.GatherInts(output.Slice(1, indices.Length), source, indices, map: null);
            backend.Download(output, read);
            Assert.Equal([-5, .. indices.Select(i => top[i]), -5], read);

            Assert.Throws<ArgumentException>(() => backend.GatherInts(output.Slice(0, 1), source, [Rows * K], null));
        }
    }

    /// <summary>KV compaction along an overlapping path, [S+0, S+2, S+5] → S..S+2, and a longer one across blocks.</summary>
    [Theory]
    [InlineData(new[] { 0, 2, 5 }, DType.F32)]
    [InlineData(new[] { 1, 3, 4, 8, 9 }, DType.F32)]
    [InlineData(new[] { 1, 3, 4, 8, 9 }, DType.F16)]
    public void KvCompact_matches_host(int[] offsets, DType element)
    {
        using var twin = NewTwin(19);
        var layout = new KvCacheLayout(Layers: 3, KvHeads: 2, HeadDim: 5, BlockSize: 4, BlockCount: 5, element);
        var caches = twin.Cache(layout);
        var table = twin.Ints(1, 5, [3, 0, 4, 1, 2]);
        const int heads = 2, committed = 6, tree = 11;
        int width = (heads + 2 * layout.KvHeads) * layout.HeadDim;
        for (int layer = 0; layer < layout.Layers; layer++)
        {
            var qkv = twin.RandomTensor(committed + tree, width);
            Accelerators.Host.KvWrite(caches.Host, layer, qkv.Host, heads, table.Host, 0);
            Device.KvWrite(caches.Device, layer, qkv.Device, heads, table.Device, 0);
        }
        var sources = twin.Ints(offsets.Length, 1, offsets.Select(o => committed + o).ToArray());
        Accelerators.Host.KvCompact(caches.Host, table.Host, sources.Host, committed);
        Device.KvCompact(caches.Device, table.Device, sources.Device, committed);
        Twin.AssertCachesClose(caches, Tolerance.Exact, $"KvCompact [{string.Join(", ", offsets)}] {element}");
    }

    /// <summary>
    /// Edge values into a binary16 cache, through the KV write and the fused RoPE + KV write (whose values are stored
    /// unrotated): ties to even among normals and subnormals, the smallest subnormal and half of it, the largest half,
    /// values that round past it (saturated to ±65504, infinities too), ±0, tiny values that round to ±0, NaN. The device
    /// stores the host's bits (NaN: a NaN).
    /// </summary>
    [Fact]
    public void Half_cache_stores_the_hosts_bits_for_edge_values()
    {
        float[] edges =
        [
            1f + MathF.ScaleB(1, -11), 1f + 3 * MathF.ScaleB(1, -11), -2.5f, 65504f, 65519.996f, 65520f, -65520f, 1e6f, -1e6f,
            float.PositiveInfinity, float.NegativeInfinity, MathF.ScaleB(1, -24), MathF.ScaleB(1, -25), MathF.ScaleB(3, -25),
            MathF.ScaleB(5, -25), MathF.ScaleB(2047, -25), -MathF.ScaleB(1023, -24), 1e-8f, -1e-8f, 0f, -0f, 0.1f, float.NaN, 3.14159f,
        ];
        using var twin = NewTwin(72);
        var layout = new KvCacheLayout(Layers: 2, KvHeads: 2, HeadDim: 6, BlockSize: 4, BlockCount: 3, DType.F16);
        var caches = twin.Cache(layout);
        var table = twin.Ints(1, 3, [2, 0, 1]);
        const int heads = 2, tokens = 3;
        int width = (heads + 2 * layout.KvHeads) * layout.HeadDim;
        var data = new float[tokens * width];
        for (int i = 0; i < data.Length; i++) data[i] = edges[i % edges.Length];
        var qkv = twin.Floats(tokens, width, data);
        Accelerators.Host.KvWrite(caches.Host, 0, qkv.Host, heads, table.Host, 1);
        Device.KvWrite(caches.Device, 0, qkv.Device, heads, table.Device, 1);
        var positions = twin.Ints(tokens, 1, [0, 0, 0]); // position 0: the rotation is the identity, keys stay as given
        ((IComputeBackend)Accelerators.Host).RopeKvWrite(qkv.Host, positions.Host, heads, layout.HeadDim, 10000f, caches.Host, 1, table.Host, 5);
        Device.RopeKvWrite(qkv.Device, positions.Device, heads, layout.HeadDim, 10000f, caches.Device, 1, table.Device, 5);
        var h = new float[layout.KvDim];
        var d = new float[layout.KvDim];
        int nonzero = 0;
        for (int layer = 0; layer < 2; layer++)
            for (int part = 0; part < 2; part++)
                for (int slot = 0; slot < layout.SlotCount; slot++)
                {
                    caches.Host.ReadSlot(layer, part, slot, h);
                    caches.Device.ReadSlot(layer, part, slot, d);
                    for (int e = 0; e < h.Length; e++)
                    {
                        Assert.False(float.IsInfinity(h[e]), $"host stored {h[e]}: a half cache saturates at ±65504");
                        bool same = float.IsNaN(h[e]) ? float.IsNaN(d[e]) : BitConverter.SingleToUInt32Bits(h[e]) == BitConverter.SingleToUInt32Bits(d[e]);
                        Assert.True(same, $"layer {layer} {(part == 0 ? "keys" : "values")} slot {slot} element {e}: host {h[e]}, device {d[e]}");
                        if (h[e] != 0f) nonzero++;
                    }
                }
        Assert.True(nonzero > 2 * tokens * layout.KvDim, $"only {nonzero} elements written");
    }

    /// <summary>
    /// Another sequence's keys and values never reach a sequence's attention: one sequence's block 0 holds ±∞ and NaN
    /// (a float32 cache keeps them; a half cache saturates the infinities, keeps the NaNs), another decodes and verifies
    /// a 3-node tree over blocks 1 and 2, through the launcher's default kernels (the emulator: warp and tiles) and the
    /// portable ones (per-token and blocks), unsplit and split. Kernels let keys that take no part read some row with
    /// weight 0 and 0 · ∞ or 0 · NaN is NaN, so that row must be one of the sequence's own; the outputs equal the host's,
    /// which reads only the sequence's own keys.
    /// </summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    public void Another_sequences_infinities_and_NaNs_do_not_reach_attention(DType element)
    {
        using var twin = NewTwin(73);
        using var portable = new AttentionLauncher(Device.Accelerator, Device.GroupSize, blocks: 2, warpDecode: false, tiles: false);
        var layout = new KvCacheLayout(Layers: 1, KvHeads: 1, HeadDim: 8, BlockSize: 4, BlockCount: 3, element);
        var caches = twin.Cache(layout);
        const int heads = 2;
        int width = (heads + 2) * layout.HeadDim;
        var poison = new float[4 * width];
        for (int i = 0; i < poison.Length; i++) poison[i] = (i % 3) switch { 0 => float.PositiveInfinity, 1 => float.NaN, _ => float.NegativeInfinity };
        var bad = twin.Floats(4, width, poison);
        var first = twin.Ints(1, 1, [0]);
        Accelerators.Host.KvWrite(caches.Host, 0, bad.Host, heads, first.Host, 0);
        Device.KvWrite(caches.Device, 0, bad.Device, heads, first.Device, 0);
        var second = twin.Ints(1, 2, [1, 2]);
        var prefix = twin.RandomTensor(4, width);
        Accelerators.Host.KvWrite(caches.Host, 0, prefix.Host, heads, second.Host, 0);
        Device.KvWrite(caches.Device, 0, prefix.Device, heads, second.Device, 0);
        var tree = twin.RandomTensor(3, width, 2f);
        Accelerators.Host.KvWrite(caches.Host, 0, tree.Host, heads, second.Host, 4);
        Device.KvWrite(caches.Device, 0, tree.Device, heads, second.Device, 4);
        var mask = twin.Ints(3, 3, [1, 0, 0, 1, 1, 0, 1, 0, 1]);
        foreach (var launcher in new AttentionLauncher?[] { null, portable })
            foreach (int? splits in new int?[] { 1, 2 })
            {
                var one = twin.Zeros(DType.F32, 1, heads * layout.HeadDim);
                Accelerators.Host.Attention(one.Host, tree.Host.Slice(0, 1), caches.Host, 0, second.Host, 4, null);
                Device.Attention(one.Device, tree.Device.Slice(0, 1), caches.Device, 0, second.Device, 4, null, splits, launcher);
                Twin.AssertClose(one, Tolerance.ForSum(DType.F32, layout.HeadDim), $"decode beside a poisoned sequence, {element}, splits {splits}, {(launcher is null ? "default" : "portable")} kernels");
                var three = twin.Zeros(DType.F32, 3, heads * layout.HeadDim);
                Accelerators.Host.Attention(three.Host, tree.Host, caches.Host, 0, second.Host, 4, mask.Host);
                Device.Attention(three.Device, tree.Device, caches.Device, 0, second.Device, 4, mask.Device, splits, launcher);
                Twin.AssertClose(three, Tolerance.ForSum(DType.F32, layout.HeadDim), $"tree beside a poisoned sequence, {element}, splits {splits}, {(launcher is null ? "default" : "portable")} kernels");
            }
    }

    /// <summary>
    /// Block-table entries outside the cache (only a bad table passed through the public backend API has them: the host
    /// backend throws, a kernel cannot check before it runs): the device's kernels neither write nor read outside their
    /// planes. Positions 4-7 point at block 7 of a 3-block cache, which would land in another layer's planes of the one
    /// buffer; positions 8-11 at block −2, before the buffer; a compaction source past the table. The KV write, the fused
    /// RoPE + KV write and the compaction change only layer 0's block 1; attention over the bad positions gives finite numbers, for every kernel the device
    /// loads by default.
    /// </summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    public void Block_table_entries_outside_the_cache_are_not_followed(DType element)
    {
        using var twin = NewTwin(71);
        var layout = new KvCacheLayout(Layers: 2, KvHeads: 1, HeadDim: 4, BlockSize: 4, BlockCount: 3, element);
        using var cache = Device.AllocateKvCache(layout);
        var table = twin.Ints(1, 3, [1, 7, -2]);
        const int heads = 2, tokens = 12;
        int width = (heads + 2) * layout.HeadDim;
        var qkv = twin.RandomTensor(tokens, width, 2f);
        var positions = twin.Ints(tokens, 1, [.. Enumerable.Range(0, tokens)]);
        Device.KvWrite(cache, 0, qkv.Device, heads, table.Device, 0);
        Device.RopeKvWrite(qkv.Device, positions.Device, heads, layout.HeadDim, 10000f, cache, 0, table.Device, 0);
        var sources = twin.Ints(3, 1, [5, 9, 4000]); // 4000: past the table itself
        Device.KvCompact(cache, table.Device, sources.Device, 1);
        foreach (int tokensNow in new[] { 1, tokens - 8 })
        {
            var output = twin.Zeros(DType.F32, tokensNow, heads * layout.HeadDim);
            Device.Attention(output.Device, qkv.Device.Slice(8, tokensNow), cache, 0, table.Device, 8, null);
            var values = new float[tokensNow * heads * layout.HeadDim];
            Device.Download(output.Device, values);
            Assert.All(values, v => Assert.True(float.IsFinite(v), $"attention over bad table entries gave {v} (T={tokensNow}, {element})"));
        }
        var slot = new float[layout.KvDim];
        for (int layer = 0; layer < layout.Layers; layer++)
        {
            for (int part = 0; part < 2; part++)
            {
                for (int s = 0; s < layout.SlotCount; s++)
                {
                    cache.ReadSlot(layer, part, s, slot);
                    bool written = layer == 0 && s >= 4 && s < 8; // block 1: positions 0-3
                    Assert.True(written == slot.Any(v => v != 0f),
                        $"{element} layer {layer} {(part == 0 ? "keys" : "values")} slot {s}: {(written ? "not written" : "written through a bad table entry")}");
                }
            }
        }
    }

    /// <summary>Bad shapes and foreign tensors are rejected before any work is queued.</summary>
    [Fact]
    public void Bad_arguments_throw_with_shapes()
    {
        using var twin = NewTwin(20);
        var x = twin.RandomTensor(2, 5);
        var weight = twin.RandomWeight(DType.F16, 3, 4);
        var output = twin.Zeros(DType.F32, 2, 3);
        var error = Assert.Throws<ArgumentException>(() => Device.MatMul(output.Device, x.Device, weight.Device, accumulate: false));
        Assert.Contains("[2, 5]", error.Message);
        var foreign = Assert.Throws<ArgumentException>(() => Device.Add(output.Device, output.Host, output.Device));
        Assert.Contains("does not belong", foreign.Message);
    }
}

/// <summary>The suite on ILGPU's CPU emulator (warp 32, groups of 32): tiny shapes.</summary>
[Collection(AcceleratorCollection.Name)]
public sealed class CpuEmulatorConformanceTests(Accelerators accelerators) : ConformanceTests(accelerators)
{
    /// <summary>
    /// The CUDA-only F16 variant (ILGPU's Half conversion) on every matmul path: it cannot build on PoCL, so besides CUDA
    /// itself the emulator is where it is held to the host.
    /// </summary>
    [Fact]
    public void MatMul_native_half_kernels_match_host()
    {
        var accelerator = Device.Accelerator;
        var launcher = new MatMulLauncher(accelerator, MatMulTuning.For(accelerator, 32) with { NativeHalf = true });
        using var twin = new Twin(Accelerators.Host, Device, 24);
        const int t = 5, n = 33, k = 35;
        var x = twin.RandomTensor(t, k);
        var weight = twin.RandomWeight(DType.F16, n, k);
        var expected = twin.Zeros(DType.F32, t, n);
        Accelerators.Host.MatMul(expected.Host, x.Host, weight.Host, accumulate: false);
        foreach (var path in new[] { MatMulPath.Vector, MatMulPath.Skinny, MatMulPath.Tiled })
        {
            var output = (IlgpuTensor)expected.Device;
            launcher.Launch(accelerator.DefaultStream, output.Floats, ((IlgpuTensor)x.Device).Floats, ((IlgpuTensor)weight.Device).AsWeight(), t, false, path);
            accelerator.DefaultStream.Synchronize();
            Twin.AssertClose(Twin.Read(expected.Host), Twin.Read(output), Tolerance.ForSum(DType.F16, k), $"native-half MatMul via {path}");
        }
    }

    /// <summary>
    /// The wide GEMV (16-byte loads, shuffle reductions; CUDA's T = 1 path for 16-bit weights) with two rows per warp in
    /// its three modes and one row per warp (plain and normed), for F16 (both decodings) and BF16, against the host: odd N
    /// (a warp's second row missing), K of one to several packs of eight per lane (one to two unrolled iterations of the
    /// one-row kernel, with and without a remainder), accumulation.
    /// </summary>
    [Theory]
    [InlineData(DType.F16, true)]
    [InlineData(DType.F16, false)]
    [InlineData(DType.BF16, false)]
    public void MatMul_wide_gemv_matches_host(DType type, bool nativeHalf)
    {
        var accelerator = Device.Accelerator;
        var tuning = MatMulTuning.For(accelerator, 64) with { WideVector = true, NativeHalf = nativeHalf };
        using var twoRows = new MatMulLauncher(accelerator, tuning with { WideSingleRowMaxRows = 0 });
        using var oneRow = new MatMulLauncher(accelerator, tuning with { WideSingleRowMaxRows = int.MaxValue });
        var stream = accelerator.DefaultStream;
        using var twin = new Twin(Accelerators.Host, Device, 25);
        foreach (var (n, k, launcher) in new[] { (33, 8), (5, 64), (40, 264), (7, 520), (3, 1024), (6, 2056) }
            .SelectMany(shape => new[] { (shape.Item1, shape.Item2, twoRows), (shape.Item1, shape.Item2, oneRow) }))
        {
            Assert.Equal(launcher == oneRow, launcher.UsesOneRowGemv(n, mode: 0));
            Assert.Equal(launcher == oneRow, launcher.UsesOneRowGemv(n, mode: 1));
            Assert.False(launcher.UsesOneRowGemv(n, mode: 2));
            var x = twin.RandomTensor(1, k, 3f);
            var weight = twin.RandomWeight(type, n, k, 1f / MathF.Sqrt(k));
            var view = ((IlgpuTensor)weight.Device).AsWeight();
            foreach (bool accumulate in new[] { false, true })
            {
                var output = twin.RandomTensor(1, n);
                Accelerators.Host.MatMul(output.Host, x.Host, weight.Host, accumulate);
                launcher.Launch(stream, ((IlgpuTensor)output.Device).Floats, ((IlgpuTensor)x.Device).Floats, view, 1, accumulate);
                stream.Synchronize();
                Twin.AssertClose(output, Tolerance.ForSum(type, k), $"wide GEMV ({(launcher == oneRow ? "one row" : "two rows")} per warp) {type} N={n} K={k} accumulate={accumulate}");
            }
            var norm = twin.RandomWeight(DType.F32, 1, k);
            var normed = twin.Zeros(DType.F32, 1, k);
            var product = twin.Zeros(DType.F32, 1, n);
            ((IComputeBackend)Accelerators.Host).NormMatMul(product.Host, x.Host, norm.Host, 1e-5f, weight.Host, normed.Host, accumulate: false);
            launcher.LaunchNormed(stream, ((IlgpuTensor)product.Device).Floats, ((IlgpuTensor)x.Device).Floats, ((IlgpuTensor)norm.Device).Floats, view, 1, 1e-5f, accumulate: false);
            stream.Synchronize();
            Twin.AssertClose(product, Tolerance.ForSum(type, k), $"wide GEMV ({(launcher == oneRow ? "one row" : "two rows")} per warp) with RMSNorm {type} N={n} K={k}");
            int f = n;
            var gateUp = twin.GateUp(type, f, k, 1f / MathF.Sqrt(k));
            var ffn = twin.Zeros(DType.F32, 1, f);
            var gateUpOut = twin.Zeros(DType.F32, 1, 2 * f);
            ((IComputeBackend)Accelerators.Host).FfnGateUp(ffn.Host, x.Host, norm.Host, 1e-5f, gateUp.Host, normed.Host, gateUpOut.Host);
            launcher.LaunchNormedSwiGlu(stream, ((IlgpuTensor)ffn.Device).Floats, ((IlgpuTensor)x.Device).Floats, ((IlgpuTensor)norm.Device).Floats,
                ((IlgpuTensor)gateUp.Device).AsWeight(), 1, 1e-5f);
            stream.Synchronize();
            var sum = Tolerance.ForSum(type, k);
            Twin.AssertClose(ffn, new Tolerance(4 * sum.Absolute, 1e-4), $"wide GEMV with RMSNorm and SwiGLU {type} F={f} D={k}");
        }
    }

    /// <inheritdoc />
    protected override IlgpuBackend Device => Accelerators.Emulator;

    /// <inheritdoc />
    protected override bool TensorCoresAvailable => true;

    /// <inheritdoc />
    protected override TestSizes Sizes { get; } = new(
        Widths: [1, 31, 32, 33, 257],
        MatMuls: [(1, 1, 1), (1, 33, 31), (1, 7, 257), (3, 31, 33), (5, 9, 32), (17, 33, 31)],
        HeadDims: [8, 10, 40],
        LongContext: 70,
        Vocabulary: 300);
}

/// <summary>The suite on OpenCL (PoCL here, through the CPU OpenCL opt-in): moderate shapes.</summary>
[Collection(AcceleratorCollection.Name)]
public sealed class OpenCLConformanceTests(Accelerators accelerators) : ConformanceTests(accelerators)
{
    /// <inheritdoc />
    protected override IlgpuBackend Device => Accelerators.OpenCL;

    /// <inheritdoc />
    protected override TestSizes Sizes { get; } = new(
        Widths: [1, 31, 32, 33, 257, 1000],
        MatMuls: [(1, 1, 1), (1, 33, 31), (1, 257, 288), (1, 1000, 257), (3, 257, 33), (5, 100, 288), (16, 65, 129), (17, 33, 31), (64, 200, 288), (129, 130, 65)],
        HeadDims: [8, 30, 64, 128],
        LongContext: 1500,
        Vocabulary: 32000);
}
