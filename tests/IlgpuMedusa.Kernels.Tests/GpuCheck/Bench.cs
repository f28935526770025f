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

    private double Milliseconds(Action launch, int repeats)
    {
        launch();
        _stream.Synchronize();
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < repeats; i++) launch();
        _stream.Synchronize();
        return sw.Elapsed.TotalMilliseconds / repeats;
    }

    private MemoryBuffer1D<ushort, Stride1D.Dense> RandomHalves(long count)
    {
        var host = new ushort[count];
        for (long i = 0; i < count; i++) host[i] = BitConverter.HalfToUInt16Bits((System.Half)(_random.NextSingle() - 0.5f));
        return accelerator.Allocate1D(host);
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
        if (tuned.WideVector) launchers["narrow"] = new(accelerator, tuned with { WideVector = false, TensorCores = TensorCoreMode.Off });
        if (tuned.TensorCores != TensorCoreMode.Off)
        {
            launchers["rounded"] = new(accelerator, tuned with { TensorCores = TensorCoreMode.Rounded });
            launchers["direct"] = new(accelerator, tuned with { TensorStaged = false });
            launchers["prefetch-2"] = new(accelerator, tuned with { TensorPrefetch = 2 });
            log($"  tensor cores: tuned {launchers["tuned"].Tuning.TensorCores}{(launchers["tuned"].TensorCoreError is { } e ? " (FAILED: " + e + ")" : "")}");
        }
        var shapes = quick ? new[] { (256, 256) } : new[] { (4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096) };
        foreach (var (n, k) in shapes)
        {
            using var w = RandomHalves((long)n * k);
            using var x = accelerator.Allocate1D<float>(256L * k);
            using var o = accelerator.Allocate1D<float>(256L * n);
            double gigabytes = (double)n * k * 2 / 1e9;
            foreach (var storage in new[] { WeightStorage.F16, WeightStorage.BF16 })
            {
                var weights = new WeightView(storage, w.View.BaseView.Cast<byte>(), n, k, k);
                foreach (var (name, launcher) in launchers)
                {
                    if ((storage == WeightStorage.BF16 && name != "tuned" && name != "narrow") || name == "rounded" || name == "direct" || name == "prefetch-2") continue;
                    double ms = Milliseconds(() => launcher.Launch(_stream, o.View, x.View, weights, 1, false), Repeats);
                    log($"  gemv {storage} {name} [{n}x{k}] T=1: {ms * 1000,8:F1} us  {gigabytes / (ms / 1000),6:F0} GB/s");
                }
            }
            if ((long)n * k > 50_000_000) continue;
            var f16 = new WeightView(WeightStorage.F16, w.View.BaseView.Cast<byte>(), n, k, k);
            bool tensor = launchers["tuned"].Tuning.TensorCores != TensorCoreMode.Off;
            foreach (int t in quick ? new[] { 4, 17 } : new[] { 2, 4, 16, 64, 128, 256 })
            {
                foreach (var (path, name) in new[] { (MatMulPath.Skinny, "tuned"), (MatMulPath.Tiled, "tuned"), (MatMulPath.TensorCore, "tuned"), (MatMulPath.TensorCore, "rounded"), (MatMulPath.TensorCore, "direct"), (MatMulPath.TensorCore, "prefetch-2") })
                {
                    if ((path == MatMulPath.Skinny && t > 128) || (path == MatMulPath.Tiled && t < 64 && !quick)) continue;
                    if (path == MatMulPath.TensorCore && !tensor) continue;
                    var launcher = launchers[name];
                    string label = path == MatMulPath.TensorCore
                        ? $"Tensor/{launcher.Tuning.TensorCores}/{(launcher.RunsStaged(f16, t) ? "staged" : "direct")}{(launcher.Tuning.TensorPrefetch > 1 ? "/pf2" : "")}" : path.ToString();
                    double ms = Milliseconds(() => launcher.Launch(_stream, o.View, x.View, f16, t, false, path), Math.Max(3, Repeats / 5));
                    log($"  matmul F16 [{n}x{k}] T={t,3} {label,-22}: {ms * 1000,8:F1} us  {ms * 1000 / t,7:F1} us/token  " +
                        $"{2.0 * t * n * k / (ms / 1000) / 1e12,6:F2} TFLOP/s  {gigabytes / (ms / 1000),6:F0} GB/s of weights");
                }
            }
        }
    }

    /// <summary>
    /// Attention of a 7B-like layer (H 32, Hkv 8, Dh 128): decoding at several S, unsplit and auto-split; prefill; trees;
    /// each kernel that takes the case (one token per group, blocks of 8 tokens, one warp for decoding, tiles for T ≥ 2).
    /// </summary>
    public void Attention()
    {
        int groupSize = KernelSet.DefaultGroupSize(accelerator);
        using var perToken = new AttentionLauncher(accelerator, groupSize, blocks: int.MaxValue);
        using var allBlocks = new AttentionLauncher(accelerator, groupSize, blocks: 1);
        using var warps = new AttentionLauncher(accelerator, groupSize, warpDecode: true);
        using var tiles = new AttentionLauncher(accelerator, groupSize, tiles: true);
        const int h = 32, dh = 128, b = 16;
        // (S, T, tree mask, Hkv): Hkv 8 as in GQA models, 32 as in Llama-2-7B (the kit's 7B shape).
        var cases = quick ? new[] { (300, 1, false, 8), (300, 9, true, 8) }
            : new[] { (512, 1, false, 8), (4096, 1, false, 8), (16384, 1, false, 8), (0, 256, false, 8), (600, 64, true, 8), (2048, 64, true, 8), (2048, 16, true, 8),
                (600, 4, true, 32), (600, 16, true, 32), (600, 64, true, 32), (0, 512, false, 32) };
        foreach (var (s, t, masked, hkv) in cases)
        {
            int blocks = (s + t + b - 1) / b;
            using var keys = accelerator.Allocate1D<float>((long)blocks * b * hkv * dh);
            using var values = accelerator.Allocate1D<float>((long)blocks * b * hkv * dh);
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
                    double ms = Milliseconds(() => kernel.Launch(_stream, output.View, qkv.View, keys.View, values.View, table.View, mask.View, a, splits), Math.Max(3, Repeats / 5));
                    double bytes = 2.0 * (s + t) * hkv * dh * 4;
                    log($"  attention {name,-11} H={h} Hkv={hkv} Dh={dh} S={s,5} T={t,3} {(masked ? "mask  " : "causal")} splits={splits?.ToString() ?? $"auto({auto})"}: " +
                        $"{ms * 1000,9:F1} us  (KV {bytes / 1e6:F1} MB: {bytes / 1e9 / (ms / 1000):F0} GB/s)");
                }
            }
        }
    }
}
