using System.Globalization;
using System.Runtime.InteropServices;

namespace IlgpuMedusa.Models;

/// <summary>
/// Medusa head weights in host memory (managed arrays), as made by training or at random for tests.
/// Head i: <see cref="LayerCount"/> ResBlocks x ← x + SiLU(W x + b), W [D, D], b [D], then an lm_head (its own, or the
/// base model's classifier when <see cref="LmHeads"/> is null). With a <see cref="Shortlist"/> the heads score only
/// those N tokens: the lm_head is [N, D] (own, or the base classifier's rows of the shortlisted tokens).
/// </summary>
public sealed class MedusaHeadWeights
{
    /// <summary>
    /// Creates the container; arrays are [head][layer] of D·D (weights) and D (biases); own lm_heads hold
    /// (shortlist length or <paramref name="vocabSize"/>) · D values.
    /// </summary>
    public MedusaHeadWeights(int hiddenSize, float[][][] linear, float[][][] bias, float[][]? lmHeads, int vocabSize, int[]? shortlist = null,
        float[][]? nextToken = null, float[][]? contextQuery = null, float[][]? contextOutput = null, float[][]? previousToken = null)
    {
        if ((contextQuery is null) != (contextOutput is null))
            throw new ArgumentException("context attention needs both a query and an output matrix per head");
        if (contextQuery is not null)
        {
            if (contextQuery.Length != linear.Length || contextOutput!.Length != linear.Length)
                throw new ArgumentException($"context attention needs one query and one output matrix per head ({linear.Length})");
            if (nextToken is null)
                throw new ArgumentException("context attention is for heads with a next-token input (its query sits at the next token's position)");
            long width = contextQuery[0].Length / hiddenSize;
            if (width == 0 || contextQuery.Any(q => q.Length != width * hiddenSize) || contextOutput.Any(o => o.Length != width * hiddenSize))
                throw new ArgumentException($"context attention matrices must be [A, {hiddenSize}] (query) and [{hiddenSize}, A] (output) for every head");
        }
        ContextQuery = contextQuery;
        ContextOutput = contextOutput;
        HiddenSize = hiddenSize;
        Linear = linear;
        Bias = bias;
        LmHeads = lmHeads;
        VocabSize = vocabSize;
        if (nextToken is not null && (nextToken.Length != linear.Length || nextToken.Any(p => p.Length != (long)hiddenSize * hiddenSize)))
            throw new ArgumentException($"next-token inputs must be one [{hiddenSize}, {hiddenSize}] matrix per head");
        if (nextToken is not null && lmHeads is not null)
            throw new ArgumentException("next-token inputs are for heads that share the base lm_head");
        NextToken = nextToken;
        if (previousToken is not null && (nextToken is null || previousToken.Length != linear.Length || previousToken.Any(r => r.Length != (long)hiddenSize * hiddenSize)))
            throw new ArgumentException($"previous-token inputs need next-token inputs and one [{hiddenSize}, {hiddenSize}] matrix per head");
        PreviousToken = previousToken;
        if (shortlist is not null) VocabularyShortlist.Check(shortlist, vocabSize, "the shortlist");
        Shortlist = shortlist;
        if (lmHeads is not null && lmHeads.Any(lm => lm.Length != (long)LmHeadRows * hiddenSize))
            throw new ArgumentException($"own lm_heads must hold {LmHeadRows} x {hiddenSize} values (one row per {(shortlist is null ? "vocabulary" : "shortlisted")} token)");
    }

    /// <summary>D.</summary>
    public int HiddenSize { get; }
    /// <summary>V of the base model (token ids are below it).</summary>
    public int VocabSize { get; }
    /// <summary>Number of heads.</summary>
    public int HeadCount => Linear.Length;
    /// <summary>ResBlocks per head.</summary>
    public int LayerCount => Linear.Length == 0 ? 0 : Linear[0].Length;
    /// <summary>[head][layer] → W, row-major [D, D] (out, in).</summary>
    public float[][][] Linear { get; }
    /// <summary>[head][layer] → b [D].</summary>
    public float[][][] Bias { get; }
    /// <summary>[head] → lm_head [rows, D], or null when the heads share the base model's classifier.</summary>
    public float[][]? LmHeads { get; }
    /// <summary>The tokens the heads score (sorted ids), or null for the whole vocabulary.</summary>
    public int[]? Shortlist { get; }
    /// <summary>Rows of the heads' lm_head: the shortlist's length, or V.</summary>
    public int LmHeadRows => Shortlist?.Length ?? VocabSize;
    /// <summary>
    /// [head] → P, row-major [D, D], or null (plain Medusa heads). With P a head starts from z₀ = h + P·e(x̂) instead of h,
    /// where x̂ is the base model's next token at h (the pending token of a Medusa step: the argmax of the base lm_head, or of
    /// its shortlisted rows) and e its input embedding, so the head knows which token its guess follows.
    /// </summary>
    public float[][]? NextToken { get; }
    /// <summary>
    /// [head] → R, row-major [D, D], or null. Hydra-style: head i ≥ 1 also adds R·e(y) to z₀, the input embedding of the
    /// token just before its target: in training the true token x_{t+1+i}, at run time head i − 1's best guess (what
    /// the token is whenever the guesses before it are right). Head 0's R is unused and not written.
    /// </summary>
    public float[][]? PreviousToken { get; }
    /// <summary>
    /// [head] → W_q, row-major [A, D] (A = query heads · head dim of the base model), or null. With it a head attends to
    /// the base model's context before its ResBlocks: z₀ ← z₀ + W_o · attention(rope(W_q z₀), K, V), where K and V are the
    /// keys and values the base model's last layer cached for the committed tokens x_0..x_t, and the query sits at the
    /// pending token's position t + 1 (heads of the base model's shape; query head i reads kv head i / (H / Hkv)).
    /// </summary>
    public float[][]? ContextQuery { get; }
    /// <summary>[head] → W_o, row-major [D, A], or null (see <see cref="ContextQuery"/>).</summary>
    public float[][]? ContextOutput { get; }
    /// <summary>A: the width of the context attention's queries (0 without it).</summary>
    public int ContextWidth => ContextQuery is null ? 0 : ContextQuery[0].Length / HiddenSize;

    /// <summary>
    /// Random heads (for tests and as a training start): W ~ N(0, <paramref name="scale"/>²), b = 0; own lm_heads copied
    /// from <paramref name="baseClassifier"/> [V, D] when given (as Medusa initialises them; only the shortlisted rows
    /// with a <paramref name="shortlist"/>), otherwise shared.
    /// </summary>
    public static MedusaHeadWeights CreateRandom(ModelConfig config, int heads, int layers, int seed, float scale = 0.02f, float[]? baseClassifier = null, int[]? shortlist = null,
        bool nextToken = false, bool context = false, bool previousToken = false)
    {
        var random = new Random(seed);
        int d = config.Dim;
        var linear = new float[heads][][];
        var bias = new float[heads][][];
        for (int h = 0; h < heads; h++)
        {
            linear[h] = new float[layers][];
            bias[h] = new float[layers][];
            for (int l = 0; l < layers; l++)
            {
                linear[h][l] = new float[d * d];
                for (int i = 0; i < linear[h][l].Length; i++) linear[h][l][i] = scale * Gaussian(random);
                bias[h][l] = new float[d];
            }
        }
        float[]? start = baseClassifier is null ? null : shortlist is null ? baseClassifier : VocabularyShortlist.GatherRows(baseClassifier, d, shortlist);
        float[][]? lmHeads = start is null ? null : Enumerable.Range(0, heads).Select(_ => (float[])start.Clone()).ToArray();
        float[][]? Projections()
        {
            var p = new float[heads][];
            for (int h = 0; h < heads; h++)
            {
                p[h] = new float[d * d];
                for (int i = 0; i < p[h].Length; i++) p[h][i] = scale * Gaussian(random);
            }
            return p;
        }
        float[][]? next = nextToken ? Projections() : null;
        float[][]? query = null, output = null;
        if (context)
        {
            int width = config.Heads * config.HeadDim;
            float[] Matrix()
            {
                var m = new float[width * d];
                for (int i = 0; i < m.Length; i++) m[i] = scale * Gaussian(random);
                return m;
            }
            query = Enumerable.Range(0, heads).Select(_ => Matrix()).ToArray();
            output = Enumerable.Range(0, heads).Select(_ => Matrix()).ToArray();
        }
        float[][]? previous = previousToken ? Projections() : null;
        return new MedusaHeadWeights(d, linear, bias, lmHeads, config.VocabSize, shortlist, next, query, output, previous);
    }

    private static float Gaussian(Random random)
    {
        // Box–Muller
        double u = 1.0 - random.NextDouble(), v = random.NextDouble();
        return (float)(Math.Sqrt(-2 * Math.Log(u)) * Math.Cos(2 * Math.PI * v));
    }
}

/// <summary>
/// A vocabulary shortlist (as in FR-Spec's frequency-ranked drafting): the heads only propose candidates, so they
/// score the N most frequent tokens of their training targets instead of the whole vocabulary. Stored sorted.
/// </summary>
public static class VocabularyShortlist
{
    /// <summary>
    /// The <paramref name="size"/> most frequent tokens (ties, unseen tokens included: lower id first), sorted by id.
    /// <paramref name="counts"/>[token] = how often the token is a training target.
    /// </summary>
    public static int[] MostFrequent(ReadOnlySpan<long> counts, int size)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(size, 1);
        var order = new int[counts.Length];
        for (int i = 0; i < order.Length; i++) order[i] = i;
        var keys = counts.ToArray();
        Array.Sort(order, (a, b) => keys[a] != keys[b] ? keys[b].CompareTo(keys[a]) : a.CompareTo(b));
        var result = order.AsSpan(0, Math.Min(size, order.Length)).ToArray();
        Array.Sort(result);
        return result;
    }

    /// <summary>Rows <paramref name="shortlist"/> of a row-major [V, D] matrix, as a new [N, D] array.</summary>
    public static float[] GatherRows(ReadOnlySpan<float> matrix, int d, IReadOnlyList<int> shortlist)
    {
        var rows = new float[(long)shortlist.Count * d];
        for (int i = 0; i < shortlist.Count; i++) matrix.Slice(shortlist[i] * d, d).CopyTo(rows.AsSpan(i * d, d));
        return rows;
    }

    /// <summary>
    /// Throws <see cref="InvalidDataException"/> naming <paramref name="what"/> unless the ids are non-empty, strictly
    /// increasing (sorted, no duplicates) and inside a vocabulary of <paramref name="vocabSize"/> (null: only ≥ 0).
    /// </summary>
    public static void Check(ReadOnlySpan<int> shortlist, int? vocabSize, string what)
    {
        if (shortlist.Length == 0) throw new InvalidDataException($"{what} is empty; it must list at least one token id.");
        for (int i = 0; i < shortlist.Length; i++)
        {
            int id = shortlist[i];
            if (id < 0 || (vocabSize is int v && id >= v))
                throw new InvalidDataException($"{what}: entry {i} is token {id}, outside the vocabulary [0, {(vocabSize is int max ? max.ToString(CultureInfo.InvariantCulture) : "V")}).");
            if (i > 0 && id <= shortlist[i - 1])
                throw new InvalidDataException($"{what}: entry {i} (token {id}) does not follow entry {i - 1} (token {shortlist[i - 1]}); token ids must be strictly increasing (sorted, no duplicates).");
        }
    }
}

/// <summary>
/// Reads and writes Medusa heads. Two layouts, both safetensors:
/// <list type="bullet">
/// <item>Medusa's released format, <c>medusa_lm_head.safetensors</c>: <c>{h}.{l}.linear.weight</c> [D, D],
/// <c>{h}.{l}.linear.bias</c> [D], <c>{h}.{L}.weight</c> [V, D]. Heads and layers are counted from the tensors (the
/// released config.json is known to disagree with its own file).</item>
/// <item>Our compact format for heads sharing the base lm_head: only the ResBlocks, with metadata
/// <c>format = ilgpu-medusa-heads</c>, <c>shared_lm_head = true</c>, and the base model's signature.</item>
/// </list>
/// Either may carry a vocabulary shortlist, the I32 tensor <c>shortlist</c> [N] of strictly increasing token ids: the
/// heads then score only those tokens, with the base classifier's rows of them (shared) or own lm_heads of N rows.
/// Compact heads may also take the base model's next token as input: <c>{h}.next_token.weight</c> [D, D] per head
/// (see <see cref="MedusaHeadWeights.NextToken"/>), and such heads may attend to the base model's last-layer cache:
/// <c>{h}.context.query.weight</c> [A, D] and <c>{h}.context.output.weight</c> [D, A] per head (see
/// <see cref="MedusaHeadWeights.ContextQuery"/>), or take the previous head's guess as input too:
/// <c>{h}.previous_token.weight</c> [D, D] for heads 1 and up (see <see cref="MedusaHeadWeights.PreviousToken"/>).
/// </summary>
public sealed class MedusaHeadsCheckpoint : IDisposable
{
    /// <summary>The released file name.</summary>
    public const string ReleasedFileName = "medusa_lm_head.safetensors";
    /// <summary>Value of the "format" metadata of our files.</summary>
    public const string CompactFormat = "ilgpu-medusa-heads";
    /// <summary>Name of the I32 tensor holding the vocabulary shortlist.</summary>
    public const string ShortlistTensor = "shortlist";

    private readonly SafetensorsFile _file;

    private MedusaHeadsCheckpoint(SafetensorsFile file, int heads, int layers, int hidden, bool shared, int? lmHeadRows, int[]? shortlist, bool nextToken, int contextWidth,
        bool previousToken)
    {
        HasPreviousTokenInput = previousToken;
        ContextWidth = contextWidth;
        HasNextTokenInput = nextToken;
        _file = file;
        HeadCount = heads;
        LayerCount = layers;
        HiddenSize = hidden;
        SharedLmHead = shared;
        LmHeadRows = lmHeadRows;
        Shortlist = shortlist;
    }

    /// <summary>The file.</summary>
    public string Path => _file.Path;
    /// <summary>Number of heads.</summary>
    public int HeadCount { get; }
    /// <summary>ResBlocks per head.</summary>
    public int LayerCount { get; }
    /// <summary>D of the heads.</summary>
    public int HiddenSize { get; }
    /// <summary>True when the heads use the base model's classifier (all of it, or its shortlisted rows).</summary>
    public bool SharedLmHead { get; }
    /// <summary>Rows of the heads' own lm_heads (V, or the shortlist's length); null when they share the base model's.</summary>
    public int? LmHeadRows { get; }
    /// <summary>V scored by the heads' own full-vocabulary lm_heads; null when they share the base model's or use a shortlist.</summary>
    public int? VocabSize => Shortlist is null ? LmHeadRows : null;
    /// <summary>The shortlisted token ids (sorted), or null when the heads score the whole vocabulary.</summary>
    public int[]? Shortlist { get; }
    /// <summary>True when each head takes the base model's next token as input (<c>{h}.next_token.weight</c>).</summary>
    public bool HasNextTokenInput { get; }
    /// <summary>True when heads 1 and up also take the previous head's guess as input (<c>{h}.previous_token.weight</c>).</summary>
    public bool HasPreviousTokenInput { get; }
    /// <summary>A of the heads' context attention (<c>{h}.context.query.weight</c> [A, D]); 0 when they have none.</summary>
    public int ContextWidth { get; }
    /// <summary>True when each head attends to the base model's last-layer cache first (see <see cref="MedusaHeadWeights.ContextQuery"/>).</summary>
    public bool HasContextAttention => ContextWidth > 0;
    /// <summary>Metadata of the file.</summary>
    public IReadOnlyDictionary<string, string> Metadata => _file.Metadata;
    /// <summary>The signature of the model the heads were trained for, when recorded.</summary>
    public ModelSignature? BaseModel => Metadata.TryGetValue("base_model_signature", out var s)
        ? ModelSignature.Parse(s) ?? throw new InvalidDataException($"{Path}: metadata field 'base_model_signature' is '{(s.Length > 80 ? s[..80] + "..." : s)}', not a model signature (D/F/L/H/Hkv/V:v0,v1,...); the heads cannot be checked against the model.")
        : null;

    /// <summary>W of a ResBlock [D, D].</summary>
    public TensorData Linear(int head, int layer) => _file.Tensors[$"{head}.{layer}.linear.weight"];
    /// <summary>b of a ResBlock [D].</summary>
    public TensorData Bias(int head, int layer) => _file.Tensors[$"{head}.{layer}.linear.bias"];
    /// <summary>P of a head's next-token input [D, D].</summary>
    public TensorData NextToken(int head) => HasNextTokenInput
        ? _file.Tensors[NextTokenTensor(head)]
        : throw new InvalidOperationException($"{Path}: the heads take no next-token input");

    /// <summary>Name of head <paramref name="head"/>'s next-token input matrix.</summary>
    public static string NextTokenTensor(int head) => $"{head}.next_token.weight";

    /// <summary>R of a head's previous-token input [D, D] (heads 1 and up).</summary>
    public TensorData PreviousToken(int head) => HasPreviousTokenInput && head >= 1
        ? _file.Tensors[PreviousTokenTensor(head)]
        : throw new InvalidOperationException(HasPreviousTokenInput ? "head 0 has no previous-token input" : $"{Path}: the heads take no previous-token input");

    /// <summary>Name of head <paramref name="head"/>'s previous-token projection R (heads 1 and up; see <see cref="MedusaHeadWeights.PreviousToken"/>).</summary>
    public static string PreviousTokenTensor(int head) => $"{head}.previous_token.weight";

    /// <summary>W_q of a head's context attention [A, D].</summary>
    public TensorData ContextQuery(int head) => HasContextAttention
        ? _file.Tensors[ContextQueryTensor(head)]
        : throw new InvalidOperationException($"{Path}: the heads have no context attention");

    /// <summary>W_o of a head's context attention [D, A].</summary>
    public TensorData ContextOutput(int head) => HasContextAttention
        ? _file.Tensors[ContextOutputTensor(head)]
        : throw new InvalidOperationException($"{Path}: the heads have no context attention");

    /// <summary>Name of head <paramref name="head"/>'s context query matrix.</summary>
    public static string ContextQueryTensor(int head) => $"{head}.context.query.weight";
    /// <summary>Name of head <paramref name="head"/>'s context output matrix.</summary>
    public static string ContextOutputTensor(int head) => $"{head}.context.output.weight";

    /// <summary>A head's own lm_head [rows, D].</summary>
    public TensorData LmHead(int head) => SharedLmHead
        ? throw new InvalidOperationException($"{Path}: the heads share the base model's lm_head")
        : _file.Tensors[$"{head}.{LayerCount}.weight"];

    /// <summary>
    /// Opens heads from a file, or from a directory holding <see cref="ReleasedFileName"/>. Throws
    /// <see cref="InvalidDataException"/> naming the file and tensor when the layout is inconsistent.
    /// </summary>
    public static MedusaHeadsCheckpoint Open(string path)
    {
        if (Directory.Exists(path)) path = System.IO.Path.Combine(path, ReleasedFileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"Medusa heads file '{path}' not found.", path);
        var file = SafetensorsFile.Open(path, allowI32: true);
        try
        {
            return Validate(file);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    private static MedusaHeadsCheckpoint Validate(SafetensorsFile file)
    {
        var t = file.Tensors;
        InvalidDataException Bad(string what) => new($"{file.Path}: not a Medusa heads file: {what}.");
        bool compact = file.Metadata.TryGetValue("format", out var format) && format == CompactFormat;
        bool shared = compact && file.Metadata.TryGetValue("shared_lm_head", out var s) && s == "true";
        foreach (var tensor in t.Values)
            if (tensor.Type == DType.I32 && tensor.Name != ShortlistTensor)
                throw new InvalidDataException($"{file.Path}: Medusa tensor '{tensor.Name}' is I32; only '{ShortlistTensor}' holds integers, weights are F32, F16 or BF16.");
        int[]? shortlist = t.TryGetValue(ShortlistTensor, out var list) ? ReadShortlist(file, list) : null;
        int layers = 0;
        while (t.ContainsKey($"0.{layers}.linear.weight")) layers++;
        int heads = 0;
        while (t.ContainsKey(layers == 0 ? $"{heads}.0.weight" : $"{heads}.0.linear.weight")) heads++;
        if (heads == 0) throw Bad("no tensor named 0.0.linear.weight (or 0.0.weight)");
        bool nextToken = t.ContainsKey(NextTokenTensor(0));
        var previousName = t.Keys.Where(k => k.EndsWith(".previous_token.weight", StringComparison.Ordinal)).Order(StringComparer.Ordinal).FirstOrDefault();
        bool previousToken = previousName is not null;
        if (previousToken && !nextToken)
            throw new InvalidDataException($"{file.Path}: Medusa tensor '{previousName}': previous-token inputs are only for heads with a next-token input.");
        if (t.ContainsKey(PreviousTokenTensor(0)))
            throw new InvalidDataException($"{file.Path}: Medusa tensor '{PreviousTokenTensor(0)}': head 0 has no previous head, so no previous-token input.");
        if (nextToken && !shared)
            throw new InvalidDataException($"{file.Path}: Medusa tensor '{NextTokenTensor(0)}': next-token inputs are only for heads sharing the base lm_head (compact format).");
        bool context = t.ContainsKey(ContextQueryTensor(0)) || t.ContainsKey(ContextOutputTensor(0));
        if (context && !nextToken)
            throw new InvalidDataException($"{file.Path}: Medusa tensor '{ContextQueryTensor(0)}': context attention is only for heads with a next-token input.");
        int contextWidth = 0;
        int? hidden = null, rows = null;
        int expected = shortlist is null ? 0 : 1;
        for (int h = 0; h < heads; h++)
        {
            for (int l = 0; l < layers; l++)
            {
                var w = Need(t, file, $"{h}.{l}.linear.weight");
                var b = Need(t, file, $"{h}.{l}.linear.bias");
                hidden ??= w.Shape.Length == 2 ? w.Shape[^1] : throw new InvalidDataException($"{file.Path}: Medusa tensor '{w.Name}' has shape {w.ShapeText}, expected [D, D].");
                Shape(file, w, hidden.Value, hidden.Value);
                Shape(file, b, hidden.Value);
                expected += 2;
            }
            if (nextToken)
            {
                var p = Need(t, file, NextTokenTensor(h));
                hidden ??= p.Shape.Length == 2 ? p.Shape[^1] : throw new InvalidDataException($"{file.Path}: Medusa tensor '{p.Name}' has shape {p.ShapeText}, expected [D, D].");
                Shape(file, p, hidden.Value, hidden.Value);
                expected++;
            }
            if (previousToken && h > 0)
            {
                Shape(file, Need(t, file, PreviousTokenTensor(h)), hidden!.Value, hidden.Value);
                expected++;
            }
            if (context)
            {
                var q = Need(t, file, ContextQueryTensor(h));
                var o = Need(t, file, ContextOutputTensor(h));
                if (q.Shape.Length != 2 || q.Shape[0] < 1)
                    throw new InvalidDataException($"{file.Path}: Medusa tensor '{q.Name}' has shape {q.ShapeText}, expected [A, D].");
                if (contextWidth == 0) contextWidth = q.Shape[0];
                Shape(file, q, contextWidth, hidden!.Value);
                Shape(file, o, hidden.Value, contextWidth);
                expected += 2;
            }
            if (shared) continue;
            var lm = Need(t, file, $"{h}.{layers}.weight");
            if (lm.Shape.Length != 2) throw Bad($"tensor '{lm.Name}' has shape {lm.ShapeText}, expected [V, D]");
            hidden ??= lm.Shape[1];
            rows ??= lm.Shape[0];
            if (shortlist is not null && lm.Shape[0] != shortlist.Length)
                throw new InvalidDataException(
                    $"{file.Path}: Medusa tensor '{lm.Name}' has {lm.Shape[0]} rows but '{ShortlistTensor}' lists {shortlist.Length} tokens; the lm_head needs one row per shortlisted token.");
            Shape(file, lm, rows.Value, hidden.Value);
            expected++;
        }
        if (hidden is null) throw Bad("shared-lm_head heads without ResBlocks carry no weights");
        if (t.Count != expected)
        {
            var extra = t.Keys.FirstOrDefault(k => !IsKnown(k, heads, layers, shared, nextToken, context, previousToken));
            throw Bad($"{t.Count - expected} unexpected tensors (e.g. '{extra}'); expected {heads} heads of {layers} ResBlocks{(shared ? "" : " and an lm_head")}");
        }
        return new MedusaHeadsCheckpoint(file, heads, layers, hidden.Value, shared, shared ? null : rows, shortlist, nextToken, contextWidth, previousToken);
    }

    /// <summary>Reads and checks the shortlist: I32 [N], N ≥ 1, strictly increasing, ≥ 0 and below V when the file names its model.</summary>
    private static int[] ReadShortlist(SafetensorsFile file, TensorData tensor)
    {
        if (tensor.Type != DType.I32)
            throw new InvalidDataException($"{file.Path}: Medusa tensor '{tensor.Name}' is {tensor.Type}; the shortlist must be I32 token ids.");
        if (tensor.Shape.Length != 1 || tensor.Shape[0] == 0)
            throw new InvalidDataException($"{file.Path}: Medusa tensor '{tensor.Name}' has shape {tensor.ShapeText}, expected [N] with N >= 1 token ids.");
        var ids = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(tensor.Bytes).ToArray();
        if (!BitConverter.IsLittleEndian)
            for (int i = 0; i < ids.Length; i++) ids[i] = System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(ids[i]);
        int? vocab = null;
        if (file.Metadata.TryGetValue("base_model_signature", out var signature) && ModelSignature.Parse(signature) is { } model
            && int.TryParse(model.Shape.Split('/')[^1], NumberStyles.None, CultureInfo.InvariantCulture, out int v))
            vocab = v;
        VocabularyShortlist.Check(ids, vocab, $"{file.Path}: Medusa tensor '{tensor.Name}'");
        return ids;
    }

    private static bool IsKnown(string name, int heads, int layers, bool shared, bool nextToken, bool context, bool previousToken)
    {
        if (name == ShortlistTensor) return true;
        for (int h = 0; h < heads; h++)
        {
            if (shared && ((nextToken && name == NextTokenTensor(h)) || (context && (name == ContextQueryTensor(h) || name == ContextOutputTensor(h)))
                || (previousToken && h > 0 && name == PreviousTokenTensor(h)))) return true;
            for (int l = 0; l < layers; l++)
                if (name == $"{h}.{l}.linear.weight" || name == $"{h}.{l}.linear.bias") return true;
            if (!shared && name == $"{h}.{layers}.weight") return true;
        }
        return false;
    }

    private static TensorData Need(IReadOnlyDictionary<string, TensorData> tensors, SafetensorsFile file, string name) =>
        tensors.TryGetValue(name, out var t) ? t : throw new InvalidDataException($"{file.Path}: missing Medusa tensor '{name}'.");

    private static void Shape(SafetensorsFile file, TensorData t, params int[] shape)
    {
        if (!t.Shape.AsSpan().SequenceEqual(shape))
            throw new InvalidDataException($"{file.Path}: Medusa tensor '{t.Name}' has shape {t.ShapeText}, expected [{string.Join(", ", shape)}].");
    }

    /// <summary>
    /// Writes heads: the compact format when they share the base lm_head, else the released layout; a shortlist goes in
    /// as the I32 tensor <see cref="ShortlistTensor"/>. <paramref name="metadata"/> is added to the file (training facts
    /// such as accuracies); the base model's signature is recorded.
    /// </summary>
    public static void Write(string path, MedusaHeadWeights weights, ModelSignature baseModel, IReadOnlyDictionary<string, string>? metadata = null, DType storeAs = DType.F32)
    {
        if (storeAs == DType.I32) throw new ArgumentException("Medusa head weights are stored as F32, F16 or BF16.", nameof(storeAs));
        var meta = new Dictionary<string, string>(metadata ?? new Dictionary<string, string>())
        {
            ["format"] = CompactFormat,
            ["shared_lm_head"] = weights.LmHeads is null ? "true" : "false",
            ["medusa_num_heads"] = weights.HeadCount.ToString(CultureInfo.InvariantCulture),
            ["medusa_num_layers"] = weights.LayerCount.ToString(CultureInfo.InvariantCulture),
            ["hidden_size"] = weights.HiddenSize.ToString(CultureInfo.InvariantCulture),
            ["next_token_input"] = weights.NextToken is null ? "false" : "true",
            ["context_attention"] = weights.ContextQuery is null ? "false" : "true",
            ["previous_token_input"] = weights.PreviousToken is null ? "false" : "true",
            ["base_model_signature"] = baseModel.ToString(),
        };
        if (weights.Shortlist is { } shortlist) meta["shortlist_size"] = shortlist.Length.ToString(CultureInfo.InvariantCulture);
        var pins = new List<GCHandle>();
        try
        {
            var tensors = new List<(TensorData Data, DType StoreAs)>();
            nint Pin(Array data)
            {
                var handle = GCHandle.Alloc(data, GCHandleType.Pinned);
                pins.Add(handle);
                return handle.AddrOfPinnedObject();
            }
            void Add(string name, float[] data, params int[] shape) => tensors.Add((new TensorData(name, DType.F32, shape, Pin(data)), storeAs));
            int d = weights.HiddenSize;
            for (int h = 0; h < weights.HeadCount; h++)
            {
                for (int l = 0; l < weights.LayerCount; l++)
                {
                    Add($"{h}.{l}.linear.weight", weights.Linear[h][l], d, d);
                    Add($"{h}.{l}.linear.bias", weights.Bias[h][l], d);
                }
                if (weights.LmHeads is { } lm) Add($"{h}.{weights.LayerCount}.weight", lm[h], weights.LmHeadRows, d);
                if (weights.NextToken is { } next) Add(NextTokenTensor(h), next[h], d, d);
                if (weights.PreviousToken is { } previous && h > 0) Add(PreviousTokenTensor(h), previous[h], d, d);
                if (weights.ContextQuery is { } query)
                {
                    Add(ContextQueryTensor(h), query[h], weights.ContextWidth, d);
                    Add(ContextOutputTensor(h), weights.ContextOutput![h], d, weights.ContextWidth);
                }
            }
            if (weights.Shortlist is { } ids)
            {
                var littleEndian = BitConverter.IsLittleEndian ? ids : ids.Select(System.Buffers.Binary.BinaryPrimitives.ReverseEndianness).ToArray();
                tensors.Add((new TensorData(ShortlistTensor, DType.I32, [ids.Length], Pin(littleEndian)), DType.I32));
            }
            var directory = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path));
            if (directory is not null) Directory.CreateDirectory(directory);
            using var writer = new SafetensorsWriter(path, tensors.Select(x => new SafetensorsTensorInfo(x.Data.Name, x.StoreAs, x.Data.Shape)).ToArray(), meta);
            foreach (var (data, _) in tensors) writer.WriteTensor(data);
            writer.Commit();
        }
        finally
        {
            foreach (var p in pins) p.Free();
        }
    }

    /// <summary>Closes the file.</summary>
    public void Dispose() => _file.Dispose();
}
