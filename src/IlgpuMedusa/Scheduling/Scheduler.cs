using System.Diagnostics;
using System.Threading.Channels;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Generation.Constraints;
using IlgpuMedusa.Medusa;
using IlgpuMedusa.Models;
using IlgpuMedusa.Tokenization;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Scheduling;

/// <summary>A snapshot of the scheduler's counters.</summary>
/// <param name="Running">Sequences holding KV blocks.</param>
/// <param name="Waiting">Sequences waiting for admission (new or preempted).</param>
/// <param name="Preemptions">Sequences preempted so far (their blocks freed, to be recomputed).</param>
/// <param name="BlocksUsed">KV blocks held by sequences.</param>
/// <param name="BlocksFree">KV blocks free.</param>
/// <param name="Steps">Batched forwards run.</param>
/// <param name="GeneratedTokens">Tokens emitted to callers.</param>
/// <param name="TokensPerSecond">Emitted tokens per second of busy time.</param>
/// <param name="MeanAcceptedPerStep">Tokens emitted per sequence-step (1 without Medusa).</param>
/// <param name="BlocksCached">Of <paramref name="BlocksFree"/>, blocks keeping a cached prefix for later sequences.</param>
/// <param name="PrefixQueryTokens">Prompt tokens looked up in the prefix cache (each admission, recomputations included).</param>
/// <param name="PrefixHitTokens">Of <paramref name="PrefixQueryTokens"/>, those whose KV was found cached and not computed.</param>
public sealed record SchedulerStats(int Running, int Waiting, long Preemptions, int BlocksUsed, int BlocksFree, long Steps,
    long GeneratedTokens, double TokensPerSecond, double MeanAcceptedPerStep, int BlocksCached = 0, long PrefixQueryTokens = 0,
    long PrefixHitTokens = 0);

/// <summary>
/// Continuous batching: one loop serves every request. Each iteration it admits waiting sequences the KV pool can
/// take, asks every running sequence for its next forward (a prompt chunk, one token, or a Medusa tree), runs all of
/// them side by side in ONE forward pass (each sequence with its own positions, block table and mask), computes the
/// logits of the rows that matter, and lets each sequence accept its tokens. Sequences join and leave between steps.
/// When the pool runs short the newest sequence is preempted: its blocks are freed and it is recomputed later from its
/// tokens, so no request that fits alone ever fails and no other sequence's cache is touched. With prefix caching
/// (<see cref="KvBlockPool.PrefixCaching"/>) a sequence starts from the cached blocks of the longest full-block prefix
/// of its tokens, and offers its own full blocks to the cache as they fill.
/// </summary>
public sealed class Scheduler : IDisposable
{
    private readonly LlamaModel _model;
    private readonly MedusaHeads? _heads;
    private readonly KvBlockPool _pool;
    private readonly ForwardWorkspace _workspace;
    private readonly ITextTokenizer _tokenizer;
    /// <summary>The token bytes JSON mode reads, built for the first request that asks for it.</summary>
    private readonly Lazy<ConstraintVocabulary> _constraintVocabulary;
    private readonly Func<string?, bool, (CandidateTree Tree, DeviceTensor? Mask)> _trees; // (name, with its device mask)
    private readonly Lock _lock = new();
    private readonly Queue<Request> _waiting = new();
    private readonly List<Request> _running = [];
    private readonly SemaphoreSlim _wake = new(0);
    private readonly Thread _loop;
    private readonly List<ForwardSegment> _segments = [];
    private readonly List<Request> _batch = [];
    private int[] _tokens = [];
    private int[] _positions = [];
    private int[] _gather = [];
    private int[] _argMax = [];
    private float[] _logitRow = [];
    private volatile bool _disposed;
    private long _preemptions, _steps, _generated, _sequenceSteps, _sequenceTokens;
    private double _busySeconds;

    private readonly Microsoft.Extensions.Logging.ILogger? _logger;
    private readonly Stopwatch _sinceLog = Stopwatch.StartNew();

    /// <summary>How often the counters are logged while the scheduler is busy.</summary>
    private static readonly TimeSpan LogInterval = TimeSpan.FromSeconds(10);

    internal Scheduler(LlamaModel model, MedusaHeads? heads, KvBlockPool pool, ForwardWorkspace workspace, ITextTokenizer tokenizer,
        Func<string?, bool, (CandidateTree, DeviceTensor?)> trees, Microsoft.Extensions.Logging.ILogger? logger = null, int speculationBatchLimit = int.MaxValue)
    {
        _speculationBatchLimit = speculationBatchLimit;
        _logger = logger;
        _model = model;
        _heads = heads;
        _pool = pool;
        _workspace = workspace;
        _tokenizer = tokenizer;
        // The model's end tokens (config.json / generation_config.json) and the tokenizer's EOS, as vLLM does: an
        // Instruct model whose generation config lists only its base end token still stops at its end-of-turn token.
        EndTokens = new HashSet<int>(model.Config.EndTokenIds.Append(tokenizer.EosId).Where(id => id >= 0 && id < model.Config.VocabSize));
        _constraintVocabulary = new(() => ConstraintVocabulary.Build(tokenizer, model.Config.VocabSize, [.. EndTokens]));
        _trees = trees;
        _loop = new Thread(Loop) { IsBackground = true, Name = "ilgpu-medusa scheduler" };
        _loop.Start();
    }

    /// <summary>The tokens that end a sequence: the model's end tokens and the tokenizer's EOS.</summary>
    public IReadOnlySet<int> EndTokens { get; }

    /// <summary>Most tokens in one batched forward.</summary>
    public int MaxBatchTokens => _workspace.MaxTokens;

    private readonly int _speculationBatchLimit;

    /// <summary>The current counters.</summary>
    public SchedulerStats Stats
    {
        get
        {
            lock (_lock)
            {
                return new SchedulerStats(_running.Count, _waiting.Count, _preemptions, _pool.BlockCount - _pool.FreeBlocks, _pool.FreeBlocks,
                    _steps, _generated, _busySeconds > 0 ? _generated / _busySeconds : 0,
                    _sequenceSteps > 0 ? (double)_sequenceTokens / _sequenceSteps : 0, _pool.CachedBlocks, _pool.PrefixQueryTokens, _pool.PrefixHitTokens);
            }
        }
    }

    /// <summary>
    /// Queues a request; its pieces arrive on the returned reader, which completes when it ends (or faults with the
    /// error that ended it). Throws <see cref="KvPoolExhaustedException"/> at once for a request that can never fit.
    /// </summary>
    internal ChannelReader<GeneratedPiece> Submit(int[] prompt, GenerationOptions options, GenerationStats stats, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var c = _model.Config;
        int maxNew = Math.Min(options.MaxTokens ?? int.MaxValue, c.MaxSequenceLength - prompt.Length);
        // Resolved here, so that a bad tree fails the call; its mask is uploaded on the scheduler's thread (CreateDecoder).
        // A request that generates nothing (MaxTokens 0: the prompt only) needs no heads.
        (CandidateTree Tree, DeviceTensor? Mask)? tree = options.UseMedusa && _heads is not null && maxNew > 0 ? _trees(options.Tree, false) : null;
        int slack = tree?.Tree.NodeCount ?? 1;
        int maxTokens = Math.Min(c.MaxSequenceLength, prompt.Length + maxNew + slack);
        int blocks = _pool.BlocksFor(maxTokens);
        if (blocks > _pool.BlockCount)
            throw new KvPoolExhaustedException(
                $"this request needs up to {maxTokens} KV positions ({blocks} blocks of {_pool.BlockSize}) but the whole pool has {_pool.BlockCount} blocks " +
                $"(budget {KvBlockPool.Megabytes(_pool.BudgetBytes)}). Raise the KV budget or lower MaxTokens.");
        if (tree is not null && options.ChangesLogits && options.Acceptance is Medusa.Acceptance.TypicalAcceptance)
            throw new ArgumentException(
                "Acceptance (--acceptance) typical judges guesses by the unadjusted distribution: it cannot be combined with penalties, a logit bias or JSON mode; use greedy acceptance (or no Medusa).",
                nameof(options));
        foreach (int token in options.LogitBias.Keys)
            if (token >= c.VocabSize) throw new ArgumentException($"LogitBias (--logit-bias): token id {token} is outside the vocabulary of {c.VocabSize}.", nameof(options));
        if (tree is { } t && t.Tree.NodeCount > MaxBatchTokens)
            throw new ArgumentException($"tree '{t.Tree.Name}' has {t.Tree.NodeCount} nodes but a batch holds {MaxBatchTokens} tokens.");
        var request = new Request(prompt, options, stats, maxNew, maxTokens, tree,
            _tokenizer.CreateStreamingDetokenizer(GeneratedTextContinues(_tokenizer, prompt, options)),
            new Sampler(options.Sampling, options.Seed),
            () => _constraintVocabulary.Value, cancellationToken);
        stats.PromptTokens = prompt.Length;
        stats.FinishReason = FinishReason.MaxTokens;
        if (tree is { } tr)
        {
            stats.Medusa = new MedusaStats(_heads!.HeadCount);
            stats.Tree = tr.Tree.Name;
        }
        lock (_lock)
        {
            // Checked again under the lock: the loop's last pass (after Dispose) finishes everything queued before it.
            ObjectDisposedException.ThrowIf(_disposed, this);
            _waiting.Enqueue(request);
        }
        try
        {
            _wake.Release();
        }
        catch (ObjectDisposedException)
        {
            // Disposed since: the loop's last pass has ended this request with ObjectDisposedException.
        }
        return request.Output.Reader;
    }

    /// <summary>
    /// Whether the generated text is shown as continuing earlier text (see <see cref="ITextTokenizer.CreateStreamingDetokenizer"/>):
    /// after a prompt with text, and always under a constraint, whose text is exactly the bytes its grammar read (no
    /// dummy-prefix space dropped from it).
    /// </summary>
    internal static bool GeneratedTextContinues(ITextTokenizer tokenizer, IEnumerable<int> prompt, GenerationOptions options) =>
        options.ResponseFormat != ResponseFormat.Text || prompt.Any(id => id != tokenizer.BosId);

    /// <summary>
    /// Forgets every cached prefix no sequence holds, so that the next prompts are computed whole (a benchmark's cold
    /// baseline); prefixes that running sequences hold stay. Safe while requests run.
    /// </summary>
    public void ClearPrefixCache()
    {
        lock (_lock) _pool.ClearPrefixCache(); // the loop changes the pool only under the lock
    }

    /// <summary>Tests: a step of a request whose options this returns true for fails (as a broken sampler or heads would).</summary>
    internal Func<GenerationOptions, bool>? FailStepFor { get; set; }

    /// <summary>Tests: starting a request whose options this returns true for fails (as a tree mask that cannot be uploaded would).</summary>
    internal Func<GenerationOptions, bool>? FailAdmissionFor { get; set; }

    private sealed class Request(int[] prompt, GenerationOptions options, GenerationStats stats, int maxNew, int maxTokens,
        (CandidateTree Tree, DeviceTensor? Mask)? tree, IStreamingDetokenizer detokenizer, Sampler sampler, Func<ConstraintVocabulary> vocabulary,
        CancellationToken cancellation)
    {
        public int[] Prompt { get; } = prompt;
        public GenerationOptions Options { get; } = options;
        public GenerationStats Stats { get; } = stats;
        public CancellationToken Cancellation { get; } = cancellation;
        public int MaxNew { get; } = maxNew;
        public int MaxTokens { get; } = maxTokens;
        public (CandidateTree Tree, DeviceTensor? Mask)? Tree { get; } = tree;
        public IStreamingDetokenizer Detokenizer { get; } = detokenizer;
        public StopSequenceFilter Stops { get; } = new(options.StopSequences);
        public Sampler Sampler { get; } = sampler;
        public Channel<GeneratedPiece> Output { get; } = Channel.CreateUnbounded<GeneratedPiece>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        public List<int> Emitted { get; } = [];
        public List<int> Accepted { get; } = new(16);
        /// <summary>The penalties and logit bias (null: none); it counts the generated tokens across preemptions.</summary>
        public LogitProcessor? Processor { get; } = LogitProcessor.For(options, prompt, vocabulary);
        /// <summary>With <see cref="GenerationOptions.Logprobs"/>: the log-probability of each token in <see cref="Accepted"/>.</summary>
        public List<TokenLogprob> AcceptedLogprobs { get; } = [];
        /// <summary>With <see cref="GenerationOptions.PromptLogprobs"/>: prompt token i's score (set, not appended: a prefill restarted by preemption scores again).</summary>
        public TokenLogprob?[]? PromptScores { get; } = options.PromptLogprobs ? new TokenLogprob?[prompt.Length] : null;
        public Stopwatch Clock { get; } = new();
        public KvSequence? Sequence { get; set; }
        public SequenceDecoder? Decoder { get; set; }
        /// <summary>The prompt and the emitted tokens in one list, built when the prefix cache is offered generated tokens.</summary>
        public List<int>? Known { get; set; }
        /// <summary>The tokens its decoder prefills (<see cref="DecoderPrompt"/>), while it runs.</summary>
        public int[]? DecoderTokens { get; set; }
        public bool Done { get; set; }
    }

    private void Loop()
    {
        while (!_disposed)
        {
            bool idle;
            lock (_lock) idle = _running.Count == 0 && _waiting.Count == 0;
            if (idle)
            {
                _wake.Wait(TimeSpan.FromMilliseconds(200));
                continue;
            }
            try
            {
                Iterate();
            }
            catch (Exception e)
            {
                // A device or model failure ends every request in flight with that error; the loop lives on.
                lock (_lock)
                {
                    foreach (var r in _running.Concat(_waiting).ToArray()) Finish(r, e);
                    _running.Clear();
                    _waiting.Clear();
                }
            }
        }
        lock (_lock)
        {
            foreach (var r in _running.Concat(_waiting).ToArray()) Finish(r, new ObjectDisposedException(nameof(Scheduler), "the engine was disposed"));
            _running.Clear();
            _waiting.Clear();
        }
    }

    private void Iterate()
    {
        var clock = Stopwatch.StartNew();
        lock (_lock)
        {
            DropCancelled();
            Admit();
            BuildBatch();
        }
        if (_batch.Count == 0) return;
        RunBatch();
        lock (_lock)
        {
            _steps++;
            _busySeconds += clock.Elapsed.TotalSeconds;
            _running.RemoveAll(r => r.Done);
        }
        if (_logger is not null && _sinceLog.Elapsed >= LogInterval)
        {
            _sinceLog.Restart();
            var s = Stats;
            Microsoft.Extensions.Logging.LoggerExtensions.LogInformation(_logger,
                "Scheduler: {Running} running, {Waiting} waiting, {Preemptions} preempted, KV blocks {Used} used / {Free} free, {TokensPerSecond:0.0} tokens/s, {Accepted:0.00} tokens per sequence-step",
                s.Running, s.Waiting, s.Preemptions, s.BlocksUsed, s.BlocksFree, s.TokensPerSecond, s.MeanAcceptedPerStep);
        }
    }

    private void DropCancelled()
    {
        if (!_running.Exists(r => r.Cancellation.IsCancellationRequested) && !_waiting.Any(r => r.Cancellation.IsCancellationRequested)) return;
        foreach (var r in _running.Where(r => r.Cancellation.IsCancellationRequested).ToArray())
        {
            r.Stats.FinishReason = FinishReason.Cancelled;
            Finish(r, null);
            _running.Remove(r);
        }
        if (_waiting.Any(r => r.Cancellation.IsCancellationRequested))
        {
            var keep = _waiting.Where(r => !r.Cancellation.IsCancellationRequested).ToArray();
            foreach (var r in _waiting.Where(r => r.Cancellation.IsCancellationRequested))
            {
                r.Stats.FinishReason = FinishReason.Cancelled;
                Finish(r, null);
            }
            _waiting.Clear();
            foreach (var r in keep) _waiting.Enqueue(r);
        }
    }

    /// <summary>
    /// Starts waiting sequences, oldest first, while the pool has free blocks for their first forward (blocks of a cached
    /// prefix they would share are not charged). A sequence whose prompt continues past its cached blocks into blocks a
    /// running sequence is prefilling right now waits for them (the sequences after it go first), so that identical
    /// prompts arriving together (several choices, a shared system prompt) compute their common blocks once.
    /// </summary>
    private void Admit()
    {
        if (_waiting.Count == 0) return;
        var deferred = new List<Request>();
        while (_waiting.Count > 0)
        {
            var r = _waiting.Peek();
            var (tokens, _) = DecoderPrompt(r);
            int found = 0, released = 0;
            if (UsesPrefixCache(r))
            {
                (found, released) = _pool.PeekCached(tokens, keep: 1, _pool.BlocksFor(r.MaxTokens));
                if (PrefilledElsewhere(tokens, found))
                {
                    deferred.Add(_waiting.Dequeue());
                    continue;
                }
            }
            int first = r.Prompt.Length + r.Emitted.Count;
            if (_pool.BlocksFor(Math.Min(first + 1, r.MaxTokens)) - found > _pool.FreeBlocks - released && _running.Count > 0) break;
            _waiting.Dequeue();
            try
            {
                r.Sequence = _pool.CreateSequence(r.MaxTokens);
                if (FailAdmissionFor?.Invoke(r.Options) == true) throw new InvalidOperationException("starting this request failed (injected by a test)");
                r.Decoder = CreateDecoder(r, r.Sequence, tokens);
            }
            catch (Exception e)
            {
                // Out of both queues here: end it now (its blocks back to the pool), or no one would.
                Finish(r, e);
                continue;
            }
            if (!r.Clock.IsRunning) r.Clock.Start();
            _running.Add(r);
        }
        if (deferred.Count == 0) return;
        // The deferred ones keep their places at the front, in their order.
        var rest = _waiting.ToArray();
        _waiting.Clear();
        foreach (var w in deferred) _waiting.Enqueue(w);
        foreach (var w in rest) _waiting.Enqueue(w);
    }

    /// <summary>
    /// True when a running sequence is prefilling <paramref name="tokens"/>' full block after its <paramref name="found"/>
    /// cached ones (a block this prompt would use: one token past it remains), so that waiting a step or a few saves
    /// computing it twice.
    /// </summary>
    private bool PrefilledElsewhere(int[] tokens, int found)
    {
        int end = (found + 1) * _pool.BlockSize;
        if (end > tokens.Length - 1) return false;
        foreach (var other in _running)
        {
            if (other.Decoder is not { Prefilling: true } decoder || other.DecoderTokens is not { } theirs) continue;
            if (theirs.Length >= end && decoder.Committed < end && theirs.AsSpan(0, end).SequenceEqual(tokens.AsSpan(0, end))) return true;
        }
        return false;
    }

    /// <summary>
    /// The tokens a decoder for <paramref name="r"/> prefills: its prompt, or after a preemption everything it emitted but
    /// the last token, which stays pending (the cache is recomputed, no token chosen).
    /// </summary>
    private static (int[] Tokens, int? Pending) DecoderPrompt(Request r) => r.Emitted.Count == 0
        ? (r.Prompt, null)
        : ([.. r.Prompt, .. r.Emitted.Take(r.Emitted.Count - 1)], r.Emitted[^1]);

    /// <summary>A prompt that is scored needs every row's logits: it is computed whole (and offers its blocks afterwards).</summary>
    private bool UsesPrefixCache(Request r) => _pool.PrefixCaching && !(r.Options.PromptLogprobs && r.Emitted.Count == 0);

    private SequenceDecoder CreateDecoder(Request r, KvSequence sequence, int[] prompt)
    {
        bool resume = r.Emitted.Count > 0;
        int? pending = resume ? r.Emitted[^1] : null;
        r.DecoderTokens = prompt;
        var tree = r.Tree;
        var mask = tree is { } t && !t.Tree.IsDynamic ? _trees(r.Options.Tree, true).Mask : null;
        int cached = UsesPrefixCache(r) ? sequence.AttachCachedPrefix(prompt) : 0;
        // The admission whose prefill gives the first token says how much of the prompt was cached (a prefill cut short by
        // preemption starts again; a sequence recomputed after emitting tokens does not change it).
        if (!resume) r.Stats.CachedPromptTokens = cached;
        if (tree is { } medusa)
        {
            return new MedusaDecoder(_model, sequence, r.Sampler, prompt, pending, _heads!, medusa.Tree, mask, r.Options.Acceptance, r.Stats.Medusa!)
            {
                ReportsLogprobs = r.Options.Logprobs is not null,
                ScoresPrompt = r.Options.PromptLogprobs,
                Processor = r.Processor,
                CachedPrefix = cached,
            };
        }
        return new AutoregressiveDecoder(_model, sequence, r.Sampler, prompt, pending)
        {
            ReportsLogprobs = r.Options.Logprobs is not null,
            ScoresPrompt = r.Options.PromptLogprobs,
            Processor = r.Processor,
            CachedPrefix = cached,
        };
    }

    /// <summary>Plans each running sequence's next forward into one batch, reserving KV blocks (preempting when short).</summary>
    private void BuildBatch()
    {
        _batch.Clear();
        _segments.Clear();
        int used = 0, logitRows = 0;
        for (int i = 0; i < _running.Count; i++)
        {
            var r = _running[i];
            var decoder = r.Decoder!;
            // Leave a row for every sequence after this one, so that a tree or a prompt chunk early in the list cannot
            // take the whole batch (a tree that does not fit shrinks to a one-token step, a prompt chunk gets shorter);
            // when the batch is too small for one row each, they take one row each, in order.
            int budget = MaxBatchTokens - used - (_running.Count - 1 - i);
            if (budget < 1) budget = Math.Min(1, MaxBatchTokens - used);
            if (!decoder.Plan(budget)) continue;
            if (!Reserve(r, decoder.Committed + decoder.PlanCount)) continue; // r itself was preempted
            i = _running.IndexOf(r); // preemption may have removed later entries only
            int count = decoder.PlanCount;
            EnsureArrays(used + count);
            decoder.PlanTokens.CopyTo(_tokens.AsSpan(used));
            decoder.PlanPositions.CopyTo(_positions.AsSpan(used));
            foreach (int row in decoder.PlanLogitRows) _gather[logitRows++] = used + row;
            _segments.Add(new ForwardSegment(r.Sequence!, decoder.Committed, used, count, decoder.PlanMask));
            _batch.Add(r);
            used += count;
        }
    }

    /// <summary>Makes sure <paramref name="r"/> holds blocks for <paramref name="tokens"/> positions, preempting the newest others.</summary>
    private bool Reserve(Request r, int tokens)
    {
        while (true)
        {
            int needed = _pool.BlocksFor(tokens) - r.Sequence!.BlockCount;
            if (needed <= _pool.FreeBlocks)
            {
                r.Sequence.EnsureCapacity(tokens);
                return true;
            }
            var victim = _running[^1];
            Preempt(victim);
            if (ReferenceEquals(victim, r)) return false;
        }
    }

    private void Preempt(Request r)
    {
        r.Decoder?.Release();
        r.Decoder = null;
        r.Sequence?.Dispose();
        r.Sequence = null;
        _running.Remove(r);
        _batch.Remove(r);
        _preemptions++;
        if (_logger is not null)
            Microsoft.Extensions.Logging.LoggerExtensions.LogInformation(_logger,
                "Scheduler: preempted a sequence with {Tokens} tokens to free KV blocks ({Free} free of {Total}); it will be recomputed",
                r.Prompt.Length + r.Emitted.Count, _pool.FreeBlocks, _pool.BlockCount);
        // Back to the front of the queue: it is older than anything still waiting.
        var rest = _waiting.ToArray();
        _waiting.Clear();
        _waiting.Enqueue(r);
        foreach (var w in rest) _waiting.Enqueue(w);
    }

    private void EnsureArrays(int rows)
    {
        if (_tokens.Length >= rows) return;
        int size = Math.Max(rows, MaxBatchTokens);
        Array.Resize(ref _tokens, size);
        Array.Resize(ref _positions, size);
        Array.Resize(ref _gather, size);
        Array.Resize(ref _argMax, size);
    }

    private void RunBatch()
    {
        int rows = _segments[^1].Start + _segments[^1].Count;
        var b = _model.Backend;
        var inputs = _workspace.Prepare(_tokens.AsSpan(0, rows), _positions.AsSpan(0, rows));
        for (int i = 0; i < _batch.Count; i++)
            if (_batch[i].Decoder!.WritesPlanTokens) _batch[i].Decoder!.WritePlanTokens(inputs.Tokens.Slice(_segments[i].Start, _segments[i].Count));
        var hidden = _model.Forward(_workspace, inputs, _segments);

        // Logits only for the rows some sequence needs (the last prompt row, the decoded token, every tree node).
        int needed = 0;
        bool rowsNeeded = false;
        foreach (var r in _batch)
        {
            needed += r.Decoder!.PlanLogitRows.Length;
            rowsNeeded |= r.Decoder.NeedsLogitRows;
        }
        DeviceTensor? logits = null;
        if (needed > 0)
        {
            var indices = _workspace.GatherRowsFor(_gather.AsSpan(0, needed));
            var gathered = _workspace.Gathered.Slice(0, needed);
            b.Embedding(gathered, indices, hidden);
            var ids = _workspace.ArgMax.Slice(0, needed);
            if (rowsNeeded)
            {
                logits = _model.Logits(_workspace, gathered);
                b.ArgMax(ids, logits);
            }
            else
            {
                _model.GreedyTokens(_workspace, gathered, ids); // every sequence here decodes greedily: the tokens suffice
            }
            b.Download(ids, _argMax.AsSpan(0, needed));
        }

        int logitRow = 0;
        for (int i = 0; i < _batch.Count; i++)
        {
            var r = _batch[i];
            var segment = _segments[i];
            var decoder = r.Decoder!;
            int count = decoder.PlanLogitRows.Length;
            var stepLogits = count == 0 ? default : new StepLogits(logits?.Slice(logitRow, count)!, _argMax.AsSpan(logitRow, count));
            logitRow += count;
            r.Accepted.Clear();
            r.AcceptedLogprobs.Clear();
            bool wasPrefilling = decoder.Prefilling;
            // In a batch past the limit, Medusa sequences skip their heads and take one-token steps until it shrinks.
            if (decoder is MedusaDecoder medusa) medusa.SpeculateNext = _running.Count <= _speculationBatchLimit;
            try
            {
                if (FailStepFor?.Invoke(r.Options) == true) throw new InvalidOperationException("a step of this request failed (injected by a test)");
                decoder.Complete(hidden.Slice(segment.Start, segment.Count), stepLogits, r.Accepted);
                if (count > 0) ReadLogprobs(r, decoder, stepLogits.Rows, wasPrefilling);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // One sequence's failure (its sampling, its heads) ends that request only; the others in the batch go on.
                // A broken device fails the next forward, which ends every request (Loop).
                lock (_lock) Finish(r, e);
                continue;
            }
            if (!wasPrefilling)
            {
                r.Stats.Steps++;
                lock (_lock)
                {
                    _sequenceSteps++;
                    _sequenceTokens += r.Accepted.Count;
                }
            }
            else if (!decoder.Prefilling && r.Emitted.Count == 0)
            {
                // The first prefill only: a sequence recomputed after preemption keeps its clock running.
                r.Stats.PrefillSeconds = r.Clock.Elapsed.TotalSeconds;
                r.Clock.Restart();
            }
            Emit(r);
        }
    }

    /// <summary>
    /// The log-probabilities a request asked for, from the logits rows of its step: the prompt tokens a prefill chunk
    /// scored, and each accepted token (from the row it was chosen from).
    /// </summary>
    private void ReadLogprobs(Request r, SequenceDecoder decoder, DeviceTensor rows, bool wasPrefilling)
    {
        int top = r.Options.Logprobs ?? 0;
        if (wasPrefilling && r.PromptScores is { } scores && decoder.ScoresPrompt)
        {
            for (int i = 0; i < rows.Rows; i++)
            {
                int position = decoder.PrefillStart + i + 1;
                if (position >= scores.Length) break; // the last prompt row gives the first generated token
                scores[position] = LogprobMath.Of(Row(rows, i), r.Prompt[position], top);
            }
            if (!decoder.Prefilling) r.Stats.PromptLogprobs = scores; // before the first piece is written
        }
        if (!decoder.ReportsLogprobs) return;
        for (int j = 0; j < r.Accepted.Count; j++)
        {
            int row = decoder.AcceptedRows[j];
            if (row < 0) throw new InvalidOperationException("a token was accepted without the logits row its log-probability needs");
            r.AcceptedLogprobs.Add(LogprobMath.Of(Row(rows, row), r.Accepted[j], top));
        }
    }

    /// <summary>Row <paramref name="row"/> of the logits, on the host.</summary>
    private ReadOnlySpan<float> Row(DeviceTensor logits, int row)
    {
        if (_logitRow.Length != logits.Columns) _logitRow = new float[logits.Columns];
        _model.Backend.Download(logits.Slice(row, 1), _logitRow);
        return _logitRow;
    }

    /// <summary>Streams the accepted tokens of a step, ending the request at an end token, a stop sequence or its limit.</summary>
    private void Emit(Request r)
    {
        if (r.Accepted.Count == 0)
        {
            lock (_lock) OfferCachedBlocks(r);
            return;
        }
        if (r.MaxNew == 0)
        {
            // The prompt only (MaxTokens 0): the token its last row chose is not generated.
            r.Stats.FinishReason = FinishReason.MaxTokens;
            lock (_lock)
            {
                OfferCachedBlocks(r);
                Finish(r, null);
            }
            return;
        }
        var text = new System.Text.StringBuilder();
        int taken = 0;
        bool finished = false;
        foreach (int token in r.Accepted)
        {
            if (EndTokens.Contains(token))
            {
                r.Stats.FinishReason = FinishReason.EndToken;
                finished = true;
                break;
            }
            r.Stats.GeneratedTokens++;
            r.Emitted.Add(token);
            taken++;
            text.Append(r.Stops.Push(r.Detokenizer.Append(token)));
            if (r.Stops.Stopped)
            {
                r.Stats.FinishReason = FinishReason.StopSequence;
                finished = true;
                break;
            }
            if (r.Stats.GeneratedTokens >= r.MaxNew)
            {
                r.Stats.FinishReason = r.Stats.GeneratedTokens >= (r.Options.MaxTokens ?? int.MaxValue) ? FinishReason.MaxTokens : FinishReason.ContextFull;
                finished = true;
                break;
            }
        }
        r.Stats.DecodeSeconds = r.Clock.Elapsed.TotalSeconds;
        lock (_lock) _generated += taken;
        if (taken > 0)
            r.Output.Writer.TryWrite(new GeneratedPiece(text.ToString(), r.Accepted.GetRange(0, taken),
                r.Options.Logprobs is null ? null : r.AcceptedLogprobs.GetRange(0, taken)));
        lock (_lock)
        {
            OfferCachedBlocks(r); // before Finish frees the blocks: a request's whole text can serve the next turn
            if (finished) Finish(r, null);
        }
    }

    /// <summary>
    /// Offers the request's filled blocks to the prefix cache. The cache holds the prompt, then the emitted tokens (all
    /// but the pending one, which is not in it yet); past an end token the emitted list stops, and so do the offers.
    /// </summary>
    private void OfferCachedBlocks(Request r)
    {
        if (r.Sequence is not { } sequence || r.Decoder is not { } decoder || !_pool.PrefixCaching) return;
        int known = r.Prompt.Length + r.Emitted.Count;
        int cached = Math.Min(decoder.Committed, known);
        if (cached < (sequence.IndexedBlocks + 1) * _pool.BlockSize) return; // no block filled since the last offer
        if (cached <= r.Prompt.Length)
        {
            sequence.OfferCachedBlocks(r.Prompt, cached);
            return;
        }
        r.Known ??= new List<int>(r.Prompt.Length + 64);
        if (r.Known.Count == 0) r.Known.AddRange(r.Prompt);
        for (int i = r.Known.Count - r.Prompt.Length; i < r.Emitted.Count; i++) r.Known.Add(r.Emitted[i]);
        sequence.OfferCachedBlocks(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(r.Known), cached);
    }

    /// <summary>Ends a request: frees its blocks at once and completes its stream.</summary>
    private static void Finish(Request r, Exception? error)
    {
        if (r.Done) return;
        r.Done = true;
        // Whatever fails on the way (freeing on a failed device, the detokenizer's flush), the KV blocks go back to the
        // pool and the stream completes, with the first error.
        try
        {
            try
            {
                r.Decoder?.Release();
            }
            finally
            {
                r.Decoder = null;
                var sequence = r.Sequence;
                r.Sequence = null;
                sequence?.Dispose(); // its KV blocks back to the pool
            }
            r.Stats.DecodeSeconds = r.Clock.Elapsed.TotalSeconds;
            if (error is null)
            {
                var tail = r.Stops.Push(r.Detokenizer.Flush()) + r.Stops.Flush();
                if (tail.Length > 0) r.Output.Writer.TryWrite(new GeneratedPiece(tail, []));
                // A stop sequence completed by the detokenizer's last characters cut the text there.
                if (r.Stops.Stopped && r.Stats.FinishReason is not FinishReason.Cancelled) r.Stats.FinishReason = FinishReason.StopSequence;
            }
        }
        catch (Exception e)
        {
            error ??= e;
        }
        finally
        {
            r.Output.Writer.TryComplete(error);
        }
    }

    /// <summary>Stops the loop; requests still in flight end with <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
        }
        _wake.Release();
        _loop.Join();
        _wake.Dispose();
    }
}
