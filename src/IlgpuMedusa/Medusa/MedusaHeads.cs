using IlgpuMedusa.Compute;
using IlgpuMedusa.Models;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Medusa;

/// <summary>
/// Medusa heads on a backend. Head i maps the base model's final hidden state at position t to logits for the token
/// at t + 2 + i: z ← h; per ResBlock z ← z + SiLU(W z + b); logits = lm_head(z). All heads' logits come from one
/// classifier matmul when they share the base lm_head; each head's top-k is computed on the device and only the
/// ids cross to the host. Heads with a vocabulary shortlist of N tokens score only those: their lm_head is [N, D] (the
/// base classifier's rows of the shortlisted tokens, or their own), top-k runs over N columns and the indices are
/// mapped back to token ids on the host. Heads with a next-token input (compact format) start from z ← h + P·e(x̂) where
/// x̂ is the base model's next token at h (the argmax of the heads' lm_head at h: the pending token of a Medusa step, found
/// on the device) and e its input embedding. Heads with context attention then add W_o · attention(rope(W_q z)) over the
/// keys and values the base model's last layer cached for the sequence (one attention op per head over the existing
/// cache; <see cref="HasContextAttention"/>). Heads with a previous-token input (Hydra-style) run one after another:
/// head i ≥ 1 also adds R_i·e(g) to its z₀, g the best guess of head i − 1 (its argmax, found on the device), so every
/// head's guesses are conditioned on the path of best guesses before it (<see cref="HasPreviousTokenInput"/>).
/// </summary>
public sealed class MedusaHeads : IDisposable
{
    /// <summary>Top-k computed per head (the largest index a tree may use is TopK − 1).</summary>
    public const int TopK = 10;

    private readonly LlamaModel _model;
    private readonly DeviceTensor[][] _linear;   // [head][layer] [D, D]
    private readonly DeviceTensor[][] _bias;     // [head][layer] [1, D]
    private readonly DeviceTensor[]? _lmHeads;   // [head] [N, D], null = one shared classifier
    private readonly DeviceTensor? _sharedShortlistLmHead; // [N, D] base classifier rows of the shortlist (shared heads)
    private readonly int[]? _shortlist;          // column → token id, null = the whole vocabulary
    private readonly DeviceTensor _z;            // [K, D] head states
    private readonly DeviceTensor _linearOut;    // [K, D]
    private readonly DeviceTensor _logits;       // [K, N] (N = V without a shortlist)
    private readonly DeviceTensor _topIndices;   // [K, TopK]
    private readonly DeviceTensor _topValues;    // [K, TopK]
    private readonly int[] _hostTop;             // [K · TopK]
    private readonly NextTokenInput? _next;
    private readonly StackedHeads? _stacked;     // the heads' matrices stacked, on backends with a grouped matmul
    private readonly int _headCount, _layerCount;

    /// <summary>
    /// All heads' ResBlock matrices (and next-token projections) stacked per layer, for backends that run several GEMVs in
    /// one launch (<see cref="IComputeBackend.GroupedMatMul"/>): a step then costs a few launches for all heads instead of
    /// six per head, which is what a launch-bound GPU pays for (and the host, in one parallel region per op).
    /// </summary>
    private sealed class StackedHeads(DeviceTensor[] linear, DeviceTensor[] bias, DeviceTensor? projection, DeviceTensor start, DeviceTensor? zeros) : IDisposable
    {
        public DeviceTensor[] Linear { get; } = linear;         // [layer] [H·D, D]
        public DeviceTensor[] Bias { get; } = bias;             // [layer] [H, D]
        public DeviceTensor? Projection { get; } = projection;  // [H·D, D] (next-token input)
        public DeviceTensor Start { get; } = start;             // [H, D] z₀ of every head
        public DeviceTensor? Zeros { get; } = zeros;            // [H, D] zeros (no next-token input: z₀ = 0 + h)

        public void Dispose()
        {
            foreach (var t in Linear) t.Dispose();
            foreach (var t in Bias) t.Dispose();
            Projection?.Dispose();
            Start.Dispose();
            Zeros?.Dispose();
        }
    }

    /// <summary>The device side of next-token inputs: P per head, what the next token is found with, and scratch rows.</summary>
    private sealed class NextTokenInput(IComputeBackend b, DeviceTensor[] projection, DeviceTensor classifier, DeviceTensor table, int columns, int d) : IDisposable
    {
        public DeviceTensor[] Projection { get; } = projection;   // [head] [D, D]
        public DeviceTensor Classifier { get; } = classifier;     // [N, D] base lm_head rows scored (owned elsewhere)
        public DeviceTensor Table { get; } = table;               // [N, D] input embeddings of those tokens (owned elsewhere)
        public DeviceTensor Logits { get; } = b.Allocate(DType.F32, 1, columns);
        public DeviceTensor Index { get; } = b.Allocate(DType.I32, 1, 1);
        public DeviceTensor Embedding { get; } = b.Allocate(DType.F32, 1, d);
        public DeviceTensor Projected { get; } = b.Allocate(DType.F32, 1, d);
        public DeviceTensor Input { get; } = b.Allocate(DType.F32, 1, d);

        public void Dispose()
        {
            foreach (var p in Projection) p.Dispose();
            Logits.Dispose();
            Index.Dispose();
            Embedding.Dispose();
            Projected.Dispose();
            Input.Dispose();
        }
    }

    /// <summary>The device side of previous-token inputs: R per head (null for head 0) and scratch rows.</summary>
    private sealed class PreviousTokenInput(IComputeBackend b, DeviceTensor?[] projection, int d) : IDisposable
    {
        public DeviceTensor?[] Projection { get; } = projection;  // [head] [D, D]; head 0 has none
        public DeviceTensor Index { get; } = b.Allocate(DType.I32, 1, 1);
        public DeviceTensor Embedding { get; } = b.Allocate(DType.F32, 1, d);
        public DeviceTensor Projected { get; } = b.Allocate(DType.F32, 1, d);

        public void Dispose()
        {
            foreach (var p in Projection) p?.Dispose();
            Index.Dispose();
            Embedding.Dispose();
            Projected.Dispose();
        }
    }

    /// <summary>
    /// The device side of context attention: W_q and W_o (one stacked matrix each when the heads are grouped, else one
    /// per head) and scratch rows for the heads' queries, what they attended to, and its projection.
    /// </summary>
    private sealed class ContextInput(IComputeBackend b, DeviceTensor[] query, DeviceTensor[] output, bool grouped, int heads, int width, int d) : IDisposable
    {
        public DeviceTensor[] Query { get; } = query;      // grouped: [1] [K·A, D]; else [head] [A, D]
        public DeviceTensor[] Output { get; } = output;    // grouped: [1] [K·D, A]; else [head] [D, A]
        public bool Grouped { get; } = grouped;
        public int Width { get; } = width;
        public DeviceTensor Queries { get; } = b.Allocate(DType.F32, heads, width);
        public DeviceTensor Attended { get; } = b.Allocate(DType.F32, heads, width);
        public DeviceTensor Projected { get; } = b.Allocate(DType.F32, heads, d);
        public DeviceTensor Positions { get; } = b.Allocate(DType.I32, heads, 1);
        public int[] HostPositions { get; } = new int[heads];

        public void Dispose()
        {
            foreach (var t in Query) t.Dispose();
            foreach (var t in Output) t.Dispose();
            Queries.Dispose();
            Attended.Dispose();
            Projected.Dispose();
            Positions.Dispose();
        }
    }

    private MedusaHeads(LlamaModel model, int heads, int layers, DeviceTensor[][] linear, DeviceTensor[][] bias, StackedHeads? stacked, DeviceTensor[]? lmHeads,
        DeviceTensor? sharedShortlistLmHead, int[]? shortlist, string source, NextTokenInput? next, IReadOnlyList<DeviceTensor> owned, ContextInput? context,
        PreviousTokenInput? previous)
    {
        _previous = previous;
        _context = context;
        _model = model;
        _headCount = heads;
        _layerCount = layers;
        _stacked = stacked;
        _next = next;
        _owned = owned;
        _linear = linear;
        _bias = bias;
        _lmHeads = lmHeads;
        _sharedShortlistLmHead = sharedShortlistLmHead;
        _shortlist = shortlist;
        Source = source;
        var b = model.Backend;
        int k = heads, d = model.Config.Dim, n = shortlist?.Length ?? model.Config.VocabSize;
        _z = b.Allocate(DType.F32, k, d);
        _linearOut = b.Allocate(DType.F32, k, d);
        _logits = b.Allocate(DType.F32, k, n);
        _topIndices = b.Allocate(DType.I32, k, TopK);
        _topValues = b.Allocate(DType.F32, k, TopK);
        _hostTop = new int[k * TopK];
        if (shortlist is not null)
        {
            DeviceShortlist = b.Allocate(DType.I32, shortlist.Length, 1);
            b.Upload(DeviceShortlist, shortlist);
            _column = new int[model.Config.VocabSize];
            Array.Fill(_column, -1);
            for (int i = 0; i < shortlist.Length; i++) _column[shortlist[i]] = i;
        }
    }

    /// <summary>Number of heads.</summary>
    public int HeadCount => _headCount;
    /// <summary>ResBlocks per head.</summary>
    public int LayerCount => _layerCount;
    /// <summary>True when the heads run together through <see cref="IComputeBackend.GroupedMatMul"/> (a few launches per step).</summary>
    public bool Grouped => _stacked is not null;

    /// <summary>How the heads' ResBlock matrices are stored on the device (see <see cref="Load"/>; null without ResBlocks).</summary>
    internal DType? MatrixType => LayerCount == 0 ? null : (_stacked?.Linear[0] ?? _linear[0][0]).Type;
    /// <summary>True when the heads use the base model's classifier (all of it, or its shortlisted rows).</summary>
    public bool SharedLmHead => _lmHeads is null;
    /// <summary>The tokens the heads score (sorted ids), or null for the whole vocabulary.</summary>
    public IReadOnlyList<int>? Shortlist => _shortlist;
    /// <summary>
    /// <see cref="Shortlist"/> on the device, I32[N, 1] (column → token id), for mapping <see cref="PredictOnDevice"/>'s
    /// columns there (<see cref="IComputeBackend.GatherInts"/>); null for the whole vocabulary (columns are token ids).
    /// </summary>
    public DeviceTensor? DeviceShortlist { get; }
    /// <summary>True when each head also takes the base model's next token as input.</summary>
    public bool HasNextTokenInput => _next is not null;
    /// <summary>
    /// True when heads 1 and up also take the previous head's best guess as input (<see cref="MedusaHeadWeights.PreviousToken"/>):
    /// the heads then run one after another, and head i's top-k assumes head i − 1's first guess.
    /// </summary>
    public bool HasPreviousTokenInput => _previous is not null;
    private readonly PreviousTokenInput? _previous;
    /// <summary>
    /// True when each head first attends to the keys and values the base model's last layer cached for the sequence
    /// (<see cref="MedusaHeadWeights.ContextQuery"/>): <see cref="Predict(DeviceTensor, int, int, KvSequence?, int)"/> then
    /// needs the sequence and its committed length.
    /// </summary>
    public bool HasContextAttention => _context is not null;
    private readonly ContextInput? _context;
    /// <summary>Where the heads came from.</summary>
    public string Source { get; }

    private readonly IReadOnlyList<DeviceTensor> _owned; // extra tables uploaded for next-token inputs

    /// <summary>
    /// Uploads heads for <paramref name="model"/>, refusing heads whose hidden size or vocabulary differ from the model's
    /// or that were trained for another model (when the file records which). Heads that share the base lm_head through a
    /// vocabulary shortlist build it from the shortlisted rows of the base classifier, read from
    /// <paramref name="baseCheckpoint"/> (the checkpoint <paramref name="model"/> was loaded from; it may be closed once
    /// this returns). The heads' matrices (ResBlocks, next-token projections, lm_heads) are stored as
    /// <paramref name="matrixType"/>, by default what the backend prefers for them (<see cref="IComputeBackend.HeadsWeightType"/>:
    /// BF16 on the host, the model's type elsewhere): the heads only propose tokens, and every proposal is verified exactly.
    /// </summary>
    public static MedusaHeads Load(MedusaHeadsCheckpoint checkpoint, LlamaModel model, ICheckpoint? baseCheckpoint = null, DType? matrixType = null)
    {
        var c = model.Config;
        if (checkpoint.HiddenSize != c.Dim)
            throw new InvalidDataException($"{checkpoint.Path}: the Medusa heads have hidden size {checkpoint.HiddenSize} but the model's is {c.Dim}; they belong to another model.");
        if (checkpoint.VocabSize is int v && v != c.VocabSize)
            throw new InvalidDataException($"{checkpoint.Path}: the Medusa heads' lm_head has a vocabulary of {v} but the model's is {c.VocabSize}; they belong to another model.");
        if (checkpoint.BaseModel is { } signature && !signature.Matches(model.Signature))
            throw new InvalidDataException($"{checkpoint.Path}: these Medusa heads were trained for another model (its signature {signature.Shape} does not match this model's weights, {model.Signature.Shape}).");
        if (checkpoint.HasContextAttention && checkpoint.HasPreviousTokenInput)
            throw new InvalidDataException($"{checkpoint.Path}: Medusa heads with both context attention and a previous-token input cannot be decoded; train one or the other.");
        if (checkpoint.HasContextAttention && checkpoint.ContextWidth != c.Heads * c.HeadDim)
            throw new InvalidDataException(
                $"{checkpoint.Path}: Medusa tensor '{MedusaHeadsCheckpoint.ContextQueryTensor(0)}' has {checkpoint.ContextWidth} rows but the model's attention has {c.Heads} heads of {c.HeadDim}; they belong to another model.");
        var shortlist = checkpoint.Shortlist;
        if (shortlist is not null)
        {
            string tensor = $"{checkpoint.Path}: Medusa tensor '{MedusaHeadsCheckpoint.ShortlistTensor}'";
            VocabularyShortlist.Check(shortlist, c.VocabSize, tensor);
            if (shortlist.Length < TopK)
                throw new InvalidDataException($"{tensor} lists {shortlist.Length} tokens, fewer than the {TopK} candidates each head proposes.");
        }
        bool sharedShortlist = shortlist is not null && checkpoint.SharedLmHead;
        if (sharedShortlist || checkpoint.HasNextTokenInput)
        {
            if (baseCheckpoint is null)
                throw new ArgumentException(sharedShortlist
                    ? $"{checkpoint.Path}: these Medusa heads score a vocabulary shortlist with the base model's classifier; pass the model's checkpoint to build their lm_head."
                    : $"{checkpoint.Path}: these Medusa heads take the base model's next token as input; pass the model's checkpoint for its embeddings.", nameof(baseCheckpoint));
            if (!ModelSignature.Of(baseCheckpoint).Matches(model.Signature))
                throw new ArgumentException($"{baseCheckpoint.Location} is not the checkpoint the model was loaded from; the heads' lm_head must come from the model's own classifier.", nameof(baseCheckpoint));
        }
        var b = model.Backend;
        if (matrixType is { } requested && requested is not (DType.F32 or DType.F16 or DType.BF16))
            throw new ArgumentOutOfRangeException(nameof(matrixType), requested, "Medusa head matrices are stored as F32, F16 or BF16.");
        var weightType = matrixType ?? b.HeadsWeightType(model.WeightType);
        var created = new List<IDisposable>();
        DeviceTensor Up(TensorData t, DType type)
        {
            var tensor = b.UploadWeight([t], type);
            created.Add(tensor);
            return tensor;
        }
        try
        {
            int heads = checkpoint.HeadCount, layers = checkpoint.LayerCount;
            // Heads with a previous-token input run one after another, each with its own matrices.
            bool grouped = heads > 1 && layers > 0 && b.CanGroupMatMul(c.Dim) && (!checkpoint.HasContextAttention || b.CanGroupMatMul(checkpoint.ContextWidth))
                && !checkpoint.HasPreviousTokenInput;
            var linear = new DeviceTensor[grouped ? 0 : heads][];
            var bias = new DeviceTensor[grouped ? 0 : heads][];
            DeviceTensor Stack(Func<int, TensorData> part, DType type)
            {
                var parts = Enumerable.Range(0, heads).Select(part).ToArray();
                var tensor = b.UploadWeight(parts, type);
                created.Add(tensor);
                return tensor;
            }
            DeviceTensor Rows(Func<int, TensorData> part)
            {
                // Biases are activations' operands, not matmul weights: a plain [H, D] tensor (a backend may lay weights out its own way).
                var tensor = b.Allocate(DType.F32, heads, c.Dim);
                created.Add(tensor);
                var values = new float[heads * c.Dim];
                for (int h = 0; h < heads; h++) part(h).ToFloatArray().CopyTo(values, h * c.Dim);
                b.Upload(tensor, values);
                return tensor;
            }
            for (int h = 0; h < linear.Length; h++)
            {
                linear[h] = new DeviceTensor[layers];
                bias[h] = new DeviceTensor[layers];
                for (int l = 0; l < layers; l++)
                {
                    linear[h][l] = Up(checkpoint.Linear(h, l), weightType);
                    bias[h][l] = Up(checkpoint.Bias(h, l), DType.F32);
                }
            }
            StackedHeads? stacked = null;
            if (grouped)
            {
                var stackedLinear = Enumerable.Range(0, layers).Select(l => Stack(h => checkpoint.Linear(h, l), weightType)).ToArray();
                var stackedBias = Enumerable.Range(0, layers).Select(l => Rows(h => checkpoint.Bias(h, l))).ToArray();
                var projection = checkpoint.HasNextTokenInput ? Stack(checkpoint.NextToken, weightType) : null;
                var start = b.Allocate(DType.F32, heads, c.Dim);
                created.Add(start);
                var zeros = checkpoint.HasNextTokenInput ? null : b.Allocate(DType.F32, heads, c.Dim);
                if (zeros is not null) created.Add(zeros);
                stacked = new StackedHeads(stackedLinear, stackedBias, projection, start, zeros);
                created.RemoveAll(t => stackedLinear.Contains(t) || stackedBias.Contains(t) || ReferenceEquals(t, projection) || ReferenceEquals(t, start) || ReferenceEquals(t, zeros));
                created.Add(stacked);
            }
            var lmHeads = checkpoint.SharedLmHead ? null : Enumerable.Range(0, heads).Select(h => Up(checkpoint.LmHead(h), weightType)).ToArray();
            var sharedLmHead = sharedShortlist
                ? UploadRows(baseCheckpoint!, c.TiedEmbeddings ? LlamaTensorNames.Embedding : LlamaTensorNames.Classifier, c, shortlist!, Up, weightType)
                : null;
            var owned = new List<DeviceTensor>();
            NextTokenInput? next = null;
            if (checkpoint.HasNextTokenInput)
            {
                // The next token is the argmax of the rows the heads score (the shortlist's, or the whole classifier), and
                // its embedding is looked up by that row: the same rows when the model ties its embeddings.
                var projection = grouped ? [] : Enumerable.Range(0, heads).Select(h => Up(checkpoint.NextToken(h), weightType)).ToArray();
                created.RemoveAll(t => projection.Contains(t)); // owned by the NextTokenInput from here
                var scored = sharedLmHead ?? model.Classifier;
                DeviceTensor table = scored;
                if (!c.TiedEmbeddings)
                {
                    table = shortlist is null
                        ? Up(baseCheckpoint!.GetTensor(LlamaTensorNames.Embedding, c.VocabSize, c.Dim), weightType)
                        : UploadRows(baseCheckpoint!, LlamaTensorNames.Embedding, c, shortlist, Up, weightType);
                    owned.Add(table);
                }
                try
                {
                    next = new NextTokenInput(b, projection, scored, table, shortlist?.Length ?? c.VocabSize, c.Dim);
                }
                catch
                {
                    foreach (var p in projection) p.Dispose();
                    throw;
                }
                created.Add(next);
            }
            ContextInput? context = null;
            if (checkpoint.HasContextAttention)
            {
                var query = grouped ? [Stack(checkpoint.ContextQuery, weightType)] : Enumerable.Range(0, heads).Select(h => Up(checkpoint.ContextQuery(h), weightType)).ToArray();
                var output = grouped ? [Stack(checkpoint.ContextOutput, weightType)] : Enumerable.Range(0, heads).Select(h => Up(checkpoint.ContextOutput(h), weightType)).ToArray();
                created.RemoveAll(t => query.Contains(t) || output.Contains(t)); // owned by the ContextInput from here
                try
                {
                    context = new ContextInput(b, query, output, grouped, heads, checkpoint.ContextWidth, c.Dim);
                }
                catch
                {
                    foreach (var t in query.Concat(output)) t.Dispose();
                    throw;
                }
                created.Add(context);
            }
            PreviousTokenInput? previous = null;
            if (checkpoint.HasPreviousTokenInput)
            {
                var projection = Enumerable.Range(0, heads).Select(h => h == 0 ? null : Up(checkpoint.PreviousToken(h), weightType)).ToArray();
                created.RemoveAll(t => projection.Contains(t)); // owned by the PreviousTokenInput from here
                try
                {
                    previous = new PreviousTokenInput(b, projection, c.Dim);
                }
                catch
                {
                    foreach (var p in projection) p?.Dispose();
                    throw;
                }
                created.Add(previous);
            }
            return new MedusaHeads(model, heads, layers, linear, bias, stacked, lmHeads, sharedLmHead, shortlist, checkpoint.Path, next, owned, context, previous);
        }
        catch
        {
            foreach (var t in created) t.Dispose();
            throw;
        }
    }

    /// <summary>Rows of the shortlisted tokens of a base [V, D] table (classifier or embedding) as one [N, D] weight.</summary>
    private static unsafe DeviceTensor UploadRows(ICheckpoint checkpoint, string name, ModelConfig c, int[] shortlist, Func<TensorData, DType, DeviceTensor> upload, DType weightType)
    {
        var classifier = checkpoint.GetTensor(name, c.VocabSize, c.Dim);
        int d = c.Dim, size = DTypeInfo.SizeOf(classifier.Type);
        // Native scratch, freed once uploaded: a managed array this size would stay in the process's memory after the load.
        long count = (long)shortlist.Length * d;
        var rows = (float*)System.Runtime.InteropServices.NativeMemory.Alloc((nuint)count, sizeof(float));
        try
        {
            var start = (byte*)classifier.Pointer;
            for (int i = 0; i < shortlist.Length; i++)
            {
                HalfConversions.ToSingle(classifier.Type, new ReadOnlySpan<byte>(start + (long)shortlist[i] * d * size, d * size), new Span<float>(rows + (long)i * d, d));
                // Each scattered row read maps the file's pages around it (the kernel faults around, 64 KiB at a time): let
                // them go every few rows, so reading a shortlist never holds most of the table in memory at once.
                if (i % 64 == 63 || i == shortlist.Length - 1) Models.MappedFile.ReleasePages(classifier);
            }
            return upload(new TensorData($"{name} (shortlisted rows)", DType.F32, [shortlist.Length, d], (nint)rows), weightType);
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.Free(rows);
        }
    }

    /// <summary>
    /// Runs every head on one hidden state F32[1, D] and returns the top-k token ids, head-major: [head · TopK + rank].
    /// The span is valid until the next call.
    /// </summary>
    public ReadOnlySpan<int> Predict(DeviceTensor hidden) => Predict(hidden, HeadCount);

    /// <summary>
    /// Runs the first <paramref name="heads"/> heads only (a tree of depth d needs heads 0..d − 1; the others would be
    /// computed for nothing) and returns their top-k token ids, [head · TopK + rank] for head &lt; <paramref name="heads"/>.
    /// The span is valid until the next call.
    /// </summary>
    public ReadOnlySpan<int> Predict(DeviceTensor hidden, int heads) => Predict(hidden, heads, nextToken: -1);

    /// <summary>
    /// As <see cref="Predict(DeviceTensor, int)"/>, for heads with a next-token input given that token (the pending token
    /// of a Medusa step: the base model's argmax at h when decoding greedily, the drawn token when sampling), so the
    /// heads need not find it on the device; −1: find it (the argmax of the scored rows at h). Heads without that input
    /// ignore it.
    /// </summary>
    public ReadOnlySpan<int> Predict(DeviceTensor hidden, int heads, int nextToken) => Predict(hidden, heads, nextToken, null, 0);

    /// <summary>
    /// As <see cref="Predict(DeviceTensor, int, int)"/>, with the sequence the heads guess for: heads with context attention
    /// attend to the keys and values its cache holds for positions 0 .. <paramref name="committed"/> − 1 of the base model's
    /// last layer (h is the hidden state at position committed − 1; the pending token goes to position committed). Other
    /// heads ignore both.
    /// </summary>
    public ReadOnlySpan<int> Predict(DeviceTensor hidden, int heads, int nextToken, KvSequence? sequence, int committed)
    {
        var indices = _topIndices.Slice(0, heads);
        Run(hidden, heads, nextToken, sequence, committed, indices);
        var top = _hostTop.AsSpan(0, heads * TopK);
        _model.Backend.Download(indices, top);
        ToTokenIds(top);
        return top;
    }

    /// <summary>
    /// As <see cref="Predict(DeviceTensor, int, int, KvSequence?, int)"/>, but the guesses stay on the device: the top-k
    /// <em>columns</em> of each head go to <paramref name="topColumns"/> I32[heads, TopK] (shortlist columns when the heads
    /// score a shortlist: map them with <see cref="DeviceShortlist"/> there or <see cref="ToTokenIds"/> here). Nothing is
    /// downloaded, so the host does not wait: a Medusa step can queue its next forward with the tree's tokens picked on the
    /// device and read the guesses afterwards. <see cref="TopProbabilities"/> works after this call too.
    /// </summary>
    public void PredictOnDevice(DeviceTensor hidden, int heads, int nextToken, KvSequence? sequence, int committed, DeviceTensor topColumns)
    {
        ArgumentNullException.ThrowIfNull(topColumns);
        if (topColumns.Type != DType.I32 || topColumns.Rows != heads || topColumns.Columns != TopK)
            throw new ArgumentException($"top columns must be I32[{heads}, {TopK}], got {topColumns.ShapeText}", nameof(topColumns));
        Run(hidden, heads, nextToken, sequence, committed, topColumns);
    }

    /// <summary>Maps top-k columns (read back from <see cref="PredictOnDevice"/>) to token ids in place.</summary>
    public void ToTokenIds(Span<int> columns)
    {
        if (_shortlist is { } shortlist)
            for (int i = 0; i < columns.Length; i++) columns[i] = shortlist[columns[i]];
    }

    private void Run(DeviceTensor hidden, int heads, int nextToken, KvSequence? sequence, int committed, DeviceTensor topColumns)
    {
        if (_context is not null)
        {
            if (sequence is null)
                throw new InvalidOperationException($"{Source}: these Medusa heads attend to the sequence's context; pass its KV sequence and committed length to Predict.");
            if (committed < 1 || committed > sequence.Capacity)
                throw new ArgumentOutOfRangeException(nameof(committed), $"the heads attend to positions 0 .. committed − 1 of the sequence's cache ({sequence.Capacity} slots), got committed = {committed}");
        }
        if (heads < 1 || heads > HeadCount)
            throw new ArgumentOutOfRangeException(nameof(heads), $"between 1 and the {HeadCount} heads loaded, got {heads}");
        if (nextToken < -1 || nextToken >= _model.Config.VocabSize)
            throw new ArgumentOutOfRangeException(nameof(nextToken), $"a token id below {_model.Config.VocabSize}, or −1, got {nextToken}");
        var b = _model.Backend;
        if (_next is { } next)
        {
            if (nextToken < 0)
            {
                // x̂ = argmax of the scored rows at h; e = its input embedding
                b.MatMul(next.Logits, hidden, next.Classifier, accumulate: false);
                b.ArgMax(next.Index, next.Logits);
                b.Embedding(next.Embedding, next.Index, next.Table);
            }
            else
            {
                // e = the given token's input embedding: its row of the table (by shortlist column), or of the model's own
                int column = _column is null ? nextToken : _column[nextToken];
                _nextIndex[0] = column >= 0 ? column : nextToken;
                b.Upload(next.Index, _nextIndex);
                b.Embedding(next.Embedding, next.Index, column >= 0 ? next.Table : _model.InputEmbedding);
            }
        }
        var z = _z.Slice(0, heads);
        var logits = _logits.Slice(0, heads);
        if (_stacked is { } stacked)
        {
            RunStacked(b, stacked, hidden, heads, sequence, committed);
            if (_lmHeads is not null)
                for (int h = 0; h < heads; h++) b.MatMul(_logits.Slice(h, 1), _z.Slice(h, 1), _lmHeads[h], accumulate: false);
        }
        else for (int h = 0; h < heads; h++)
        {
            var zh = _z.Slice(h, 1);
            var linear = _linearOut.Slice(h, 1);
            var start = hidden;
            if (_next is { } input)
            {
                // z₀ = h + P e
                b.MatMul(input.Projected, input.Embedding, input.Projection[h], accumulate: false);
                b.Add(input.Input, hidden, input.Projected);
                start = input.Input;
                if (_context is { } context) AttendContext(b, context, start, h, 1, sequence!, committed);
                if (_previous is { } previous && h > 0)
                {
                    // + R_h · e(head h − 1's best guess): its argmax is a column of the scored rows, which is also the
                    // embedding table's row, as for x̂ (the heads run one after another, so its logits are there)
                    b.ArgMax(previous.Index, _logits.Slice(h - 1, 1));
                    b.Embedding(previous.Embedding, previous.Index, input.Table);
                    b.MatMul(previous.Projected, previous.Embedding, previous.Projection[h]!, accumulate: false);
                    b.Add(start, start, previous.Projected);
                }
            }
            for (int l = 0; l < LayerCount; l++)
            {
                // z ← z + SiLU(W z + b), with z = z₀ before the first block
                b.MatMul(linear, l == 0 ? start : zh, _linear[h][l], accumulate: false);
                b.SiluResidual(zh, l == 0 ? start : zh, linear, _bias[h][l]);
            }
            if (LayerCount == 0) b.Add(zh, start, _zeroLike ??= b.Allocate(DType.F32, 1, hidden.Columns));
            if (_lmHeads is not null) b.MatMul(_logits.Slice(h, 1), zh, _lmHeads[h], accumulate: false);
            else if (_previous is not null) b.MatMul(_logits.Slice(h, 1), zh, _sharedShortlistLmHead ?? _model.Classifier, accumulate: false); // the next head needs it
        }
        if (_lmHeads is null && _previous is null) b.MatMul(logits, z, _sharedShortlistLmHead ?? _model.Classifier, accumulate: false);
        b.TopK(topColumns, _topValues.Slice(0, heads), logits);
        _predicted = heads;
    }

    private int _predicted;
    private readonly int[] _nextIndex = new int[1];
    private readonly int[]? _column;              // token id → shortlist column (−1 outside), for given next tokens

    private DeviceTensor? _zeroLike;
    private float[]? _hostTopLogits, _hostTopProbabilities;

    /// <summary>
    /// After <see cref="Predict(DeviceTensor, int)"/>: the probability of each returned guess, [head · TopK + rank] for the
    /// heads it ran, from a softmax over that head's top-k logits (what <see cref="DynamicTreePlanner"/> plans with). Valid until the next call.
    /// </summary>
    public ReadOnlySpan<float> TopProbabilities()
    {
        _hostTopLogits ??= new float[_hostTop.Length];
        _hostTopProbabilities ??= new float[_hostTop.Length];
        int n = _predicted * TopK;
        if (n == 0) throw new InvalidOperationException("TopProbabilities: call Predict first");
        _model.Backend.Download(_topValues.Slice(0, _predicted), _hostTopLogits.AsSpan(0, n));
        DynamicTreePlanner.Probabilities(_hostTopLogits.AsSpan(0, n), TopK, _hostTopProbabilities);
        return _hostTopProbabilities.AsSpan(0, n);
    }

    /// <summary>Every head's z (into <see cref="_z"/>) with grouped matmuls: z₀ = h + P·e (or h), then per ResBlock z ← z + SiLU(W z + b).</summary>
    private void RunStacked(IComputeBackend b, StackedHeads stacked, DeviceTensor hidden, int heads, KvSequence? sequence, int committed)
    {
        int d = hidden.Columns;
        var start = stacked.Start.Slice(0, heads);
        var z = _z.Slice(0, heads);
        var linearOut = _linearOut.Slice(0, heads);
        if (stacked.Projection is { } projection)
        {
            b.GroupedMatMul(start, _next!.Embedding, heads == HeadCount ? projection : projection.Slice(0, heads * d)); // P_h·e for every head (one shared input row)
            b.Add(start, start, hidden);                          // + h, broadcast to every head
        }
        else b.Add(start, stacked.Zeros!.Slice(0, heads), hidden);
        if (_context is { } context) AttendContext(b, context, start, 0, heads, sequence!, committed);
        for (int l = 0; l < LayerCount; l++)
        {
            var input = l == 0 ? start : z;
            var linear = stacked.Linear[l];
            b.GroupedMatMul(linearOut, input, heads == HeadCount ? linear : linear.Slice(0, heads * d));
            b.SiluResidual(z, input, linearOut, stacked.Bias[l].Slice(0, heads));
        }
    }

    /// <summary>
    /// Context attention of <paramref name="count"/> heads from <paramref name="head"/> on (all of them when grouped, one
    /// otherwise), whose z₀ rows are <paramref name="start"/> [count, D]: q = rope(W_q z₀) at the pending token's position,
    /// attention over the last layer's cached keys and values of positions 0 .. committed − 1, z₀ += W_o · that. Each row
    /// is its own attention op over S = committed − 1 committed keys plus one "new" key, position committed − 1, which is
    /// already in the cache (only the query columns of the rows are read), so no slot past the committed ones is touched.
    /// </summary>
    private void AttendContext(IComputeBackend b, ContextInput context, DeviceTensor start, int head, int count, KvSequence sequence, int committed)
    {
        var c = _model.Config;
        int a = context.Width, d = c.Dim;
        var queries = context.Queries.Slice(0, count);
        var attended = context.Attended.Slice(0, count);
        var projected = context.Projected.Slice(0, count);
        var positions = context.Positions.Slice(0, count);
        if (context.Grouped) b.GroupedMatMul(queries, start, count == HeadCount ? context.Query[0] : context.Query[0].Slice(0, count * a));
        else b.MatMul(queries, start, context.Query[head], accumulate: false);
        Array.Fill(context.HostPositions, committed, 0, count);
        b.Upload(positions, context.HostPositions.AsSpan(0, count));
        b.Rope(queries, positions, c.Heads, c.HeadDim, _model.Rope);
        for (int r = 0; r < count; r++)
            b.Attention(attended.Slice(r, 1), queries.Slice(r, 1), sequence.Cache, c.Layers - 1, sequence.DeviceBlockTable, committed - 1, mask: null);
        if (context.Grouped) b.GroupedMatMul(projected, attended, count == HeadCount ? context.Output[0] : context.Output[0].Slice(0, count * d));
        else b.MatMul(projected, attended, context.Output[head], accumulate: false);
        b.Add(start, start, projected);
    }

    /// <summary>Frees the device memory.</summary>
    public void Dispose()
    {
        foreach (var head in _linear) foreach (var t in head) t.Dispose();
        foreach (var head in _bias) foreach (var t in head) t.Dispose();
        _stacked?.Dispose();
        if (_lmHeads is not null) foreach (var t in _lmHeads) t.Dispose();
        _sharedShortlistLmHead?.Dispose();
        _next?.Dispose();
        _previous?.Dispose();
        _context?.Dispose();
        foreach (var t in _owned) t.Dispose();
        _z.Dispose();
        _linearOut.Dispose();
        _logits.Dispose();
        _topIndices.Dispose();
        _topValues.Dispose();
        DeviceShortlist?.Dispose();
        _zeroLike?.Dispose();
    }
}
