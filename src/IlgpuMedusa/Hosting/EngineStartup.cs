using System.Diagnostics;
using IlgpuMedusa.Generation;
using Microsoft.Extensions.Logging;

namespace IlgpuMedusa.Hosting;

/// <summary>Loads the engine for the container, logging the device, the load time and the warm-up (kernel compile) time.</summary>
internal static class EngineStartup
{
    public static InferenceEngine Load(IlgpuMedusaOptions options, ILogger logger)
    {
        var engineOptions = options.ToEngineOptions();
        logger.LogInformation("Loading model {ModelPath} (device {Device}, heads {Heads})", engineOptions.ModelPath, engineOptions.Device.Kind, engineOptions.Heads ?? "auto");
        var clock = Stopwatch.StartNew();
        var engine = InferenceEngine.Load(engineOptions, null, logger);
        try
        {
            var c = engine.Config;
            logger.LogInformation("Device: {DeviceName} (requested {Device})", engine.DeviceName, engineOptions.Device.Kind);
            logger.LogInformation(
                "Model loaded in {Milliseconds:0} ms: {Layers} layers, D {Dim}, V {Vocab}, context {Context}; KV pool of {Blocks} blocks x {BlockSize} tokens ({KvType})",
                clock.Elapsed.TotalMilliseconds, c.Layers, c.Dim, c.VocabSize, c.MaxSequenceLength, engine.Pool.BlockCount, engine.Pool.BlockSize,
                engine.Pool.Layout.ElementType.ToString().ToLowerInvariant());
            if (engine.Heads is { } heads)
                logger.LogInformation("Medusa: {Heads} heads", heads.HeadCount);
            else
                logger.LogInformation("Medusa: no heads found; decoding autoregressively (one token per forward)");
            if (options.WarmUp) WarmUp(engine, options.ToGenerationOptions(), logger);
            return engine;
        }
        catch
        {
            engine.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Two tokens from BOS with the default options: every kernel of the prefill and decode paths (and the default tree's,
    /// when Medusa decodes) is JIT-compiled here instead of in the first request.
    /// </summary>
    private static void WarmUp(InferenceEngine engine, GenerationOptions defaults, ILogger logger)
    {
        var clock = Stopwatch.StartNew();
        var options = defaults with { MaxTokens = 2, StopSequences = [], Sampling = Sampling.Greedy };
        var stats = new GenerationStats();
        foreach (var _ in engine.Generate([engine.Tokenizer.BosId], options, stats))
        {
        }
        logger.LogInformation("Warm-up (kernel compile) in {Milliseconds:0} ms ({Mode})",
            clock.Elapsed.TotalMilliseconds, stats.Medusa is null ? "autoregressive" : $"Medusa tree {stats.Tree}");
    }
}
