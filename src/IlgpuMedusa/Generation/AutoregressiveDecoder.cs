using IlgpuMedusa.Compute;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Generation;

/// <summary>
/// A decoding strategy for one sequence: <see cref="Prefill"/> runs the prompt, then each <see cref="Step"/> is one
/// forward pass that appends at least one accepted token. The last appended token is "pending": chosen, emitted, but not
/// yet in the KV cache; the next step feeds it.
/// </summary>
internal interface ITokenDecoder
{
    /// <summary>Runs the prompt (positions 0..n−1) and appends the first generated token.</summary>
    void Prefill(ReadOnlySpan<int> prompt, List<int> accepted);

    /// <summary>One forward pass; appends the tokens it accepted (≥ 1).</summary>
    void Step(List<int> accepted);
}

/// <summary>Shared pieces of the decoders: the forward workspace and how a logits row becomes a token.</summary>
internal abstract class DecoderBase : ITokenDecoder
{
    private readonly int[] _oneId = new int[1];
    private float[] _row = [];

    protected DecoderBase(LlamaModel model, ForwardWorkspace workspace, KvSequence sequence, Sampler sampler)
    {
        Model = model;
        Workspace = workspace;
        Sequence = sequence;
        Sampler = sampler;
    }

    protected LlamaModel Model { get; }
    protected ForwardWorkspace Workspace { get; }
    protected KvSequence Sequence { get; }
    protected Sampler Sampler { get; }
    protected IComputeBackend Backend => Model.Backend;

    /// <summary>Tokens in the KV cache (S).</summary>
    protected int Committed { get; set; }

    /// <summary>The chosen but not yet cached token.</summary>
    protected int Pending { get; set; }

    public virtual void Prefill(ReadOnlySpan<int> prompt, List<int> accepted)
    {
        int chunk = Workspace.MaxTokens;
        var positionArray = new int[Math.Min(chunk, prompt.Length)];
        DeviceTensor? hidden = null;
        for (int start = 0; start < prompt.Length; start += chunk)
        {
            int count = Math.Min(chunk, prompt.Length - start);
            for (int i = 0; i < count; i++) positionArray[i] = start + i;
            hidden = Model.Forward(Workspace, Workspace.Prepare(prompt.Slice(start, count), positionArray.AsSpan(0, count)), Sequence, start);
        }
        Committed = prompt.Length;
        var last = hidden!.Slice(hidden.Rows - 1, 1);
        Pending = Choose(Model.Logits(Workspace, last));
        accepted.Add(Pending);
        AfterPrefill(last);
    }

    /// <summary>Called with the final hidden state of the last prompt token.</summary>
    protected virtual void AfterPrefill(DeviceTensor lastHidden)
    {
    }

    public abstract void Step(List<int> accepted);

    /// <summary>Chooses a token from one logits row F32[1, V]: on the device for greedy, else on the host.</summary>
    protected int Choose(DeviceTensor logitsRow)
    {
        if (Sampler.IsGreedy)
        {
            var id = Workspace.ArgMax.Slice(0, 1);
            Backend.ArgMax(id, logitsRow);
            Backend.Download(id, _oneId);
            return _oneId[0];
        }
        if (_row.Length != logitsRow.Columns) _row = new float[logitsRow.Columns];
        Backend.Download(logitsRow, _row);
        return Sampler.Sample(_row);
    }
}

/// <summary>Plain decoding: one token per forward.</summary>
internal sealed class AutoregressiveDecoder : DecoderBase
{
    private readonly int[] _token = new int[1];
    private readonly int[] _position = new int[1];

    public AutoregressiveDecoder(LlamaModel model, ForwardWorkspace workspace, KvSequence sequence, Sampler sampler)
        : base(model, workspace, sequence, sampler)
    {
    }

    public override void Step(List<int> accepted)
    {
        _token[0] = Pending;
        _position[0] = Committed;
        var hidden = Model.Forward(Workspace, Workspace.Prepare(_token, _position), Sequence, Committed);
        Committed++;
        Pending = Choose(Model.Logits(Workspace, hidden));
        accepted.Add(Pending);
    }
}
