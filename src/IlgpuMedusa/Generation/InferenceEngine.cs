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
/// The engine: a model on a backend, its tokenizer, the KV block pool and the scheduler that runs every request
/// (continuous batching: requests decode together in shared forwards).
/// </summary>
public sealed class InferenceEngine : IInferenceEngine, IDisposable
{
    private readonly ForwardWorkspace _workspace;

    private bool _disposed;

    /// <summary>Largest tree (nodes) a forward can verify; the workspace is sized for it.</summary>
    public const int MaxTreeNodes = 64;

    private InferenceEngine(EngineOptions options, ITextTokenizer tokenizer, IComputeBackend backend, LlamaModel model, KvBlockPool pool,
        MedusaHeads? heads, Microsoft.Extensions.Logging.ILogger? logger)
    {
        Options = options;
        Tokenizer = tokenizer;
        Backend = backend;
        Model = model;
        Pool = pool;
        Heads = heads;
        // One batched forward holds up to MaxBatchTokens rows: prompt chunks, decoded tokens and whole trees of every
        // running sequence; logits are computed only for the rows that need them, at most one per row.
        int batch = Math.Max(options.MaxBatchTokens, MaxTreeNodes);
        _workspace = new ForwardWorkspace(backend, model.Config, batch, batch);
        Scheduler = new Scheduler(model, heads, pool, _workspace, tokenizer, Tree, logger, options.SpeculationBatchLimit ?? backend.SpeculationBatchLimit);
    }

    /// <summary>
    /// The Medusa tree used when a request names none: <see cref="TreePresets.HostDefault"/> on the host (a CPU pays for
    /// every tree node), <see cref="TreePresets.Default"/> on accelerators (both small trees today; see their notes).
    /// </summary>
    public string DefaultTree => Backend.Kind == DeviceKind.Host ? TreePresets.HostDefault : TreePresets.Default;

    /// <summary>The scheduler serving every generation of this engine.</summary>
    public Scheduler Scheduler { get; }

    /// <summary>The scheduler's counters (running, waiting, preempted, blocks, prefix cache, tokens/s, accepted per step).</summary>
    public SchedulerStats SchedulerStats => Scheduler.Stats;

    /// <summary>
    /// Forgets the cached prefixes no request holds (<see cref="EngineOptions.PrefixCaching"/>): the next prompts are
    /// computed whole, as on a cold start. Safe while requests run.
    /// </summary>
    public void ClearPrefixCache() => Scheduler.ClearPrefixCache();

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
    public static InferenceEngine Load(EngineOptions options, IProgress<double>? progress = null) => Load(options, progress, null);

    /// <summary>As <see cref="Load(EngineOptions, IProgress{double}?)"/>; the scheduler logs its counters and preemptions to <paramref name="logger"/>.</summary>
    public static InferenceEngine Load(EngineOptions options, IProgress<double>? progress, Microsoft.Extensions.Logging.ILogger? logger)
    {
        options.Validate();
        var checkpoint = ModelDirectory.OpenCheckpoint(options.ModelPath);
        IComputeBackend? backend = null;
        LlamaModel? model = null;
        MedusaHeadsCheckpoint? headsCheckpoint = null;
        MedusaHeads? heads = null;
        KvBlockPool? pool = null;
        try
        {
            var tokenizer = ModelDirectory.OpenTokenizer(options.ModelPath, checkpoint.Config.VocabSize);
            if (tokenizer.VocabularySize != checkpoint.Config.VocabSize)
                throw new InvalidDataException(
                    $"{options.ModelPath}: the tokenizer has {tokenizer.VocabularySize} tokens but the model's vocabulary is {checkpoint.Config.VocabSize}.");
            backend = BackendFactory.Create(options.Device);
            model = LlamaModel.Load(checkpoint, backend, options.WeightsType, progress);
            var c = model.Config;
            long budget = options.KvBudgetMb is int mb
                ? mb * 1024L * 1024L
                : Math.Min(EngineOptions.DefaultKvSequences * (long)c.MaxSequenceLength * KvCacheLayout.BytesPerToken(c.Layers, c.KvDim, options.KvCacheType),
                    EngineOptions.DefaultKvBudgetCapBytes);
            pool = KvBlockPool.FromBudget(backend, c.Layers, c.KvHeads, c.HeadDim, options.KvBlockSize, budget, options.KvCacheType, options.PrefixCaching);
            var headsPath = FindHeads(options);
            if (headsPath is not null)
            {
                headsCheckpoint = MedusaHeadsCheckpoint.Open(headsPath);
                heads = MedusaHeads.Load(headsCheckpoint, model, checkpoint);
                headsCheckpoint.Dispose(); // copied: its pages need not stay while the workspace is allocated
                headsCheckpoint = null;
            }
            return new InferenceEngine(options, tokenizer, backend, model, pool, heads, logger);
        }
        catch
        {
            // Everything allocated so far (a load that fails late, e.g. on a bad heads file, must not leave the KV cache
            // behind: a DI container retries the load on the next resolve).
            heads?.Dispose();
            pool?.Dispose();
            model?.Dispose();
            backend?.Dispose();
            throw;
        }
        finally
        {
            // Every backend copies the weights (IComputeBackend.UploadWeight), so the mapped files can go now and
            // their pages leave the process.
            headsCheckpoint?.Dispose();
            checkpoint.Dispose();
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

    /// <summary>
    /// The longest prompt a request with <paramref name="options"/> may have: one token less than the context, for the
    /// first generated token, or the whole context when nothing is generated (<see cref="GenerationOptions.MaxTokens"/> 0).
    /// </summary>
    public int MaxPromptTokens(GenerationOptions options) => options.MaxTokens == 0 ? Config.MaxSequenceLength : Config.MaxSequenceLength - 1;

    /// <summary>Encodes a prompt and checks it fits the context (and that the options' Medusa tree fits the heads).</summary>
    public IReadOnlyList<int> EncodePrompt(string prompt, GenerationOptions options)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        var ids = Tokenizer.Encode(prompt, options.AddBos);
        if (ids.Count == 0)
            throw new ArgumentException(options.AddBos
                ? "the prompt is empty and this model's tokenizer puts no BOS first: there is nothing to continue."
                : "the prompt is empty and no BOS was requested: there is nothing to continue.", nameof(prompt));
        if (ids.Count > MaxPromptTokens(options))
            throw new ArgumentException(
                $"the prompt is {ids.Count} tokens but the model's context is {Config.MaxSequenceLength}: it must leave room for at least one generated token.",
                nameof(prompt));
        // The request's tree too (a name or file that does not fit the heads fails here, before any output).
        CheckTree(options);
        return ids;
    }

    /// <summary>
    /// Resolves the Medusa tree <paramref name="options"/> name (when they use Medusa and the model has heads), so that a
    /// name or file that does not fit the heads fails now; <see cref="ArgumentException"/> naming it.
    /// </summary>
    public void CheckTree(GenerationOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.UseMedusa && Heads is not null) Tree(options.Tree, withMask: false);
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
    /// Streams the continuation of <paramref name="promptIds"/>, generated by the engine's scheduler together with every
    /// other request in flight; <paramref name="stats"/> is final once the enumeration ends. Generation stops when
    /// <paramref name="cancellationToken"/> is cancelled (the enumeration then throws <see cref="OperationCanceledException"/>)
    /// or when the caller stops enumerating (break, dispose, exception): either way the sequence's KV blocks are back in
    /// the pool before the enumerator's disposal completes.
    /// </summary>
    public async IAsyncEnumerable<GeneratedPiece> GenerateAsync(IReadOnlyList<int> promptIds, GenerationOptions options, GenerationStats stats,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        options.Validate();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var reader = Submit(promptIds, options, stats, stop.Token);
        try
        {
            await foreach (var piece in reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
                yield return piece;
        }
        finally
        {
            await stop.CancelAsync().ConfigureAwait(false);
            await WhenFinished(reader).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Generates on the engine's scheduler and streams the pieces to the calling thread as tokens are accepted.
    /// <paramref name="stats"/> is filled in as it goes. Cancellation ends the stream with <see cref="FinishReason.Cancelled"/>;
    /// a caller that stops enumerating early cancels the request, and its KV blocks are free when the enumerator is disposed.
    /// </summary>
    public IEnumerable<GeneratedPiece> Generate(IReadOnlyList<int> promptIds, GenerationOptions options, GenerationStats stats, CancellationToken cancellationToken = default)
    {
        options.Validate();
        var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var reader = Submit(promptIds, options, stats, stop.Token);
        return Read(reader, stop);
    }

    private static IEnumerable<GeneratedPiece> Read(ChannelReader<GeneratedPiece> reader, CancellationTokenSource stop)
    {
        try
        {
            // Cancellation is seen by the scheduler, which then completes the stream; waiting here never throws for it.
            while (reader.WaitToReadAsync(CancellationToken.None).AsTask().GetAwaiter().GetResult())
                while (reader.TryRead(out var piece)) yield return piece;
        }
        finally
        {
            stop.Cancel();
            WhenFinished(reader).GetAwaiter().GetResult();
            stop.Dispose();
        }
    }

    /// <summary>Waits until the scheduler has ended a request (its blocks are then free); errors were already reported.</summary>
    private static async Task WhenFinished(ChannelReader<GeneratedPiece> reader)
    {
        try
        {
            // Completion waits for the buffer to be read too, so drain what the caller left.
            while (await reader.WaitToReadAsync(CancellationToken.None).ConfigureAwait(false))
                while (reader.TryRead(out _))
                {
                }
        }
        catch (Exception)
        {
            // the reader of the stream has seen (or chose to ignore) the request's error
        }
    }

    private ChannelReader<GeneratedPiece> Submit(IReadOnlyList<int> promptIds, GenerationOptions options, GenerationStats stats, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (promptIds.Count == 0 || promptIds.Count > MaxPromptTokens(options))
            throw new ArgumentException($"a prompt must have 1..{MaxPromptTokens(options)} tokens, got {promptIds.Count}.", nameof(promptIds));
        foreach (var id in promptIds)
            if ((uint)id >= (uint)Config.VocabSize) throw new ArgumentException($"prompt token {id} is outside the vocabulary of {Config.VocabSize}.", nameof(promptIds));
        return Scheduler.Submit([.. promptIds], options, stats, cancellationToken); // a copy: the caller may reuse its buffer, and blocks are cached by these tokens
    }

    /// <summary>A resolved tree and, once the scheduler has asked for it, a fixed tree's mask on the device.</summary>
    private sealed class CompiledTree(CandidateTree tree)
    {
        public CandidateTree Tree { get; } = tree;
        public DeviceTensor? Mask { get; set; }
    }

    private readonly Dictionary<string, CompiledTree> _trees = new(StringComparer.Ordinal);

    /// <summary>
    /// The tree called <paramref name="name"/> (the default when null), resolved and validated once; with
    /// <paramref name="withMask"/>, also a fixed tree's mask on the device, uploaded on first use. Requests resolve their
    /// tree on the caller's thread (bad names fail there); only the scheduler's thread asks for masks, so the backend is
    /// never driven from two threads.
    /// </summary>
    private (CandidateTree, DeviceTensor?) Tree(string? name, bool withMask)
    {
        lock (_trees)
        {
            name ??= DefaultTree;
            if (!_trees.TryGetValue(name, out var compiled))
            {
                var tree = CandidateTree.Resolve(name, Heads!.HeadCount, MedusaHeads.TopK);
                if (tree.NodeCount > MaxTreeNodes)
                    throw new ArgumentException($"tree '{name}' has {tree.NodeCount} nodes; at most {MaxTreeNodes} are verified in one forward.");
                _trees[name] = compiled = new CompiledTree(tree);
            }
            if (withMask && compiled.Mask is null && compiled.Tree.Fixed is { } topology)
            {
                var mask = Backend.Allocate(DType.I32, topology.NodeCount, topology.NodeCount);
                Backend.Upload(mask, topology.Mask);
                compiled.Mask = mask;
            }
            return (compiled.Tree, withMask ? compiled.Mask : null);
        }
    }

    /// <summary>Frees the device memory.</summary>
    public void Dispose()
    {
        if (_disposed) return; // the DI container may dispose the one engine under two service types
        _disposed = true;
        Scheduler.Dispose(); // ends requests still in flight before their memory goes
        foreach (var tree in _trees.Values) tree.Mask?.Dispose();
        _workspace.Dispose();
        Heads?.Dispose();
        Pool.Dispose();
        Model.Dispose();
        Backend.Dispose();
    }
}
