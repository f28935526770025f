using IlgpuMedusa.Compute;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Transformer;

/// <summary>
/// Activation buffers for forwards of up to <see cref="MaxTokens"/> tokens, allocated once on the backend so the
/// decode loop allocates nothing. Also holds the device copies of the per-step inputs (tokens, positions, mask).
/// </summary>
public sealed class ForwardWorkspace : IDisposable
{
    /// <summary>Allocates the buffers for <paramref name="config"/> and at most <paramref name="maxTokens"/> tokens per forward, and <paramref name="maxLogitRows"/> logits rows.</summary>
    public ForwardWorkspace(IComputeBackend backend, ModelConfig config, int maxTokens, int maxLogitRows)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxTokens, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLogitRows, 1);
        Backend = backend;
        MaxTokens = maxTokens;
        MaxLogitRows = maxLogitRows;
        _vocab = config.VocabSize;
        _staging = new int[2 * maxTokens];
        _gatherShadow = new int[maxLogitRows];
        try
        {
            Residual = backend.Allocate(DType.F32, maxTokens, config.Dim);
            Normed = backend.Allocate(DType.F32, maxTokens, config.Dim);
            Qkv = backend.Allocate(DType.F32, maxTokens, config.QkvDim);
            Attention = backend.Allocate(DType.F32, maxTokens, config.Heads * config.HeadDim);
            GateUp = backend.Allocate(DType.F32, maxTokens, 2 * config.HiddenDim);
            Ffn = backend.Allocate(DType.F32, maxTokens, config.HiddenDim);
            _logits = backend.Allocate(DType.F32, Math.Min(maxLogitRows, InitialLogitRows), config.VocabSize);
            _inputs = backend.Allocate(DType.I32, 2 * maxTokens, 1);
            ArgMax = backend.Allocate(DType.I32, maxLogitRows, 1);
            Gathered = backend.Allocate(DType.F32, maxLogitRows, config.Dim);
            GatherRows = backend.Allocate(DType.I32, maxLogitRows, 1);
        }
        catch
        {
            Dispose(); // what was allocated before the failure
            throw;
        }
    }

    /// <summary>The backend.</summary>
    public IComputeBackend Backend { get; }
    /// <summary>Largest T of one forward.</summary>
    public int MaxTokens { get; }
    /// <summary>x, the residual stream [T, D].</summary>
    public DeviceTensor Residual { get; }
    /// <summary>norm(x) [T, D]; after a forward, the final hidden states.</summary>
    public DeviceTensor Normed { get; }
    /// <summary>Q | K | V [T, (H + 2Hkv)·Dh].</summary>
    public DeviceTensor Qkv { get; }
    /// <summary>Attention output [T, H·Dh].</summary>
    public DeviceTensor Attention { get; }
    /// <summary>Gate | up projections [T, 2F].</summary>
    public DeviceTensor GateUp { get; }
    /// <summary>SwiGLU output [T, F].</summary>
    public DeviceTensor Ffn { get; }
    /// <summary>Most logits rows one step may ask for.</summary>
    public int MaxLogitRows { get; }

    /// <summary>
    /// Logits [rows, V] for a step that needs <paramref name="rows"/> of them. The buffer starts with room for
    /// <see cref="InitialLogitRows"/> rows and grows when a step needs more (a row is V floats, 125 KiB for a 32k
    /// vocabulary, so sizing it for the largest batch up front would hold tens of MiB that single-sequence decoding never uses).
    /// </summary>
    public DeviceTensor Logits(int rows)
    {
        if (rows < 1 || rows > MaxLogitRows) throw new ArgumentOutOfRangeException(nameof(rows), $"a step takes 1..{MaxLogitRows} logits rows, got {rows}");
        if (rows > _logits.Rows)
        {
            int capacity = Math.Min(MaxLogitRows, Math.Max(rows, 2 * _logits.Rows));
            // The new buffer first: if it cannot be had, the old one stays valid for the steps that fit it.
            var grown = Backend.Allocate(DType.F32, capacity, _vocab);
            _logits.Dispose();
            _logits = grown;
        }
        return _logits.Slice(0, rows);
    }

    /// <summary>Logits rows allocated before any step needs more: a tree of the host's size for one sequence.</summary>
    public const int InitialLogitRows = 16;
    private readonly int _vocab;
    private DeviceTensor _logits;
    /// <summary>A forward's token ids [T, 1] then its RoPE positions [T, 1], uploaded together (one copy, and on a GPU
    /// one wait, per step instead of two).</summary>
    private readonly DeviceTensor _inputs;
    private readonly int[] _staging;
    /// <summary>Argmax of logits rows [rows, 1].</summary>
    public DeviceTensor ArgMax { get; }

    /// <summary>Hidden rows gathered for the logits of a batched step [rows, D].</summary>
    public DeviceTensor Gathered { get; }
    /// <summary>Indices of the gathered rows [rows, 1] (write them with <see cref="GatherRowsFor"/>).</summary>
    public DeviceTensor GatherRows { get; }
    private readonly int[] _gatherShadow; // what GatherRows holds since the last upload
    private int _gatherCount = -1;

    /// <summary>
    /// <see cref="GatherRows"/> holding <paramref name="rows"/>: uploaded only when they differ from what it already holds.
    /// A decode step whose rows repeat (one-token steps: always row 0; a fixed tree's rows) writes nothing. (On ILGPU
    /// devices a copy waits for the queued forward to finish; uploads this small now go up in a launch, see
    /// <c>IlgpuBackend.LaunchedUploads</c>, so the skip saves a launch, and a wait when that is switched off.)
    /// </summary>
    public DeviceTensor GatherRowsFor(ReadOnlySpan<int> rows)
    {
        if (rows.Length == 0 || rows.Length > MaxLogitRows)
            throw new ArgumentException($"between 1 and {MaxLogitRows} rows to gather, got {rows.Length}");
        var tensor = GatherRows.Slice(0, rows.Length);
        if (rows.Length <= _gatherCount && rows.SequenceEqual(_gatherShadow.AsSpan(0, rows.Length))) return tensor;
        Backend.Upload(tensor, rows);
        rows.CopyTo(_gatherShadow);
        _gatherCount = rows.Length;
        return tensor;
    }

    /// <summary>A reusable one-segment list for single-sequence forwards (no allocation per step).</summary>
    internal ForwardSegment[] SingleSegment { get; } = new ForwardSegment[1];

    /// <summary>Uploads tokens and positions and returns the inputs of a causal forward of these tokens.</summary>
    public ForwardInputs Prepare(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, DeviceTensor? mask = null)
    {
        if (tokens.Length == 0 || tokens.Length > MaxTokens)
            throw new ArgumentException($"a forward takes 1..{MaxTokens} tokens, got {tokens.Length}");
        if (positions.Length != tokens.Length)
            throw new ArgumentException($"{tokens.Length} tokens but {positions.Length} positions");
        int count = tokens.Length;
        tokens.CopyTo(_staging);
        positions.CopyTo(_staging.AsSpan(count));
        Backend.Upload(_inputs.Slice(0, 2 * count), _staging.AsSpan(0, 2 * count));
        return new ForwardInputs(count, _inputs.Slice(0, count), _inputs.Slice(count, count), mask);
    }

    /// <summary>Frees the buffers.</summary>
    public void Dispose()
    {
        // (Null-tolerant: a constructor that failed part way frees what it had.)
        Residual?.Dispose();
        Normed?.Dispose();
        Qkv?.Dispose();
        Attention?.Dispose();
        GateUp?.Dispose();
        Ffn?.Dispose();
        _logits?.Dispose();
        _inputs?.Dispose();
        ArgMax?.Dispose();
        Gathered?.Dispose();
        GatherRows?.Dispose();
    }
}

/// <summary>One sequence's rows in a batched forward.</summary>
/// <param name="Sequence">Its KV cache share.</param>
/// <param name="Committed">S: positions already in its cache.</param>
/// <param name="Start">First input row.</param>
/// <param name="Count">Rows (its T).</param>
/// <param name="Mask">I32[Count, Count] tree mask, or null for causal.</param>
public readonly record struct ForwardSegment(Scheduling.KvSequence Sequence, int Committed, int Start, int Count, DeviceTensor? Mask);

/// <summary>The device-side inputs of one forward: T tokens, their RoPE positions, and the T x T mask (null = causal).</summary>
/// <param name="Count">T.</param>
/// <param name="Tokens">I32[T, 1].</param>
/// <param name="Positions">I32[T, 1].</param>
/// <param name="Mask">I32[T, T] or null for causal.</param>
public readonly record struct ForwardInputs(int Count, DeviceTensor Tokens, DeviceTensor Positions, DeviceTensor? Mask);
