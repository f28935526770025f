using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using IlgpuMedusa.Compute;
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
    private readonly float[] _logitsRow;
    private readonly int[] _argMax = new int[1];
    private readonly SemaphoreSlim _gate = new(1, 1);

    private InferenceEngine(EngineOptions options, ICheckpoint checkpoint, ITextTokenizer tokenizer, IComputeBackend backend, LlamaModel model, KvBlockPool pool)
    {
        Options = options;
        _checkpoint = checkpoint;
        Tokenizer = tokenizer;
        Backend = backend;
        Model = model;
        Pool = pool;
        _workspace = new ForwardWorkspace(backend, model.Config, Math.Min(options.PrefillChunk, model.Config.MaxSequenceLength), 1);
        _logitsRow = new float[model.Config.VocabSize];
    }

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
            return new InferenceEngine(options, checkpoint, tokenizer, backend, model, pool);
        }
        catch
        {
            model?.Dispose();
            backend?.Dispose();
            checkpoint.Dispose();
            throw;
        }
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
        var channel = Channel.CreateBounded<GeneratedPiece>(new BoundedChannelOptions(64) { SingleReader = true, SingleWriter = true });
        var worker = Task.Run(() =>
        {
            try
            {
                foreach (var piece in Generate(ids, options, new GenerationStats(), cancellationToken))
                    channel.Writer.WriteAsync(piece, cancellationToken).AsTask().GetAwaiter().GetResult();
                channel.Writer.Complete();
            }
            catch (Exception e)
            {
                channel.Writer.Complete(e);
            }
        }, CancellationToken.None);
        await foreach (var piece in channel.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            yield return piece;
        await worker.ConfigureAwait(false);
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
        var detokenizer = Tokenizer.CreateStreamingDetokenizer();
        var stops = new StopSequenceFilter(options.StopSequences);
        stats.PromptTokens = promptIds.Count;
        using var sequence = Pool.CreateSequence(Math.Min(c.MaxSequenceLength, promptIds.Count + maxNew));

        var clock = Stopwatch.StartNew();
        int next = Prefill(promptIds, sequence, sampler);
        stats.PrefillSeconds = clock.Elapsed.TotalSeconds;
        clock.Restart();
        int position = promptIds.Count;
        int[] single = new int[1];
        stats.FinishReason = FinishReason.MaxTokens;
        while (true)
        {
            if (cancellationToken.IsCancellationRequested)
            {
                stats.FinishReason = FinishReason.Cancelled;
                break;
            }
            if (c.EndTokenIds.Contains(next))
            {
                stats.FinishReason = FinishReason.EndToken;
                break;
            }
            stats.GeneratedTokens++;
            var text = stops.Push(detokenizer.Append(next));
            single[0] = next;
            stats.DecodeSeconds = clock.Elapsed.TotalSeconds;
            yield return new GeneratedPiece(text, single.ToArray());
            if (stops.Stopped)
            {
                stats.FinishReason = FinishReason.StopSequence;
                break;
            }
            if (stats.GeneratedTokens >= maxNew)
            {
                stats.FinishReason = stats.GeneratedTokens >= (options.MaxTokens ?? int.MaxValue) ? FinishReason.MaxTokens : FinishReason.ContextFull;
                break;
            }
            next = Step(next, position, sequence, sampler);
            stats.Steps++;
            position++;
        }
        stats.DecodeSeconds = clock.Elapsed.TotalSeconds;
        var tail = stops.Push(detokenizer.Flush()) + stops.Flush();
        if (tail.Length > 0) yield return new GeneratedPiece(tail, []);
    }

    /// <summary>Runs the prompt through the model in chunks; returns the first generated token.</summary>
    private int Prefill(IReadOnlyList<int> promptIds, KvSequence sequence, Sampler sampler)
    {
        int chunk = _workspace.MaxTokens;
        var ids = promptIds as int[] ?? promptIds.ToArray();
        var positions = new int[Math.Min(chunk, ids.Length)];
        DeviceTensor? hidden = null;
        for (int start = 0; start < ids.Length; start += chunk)
        {
            int count = Math.Min(chunk, ids.Length - start);
            for (int i = 0; i < count; i++) positions[i] = start + i;
            var inputs = _workspace.Prepare(ids.AsSpan(start, count), positions.AsSpan(0, count));
            hidden = Model.Forward(_workspace, inputs, sequence, start);
        }
        return SampleLast(hidden!, sampler);
    }

    private readonly int[] _stepToken = new int[1];
    private readonly int[] _stepPosition = new int[1];

    private int Step(int token, int position, KvSequence sequence, Sampler sampler)
    {
        _stepToken[0] = token;
        _stepPosition[0] = position;
        var inputs = _workspace.Prepare(_stepToken, _stepPosition);
        var hidden = Model.Forward(_workspace, inputs, sequence, position);
        return SampleLast(hidden, sampler);
    }

    private int SampleLast(DeviceTensor hidden, Sampler sampler)
    {
        var logits = Model.Logits(_workspace, hidden.Slice(hidden.Rows - 1, 1));
        if (sampler.IsGreedy)
        {
            // Only one id crosses to the host.
            var argMax = _workspace.ArgMax.Slice(0, 1);
            Backend.ArgMax(argMax, logits);
            Backend.Download(argMax, _argMax);
            return _argMax[0];
        }
        Backend.Download(logits, _logitsRow);
        return sampler.Sample(_logitsRow);
    }

    /// <summary>Frees the device memory and closes the checkpoint.</summary>
    public void Dispose()
    {
        _workspace.Dispose();
        Pool.Dispose();
        Model.Dispose();
        Backend.Dispose();
        _checkpoint.Dispose();
        _gate.Dispose();
    }
}
