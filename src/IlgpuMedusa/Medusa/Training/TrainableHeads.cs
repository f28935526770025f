using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Medusa.Training;

/// <summary>Loss and accuracy counters of one head over some positions.</summary>
public struct HeadScore
{
    /// <summary>Positions that had a target (those outside the heads' shortlist included).</summary>
    public long Count;
    /// <summary>Positions whose target is outside the heads' vocabulary shortlist: always a miss, not in the loss.</summary>
    public long Outside;
    /// <summary>Σ cross-entropy (nats).</summary>
    public double LossSum;
    /// <summary>Positions whose target was the head's best token.</summary>
    public long Top1;
    /// <summary>Positions whose target was among the head's 5 best tokens.</summary>
    public long Top5;

    /// <summary>Mean cross-entropy over the positions whose target the heads can score.</summary>
    public readonly double Loss => Count - Outside == 0 ? 0 : LossSum / (Count - Outside);
    /// <summary>Top-1 accuracy.</summary>
    public readonly double Top1Accuracy => Count == 0 ? 0 : (double)Top1 / Count;
    /// <summary>Top-5 accuracy.</summary>
    public readonly double Top5Accuracy => Count == 0 ? 0 : (double)Top5 / Count;

    /// <summary>Adds another score.</summary>
    public void Add(HeadScore other)
    {
        Count += other.Count;
        Outside += other.Outside;
        LossSum += other.LossSum;
        Top1 += other.Top1;
        Top5 += other.Top5;
    }
}

/// <summary>
/// What heads with context attention see at each of M positions: row r attends to the first <see cref="Visible"/>[r]
/// rows of <see cref="Keys"/>[r] and <see cref="Values"/>[r] (its sequence's last-layer cache, [n, KvDim] each), and its
/// query sits at position Visible[r].
/// </summary>
internal sealed record HeadContextRows(float[][] Keys, float[][] Values, int[] Visible);

/// <summary>The base model's attention shape, which heads with context attention share.</summary>
internal sealed record ContextShape(int Heads, int KvHeads, int HeadDim, RopeParameters Rope)
{
    public int Width => Heads * HeadDim;
    public int KvDim => KvHeads * HeadDim;
    public static ContextShape Of(ModelConfig c) => new(c.Heads, c.KvHeads, c.HeadDim, c.Rope);
}

/// <summary>
/// Medusa heads being trained on the host, with hand-written gradients. For one head on a batch of M positions:
/// <code>
/// z₀ = h                                  [M, D]   final-normed hidden states (frozen backbone)
/// a_l = z_l Wᵀ + b,  z_{l+1} = z_l + SiLU(a_l)     ResBlocks, SiLU(a) = a·σ(a)
/// logits = z_L Uᵀ                          [M, V]   U = the base lm_head E (shared, frozen) or the head's own
/// loss = mean over positions with a target of (logsumexp(logits) − logits[y])
/// </code>
/// and backwards: G = ∂loss/∂logits = (softmax − onehot(y)) / count; ∂z_L = G U; ∂U = Gᵀ z_L (own lm_head only);
/// per block from the last: g = ∂z_{l+1} ⊙ SiLU'(a_l) with SiLU'(a) = σ(a)(1 + a(1 − σ(a))), ∂W = gᵀ z_l, ∂b = Σ_rows g,
/// ∂z_l = ∂z_{l+1} + g W. The two [M, V] x D products dominate; both run on <see cref="TrainingGemm"/>.
/// Heads with a next-token input start from z₀ = h + e Pᵀ instead, e the input embedding of x_{t+1} (the pending token),
/// and backwards ∂z₀ = ∂z₁ + g₀ W₀ (or ∂z_L without blocks) gives ∂P = ∂z₀ᵀ e.
/// Heads with a previous-token input (experimental, Hydra-style) add, for head i ≥ 1, e' Rᵀ to z₀ as well, e' the input
/// embedding of the token just before the head's target (the target of head i − 1), and ∂R = ∂z₀ᵀ e'.
/// Heads with context attention then add c = o W_oᵀ to z₀ before the ResBlocks, o = attention of q = rope(z₀ W_qᵀ) over
/// the frozen keys K and values V of the row's sequence (per query head: s_j = q·k_j / √Dh, p = softmax(s), o = Σ p_j v_j).
/// Backwards from ∂z (after the attention): ∂W_o = ∂zᵀ o, ∂o = ∂z W_o, then per head ∂p_j = ∂o·v_j,
/// ∂s_j = p_j (∂p_j − Σ_i p_i ∂p_i), ∂q = Σ_j ∂s_j k_j / √Dh, rotated back (the inverse rope), ∂W_q = ∂qᵀ z₀ and
/// ∂z₀ = ∂z + ∂q W_q.
/// With a vocabulary shortlist of N tokens, V above is N: U is the base lm_head's rows of those tokens (or the head's
/// own [N, D]), targets are token ids mapped to their column, and a target outside the shortlist is left out of the
/// loss (training) or counted as a miss (evaluation).
/// </summary>
internal sealed unsafe class TrainableHeads
{
    private readonly int _threads;
    private readonly float[] _classifier;        // [V, D] frozen base lm_head ([N, D]: its shortlisted rows)
    private readonly int[]? _column;             // token id → shortlist column, −1 outside; null without a shortlist
    private readonly float[]? _embedding;        // [V, D] input embeddings (next-token inputs only)
    private float[] _e = [];                     // [M·D] embeddings of the batch's next tokens
    private float[] _ePrevious = [];             // [M·D] embeddings of the tokens before the targets (previous-token inputs)
    private readonly float[]?[] _packed;         // [head] Uᵀ packed for the logits product; shared heads use one
    private readonly int[] _packedVersion;
    private readonly int[] _version;
    private int _capacity;
    private float[][] _z = [];                   // [layer + 1][M·D]
    private float[][] _a = [];                   // [layer][M·D] pre-activations a_l
    private float[] _logits = [];                // [M·V], then G in place
    private float[] _dz = [];                    // [M·D]
    private float[] _g = [];                     // [M·D]
    private float[] _transposed = [];            // [D·D] Wᵀ
    private float[] _rowLoss = [];               // [M]
    private float[] _teacherLogits = [];         // [M·V] soft labels: the base model's logits at the target's position
    private readonly ContextShape? _shape;       // context attention: the base model's attention shape
    private float[] _zc = [], _q = [], _o = [], _dq = [], _do = [], _p = [];   // [M·D], [M·A] x 4, [M·H·maxVisible]
    private float[] _transposedQuery = [], _transposedOutput = [];             // [D·A] W_qᵀ, [A·D] W_oᵀ
    private HeadContextRows? _rows;
    private int _maxVisible;

    /// <summary>
    /// Heads over <paramref name="weights"/>; <paramref name="classifier"/> is the base lm_head [V, D] (all of it, shortlist
    /// or not), <paramref name="embedding"/> the base input embedding [V, D] (needed by next-token inputs).
    /// </summary>
    public TrainableHeads(MedusaHeadWeights weights, float[] classifier, int threads, float[]? embedding = null, ContextShape? context = null)
    {
        if (weights.ContextQuery is not null && (context is null || context.Width != weights.ContextWidth))
            throw new ArgumentException($"heads with context attention of width {weights.ContextWidth} need the base model's attention shape (given {context?.Width.ToString() ?? "none"})");
        _shape = weights.ContextQuery is null ? null : context;
        ContextQueryGradient = weights.ContextQuery?.Select(q => new float[q.Length]).ToArray();
        ContextOutputGradient = weights.ContextOutput?.Select(o => new float[o.Length]).ToArray();
        if (classifier.Length != (long)weights.VocabSize * weights.HiddenSize)
            throw new ArgumentException($"the base lm_head has {classifier.Length} values, expected [{weights.VocabSize}, {weights.HiddenSize}]");
        if (weights.NextToken is not null && embedding?.Length != (long)weights.VocabSize * weights.HiddenSize)
            throw new ArgumentException($"heads with next-token inputs need the base input embedding [{weights.VocabSize}, {weights.HiddenSize}]");
        Weights = weights;
        _embedding = weights.NextToken is null ? null : embedding;
        NextTokenGradient = weights.NextToken?.Select(p => new float[p.Length]).ToArray();
        if (weights.PreviousToken is not null && weights.NextToken is null)
            throw new ArgumentException("previous-token inputs are for heads with a next-token input");
        PreviousTokenGradient = weights.PreviousToken?.Select(p => new float[p.Length]).ToArray();
        if (weights.Shortlist is { } shortlist)
        {
            _classifier = VocabularyShortlist.GatherRows(classifier, weights.HiddenSize, shortlist);
            _column = new int[weights.VocabSize];
            Array.Fill(_column, -1);
            for (int i = 0; i < shortlist.Length; i++) _column[shortlist[i]] = i;
        }
        else
        {
            _classifier = classifier;
        }
        _threads = Math.Max(1, threads);
        int heads = weights.HeadCount, layers = weights.LayerCount, d = weights.HiddenSize;
        LinearGradient = Enumerable.Range(0, heads).Select(_ => Enumerable.Range(0, layers).Select(_ => new float[d * d]).ToArray()).ToArray();
        BiasGradient = Enumerable.Range(0, heads).Select(_ => Enumerable.Range(0, layers).Select(_ => new float[d]).ToArray()).ToArray();
        LmHeadGradient = weights.LmHeads is null ? null : Enumerable.Range(0, heads).Select(_ => new float[_classifier.Length]).ToArray();
        _packed = new float[]?[weights.LmHeads is null ? 1 : heads];
        _packedVersion = Enumerable.Repeat(-1, _packed.Length).ToArray();
        _version = new int[_packed.Length];
    }

    /// <summary>The parameters (updated in place by the optimizer).</summary>
    public MedusaHeadWeights Weights { get; }
    /// <summary>∂loss/∂W per [head][layer], written by <see cref="Backward(int, ReadOnlySpan{float}, ReadOnlySpan{int})"/>.</summary>
    public float[][][] LinearGradient { get; }
    /// <summary>∂loss/∂b per [head][layer].</summary>
    public float[][][] BiasGradient { get; }
    /// <summary>∂loss/∂U per head (own lm_heads only).</summary>
    public float[][]? LmHeadGradient { get; }
    /// <summary>∂loss/∂P per head (next-token inputs only).</summary>
    public float[][]? NextTokenGradient { get; }
    /// <summary>∂loss/∂R per head (previous-token inputs only; head 0's stays 0).</summary>
    public float[][]? PreviousTokenGradient { get; }
    /// <summary>∂loss/∂W_q per head (context attention only).</summary>
    public float[][]? ContextQueryGradient { get; }
    /// <summary>∂loss/∂W_o per head (context attention only).</summary>
    public float[][]? ContextOutputGradient { get; }

    private int D => Weights.HiddenSize;
    /// <summary>Columns of the logits: the shortlist's length, or the vocabulary.</summary>
    private int V => Weights.LmHeadRows;

    /// <summary>Tells the heads that the optimizer changed the own lm_heads (their packed copies are stale).</summary>
    public void LmHeadsChanged()
    {
        for (int i = 0; i < _version.Length; i++) _version[i]++;
    }

    /// <summary>
    /// Forward and backward of head <paramref name="head"/> on M = <paramref name="targets"/>.Length positions:
    /// <paramref name="hidden"/> [M, D], targets token ids or −1 for "no target" (targets outside the shortlist count as
    /// none). Overwrites the head's gradients with those of the mean loss and returns the score (loss, accuracy) of the batch.
    /// </summary>
    public HeadScore Backward(int head, ReadOnlySpan<float> hidden, ReadOnlySpan<int> targets) => Backward(head, hidden, default, targets);

    /// <summary>As <see cref="Backward(int, ReadOnlySpan{float}, ReadOnlySpan{int})"/>, with the next tokens x_{t+1} [M] for next-token inputs.</summary>
    public HeadScore Backward(int head, ReadOnlySpan<float> hidden, ReadOnlySpan<int> next, ReadOnlySpan<int> targets, HeadContextRows? context = null)
        => Backward(head, hidden, next, targets, context, default, 0);

    /// <summary>
    /// As <see cref="Backward(int, ReadOnlySpan{float}, ReadOnlySpan{int}, ReadOnlySpan{int}, HeadContextRows?)"/>, with
    /// soft labels: <paramref name="teacher"/> [M, D] holds, for each row with a target, the base model's own final hidden
    /// state at the position whose next token is that target (h_{t+1+i} for head i), and the loss becomes
    /// (1 − α)·cross-entropy to the target + α·cross-entropy to the base model's distribution softmax(U h_{t+1+i}) over the
    /// scored tokens, α = <paramref name="softWeight"/> (the reported loss stays the hard one). Shared lm_heads only.
    /// </summary>
    public HeadScore Backward(int head, ReadOnlySpan<float> hidden, ReadOnlySpan<int> next, ReadOnlySpan<int> targets, HeadContextRows? context,
        ReadOnlySpan<float> teacher, float softWeight, ReadOnlySpan<int> previous = default)
    {
        int m = targets.Length;
        Forward(head, hidden, next, m, context, previous);
        float[]? teacherLogits = null;
        if (softWeight > 0)
        {
            if (Weights.LmHeads is not null) throw new ArgumentException("soft labels are for heads that share the base lm_head");
            if (teacher.Length != m * D) throw new ArgumentException($"teacher hidden states of {teacher.Length} floats are not [{m}, {D}]");
            if (_teacherLogits.Length < (long)m * V) _teacherLogits = new float[(long)m * V];
            teacherLogits = _teacherLogits;
            fixed (float* pt = teacher, pp = Packed(head), pl = teacherLogits)
                TrainingGemm.Multiply(m, V, D, GemmA.RowMajor(pt, D), GemmB.Packed(pp, D), pl, V, accumulate: false, _threads);
        }
        var score = Score(Columns(targets, outside: NoTarget), m, gradients: true, teacherLogits, softWeight);
        BackwardFromLogits(head, m);
        return score;
    }

    /// <summary>Forward only: the score of head <paramref name="head"/> on these positions (a target outside the shortlist is a miss).</summary>
    public HeadScore Evaluate(int head, ReadOnlySpan<float> hidden, ReadOnlySpan<int> targets) => Evaluate(head, hidden, default, targets);

    /// <summary>As <see cref="Evaluate(int, ReadOnlySpan{float}, ReadOnlySpan{int})"/>, with the next tokens x_{t+1} [M] for next-token inputs.</summary>
    public HeadScore Evaluate(int head, ReadOnlySpan<float> hidden, ReadOnlySpan<int> next, ReadOnlySpan<int> targets, HeadContextRows? context = null,
        ReadOnlySpan<int> previous = default)
    {
        Forward(head, hidden, next, targets.Length, context, previous);
        return Score(Columns(targets, outside: OutsideShortlist), targets.Length, gradients: false);
    }

    /// <summary>Per row of the last evaluation or backward pass: the target's 0-based rank, −1 without a target, int.MaxValue outside the shortlist.</summary>
    public int[] LastRanks { get; private set; } = [];

    private const int NoTarget = -1, OutsideShortlist = -2;

    /// <summary>Token ids → logit columns (<paramref name="outside"/> for tokens the shortlist lacks; −1 stays −1).</summary>
    private int[] Columns(ReadOnlySpan<int> targets, int outside)
    {
        var columns = targets.ToArray();
        int vocab = Weights.VocabSize;
        for (int r = 0; r < columns.Length; r++)
        {
            int y = columns[r];
            if (y < 0) continue;
            if (y >= vocab) throw new ArgumentOutOfRangeException(nameof(targets), $"target {y} outside the vocabulary of {vocab}");
            if (_column is { } map) columns[r] = map[y] < 0 ? outside : map[y];
        }
        return columns;
    }

    private void Ensure(int m)
    {
        if (m <= _capacity) return;
        int layers = Weights.LayerCount, d = D;
        _z = Enumerable.Range(0, layers + 1).Select(_ => new float[m * d]).ToArray();
        _a = Enumerable.Range(0, layers).Select(_ => new float[m * d]).ToArray();
        _logits = new float[(long)m * V];
        _dz = new float[m * d];
        _g = new float[m * d];
        _e = _embedding is null ? [] : new float[m * d];
        _ePrevious = Weights.PreviousToken is null ? [] : new float[m * d];
        _transposed = new float[d * d];
        _rowLoss = new float[m];
        if (_shape is { } shape)
        {
            int a = shape.Width;
            _zc = new float[m * d];
            _q = new float[m * a];
            _o = new float[m * a];
            _dq = new float[m * a];
            _do = new float[m * a];
            _transposedQuery = new float[d * a];
            _transposedOutput = new float[a * d];
        }
        _capacity = m;
    }

    private float[] Packed(int head)
    {
        int slot = Weights.LmHeads is null ? 0 : head;
        if (_packed[slot] is { } p && _packedVersion[slot] == _version[slot]) return p;
        var source = Weights.LmHeads is { } own ? own[head] : _classifier;
        p = _packed[slot] ?? new float[TrainingGemm.PackedLength(V, D)];
        TrainingGemm.PackTransposed(source, V, D, p, _threads);
        _packed[slot] = p;
        _packedVersion[slot] = _version[slot];
        return p;
    }

    private float[] LmHead(int head) => Weights.LmHeads is { } own ? own[head] : _classifier;

    /// <summary>z₀ = h (+ e Pᵀ) (+ e' Rᵀ), the ResBlocks, then logits = z_L Uᵀ into <see cref="_logits"/>.</summary>
    private void Forward(int head, ReadOnlySpan<float> hidden, ReadOnlySpan<int> next, int m, HeadContextRows? context, ReadOnlySpan<int> previous = default)
    {
        int d = D;
        if (hidden.Length != m * d) throw new ArgumentException($"hidden states of {hidden.Length} floats are not [{m}, {d}]");
        if (_shape is not null && (context is null || context.Visible.Length != m))
            throw new ArgumentException($"heads with context attention need the cached keys and values of each of the {m} positions");
        Ensure(m);
        hidden.CopyTo(_z[0]);
        if (Weights.NextToken is { } nextToken)
        {
            if (next.Length != m) throw new ArgumentException($"heads with next-token inputs need the next token of each of the {m} positions, got {next.Length}");
            AddProjectedEmbeddings(next, _e, nextToken[head], m, "next token", allowNone: false);
        }
        if (Weights.PreviousToken is { } previousToken && head > 0)
        {
            if (previous.Length != m) throw new ArgumentException($"heads with previous-token inputs need the token before each of the {m} targets, got {previous.Length}");
            AddProjectedEmbeddings(previous, _ePrevious, previousToken[head], m, "previous token", allowNone: true);
        }
        if (_shape is not null) ContextForward(head, m, context!);
        for (int l = 0; l < Weights.LayerCount; l++)
        {
            var w = Weights.Linear[head][l];
            var bias = Weights.Bias[head][l];
            Transpose(w, _transposed, d);
            var z = _z[l];
            var a = _a[l];
            var output = _z[l + 1];
            fixed (float* pz = z, pa = a, pt = _transposed)
                TrainingGemm.Multiply(m, d, d, GemmA.RowMajor(pz, d), GemmB.RowMajor(pt, d), pa, d, accumulate: false, _threads);
            for (int r = 0; r < m; r++)
            {
                var ar = a.AsSpan(r * d, d);
                var nr = output.AsSpan(r * d, d);
                TensorPrimitives.Add(ar, bias, ar);
                TensorPrimitives.Sigmoid(ar, nr);                   // σ(a)
                TensorPrimitives.Multiply(nr, ar, nr);              // SiLU(a)
                TensorPrimitives.Add(nr, z.AsSpan(r * d, d), nr);   // z + SiLU(a)
            }
        }
        var packed = Packed(head);
        fixed (float* pz = _z[Weights.LayerCount], pp = packed, pl = _logits)
            TrainingGemm.Multiply(m, V, d, GemmA.RowMajor(pz, d), GemmB.Packed(pp, d), pl, V, accumulate: false, _threads);
    }

    /// <summary>
    /// z₀ += e Qᵀ for a token input: the input embedding of each row's token into <paramref name="rows"/> (kept for the
    /// backward pass; a negative token, allowed with <paramref name="allowNone"/>, is a row without a target and gets
    /// zeros), times the projection <paramref name="projection"/> [D, D].
    /// </summary>
    private void AddProjectedEmbeddings(ReadOnlySpan<int> tokens, float[] rows, float[] projection, int m, string what, bool allowNone)
    {
        int d = D;
        for (int r = 0; r < m; r++)
        {
            int token = tokens[r];
            if (token < 0 && allowNone) rows.AsSpan(r * d, d).Clear();
            else if ((uint)token >= (uint)Weights.VocabSize) throw new ArgumentOutOfRangeException(nameof(tokens), $"{what} {token} outside the vocabulary of {Weights.VocabSize}");
            else _embedding!.AsSpan(token * d, d).CopyTo(rows.AsSpan(r * d, d));
        }
        Transpose(projection, _transposed, d);
        fixed (float* pe = rows, pt = _transposed, pz = _z[0])
            TrainingGemm.Multiply(m, d, d, GemmA.RowMajor(pe, d), GemmB.RowMajor(pt, d), pz, d, accumulate: true, _threads);
    }

    /// <summary>
    /// Per row: cross-entropy and the target's rank; the row is overwritten with the softmax, and with
    /// <paramref name="gradients"/> becomes G = (softmax − onehot) / count (rows without a target become 0).
    /// </summary>
    private HeadScore Score(int[] targetArray, int m, bool gradients, float[]? teacherLogits = null, float softWeight = 0)
    {
        int v = V;
        int count = 0;
        foreach (int t in targetArray) if (t >= 0) count++;
        var ranks = new int[m];
        float scale = count == 0 ? 0 : 1f / count;
        var logits = _logits;
        var rowLoss = _rowLoss;
        void Row(int r)
        {
            var row = logits.AsSpan(r * v, v);
            int y = targetArray[r];
            if (y < 0)
            {
                if (gradients) row.Clear();
                ranks[r] = y == OutsideShortlist ? int.MaxValue : -1;
                return;
            }
            float target = row[y];
            ranks[r] = CountGreater(row, target);
            // softmax in place: p = exp(logits − max) / Σ; cross-entropy = ln Σ − (logit_y − max)
            float max = TensorPrimitives.Max(row);
            TensorPrimitives.Subtract(row, max, row);
            TensorPrimitives.Exp(row, row);
            float sum = TensorPrimitives.Sum(row);
            rowLoss[r] = MathF.Log(sum) - (target - max);
            if (gradients)
            {
                TensorPrimitives.Multiply(row, scale / sum, row);
                if (teacherLogits is null)
                {
                    row[y] -= scale;
                }
                else
                {
                    // G = (softmax − (1 − α)·onehot − α·softmax(teacher)) / count
                    var soft = teacherLogits.AsSpan(r * v, v);
                    TensorPrimitives.Subtract(soft, TensorPrimitives.Max(soft), soft);
                    TensorPrimitives.Exp(soft, soft);
                    TensorPrimitives.Multiply(soft, softWeight * scale / TensorPrimitives.Sum(soft), soft);
                    TensorPrimitives.Subtract(row, soft, row);
                    row[y] -= (1 - softWeight) * scale;
                }
            }
        }
        ForEachRow(m, parallel: m * (long)v >= 1 << 16, Row);
        LastRanks = ranks;
        var score = new HeadScore();
        for (int r = 0; r < m; r++)
        {
            if (ranks[r] < 0) continue;
            score.Count++;
            if (ranks[r] == int.MaxValue)
            {
                score.Outside++;
                continue;
            }
            score.LossSum += rowLoss[r];
            if (ranks[r] == 0) score.Top1++;
            if (ranks[r] < 5) score.Top5++;
        }
        return score;
    }

    /// <summary>How many values of <paramref name="row"/> are greater than <paramref name="value"/> (the target's 0-based rank).</summary>
    private static int CountGreater(ReadOnlySpan<float> row, float value)
    {
        int i = 0, count = 0;
        if (Vector256.IsHardwareAccelerated && row.Length >= 8)
        {
            var threshold = Vector256.Create(value);
            var counts = Vector256<int>.Zero;
            ref float start = ref MemoryMarshal.GetReference(row);
            for (; i <= row.Length - 8; i += 8)
                counts -= Vector256.GreaterThan(Vector256.LoadUnsafe(ref start, (nuint)i), threshold).AsInt32(); // true lanes are −1
            count = Vector256.Sum(counts);
        }
        for (; i < row.Length; i++)
            if (row[i] > value) count++;
        return count;
    }

    /// <summary>From G in <see cref="_logits"/> back to the head's parameter gradients.</summary>
    private void BackwardFromLogits(int head, int m)
    {
        int d = D, v = V, layers = Weights.LayerCount;
        var lm = LmHead(head);
        fixed (float* pl = _logits, pu = lm, pdz = _dz, pzl = _z[layers])
        {
            // ∂z_L = G U   [M, V] · [V, D]
            TrainingGemm.Multiply(m, d, v, GemmA.RowMajor(pl, v), GemmB.RowMajor(pu, d), pdz, d, accumulate: false, _threads);
            if (LmHeadGradient is { } lmGradient)
            {
                // ∂U = Gᵀ z_L   [V, M] · [M, D]
                fixed (float* pgu = lmGradient[head])
                    TrainingGemm.Multiply(v, d, m, GemmA.Transposed(pl, v), GemmB.RowMajor(pzl, d), pgu, d, accumulate: false, _threads);
            }
        }
        for (int l = layers - 1; l >= 0; l--)
        {
            var a = _a[l];
            var g = _g;
            var dz = _dz;
            // g = ∂z_{l+1} ⊙ σ(a)(1 + a(1 − σ(a)))
            for (int i = 0; i < m * d; i++)
            {
                float x = a[i];
                float s = 1f / (1f + MathF.Exp(-x));
                g[i] = dz[i] * s * (1f + x * (1f - s));
            }
            var bias = BiasGradient[head][l];
            Array.Clear(bias);
            for (int r = 0; r < m; r++) TensorPrimitives.Add(bias, g.AsSpan(r * d, d), bias);
            fixed (float* pg = g, pz = _z[l], pw = Weights.Linear[head][l], pgw = LinearGradient[head][l], pdz = dz)
            {
                // ∂W = gᵀ z_l   [D, M] · [M, D]
                TrainingGemm.Multiply(d, d, m, GemmA.Transposed(pg, d), GemmB.RowMajor(pz, d), pgw, d, accumulate: false, _threads);
                // ∂z_l = ∂z_{l+1} + g W (below the first block only for a next-token input or context attention: the backbone is frozen)
                if (l > 0 || NextTokenGradient is not null || _shape is not null)
                    TrainingGemm.Multiply(m, d, d, GemmA.RowMajor(pg, d), GemmB.RowMajor(pw, d), pdz, d, accumulate: true, _threads);
            }
        }
        if (_shape is not null) ContextBackward(head, m);
        if (NextTokenGradient is { } nextGradient)
        {
            // ∂P = ∂z₀ᵀ e   [D, M] · [M, D]
            fixed (float* pdz = _dz, pe = _e, pgp = nextGradient[head])
                TrainingGemm.Multiply(d, d, m, GemmA.Transposed(pdz, d), GemmB.RowMajor(pe, d), pgp, d, accumulate: false, _threads);
        }
        if (PreviousTokenGradient is { } previousGradient && head > 0)
        {
            // ∂R = ∂z₀ᵀ e_prev
            fixed (float* pdz = _dz, pe = _ePrevious, pgr = previousGradient[head])
                TrainingGemm.Multiply(d, d, m, GemmA.Transposed(pdz, d), GemmB.RowMajor(pe, d), pgr, d, accumulate: false, _threads);
        }
    }

    /// <summary>Runs <paramref name="row"/> for rows 0..m − 1, on the heads' threads when <paramref name="parallel"/> (enough work to share).</summary>
    private void ForEachRow(int m, bool parallel, Action<int> row)
    {
        if (!parallel || _threads == 1) for (int r = 0; r < m; r++) row(r);
        else Parallel.For(0, m, new ParallelOptions { MaxDegreeOfParallelism = _threads }, row);
    }

    private static void Transpose(float[] source, float[] destination, int d) => Transpose(source, destination, d, d);

    /// <summary>destination [cols, rows] = sourceᵀ for a row-major source [rows, cols].</summary>
    private static void Transpose(float[] source, float[] destination, int rows, int cols)
    {
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) destination[j * rows + i] = source[i * cols + j];
    }

    /// <summary>z₀ ← z₀ + W_o · attention(rope(W_q z₀)) over each row's cached keys and values (z₀ kept in <see cref="_zc"/>).</summary>
    private void ContextForward(int head, int m, HeadContextRows rows)
    {
        var shape = _shape!;
        int d = D, a = shape.Width, dh = shape.HeadDim, heads = shape.Heads, kvDim = shape.KvDim, group = shape.Heads / shape.KvHeads;
        int maxVisible = 0;
        for (int r = 0; r < m; r++)
        {
            int n = rows.Visible[r];
            if (n < 1 || (long)n * kvDim > rows.Keys[r].Length || rows.Values[r].Length != rows.Keys[r].Length)
                throw new ArgumentException($"row {r} sees {n} cached positions but its keys hold {rows.Keys[r].Length / kvDim} (values {rows.Values[r].Length / kvDim})");
            maxVisible = Math.Max(maxVisible, n);
        }
        if ((long)m * heads * maxVisible > _p.Length) _p = new float[(long)m * heads * maxVisible];
        _maxVisible = maxVisible;
        _rows = rows;
        _z[0].AsSpan(0, m * d).CopyTo(_zc);
        Transpose(Weights.ContextQuery![head], _transposedQuery, a, d);
        fixed (float* pz = _zc, pt = _transposedQuery, pq = _q)
            TrainingGemm.Multiply(m, a, d, GemmA.RowMajor(pz, d), GemmB.RowMajor(pt, a), pq, a, accumulate: false, _threads);
        float scale = 1f / MathF.Sqrt(dh);
        var q = _q;
        var o = _o;
        var probabilities = _p;
        void Row(int r)
        {
            int n = rows.Visible[r];
            var keys = rows.Keys[r];
            var values = rows.Values[r];
            var qr = q.AsSpan(r * a, a);
            Rope(qr, n, heads, dh, shape.Rope, inverse: false);
            var orow = o.AsSpan(r * a, a);
            orow.Clear();
            fixed (float* pq = qr, po = orow, pk = keys, pv = values)
                for (int h = 0; h < heads; h++)
                {
                    int kv = (h / group) * dh;
                    var p = probabilities.AsSpan((r * heads + h) * maxVisible, n);
                    for (int j = 0; j < n; j++) p[j] = HostMatMul.Dot(pq + h * dh, pk + (long)j * kvDim + kv, dh) * scale;
                    float max = TensorPrimitives.Max(p);
                    TensorPrimitives.Subtract(p, max, p);
                    TensorPrimitives.Exp(p, p);
                    TensorPrimitives.Multiply(p, 1f / TensorPrimitives.Sum(p), p);
                    for (int j = 0; j < n; j++) HostMatMul.AddScaled(po + h * dh, pv + (long)j * kvDim + kv, p[j], dh);
                }
        }
        ForEachRow(m, parallel: m >= 4, Row);
        Transpose(Weights.ContextOutput![head], _transposedOutput, d, a);
        fixed (float* po = _o, pt = _transposedOutput, pz = _z[0])
            TrainingGemm.Multiply(m, d, a, GemmA.RowMajor(po, a), GemmB.RowMajor(pt, d), pz, d, accumulate: true, _threads);
    }

    /// <summary>From ∂z (after the attention, in <see cref="_dz"/>) to ∂W_o, ∂W_q, and ∂z₀ (into <see cref="_dz"/>).</summary>
    private void ContextBackward(int head, int m)
    {
        var shape = _shape!;
        var rows = _rows!;
        int d = D, a = shape.Width, dh = shape.HeadDim, heads = shape.Heads, kvDim = shape.KvDim, group = shape.Heads / shape.KvHeads, maxVisible = _maxVisible;
        fixed (float* pdz = _dz, po = _o, pgo = ContextOutputGradient![head], pwo = Weights.ContextOutput![head], pdo = _do)
        {
            // ∂W_o = ∂zᵀ o   [D, M] · [M, A];  ∂o = ∂z W_o   [M, D] · [D, A]
            TrainingGemm.Multiply(d, a, m, GemmA.Transposed(pdz, d), GemmB.RowMajor(po, a), pgo, a, accumulate: false, _threads);
            TrainingGemm.Multiply(m, a, d, GemmA.RowMajor(pdz, d), GemmB.RowMajor(pwo, a), pdo, a, accumulate: false, _threads);
        }
        float scale = 1f / MathF.Sqrt(dh);
        var dq = _dq;
        var dout = _do;
        var probabilities = _p;
        void Row(int r)
        {
            int n = rows.Visible[r];
            var keys = rows.Keys[r];
            var values = rows.Values[r];
            var dqr = dq.AsSpan(r * a, a);
            dqr.Clear();
            Span<float> ds = n <= 1024 ? stackalloc float[n] : new float[n];
            fixed (float* pdo = dout.AsSpan(r * a, a), pdq = dqr, pk = keys, pv = values)
                for (int h = 0; h < heads; h++)
                {
                    int kv = (h / group) * dh;
                    var p = probabilities.AsSpan((r * heads + h) * maxVisible, n);
                    for (int j = 0; j < n; j++) ds[j] = HostMatMul.Dot(pdo + h * dh, pv + (long)j * kvDim + kv, dh);
                    float mean = TensorPrimitives.Dot(p, ds);
                    TensorPrimitives.Subtract(ds, mean, ds);
                    TensorPrimitives.Multiply(ds, p, ds);
                    for (int j = 0; j < n; j++) HostMatMul.AddScaled(pdq + h * dh, pk + (long)j * kvDim + kv, ds[j] * scale, dh);
                }
            Rope(dqr, n, heads, dh, shape.Rope, inverse: true);
        }
        ForEachRow(m, parallel: m >= 4, Row);
        fixed (float* pdq = _dq, pzc = _zc, pgq = ContextQueryGradient![head], pwq = Weights.ContextQuery![head], pdz = _dz)
        {
            // ∂W_q = ∂qᵀ z₀   [A, M] · [M, D];  ∂z₀ = ∂z + ∂q W_q   [M, A] · [A, D]
            TrainingGemm.Multiply(a, d, m, GemmA.Transposed(pdq, a), GemmB.RowMajor(pzc, d), pgq, d, accumulate: false, _threads);
            TrainingGemm.Multiply(m, d, a, GemmA.RowMajor(pdq, a), GemmB.RowMajor(pwq, d), pdz, d, accumulate: true, _threads);
        }
    }

    /// <summary>
    /// Rotary embedding of one row's query heads at <paramref name="position"/> (rotate-half form, the angles in float32
    /// as the backends compute them), or its inverse (the rotation's transpose, for gradients).
    /// </summary>
    internal static void Rope(Span<float> row, int position, int heads, int headDim, RopeParameters rope, bool inverse)
    {
        int half = headDim / 2;
        var frequencies = rope.Frequencies(headDim);
        for (int j = 0; j < half; j++)
        {
            float angle = position * frequencies[j];
            float cos = MathF.Cos(angle), sin = inverse ? -MathF.Sin(angle) : MathF.Sin(angle);
            for (int h = 0; h < heads; h++)
            {
                int i = h * headDim + j;
                float x = row[i], y = row[i + half];
                row[i] = x * cos - y * sin;
                row[i + half] = x * sin + y * cos;
            }
        }
    }
}
