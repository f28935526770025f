using IlgpuMedusa.Compute;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Generation;

/// <summary>
/// The logits a sequence asked for in one forward: their argmax on the host (always), and the rows F32[n, V] on the
/// device when the decoder said it needs them (<see cref="SequenceDecoder.NeedsLogitRows"/>; otherwise null).
/// </summary>
internal readonly ref struct StepLogits
{
    public StepLogits(DeviceTensor rows, ReadOnlySpan<int> argMax)
    {
        Rows = rows;
        ArgMax = argMax;
    }

    /// <summary>Logits rows on the device, or null when only the argmax was computed.</summary>
    public DeviceTensor Rows { get; }
    /// <summary>Argmax of each row.</summary>
    public ReadOnlySpan<int> ArgMax { get; }
}

/// <summary>
/// A decoding strategy for one sequence, split in two halves so a scheduler can run many sequences in one forward:
/// <see cref="Plan"/> says which tokens to feed (a prompt chunk, the pending token, or a Medusa tree), the scheduler runs
/// the batched forward and the logits of the rows asked for, then <see cref="Complete"/> consumes them and appends the
/// accepted tokens. The last appended token is "pending": chosen and emitted, not yet in the KV cache.
/// </summary>
internal abstract class SequenceDecoder
{
    private readonly int[] _prompt;
    private readonly bool _resume;
    private int _prefilled;
    private int[] _planTokens = new int[1];
    private int[] _planPositions = new int[1];
    private float[] _row = [];
    private DeviceTensor? _stepHidden; // the hidden rows of the step being completed
    private DeviceTensor? _lazyRow;    // F32[1, V]: a row's logits computed on its own (see Choose)

    /// <summary>Frees the decoder's device buffers (the sequence's KV blocks are its own).</summary>
    public virtual void Release()
    {
        _lazyRow?.Dispose();
        _lazyRow = null;
    }

    /// <summary>
    /// Starts a sequence. <paramref name="prompt"/> is prefilled first. When <paramref name="resumePending"/> is set the
    /// sequence was preempted earlier: <paramref name="prompt"/> holds every token before the pending one, and the pending
    /// token is already emitted, so the prefill recomputes the cache without choosing a new token.
    /// </summary>
    protected SequenceDecoder(LlamaModel model, KvSequence sequence, Sampler sampler, int[] prompt, int? resumePending)
    {
        Model = model;
        Sequence = sequence;
        Sampler = sampler;
        _prompt = prompt;
        _resume = resumePending is not null;
        Pending = resumePending ?? -1;
    }

    /// <summary>
    /// Leading prompt tokens whose KV the sequence already holds (a cached prefix, <see cref="KvSequence.AttachCachedPrefix"/>):
    /// the prefill starts after them. Fewer than the prompt's tokens, so the prefill still runs the last one. (A prompt that
    /// is scored, <see cref="ScoresPrompt"/>, needs the logits of every row: its caller starts it from 0.)
    /// </summary>
    public int CachedPrefix
    {
        get => _cachedPrefix;
        init
        {
            if (value < 0 || value >= _prompt.Length)
                throw new ArgumentOutOfRangeException(nameof(CachedPrefix), value, $"a cached prefix leaves at least one of the {_prompt.Length} prompt tokens to compute");
            _cachedPrefix = _prefilled = Committed = value;
        }
    }

    private readonly int _cachedPrefix;

    protected LlamaModel Model { get; }
    public KvSequence Sequence { get; }
    protected Sampler Sampler { get; }
    protected IComputeBackend Backend => Model.Backend;

    /// <summary>Tokens in the KV cache (S).</summary>
    public int Committed { get; protected set; }
    /// <summary>The chosen, emitted, not yet cached token (−1 before the prefill ends).</summary>
    public int Pending { get; protected set; }
    /// <summary>True while prompt tokens remain to be run.</summary>
    public bool Prefilling => _prefilled < _prompt.Length;

    /// <summary>Tokens of the planned forward.</summary>
    public ReadOnlySpan<int> PlanTokens => _planTokens.AsSpan(0, PlanCount);
    /// <summary>RoPE positions of the planned forward.</summary>
    public ReadOnlySpan<int> PlanPositions => _planPositions.AsSpan(0, PlanCount);
    /// <summary>Rows of the planned forward (0: nothing planned).</summary>
    public int PlanCount { get; private set; }
    /// <summary>Tree mask of the planned forward (null: causal).</summary>
    public DeviceTensor? PlanMask { get; private set; }
    /// <summary>First row (within the plan) whose logits <see cref="Complete"/> may need.</summary>
    public int PlanLogitsFrom { get; private set; }

    /// <summary>
    /// The rows (within the plan, increasing) whose logits or argmax <see cref="Complete"/> needs: those from
    /// <see cref="PlanLogitsFrom"/> on that the decoder does not skip (<see cref="SkipsLogits"/>). Row i of the
    /// <see cref="StepLogits"/> handed to <see cref="Complete"/> belongs to plan row PlanLogitRows[i].
    /// </summary>
    public ReadOnlySpan<int> PlanLogitRows => _logitRows.AsSpan(0, _logitRowCount);

    private int[] _logitRows = new int[1];
    private int _logitRowCount;

    /// <summary>True when the planned decode step can do without the logits of <paramref name="row"/>.</summary>
    protected virtual bool SkipsLogits(int row) => false;

    private void SelectLogitRows(bool decodeStep)
    {
        if (_logitRows.Length < PlanCount) _logitRows = new int[PlanCount];
        _logitRowCount = 0;
        for (int row = PlanLogitsFrom; row < PlanCount; row++)
            if (!(decodeStep && SkipsLogits(row))) _logitRows[_logitRowCount++] = row;
    }

    /// <summary>
    /// True when <see cref="Complete"/> or the caller reads logits rows, not only their argmax (sampling with a
    /// temperature, penalties, typical acceptance, log-probabilities). When no sequence of a step needs them, the scheduler
    /// asks the backend for the greedy tokens only. Greedy decoding under a constraint alone (JSON mode) does not where
    /// the backend's argmax pass skips most logits (<see cref="IComputeBackend.ArgMaxSkipsLogits"/>, the host): a row
    /// whose argmax the constraint rules out is computed on its own then, from its hidden state (<see cref="Choose"/>).
    /// </summary>
    public virtual bool NeedsLogitRows => !Sampler.IsGreedy || (Processor is not null && !(Processor.OnlyConstrains && Backend.ArgMaxSkipsLogits)) ||
        ReportsLogprobs || (ScoresPrompt && Prefilling);

    /// <summary>
    /// The request's penalties, logit bias and constraint (JSON mode, a JSON schema; null: none), applied to a row before
    /// each token is chosen from it; it belongs to the request, so its counts of generated tokens and its grammar state
    /// survive a preemption.
    /// </summary>
    public LogitProcessor? Processor { get; init; }

    /// <summary>
    /// Set when the caller reads the logits row of every accepted token (<see cref="AcceptedRows"/>) for its
    /// log-probability: every row then has logits (none is skipped for speed).
    /// </summary>
    public bool ReportsLogprobs { get; init; }

    /// <summary>
    /// Set when the caller scores the prompt: the prefill asks for the logits of every prompt row (a sequence resumed
    /// after preemption does not: its prompt was scored before).
    /// </summary>
    public bool ScoresPrompt { get; init; }

    /// <summary>
    /// For each token <see cref="Complete"/> appended, in order: the row of the <see cref="StepLogits"/> it was chosen
    /// from, or −1 when that row had no logits (a Medusa leaf whose token came from a pass of its own).
    /// </summary>
    public List<int> AcceptedRows { get; } = new(16);

    /// <summary>
    /// During a prefill: the prompt position of the planned chunk's first row. With <see cref="ScoresPrompt"/>, row i of
    /// the step's logits is then the distribution of prompt token PrefillStart + i + 1 (the last row's, past the prompt,
    /// that of the first generated token).
    /// </summary>
    public int PrefillStart { get; private set; }

    /// <summary>Rows this decoder's next step needs at least (a prefill can be cut to fit a batch).</summary>
    public int NextStepMinimum => Prefilling ? 1 : StepSize;

    /// <summary>Rows of a decode step.</summary>
    protected abstract int StepSize { get; }

    /// <summary>Plans the next forward within <paramref name="budget"/> rows; false when it does not fit.</summary>
    public bool Plan(int budget)
    {
        PlanCount = 0;
        if (Prefilling)
        {
            int count = Math.Min(budget, _prompt.Length - _prefilled);
            if (count <= 0) return false;
            Reserve(count);
            PrefillStart = _prefilled;
            for (int i = 0; i < count; i++)
            {
                _planTokens[i] = _prompt[_prefilled + i];
                _planPositions[i] = _prefilled + i;
            }
            PlanCount = count;
            PlanMask = null;
            PlanLogitsFrom = _resume ? count : ScoresPrompt ? 0 : _prefilled + count == _prompt.Length ? count - 1 : count;
            SelectLogitRows(decodeStep: false);
            return true;
        }
        if (StepSize > budget && (budget < 1 || !ShrinkStep(budget))) return false;
        Reserve(StepSize);
        PlanCount = PlanStep(_planTokens, _planPositions, out var mask, out int logitsFrom);
        PlanMask = mask;
        PlanLogitsFrom = logitsFrom;
        SelectLogitRows(decodeStep: true);
        return true;
    }

    private void Reserve(int count)
    {
        if (_planTokens.Length < count)
        {
            _planTokens = new int[count];
            _planPositions = new int[count];
        }
    }

    /// <summary>
    /// Called when the next decode step does not fit the <paramref name="budget"/> rows left in a batch: true when the
    /// decoder made its next step fit (a Medusa decoder verifies less forced text, or drops its tree for that step and
    /// decodes one token); false by default.
    /// </summary>
    protected virtual bool ShrinkStep(int budget) => false;

    /// <summary>Fills the tokens and positions of a decode step; returns the row count.</summary>
    protected abstract int PlanStep(int[] tokens, int[] positions, out DeviceTensor? mask, out int logitsFrom);

    /// <summary>
    /// True when some of <see cref="PlanTokens"/> are placeholders that <see cref="WritePlanTokens"/> writes on the device
    /// (a Medusa tree whose guesses are still there): whoever runs the forward calls it after uploading the plan.
    /// </summary>
    public virtual bool WritesPlanTokens => false;

    /// <summary>Writes the planned tokens kept on the device into <paramref name="tokens"/> I32[PlanCount, 1], this plan's rows of the forward's inputs.</summary>
    public virtual void WritePlanTokens(DeviceTensor tokens)
    {
    }

    /// <summary>Consumes the planned forward: <paramref name="hidden"/> = its rows' final hidden states F32[PlanCount, D].</summary>
    public void Complete(DeviceTensor hidden, StepLogits logits, List<int> accepted)
    {
        _stepHidden = hidden;
        AcceptedRows.Clear();
        if (Prefilling)
        {
            _prefilled += PlanCount;
            Committed = _prefilled;
            if (Prefilling) return;
            if (!_resume)
            {
                // The last prompt row gives the first token (the only row, unless the whole prompt is scored).
                Accept(accepted, Pending = Choose(logits, PlanLogitRows.Length - 1), PlanLogitRows.Length - 1);
            }
            AfterPrefill(hidden.Slice(hidden.Rows - 1, 1));
            return;
        }
        CompleteStep(hidden, logits, accepted);
    }

    /// <summary>Appends <paramref name="token"/>, chosen from row <paramref name="row"/> of the step's logits (−1: none).</summary>
    protected void Accept(List<int> accepted, int token, int row)
    {
        accepted.Add(token);
        AcceptedRows.Add(row);
        Processor?.Append(token);
    }

    /// <summary>Called with the final hidden state of the last prompt token.</summary>
    protected virtual void AfterPrefill(DeviceTensor lastHidden)
    {
    }

    /// <summary>Consumes a decode step.</summary>
    protected abstract void CompleteStep(DeviceTensor hidden, StepLogits logits, List<int> accepted);

    /// <summary>
    /// Chooses a token from logits row <paramref name="row"/>: its argmax for greedy sampling, else a draw on the host;
    /// with a <see cref="Processor"/>, from the row adjusted for the history plus <paramref name="pending"/> (tokens this
    /// step chose before, not yet accepted).
    /// </summary>
    protected int Choose(StepLogits logits, int row, ReadOnlySpan<int> pending = default)
    {
        if (Sampler.IsGreedy && (Processor is null || (Processor.OnlyConstrains && Processor.Allows(logits.ArgMax[row], pending))))
            return logits.ArgMax[row]; // a constraint that allows the argmax leaves it the argmax: the row need not be read
        DeviceTensor r;
        if (logits.Rows is null)
        {
            // Only the argmax was computed (greedy under a constraint alone) and the constraint rules it out: the greedy
            // token under the constraint's mask, from this row's hidden state (the host settles only allowed tokens).
            _lazyRow ??= Backend.Allocate(Models.DType.F32, 1, Model.Config.VocabSize);
            if (_row.Length != Model.Config.VocabSize) _row = new float[Model.Config.VocabSize];
            Array.Clear(_row);
            Processor!.Apply(_row, pending);
            return Model.GreedyToken(_stepHidden!.Slice(PlanLogitRows[row], 1), _lazyRow, _row);
        }
        r = logits.Rows.Slice(row, 1);
        if (_row.Length != r.Columns) _row = new float[r.Columns];
        Backend.Download(r, _row);
        Processor?.Apply(_row, pending);
        return Sampler.Sample(_row);
    }
}

/// <summary>Plain decoding: one token per forward.</summary>
internal sealed class AutoregressiveDecoder : SequenceDecoder
{
    public AutoregressiveDecoder(LlamaModel model, KvSequence sequence, Sampler sampler, int[] prompt, int? resumePending = null)
        : base(model, sequence, sampler, prompt, resumePending)
    {
    }

    protected override int StepSize => 1;

    protected override int PlanStep(int[] tokens, int[] positions, out DeviceTensor? mask, out int logitsFrom)
    {
        tokens[0] = Pending;
        positions[0] = Committed;
        mask = null;
        logitsFrom = 0;
        return 1;
    }

    protected override void CompleteStep(DeviceTensor hidden, StepLogits logits, List<int> accepted)
    {
        Committed++;
        Accept(accepted, Pending = Choose(logits, 0), 0);
    }
}

/// <summary>
/// Runs one decoder on its own (a batch of one): plan, forward, logits of the rows asked for, argmax, complete.
/// The scheduler does the same for many decoders at once.
/// </summary>
internal sealed class SingleSequenceRunner
{
    private readonly LlamaModel _model;
    private readonly ForwardWorkspace _workspace;
    private readonly SequenceDecoder _decoder;
    private int[] _argMax = [];

    public SingleSequenceRunner(LlamaModel model, ForwardWorkspace workspace, SequenceDecoder decoder)
    {
        _model = model;
        _workspace = workspace;
        _decoder = decoder;
    }

    /// <summary>Runs forwards until the decoder has appended at least one token.</summary>
    public void Advance(List<int> accepted)
    {
        int before = accepted.Count;
        while (accepted.Count == before)
        {
            if (!_decoder.Plan(_workspace.MaxTokens))
                throw new InvalidOperationException($"a decode step needs {_decoder.NextStepMinimum} rows but the workspace holds {_workspace.MaxTokens}");
            var inputs = _workspace.Prepare(_decoder.PlanTokens, _decoder.PlanPositions, _decoder.PlanMask);
            if (_decoder.WritesPlanTokens) _decoder.WritePlanTokens(inputs.Tokens);
            var hidden = _model.Forward(_workspace, inputs, _decoder.Sequence, _decoder.Committed);
            var needed = _decoder.PlanLogitRows;
            int rows = needed.Length;
            if (rows == 0)
            {
                _decoder.Complete(hidden, default, accepted);
                continue;
            }
            var b = _model.Backend;
            var indices = _workspace.GatherRowsFor(needed);
            var gathered = _workspace.Gathered.Slice(0, rows);
            b.Embedding(gathered, indices, hidden);
            var ids = _workspace.ArgMax.Slice(0, rows);
            DeviceTensor logits = default!;
            if (_decoder.NeedsLogitRows)
            {
                logits = _model.Logits(_workspace, gathered);
                b.ArgMax(ids, logits);
            }
            else
            {
                _model.GreedyTokens(_workspace, gathered, ids);
            }
            if (_argMax.Length < rows) _argMax = new int[rows];
            _model.Backend.Download(ids, _argMax.AsSpan(0, rows));
            _decoder.Complete(hidden, new StepLogits(logits, _argMax.AsSpan(0, rows)), accepted);
        }
    }
}
