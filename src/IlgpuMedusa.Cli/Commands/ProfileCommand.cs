using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Models;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Cli.Commands;

/// <summary>
/// <c>profile</c>: low-level speed figures of one model on one device, from token ids (no text): prefill tokens/s,
/// greedy decode tokens/s, the time of one tree-verification forward for several tree sizes, the weight bandwidth a
/// decode step achieves, and the device's copy bandwidth for comparison. Used by the GPU benchmark kit.
/// </summary>
internal static class ProfileCommand
{
    public static Command Create()
    {
        var common = new CommonOptions();
        var promptIds = new Option<string?>("--prompt-ids") { Description = "JSON file with the prompt's token ids (an array)." };
        var promptTokens = new Option<int>("--prompt-tokens") { Description = "Without --prompt-ids: length of a seeded random prompt.", DefaultValueFactory = _ => 128 };
        var decodeTokens = new Option<int>("--decode-tokens") { Description = "Greedy decode steps to time.", DefaultValueFactory = _ => 128 };
        var greedyTokens = new Option<int>("--greedy-tokens") { Description = "How many of the generated ids to print.", DefaultValueFactory = _ => 32 };
        var treeSizes = new Option<string>("--tree-sizes") { Description = "Comma-separated tree sizes (tokens per verification forward) to time.", DefaultValueFactory = _ => "1,4,16,64" };
        var repeats = new Option<int>("--repeats") { Description = "Timed repeats of each tree size (the median is reported).", DefaultValueFactory = _ => 10 };
        var copyMb = new Option<int>("--copy-mb") { Description = "Buffer size of the copy-bandwidth measurement in MiB (0 skips it).", DefaultValueFactory = _ => 1024 };
        var opTimes = new Option<int>("--op-times")
        {
            Description = "Afterwards, stamp every op on the device for this many decode steps and as many forwards of each tree " +
                "size above 1, and print each op's device time (ILGPU devices; the markers slow the steps down). 0: off.",
            DefaultValueFactory = _ => 0,
        };
        var json = new Option<bool>("--json") { Description = "Print one JSON object." };
        var command = new Command("profile", "Measure prefill, decode and tree-verification speed and bandwidth from token ids.")
        {
            promptIds, promptTokens, decodeTokens, greedyTokens, treeSizes, repeats, copyMb, opTimes, json,
        };
        common.AddTo(command);
        command.SetAction((parse, cancellationToken) =>
        {
            var sizes = ParseSizes(parse.GetValue(treeSizes)!);
            int decode = Positive(parse.GetValue(decodeTokens), "--decode-tokens");
            // The first token comes from the prefill: the decode rate is timed over the steps after it.
            if (decode < 2) throw new ArgumentOutOfRangeException("--decode-tokens", decode, "--decode-tokens must be at least 2 (the first token is the prefill's; the rate is timed over the rest).");
            int reps = Positive(parse.GetValue(repeats), "--repeats");
            int opSteps = parse.GetValue(opTimes);
            if (opSteps < 0) throw new ArgumentOutOfRangeException("--op-times", opSteps, "--op-times must be 0 (off) or a number of steps.");
            var engineOptions = common.ToEngineOptions(parse);
            if (opSteps > 0) engineOptions = engineOptions with { Device = engineOptions.Device with { OpTimings = true } };
            CommonOptions.EnsureDemoIfDefault(engineOptions.ModelPath);
            using var checkpoint = ModelDirectory.OpenCheckpoint(engineOptions.ModelPath);
            var config = checkpoint.Config;
            int[] prompt = parse.GetValue(promptIds) is { } file
                ? ReadIds(file, config.VocabSize)
                : RandomIds(Positive(parse.GetValue(promptTokens), "--prompt-tokens"), config.VocabSize);
            long total = (long)prompt.Length + decode + opSteps + sizes.Max(); // in 64 bits: huge options must not wrap past the check
            if (total > config.MaxSequenceLength)
                throw new ArgumentException($"prompt ({prompt.Length}) + --decode-tokens ({decode}) + --op-times ({opSteps}) + largest tree ({sizes.Max()}) = {total} exceeds the model's context of {config.MaxSequenceLength}.");
            int needed = (int)total;
            var result = Run(checkpoint, engineOptions, prompt, decode, Math.Min(parse.GetValue(greedyTokens), decode), sizes, reps, parse.GetValue(copyMb), opSteps, needed, cancellationToken);
            if (parse.GetValue(json)) Console.WriteLine(JsonSerializer.Serialize(result));
            else foreach (var (k, v) in result.Where(p => p.Key != "op_times")) Console.WriteLine($"{k,-30} {(v is int[] a ? string.Join(' ', a) : v is Dictionary<string, double> d ? string.Join(", ", d.Select(p => $"{p.Key}: {p.Value}")) : v)}");
            return Task.FromResult(0);
        });
        return command;
    }

    private static Dictionary<string, object> Run(ICheckpoint checkpoint, Generation.EngineOptions options, int[] prompt, int decode, int greedy, int[] sizes, int repeats, int copyMb, int opSteps, int needed, CancellationToken cancellationToken)
    {
        var log = Console.Error;
        var clock = Stopwatch.StartNew();
        using var backend = BackendFactory.Create(options.Device);
        log.WriteLine($"[profile] device: {backend.DeviceName}");
        using var model = LlamaModel.Load(checkpoint, backend, options.WeightsType);
        backend.Synchronize();
        log.WriteLine($"[profile] weights loaded in {clock.Elapsed.TotalSeconds:0.0} s ({model.WeightBytesPerForward / 1e9:0.00} GB per forward, {model.WeightType})");
        var c = model.Config;
        using var pool = Scheduling.KvBlockPool.FromBudget(backend, c.Layers, c.KvHeads, c.HeadDim, options.KvBlockSize,
            (needed + options.KvBlockSize) * KvCacheLayout.BytesPerToken(c.Layers, c.KvDim, options.KvCacheType), options.KvCacheType);
        using var workspace = new ForwardWorkspace(backend, c, Math.Max(prompt.Length, sizes.Max()), 1);
        int[] argMax = new int[1];
        int Greedy(DeviceTensor hidden)
        {
            var id = workspace.ArgMax.Slice(0, 1);
            model.GreedyTokens(workspace, hidden.Slice(hidden.Rows - 1, 1), id); // what greedy generation runs
            backend.Download(id, argMax);
            return argMax[0];
        }
        var positions = Enumerable.Range(0, Math.Max(prompt.Length, sizes.Max())).ToArray();

        // Warm-up: compiles every kernel variant used below (prefill shape, one token, tree shapes).
        using (var warm = pool.CreateSequence(needed))
        {
            Greedy(model.Forward(workspace, workspace.Prepare(prompt, positions.AsSpan(0, prompt.Length)), warm, 0));
            foreach (int t in sizes) Greedy(model.Forward(workspace, workspace.Prepare(Enumerable.Repeat(prompt[0], t).ToArray(), positions.AsSpan(0, t)), warm, prompt.Length));
        }
        log.WriteLine($"[profile] warm-up done at {clock.Elapsed.TotalSeconds:0.0} s");

        using var sequence = pool.CreateSequence(needed);
        var prefillClock = Stopwatch.StartNew();
        int next = Greedy(model.Forward(workspace, workspace.Prepare(prompt, positions.AsSpan(0, prompt.Length)), sequence, 0));
        double prefillSeconds = prefillClock.Elapsed.TotalSeconds;

        var generated = new List<int> { next };
        int position = prompt.Length;
        int[] one = new int[1], onePosition = new int[1];
        long waitsBefore = (backend as Compute.Ilgpu.IlgpuBackend)?.HostWaits ?? 0;
        var decodeClock = Stopwatch.StartNew();
        for (int i = 1; i < decode; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            one[0] = next;
            onePosition[0] = position;
            next = Greedy(model.Forward(workspace, workspace.Prepare(one, onePosition), sequence, position));
            generated.Add(next);
            position++;
        }
        double decodeSeconds = decodeClock.Elapsed.TotalSeconds;
        // How often each decode step made the host wait for the device (ILGPU devices; the host backend never waits).
        double? waitsPerStep = backend is Compute.Ilgpu.IlgpuBackend ilgpu && decode > 1 ? (ilgpu.HostWaits - waitsBefore) / (double)(decode - 1) : null;
        double stepSeconds = decodeSeconds / Math.Max(1, decode - 1);
        log.WriteLine($"[profile] prefill {prompt.Length} tokens in {prefillSeconds * 1000:0.0} ms; decode {1 / stepSeconds:0.0} tok/s" +
            (waitsPerStep is { } shown ? $", the host waiting for the device {shown:0.##} times per step" : ""));

        // Tree verification: T tokens after the committed sequence, positions S + depth of a chain (the cost does not depend on the mask's shape).
        var treeMs = new Dictionary<string, double>();
        foreach (int t in sizes)
        {
            var ids = Enumerable.Repeat(next, t).ToArray();
            var treePositions = Enumerable.Range(position, t).ToArray();
            var times = new List<double>();
            for (int r = 0; r < repeats; r++)
            {
                var sw = Stopwatch.StartNew();
                Greedy(model.Forward(workspace, workspace.Prepare(ids, treePositions), sequence, position));
                times.Add(sw.Elapsed.TotalMilliseconds);
            }
            times.Sort();
            treeMs[t.ToString(CultureInfo.InvariantCulture)] = Math.Round(times[times.Count / 2], 3);
        }
        log.WriteLine($"[profile] tree steps (ms): {string.Join(", ", treeMs.Select(p => $"{p.Key}: {p.Value}"))}");

        var opTimes = new Dictionary<string, object>();
        if (opSteps > 0)
        {
            if (backend is IDeviceDiagnostics { CanTimeOps: true } timed)
            {
                timed.StartOpTimings();
                for (int i = 0; i < opSteps; i++)
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    one[0] = next;
                    onePosition[0] = position;
                    next = Greedy(model.Forward(workspace, workspace.Prepare(one, onePosition), sequence, position));
                    position++;
                }
                opTimes["decode"] = OpTimesJson(timed.StopOpTimings(opSteps), log, "decode (T = 1)");
                foreach (int t in sizes.Where(t => t > 1).Distinct())
                {
                    var ids = Enumerable.Repeat(next, t).ToArray();
                    var treePositions = Enumerable.Range(position, t).ToArray();
                    timed.StartOpTimings();
                    for (int i = 0; i < opSteps; i++)
                        Greedy(model.Forward(workspace, workspace.Prepare(ids, treePositions), sequence, position));
                    opTimes[$"tree-{t}"] = OpTimesJson(timed.StopOpTimings(opSteps), log, $"tree step (T = {t})");
                }
            }
            else log.WriteLine($"[profile] --op-times: {backend.DeviceName} cannot stamp ops (ILGPU devices only); skipped");
        }

        double copy = 0;
        if (copyMb > 0 && backend is IDeviceDiagnostics diagnostics)
        {
            copy = diagnostics.MeasureCopyBandwidth(copyMb * 1024L * 1024L, 10);
            log.WriteLine($"[profile] copy bandwidth {copy:0.0} GB/s");
        }
        double weightBandwidth = model.WeightBytesPerForward / stepSeconds / 1e9;
        return new Dictionary<string, object>
        {
            ["device"] = backend.DeviceName,
            ["fused_ops"] = backend is Compute.Ilgpu.IlgpuBackend { FusedOps: true },
            ["weights_dtype"] = model.WeightType.ToString(),
            ["weights_bytes"] = model.WeightBytesPerForward,
            ["kv_dtype"] = pool.Layout.ElementType.ToString().ToLowerInvariant(),
            ["prefill_tokens"] = prompt.Length,
            ["prefill_seconds"] = Math.Round(prefillSeconds, 5),
            ["prefill_tokens_per_second"] = Math.Round(prompt.Length / prefillSeconds, 1),
            ["decode_tokens_per_second"] = Math.Round(1 / stepSeconds, 2),
            ["decode_step_ms"] = Math.Round(stepSeconds * 1000, 3),
            ["host_waits_per_decode_step"] = waitsPerStep is { } w ? Math.Round(w, 3) : null!,
            ["tree_step_ms"] = treeMs,
            ["weight_bandwidth_gb_per_s"] = Math.Round(weightBandwidth, 1),
            ["copy_bandwidth_gb_per_s"] = Math.Round(copy, 1),
            ["greedy_tokens"] = generated.Take(greedy).ToArray(),
            ["op_times"] = opTimes,
        };
    }

    /// <summary>Prints one op-timing report (per step) and returns it as JSON-ready values.</summary>
    private static Dictionary<string, object> OpTimesJson(OpTimingReport report, TextWriter log, string title)
    {
        double perStep(double ms) => ms / report.Steps;
        log.WriteLine($"[profile] op times, {title}, per step over {report.Steps} steps: device span {perStep(report.SpanMs):0.000} ms = " +
            $"ops {perStep(report.DeviceMs):0.000} ms + waiting for the host {perStep(report.GapMs):0.000} ms");
        log.WriteLine($"[profile]   {"op",-14} {"shape",-36} {"calls",6} {"us/call",9} {"ms/step",8} {"share",6} {"GB/s",7}");
        foreach (var o in report.Ops.OrderByDescending(o => o.DeviceMs))
            log.WriteLine($"[profile]   {o.Op,-14} {o.Shape,-36} {o.Calls / (double)report.Steps,6:0.#} {o.MicrosecondsPerCall,9:0.0} {perStep(o.DeviceMs),8:0.000} " +
                $"{(report.SpanMs > 0 ? o.DeviceMs / report.SpanMs : 0),6:P0} {(o.BytesPerCall > 0 ? o.WeightGBPerSecond.ToString("0", CultureInfo.InvariantCulture) : "")} ");
        return new Dictionary<string, object>
        {
            ["steps"] = report.Steps,
            ["span_ms_per_step"] = Math.Round(perStep(report.SpanMs), 4),
            ["ops_ms_per_step"] = Math.Round(perStep(report.DeviceMs), 4),
            ["host_wait_ms_per_step"] = Math.Round(perStep(report.GapMs), 4),
            ["ops"] = report.Ops.Select(o => new Dictionary<string, object>
            {
                ["op"] = o.Op,
                ["shape"] = o.Shape,
                ["calls_per_step"] = Math.Round(o.Calls / (double)report.Steps, 3),
                ["us_per_call"] = Math.Round(o.MicrosecondsPerCall, 2),
                ["ms_per_step"] = Math.Round(perStep(o.DeviceMs), 4),
                ["weight_gb_per_s"] = Math.Round(o.WeightGBPerSecond, 1),
            }).ToArray(),
        };
    }

    private static int Positive(int value, string name) =>
        value > 0 ? value : throw new ArgumentOutOfRangeException(name, value, $"{name} must be positive.");

    private static int[] ParseSizes(string text)
    {
        var parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var sizes = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], CultureInfo.InvariantCulture, out sizes[i]) || sizes[i] <= 0)
                throw new ArgumentException($"--tree-sizes: '{parts[i]}' is not a positive integer.");
        return sizes.Length > 0 ? sizes : throw new ArgumentException("--tree-sizes: no sizes given.");
    }

    private static int[] ReadIds(string file, int vocabulary)
    {
        if (!File.Exists(file)) throw new FileNotFoundException($"--prompt-ids: file '{file}' not found.", file);
        int[]? ids;
        try
        {
            ids = JsonSerializer.Deserialize<int[]>(File.ReadAllText(file));
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"--prompt-ids: {file} is not a JSON array of integers: {e.Message}", e);
        }
        if (ids is null || ids.Length == 0) throw new InvalidDataException($"--prompt-ids: {file} holds no ids.");
        foreach (var id in ids)
            if ((uint)id >= (uint)vocabulary) throw new InvalidDataException($"--prompt-ids: id {id} in {file} is outside the vocabulary of {vocabulary}.");
        return ids;
    }

    private static int[] RandomIds(int count, int vocabulary)
    {
        var random = new Random(1234);
        var ids = new int[count];
        ids[0] = 1;
        for (int i = 1; i < count; i++) ids[i] = random.Next(3, vocabulary);
        return ids;
    }
}
