using System.Diagnostics;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuMedusa.Kernels.GpuCheck;

/// <summary>Kernel timings on one accelerator: mean of repeated launches after a warm-up, synchronised once at the end.</summary>
internal sealed class Bench(Accelerator accelerator, bool quick, Action<string> log)
{
    private readonly AcceleratorStream _stream = accelerator.CreateStream();
    private readonly Random _random = new(5);
    private int Repeats => quick ? 3 : 50;

    private double Milliseconds(Action launch, int repeats) => Milliseconds(_ => launch(), repeats);

    /// <summary>Mean time of launch(0), launch(1), ... launch(repeats − 1) after one warm-up launch(0).</summary>
    private double Milliseconds(Action<int> launch, int repeats)
    {
        launch(0);
        _stream.Synchronize();
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < repeats; i++) launch(i);
        _stream.Synchronize();
        return sw.Elapsed.TotalMilliseconds / repeats;
    }

    /// <summary>
    /// Bytes of distinct weights the matmul timings cycle through: more than twice an H100's or H200's L2 cache (50 and
    /// 60 MB), so each launch reads its weights from device memory as in a model, where one layer's matrices are evicted
    /// by the next layers' before they come round again. The kit's timings of 2026-11-28 repeated one 4096×4096 matrix
    /// (33.5 MB, L2-resident): its GEMV "streamed" 4.5 TB/s, above the device's 4.2 TB/s copy bandwidth.
    /// </summary>
    private const long ColdBytes = 256L << 20;

    private MemoryBuffer1D<ushort, Stride1D.Dense>[] RandomHalfCopies(long count)
    {
        var host = new ushort[count];
        for (long i = 0; i < count; i++) host[i] = BitConverter.HalfToUInt16Bits((System.Half)(_random.NextSingle() - 0.5f));
        int copies = quick ? 2 : (int)Math.Clamp((ColdBytes + 2 * count - 1) / (2 * count), 1, 8);
        return Enumerable.Range(0, copies).Select(_ => accelerator.Allocate1D(host)).ToArray();
    }

    public void LaunchOverhead()
    {
        var add = new AddLauncher(accelerator);
        using var a = accelerator.Allocate1D<float>(4096);
        log($"launch overhead (Add of 4096 floats): {Milliseconds(() => add.Launch(_stream, a.View, a.View, a.View, 4096), 200) * 1000:F1} us");
    }

    /// <summary>GEMV bandwidth per dtype (native and portable fp16), then skinny against tiled as T grows.</summary>
    public void MatMul()
    {
        var tuned = MatMulTuning.For(accelerator, KernelSet.DefaultGroupSize(accelerator));
        var launchers = new Dictionary<string, MatMulLauncher> { ["tuned"] = new(accelerator, tuned) };
        if (tuned.NativeHalf) launchers["portable-f16"] = new(accelerator, tuned with { NativeHalf = false, TensorCores = TensorCoreMode.Off });
        if (tuned.WideVector)
        {
            launchers["narrow"] = new(accelerator, tuned with { WideVector = false, TensorCores = TensorCoreMode.Off });
            launchers["wide-two-rows"] = new(accelerator, tuned with { WideSingleRowMaxRows = 0, TensorCores = TensorCoreMode.Off });
            launchers["wide-one-row"] = new(accelerator, tuned with { WideSingleRowMaxRows = int.MaxValue, TensorCores = TensorCoreMode.Off });
        }
        // Tensor-core variants, each one switch away from the default: inputs rounded once; the direct kernel; other
        // prefetch depths; the fixed split target; the staged kernel for every N (by default only N ≤ 8192).
        var variants = new List<(string Name, MatMulLauncher Launcher)>();
        // Only when the tensor-core kernels loaded: a driver that rejects their PTX leaves the launcher on float32 cores.
        if (launchers["tuned"].Tuning.TensorCores != TensorCoreMode.Off)
        {
            variants.Add(("", launchers["tuned"]));
            variants.Add(("rounded", new(accelerator, tuned with { TensorCores = TensorCoreMode.Rounded })));
            variants.Add(("direct", new(accelerator, tuned with { TensorStaged = false })));
            foreach (int depth in Enumerable.Range(1, 4).Where(d => d != 3 && d != tuned.TensorPrefetch))
                variants.Add(($"pf{depth}", new(accelerator, tuned with { TensorPrefetch = depth })));
            variants.Add(((tuned.TensorWaveSplits ? "fixed-splits" : "wave-splits"), new(accelerator, tuned with { TensorWaveSplits = !tuned.TensorWaveSplits })));
            variants.Add(("staged-any-N", new(accelerator, tuned with { TensorStagedMaxRows = int.MaxValue, TensorStagedMaxTokens = int.MaxValue })));
            log($"  tensor cores: tuned {launchers["tuned"].Tuning.TensorCores}, {tuned.TensorPrefetch} chunks ahead, {(tuned.TensorWaveSplits ? "splits by waves" : "fixed split target")}");
        }
        else if (launchers["tuned"].TensorCoreError is { } e)
        {
            log($"  tensor cores FAILED to load ({e}): the tensor-core rows are left out");
        }
        var shapes = quick ? new[] { (256, 256) } : new[] { (4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096) };
        foreach (var (n, k) in shapes)
        {
            var copies = RandomHalfCopies((long)n * k);
            using var x = accelerator.Allocate1D<float>(256L * k);
            using var o = accelerator.Allocate1D<float>(256L * n);
            double gigabytes = (double)n * k * 2 / 1e9;
            WeightView Weights(WeightStorage storage, int i) => new(storage, copies[i % copies.Length].View.BaseView.Cast<byte>(), n, k, k);
            log($"  [{n}x{k}]: {copies.Length} copies of the weights ({copies.Length * gigabytes * 1000:F0} MB), launches cycle through them");
            foreach (var storage in new[] { WeightStorage.F16, WeightStorage.BF16 })
            {
                foreach (var (name, launcher) in launchers)
                {
                    if (storage == WeightStorage.BF16 && name != "tuned" && name != "narrow") continue;
                    double ms = Milliseconds(i => launcher.Launch(_stream, o.View, x.View, Weights(storage, i), 1, false), Repeats);
                    string rows = launcher.Tuning.WideVector && name != "narrow" && name != "portable-f16" ? (launcher.UsesOneRowGemv(n, 0) ? " (1 row/warp)" : " (2 rows/warp)") : "";
                    log($"  gemv {storage} {name}{rows} [{n}x{k}] T=1: {ms * 1000,8:F1} us  {gigabytes / (ms / 1000),6:F0} GB/s");
                }
            }
            if ((long)n * k > 50_000_000)
            {
                foreach (var c in copies) c.Dispose();
                continue;
            }
            var f16 = Weights(WeightStorage.F16, 0);
            var cases = new List<(MatMulPath Path, string Variant, MatMulLauncher Launcher)> { (MatMulPath.Skinny, "", launchers["tuned"]), (MatMulPath.Tiled, "", launchers["tuned"]) };
            cases.AddRange(variants.Select(v => (MatMulPath.TensorCore, v.Name, v.Launcher)));
            foreach (int t in quick ? new[] { 4, 17 } : new[] { 2, 4, 16, 64, 128, 256 })
            {
                foreach (var (path, variant, launcher) in cases)
                {
                    if ((path == MatMulPath.Skinny && t > 128) || (path == MatMulPath.Tiled && t < 64 && !quick)) continue;
                    string label = path == MatMulPath.TensorCore
                        ? $"Tensor/{launcher.Tuning.TensorCores}/{(launcher.RunsStaged(f16, t) ? $"staged/pf{launcher.Tuning.TensorPrefetch}" : "direct")}{(variant.Length > 0 ? $" ({variant})" : "")}"
                        : path.ToString();
                    double ms = Milliseconds(i => launcher.Launch(_stream, o.View, x.View, Weights(WeightStorage.F16, i), t, false, path), Math.Max(3, Repeats / 5));
                    log($"  matmul F16 [{n}x{k}] T={t,3} {label,-40}: {ms * 1000,8:F1} us  {ms * 1000 / t,7:F1} us/token  " +
                        $"{2.0 * t * n * k / (ms / 1000) / 1e12,6:F2} TFLOP/s  {gigabytes / (ms / 1000),6:F0} GB/s of weights");
                }
            }
            foreach (var c in copies) c.Dispose();
        }
        foreach (var l in launchers.Values.Concat(variants.Select(v => v.Launcher)).Distinct()) l.Dispose();
    }

    /// <summary>
    /// Attention of a 7B-like layer (H 32, Hkv 8, Dh 128): decoding at several S, unsplit and auto-split; prefill; trees;
    /// each kernel that takes the case (one token per group, blocks of 8 tokens, one warp for decoding, tiles for T ≥ 2).
    /// </summary>
    public void Attention()
    {
        int groupSize = KernelSet.DefaultGroupSize(accelerator);
        using var perToken = new AttentionLauncher(accelerator, groupSize, blocks: int.MaxValue, warpDecode: false, tiles: false);
        using var allBlocks = new AttentionLauncher(accelerator, groupSize, blocks: 1, warpDecode: false, tiles: false);
        using var warps = new AttentionLauncher(accelerator, groupSize, warpDecode: true, tiles: false);
        using var tiles = new AttentionLauncher(accelerator, groupSize, warpDecode: false, tiles: true);
        const int h = 32, dh = 128, b = 16;
        // (S, T, tree mask, Hkv): Hkv 8 as in GQA models, 32 as in Llama-2-7B (the kit's 7B shape).
        var cases = quick ? new[] { (300, 1, false, 8), (300, 9, true, 8) }
            : new[] { (512, 1, false, 8), (4096, 1, false, 8), (16384, 1, false, 8), (0, 256, false, 8), (600, 64, true, 8), (2048, 64, true, 8), (2048, 16, true, 8),
                (600, 4, true, 32), (600, 16, true, 32), (600, 64, true, 32), (0, 512, false, 32) };
        foreach (var (s, t, masked, hkv) in cases)
        {
            int blocks = (s + t + b - 1) / b;
            using var keys = accelerator.Allocate1D<byte>((long)blocks * b * hkv * dh * sizeof(float));
            using var values = accelerator.Allocate1D<byte>((long)blocks * b * hkv * dh * sizeof(float));
            keys.MemSetToZero(_stream);
            values.MemSetToZero(_stream);
            using var table = accelerator.Allocate1D(Enumerable.Range(0, blocks).ToArray());
            int stride = (h + 2 * hkv) * dh;
            using var qkv = accelerator.Allocate1D<float>((long)t * stride);
            using var output = accelerator.Allocate1D<float>((long)t * h * dh);
            var maskData = new int[t * t];
            for (int i = 0; i < t; i++) for (int j = 0; j <= i; j++) maskData[i * t + j] = 1;
            using var mask = accelerator.Allocate1D(maskData);
            var a = new AttentionArgs(t, h, hkv, dh, stride, s, b, masked);
            foreach (var (kernel, name) in new[] { (perToken, "per token"), (allBlocks, "blocks of 8"), (warps, "warp"), (tiles, $"tiles of {AttentionKernel.TileRows(tiles.TileGroupSize)}") })
            {
                if (kernel == warps && !warps.UsesWarpDecode(t)) continue;
                if (kernel == tiles && !tiles.UsesTiles(t, dh)) continue;
                int auto = kernel.UsesWarpDecode(t) ? kernel.ChooseWarpSplits(h, s + 1)
                    : kernel.UsesTiles(t, dh) ? kernel.ChooseTileSplits(t, h, hkv, s + t)
                    : kernel.UsesBlocks(t) ? kernel.ChooseBlockSplits(t, h, s + t) : kernel.ChooseSplits(t, h, s + t);
                foreach (int? splits in auto == 1 ? new int?[] { 1 } : new int?[] { 1, null })
                {
                    // binary16 elements (--kv-dtype f16): the default kernels of each shape only, with their automatic splits.
                    bool isDefault = kernel == (t == 1 ? warps : tiles) || (kernel == allBlocks && !tiles.UsesTiles(t, dh) && t > 1);
                    foreach (var element in splits is null || auto == 1 ? (isDefault ? new[] { KvElement.F32, KvElement.F16 } : [KvElement.F32]) : [KvElement.F32])
                    {
                        int size = KvPlanes.ElementBytes(element);
                        long planeBytes = (long)blocks * b * hkv * dh * size;
                        var planes = new KvPlanes(element, keys.View.SubView(0, planeBytes), values.View.SubView(0, planeBytes));
                        double ms = Milliseconds(() => kernel.Launch(_stream, output.View, qkv.View, planes, table.View, mask.View, a, splits), Math.Max(3, Repeats / 5));
                        double bytes = 2.0 * (s + t) * hkv * dh * size;
                        log($"  attention {name,-11} H={h} Hkv={hkv} Dh={dh} S={s,5} T={t,3} {(masked ? "mask  " : "causal")} splits={splits?.ToString() ?? $"auto({auto})"}{(element == KvElement.F16 ? " kv f16" : "")}: " +
                            $"{ms * 1000,9:F1} us  (KV {bytes / 1e6:F1} MB: {bytes / 1e9 / (ms / 1000):F0} GB/s)");
                    }
                }
            }
        }
    }
}
