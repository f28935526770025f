using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Medusa;
using IlgpuMedusa.Models;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Tokenization;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Generation;

/// <summary>Generates text with one loaded model.</summary>
public interface IInferenceEngine
{
    /// <summary>The model's configuration.</summary>
    ModelConfig Config { get; }
    /// <summary>The model's tokenizer.</summary>
    ITextTokenizer Tokenizer { get; }
    /// <summary>The device name.</summary>
    string DeviceName { get; }

    /// <summary>Streams the continuation of <paramref name="prompt"/>. Cancellation is checked every step.</summary>
    IAsyncEnumerable<GeneratedPiece> GenerateAsync(string prompt, GenerationOptions options, CancellationToken cancellationToken = default);
}

/// <summary>
/// The engine: a model on a backend, its tokenizer, and the KV block pool. Generation runs one request at a time
/// for now; requests queue on a lock.
/// </summary>
public sealed class InferenceEngine : IInferenceEngine, IDisposable
{
    private readonly ICheckpoint _checkpoint;
    private readonly ForwardWorkspace _workspace;
    private readonly SemaphoreSlim _gate = new(1, 1);

    private readonly MedusaHeadsCheckpoint? _headsCheckpoint;
    private bool _disposed;

    /// <summary>Largest tree (nodes) a forward can verify; the workspace is sized for it.</summary>
    public const int MaxTreeNodes = 64;

    private InferenceEngine(EngineOptions options, ICheckpoint checkpoint, ITextTokenizer tokenizer, IComputeBackend backend, LlamaModel model, KvBlockPool pool,
        MedusaHeadsCheckpoint? headsCheckpoint, MedusaHeads? heads)
    {
        Options = options;
        _checkpoint = checkpoint;
        Tokenizer = tokenizer;
        Backend = backend;
        Model = model;
        Pool = pool;
        _headsCheckpoint = headsCheckpoint;
        Heads = heads;
        int maxTokens = Math.Max(Math.Min(options.PrefillChunk, model.Config.MaxSequenceLength), heads is null ? 1 : MaxTreeNodes);
        _workspace = new ForwardWorkspace(backend, model.Config, maxTokens, heads is null ? 1 : MaxTreeNodes);
    }

    /// <summary>The Medusa heads, or null when the engine decodes autoregressively only.</summary>
    public MedusaHeads? Heads { get; }

    /// <summary>The options the engine was built with.</summary>
    public EngineOptions Options { get; }
    /// <inheritdoc />
    public ModelConfig Config => Model.Config;
    /// <inheritdoc />
    public ITextTokenizer Tokenizer { get; }
    /// <summary>The backend.</summary>
    public IComputeBackend Backend { get; }
    /// <summary>The model.</summary>
    public LlamaModel Model { get; }
    /// <summary>The KV cache pool.</summary>
    public KvBlockPool Pool { get; }
    /// <inheritdoc />
    public string DeviceName => Backend.DeviceName;

    /// <summary>Loads the model and tokenizer and prepares the device. Throws with a clear message on bad input.</summary>
    public static InferenceEngine Load(EngineOptions options, IProgress<double>? progress = null)
    {
        options.Validate();
        var checkpoint = ModelDirectory.OpenCheckpoint(options.ModelPath);
        IComputeBackend? backend = null;
        LlamaModel? model = null;
        MedusaHeadsCheckpoint? headsCheckpoint = null;
        MedusaHeads? heads = null;
        try
        {
            var tokenizer = ModelDirectory.OpenTokenizer(options.ModelPath);
            if (tokenizer.VocabularySize != checkpoint.Config.VocabSize)
                throw new InvalidDataException(
                    $"{options.ModelPath}: the tokenizer has {tokenizer.VocabularySize} tokens but the model's vocabulary is {checkpoint.Config.VocabSize}.");
            backend = BackendFactory.Create(options.Device);
            model = LlamaModel.Load(checkpoint, backend, options.WeightsType, progress);
            var c = model.Config;
            long budget = options.KvBudgetMb is int mb
                ? mb * 1024L * 1024L
                : EngineOptions.DefaultKvSequences * (long)c.MaxSequenceLength * 2 * c.Layers * c.KvDim * sizeof(float);
            var pool = KvBlockPool.FromBudget(backend, c.Layers, c.KvHeads, c.HeadDim, options.KvBlockSize, budget);
            var headsPath = FindHeads(options);
            if (headsPath is not null)
            {
                headsCheckpoint = MedusaHeadsCheckpoint.Open(headsPath);
                heads = MedusaHeads.Load(headsCheckpoint, model);
            }
            return new InferenceEngine(options, checkpoint, tokenizer, backend, model, pool, headsCheckpoint, heads);
        }
        catch
        {
            heads?.Dispose();
            headsCheckpoint?.Dispose();
            model?.Dispose();
            backend?.Dispose();
            checkpoint.Dispose();
            throw;
        }
    }

    /// <summary>The heads file named by <see cref="EngineOptions.Heads"/>, or null for none.</summary>
    private static string? FindHeads(EngineOptions options)
    {
        var spec = options.Heads ?? "auto";
        if (spec.Equals("none", StringComparison.OrdinalIgnoreCase)) return null;
        if (!spec.Equals("auto", StringComparison.OrdinalIgnoreCase)) return spec;
        var released = Path.Combine(options.ModelPath, MedusaHeadsCheckpoint.ReleasedFileName);
        return File.Exists(released) ? released : null;
    }

    /// <summary>Encodes a prompt and checks it fits the context.</summary>
    public IReadOnlyList<int> EncodePrompt(string prompt, GenerationOptions options)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        var ids = Tokenizer.Encode(prompt, options.AddBos);
        if (ids.Count == 0)
            throw new ArgumentException("the prompt is empty and no BOS was requested: there is nothing to continue.", nameof(prompt));
        if (ids.Count >= Config.MaxSequenceLength)
            throw new ArgumentException(
                $"the prompt is {ids.Count} tokens but the model's context is {Config.MaxSequenceLength}: it must leave room for at least one generated token.",
                nameof(prompt));
        return ids;
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<GeneratedPiece> GenerateAsync(string prompt, GenerationOptions options, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        options.Validate();
        var ids = EncodePrompt(prompt, options); // fail fast, before the worker starts
        await foreach (var piece in GenerateAsync(ids, options, new GenerationStats(), cancellationToken).ConfigureAwait(false))
            yield return piece;
    }

    /// <summary>
    /// Streams the continuation of <paramref name="promptIds"/>, generated on a worker thread; <paramref name="stats"/> is
    /// final once the enumeration ends. The worker stops when <paramref name="cancellationToken"/> is cancelled (the
    /// enumeration then throws <see cref="OperationCanceledException"/>) or when the caller stops enumerating (break,
    /// dispose, exception): either way the sequence's KV blocks are back in the pool before the enumerator's disposal completes.
    /// </summary>
    public async IAsyncEnumerable<GeneratedPiece> GenerateAsync(IReadOnlyList<int> promptIds, GenerationOptions options, GenerationStats stats,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        options.Validate();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var channel = Channel.CreateBounded<GeneratedPiece>(new BoundedChannelOptions(64) { SingleReader = true, SingleWriter = true });
        var worker = Task.Run(() =>
        {
            try
            {
                foreach (var piece in Generate(promptIds, options, stats, stop.Token))
                    channel.Writer.WriteAsync(piece, stop.Token).AsTask().GetAwaiter().GetResult();
                channel.Writer.Complete();
            }
            catch (Exception e)
            {
                channel.Writer.Complete(e);
            }
        }, CancellationToken.None);
        try
        {
            await foreach (var piece in channel.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
                yield return piece;
        }
        finally
        {
            // A caller that stopped reading leaves the worker blocked on a full channel: stop it, and wait until its
            // sequence is disposed. The worker never throws (its exceptions went to the channel).
            await stop.CancelAsync().ConfigureAwait(false);
            await worker.ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Generates synchronously on the calling thread, streaming pieces as tokens are accepted.
    /// <paramref name="stats"/> is filled in as it goes. Cancellation ends the stream with <see cref="FinishReason.Cancelled"/>.
    /// </summary>
    public IEnumerable<GeneratedPiece> Generate(IReadOnlyList<int> promptIds, GenerationOptions options, GenerationStats stats, CancellationToken cancellationToken = default)
    {
        options.Validate();
        _gate.Wait(cancellationToken);
        try
        {
            foreach (var piece in GenerateLocked(promptIds, options, stats, cancellationToken)) yield return piece;
        }
        finally
        {
            _gate.Release();
        }
    }

    private IEnumerable<GeneratedPiece> GenerateLocked(IReadOnlyList<int> promptIds, GenerationOptions options, GenerationStats stats, CancellationToken cancellationToken)
    {
        var c = Config;
        int maxNew = Math.Min(options.MaxTokens ?? int.MaxValue, c.MaxSequenceLength - promptIds.Count);
        var sampler = new Sampler(options.Sampling, options.Seed);
        bool continuesText = promptIds.Any(id => id != Tokenizer.BosId);
        var detokenizer = Tokenizer.CreateStreamingDetokenizer(continuesText);
        var stops = new StopSequenceFilter(options.StopSequences);
        stats.PromptTokens = promptIds.Count;
        var tree = options.UseMedusa && Heads is not null ? Tree(options.Tree) : null;
        int slack = tree?.Topology.NodeCount ?? 1;
        using var sequence = Pool.CreateSequence(Math.Min(c.MaxSequenceLength, promptIds.Count + maxNew + slack));
        var prompt = promptIds as int[] ?? [.. promptIds];
        SequenceDecoder decoder;
        if (tree is not null)
        {
            stats.Medusa = new MedusaStats(Heads!.HeadCount);
            stats.Tree = tree.Topology.Name;
            decoder = new MedusaDecoder(Model, sequence, sampler, prompt, null, Heads, tree.Topology, tree.Mask, options.Acceptance, stats.Medusa);
        }
        else
        {
            decoder = new AutoregressiveDecoder(Model, sequence, sampler, prompt);
        }
        using var release = new DecoderRelease(decoder);
        var runner = new SingleSequenceRunner(Model, _workspace, decoder);

        var accepted = new List<int>(16);
        var clock = Stopwatch.StartNew();
        runner.Advance(accepted);
        stats.PrefillSeconds = clock.Elapsed.TotalSeconds;
        clock.Restart();
        stats.FinishReason = FinishReason.MaxTokens;
        var text = new System.Text.StringBuilder();
        bool finished = false;
        while (true)
        {
            if (cancellationToken.IsCancellationRequested)
            {
                stats.FinishReason = FinishReason.Cancelled;
                break;
            }
            text.Clear();
            int taken = 0;
            foreach (int token in accepted)
            {
                if (c.EndTokenIds.Contains(token))
                {
                    stats.FinishReason = FinishReason.EndToken;
                    finished = true;
                    break;
                }
                stats.GeneratedTokens++;
                taken++;
                text.Append(stops.Push(detokenizer.Append(token)));
                if (stops.Stopped)
                {
                    stats.FinishReason = FinishReason.StopSequence;
                    finished = true;
                    break;
                }
                if (stats.GeneratedTokens >= maxNew)
                {
                    stats.FinishReason = stats.GeneratedTokens >= (options.MaxTokens ?? int.MaxValue) ? FinishReason.MaxTokens : FinishReason.ContextFull;
                    finished = true;
                    break;
                }
            }
            stats.DecodeSeconds = clock.Elapsed.TotalSeconds;
            if (taken > 0) yield return new GeneratedPiece(text.ToString(), accepted.GetRange(0, taken));
            if (finished) break;
            accepted.Clear();
            runner.Advance(accepted);
            stats.Steps++;
        }
        stats.DecodeSeconds = clock.Elapsed.TotalSeconds;
        var tail = stops.Push(detokenizer.Flush()) + stops.Flush();
        if (tail.Length > 0) yield return new GeneratedPiece(tail, []);
    }

    /// <summary>Frees a decoder's own device buffers when its generation ends.</summary>
    private readonly struct DecoderRelease(SequenceDecoder decoder) : IDisposable
    {
        public void Dispose() => (decoder as MedusaDecoder)?.Release();
    }

    /// <summary>A compiled tree and its mask on the device.</summary>
    private sealed record CompiledTree(TreeTopology Topology, DeviceTensor Mask);

    private readonly Dictionary<string, CompiledTree> _trees = new(StringComparer.Ordinal);

    private CompiledTree Tree(string? name)
    {
        name ??= TreePresets.Default;
        if (_trees.TryGetValue(name, out var compiled)) return compiled;
        var topology = TreeTopology.Resolve(name, Heads!.HeadCount, MedusaHeads.TopK);
        if (topology.NodeCount > MaxTreeNodes)
            throw new ArgumentException($"tree '{name}' has {topology.NodeCount} nodes; at most {MaxTreeNodes} are verified in one forward.");
        var mask = Backend.Allocate(DType.I32, topology.NodeCount, topology.NodeCount);
        Backend.Upload(mask, topology.Mask);
        compiled = new CompiledTree(topology, mask);
        _trees[name] = compiled;
        return compiled;
    }

    /// <summary>Frees the device memory and closes the checkpoint.</summary>
    public void Dispose()
    {
        if (_disposed) return; // the DI container may dispose the one engine under two service types
        _disposed = true;
        foreach (var tree in _trees.Values) tree.Mask.Dispose();
        _workspace.Dispose();
        Heads?.Dispose();
        _headsCheckpoint?.Dispose();
        Pool.Dispose();
        Model.Dispose();
        Backend.Dispose();
        _checkpoint.Dispose();
        _gate.Dispose();
    }
}
