using IlgpuMedusa.Compute;
using IlgpuMedusa.Models;
using IlgpuMedusa.Scheduling;
using N = IlgpuMedusa.Models.LlamaTensorNames;

namespace IlgpuMedusa.Transformer;

/// <summary>Weights of one transformer block on a backend.</summary>
internal sealed class LayerWeights : IDisposable
{
    public required DeviceTensor AttentionNorm { get; init; } // [1, D]
    public required DeviceTensor Qkv { get; init; }           // [(H + 2Hkv)·Dh, D]: Wq | Wk | Wv stacked
    public DeviceTensor? QkvBias { get; init; }               // F32 [1, (H + 2Hkv)·Dh]: bq | bk | bv (Qwen2), or null
    public DeviceTensor? QueryNorm { get; init; }             // F32 [1, Dh] (Qwen3), or null
    public DeviceTensor? KeyNorm { get; init; }               // F32 [1, Dh] (Qwen3), or null
    public required DeviceTensor Output { get; init; }        // [D, H·Dh]
    public required DeviceTensor FfnNorm { get; init; }       // [1, D]
    public required DeviceTensor GateUp { get; init; }        // [2F, D]: W_gate and W_up in the backend's order (IComputeBackend.UploadGateUp)
    public required DeviceTensor Down { get; init; }          // [D, F]

    public void Dispose()
    {
        AttentionNorm.Dispose();
        Qkv.Dispose();
        QkvBias?.Dispose();
        QueryNorm?.Dispose();
        KeyNorm?.Dispose();
        Output.Dispose();
        FfnNorm.Dispose();
        GateUp.Dispose();
        Down.Dispose();
    }
}

/// <summary>
/// A Llama-family transformer on an <see cref="IComputeBackend"/>. One forward serves prefill (T prompt tokens,
/// causal), decoding (T = 1) and tree verification (T tree nodes, explicit positions and a T x T mask).
/// The block is Llama's; Qwen2 adds q/k/v projection biases and Qwen3 a per-head RMSNorm of queries and keys
/// (<see cref="ModelArchitecture"/>), both applied between the projection and RoPE.
/// The model holds weights only; the KV cache, positions and mask arrive as arguments.
/// </summary>
public sealed class LlamaModel : IDisposable
{
    private readonly LayerWeights[] _layers;
    private readonly DeviceTensor _embedding;   // [V, D]
    private readonly DeviceTensor _finalNorm;   // [1, D]
    private readonly DeviceTensor _classifier;  // [V, D] (the embedding when tied)

    private LlamaModel(ModelConfig config, IComputeBackend backend, LayerWeights[] layers, DeviceTensor embedding, DeviceTensor finalNorm, DeviceTensor classifier)
    {
        Config = config;
        Backend = backend;
        _layers = layers;
        _embedding = embedding;
        _finalNorm = finalNorm;
        _classifier = classifier;
        Rope = config.Rope;
    }

    /// <summary>The model's shape.</summary>
    public ModelConfig Config { get; }
    /// <summary>The rotary embedding (<see cref="ModelConfig.Rope"/>, built once: backends look its frequency table up by it every layer).</summary>
    public RopeParameters Rope { get; }
    /// <summary>The backend running it.</summary>
    public IComputeBackend Backend { get; }
    /// <summary>The input embedding table [V, D] on the backend (Medusa heads with a next-token input look tokens up in it).</summary>
    internal DeviceTensor InputEmbedding => _embedding;
    /// <summary>The output classifier [V, D] on the backend (Medusa heads with a shared lm_head use it too).</summary>
    internal DeviceTensor Classifier => _classifier;

    /// <summary>The signature of this model (stored with trained Medusa heads; see <see cref="ModelSignature"/>).</summary>
    public ModelSignature Signature { get; private init; } = null!;

    /// <summary>Element type of the matrices on the backend.</summary>
    public DType WeightType { get; private init; }

    /// <summary>Bytes of weights one forward reads (every matrix and norm; the embedding table only when it is also the classifier).</summary>
    public long WeightBytesPerForward
    {
        get
        {
            long bytes = _finalNorm.ByteLength + _classifier.ByteLength;
            foreach (var l in _layers)
                bytes += l.AttentionNorm.ByteLength + l.Qkv.ByteLength + l.Output.ByteLength + l.FfnNorm.ByteLength + l.GateUp.ByteLength + l.Down.ByteLength
                    + (l.QkvBias?.ByteLength ?? 0) + (l.QueryNorm?.ByteLength ?? 0) + (l.KeyNorm?.ByteLength ?? 0);
            return bytes;
        }
    }

    /// <summary>
    /// Uploads the weights of <paramref name="checkpoint"/> to <paramref name="backend"/>, checking every shape.
    /// Matrices are stored as <paramref name="weightType"/> (default: the checkpoint's own type); norms stay F32.
    /// </summary>
    public static LlamaModel Load(ICheckpoint checkpoint, IComputeBackend backend, DType? weightType = null, IProgress<double>? progress = null)
    {
        var c = checkpoint.Config;
        int d = c.Dim, f = c.HiddenDim, dh = c.HeadDim;
        var embeddingData = checkpoint.GetTensor(N.Embedding, c.VocabSize, d);
        var type = weightType ?? embeddingData.Type;
        var created = new List<IDisposable>();
        T Keep<T>(T t) where T : IDisposable
        {
            created.Add(t);
            return t;
        }
        DeviceTensor Matrix(params TensorData[] parts)
        {
            var tensor = Keep(backend.UploadWeight(parts, type));
            foreach (var part in parts) MappedFile.ReleasePages(part); // copied: the file's pages need not stay resident
            return tensor;
        }
        DeviceTensor GateUp(TensorData gate, TensorData up)
        {
            var tensor = Keep(backend.UploadGateUp(gate, up, type));
            MappedFile.ReleasePages(gate);
            MappedFile.ReleasePages(up);
            return tensor;
        }
        DeviceTensor Vector(string name, int length) => Keep(backend.UploadWeight([checkpoint.GetTensor(name, length)], DType.F32));
        // The q, k and v biases as one F32 row, added to the fused projection's output.
        DeviceTensor QkvBias(int layer)
        {
            var parts = new[]
            {
                checkpoint.GetTensor(N.QueryBias(layer), c.QueryDim),
                checkpoint.GetTensor(N.KeyBias(layer), c.KvDim),
                checkpoint.GetTensor(N.ValueBias(layer), c.KvDim),
            };
            using var joined = new NativeBuffer((long)c.QkvDim * sizeof(float));
            var floats = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(joined.Bytes);
            int at = 0;
            foreach (var part in parts)
            {
                part.ToFloatArray().CopyTo(floats[at..]);
                at += (int)part.ElementCount;
            }
            return Keep(backend.UploadWeight([new TensorData($"model.layers.{layer}.self_attn.qkv_proj.bias", DType.F32, [c.QkvDim], joined.Pointer)], DType.F32));
        }
        try
        {
            var layers = new LayerWeights[c.Layers];
            for (int i = 0; i < c.Layers; i++)
            {
                layers[i] = new LayerWeights
                {
                    AttentionNorm = Vector(N.AttentionNorm(i), d),
                    Qkv = Matrix(
                        checkpoint.GetTensor(N.Query(i), c.QueryDim, d),
                        checkpoint.GetTensor(N.Key(i), c.KvHeads * dh, d),
                        checkpoint.GetTensor(N.Value(i), c.KvHeads * dh, d)),
                    QkvBias = c.HasQkvBias ? QkvBias(i) : null,
                    QueryNorm = c.HasQkNorm ? Vector(N.QueryNorm(i), dh) : null,
                    KeyNorm = c.HasQkNorm ? Vector(N.KeyNorm(i), dh) : null,
                    Output = Matrix(checkpoint.GetTensor(N.Output(i), d, c.QueryDim)),
                    FfnNorm = Vector(N.FfnNorm(i), d),
                    GateUp = GateUp(checkpoint.GetTensor(N.Gate(i), f, d), checkpoint.GetTensor(N.Up(i), f, d)),
                    Down = Matrix(checkpoint.GetTensor(N.Down(i), d, f)),
                };
                progress?.Report((i + 1.0) / (c.Layers + 1));
            }
            DeviceTensor Classifier(TensorData data)
            {
                var tensor = Keep(backend.UploadClassifier([data], type));
                MappedFile.ReleasePages(data);
                return tensor;
            }
            var embedding = c.TiedEmbeddings ? Classifier(embeddingData) : Matrix(embeddingData);
            var classifier = c.TiedEmbeddings ? embedding : Classifier(checkpoint.GetTensor(N.Classifier, c.VocabSize, d));
            var finalNorm = Vector(N.FinalNorm, d);
            progress?.Report(1.0);
            return new LlamaModel(c, backend, layers, embedding, finalNorm, classifier) { WeightType = type, Signature = ModelSignature.Of(checkpoint) };
        }
        catch
        {
            foreach (var item in created) item.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Runs T = <see cref="ForwardInputs.Count"/> tokens of one sequence through every block and the final norm.
    /// Their keys and values are written to logical positions S..S+T−1 of <paramref name="sequence"/>, where
    /// S = <paramref name="committed"/>; they attend to all S committed positions plus the new tokens the mask allows.
    /// Returns the final hidden states F32[T, D] (a view of the workspace, valid until the next forward).
    /// </summary>
    public DeviceTensor Forward(ForwardWorkspace workspace, ForwardInputs inputs, KvSequence sequence, int committed)
    {
        var single = workspace.SingleSegment;
        single[0] = new ForwardSegment(sequence, committed, 0, inputs.Count, inputs.Mask);
        return Forward(workspace, inputs, single);
    }

    /// <summary>
    /// Runs the tokens of several sequences in one pass: row block [Start, Start + Count) of the inputs belongs to
    /// segment i's sequence (its KV positions Committed.., its own mask). Everything but attention and the KV write is
    /// shared across the batch, so each weight matrix is read once for all sequences.
    /// Returns the final hidden states F32[T, D] (a view of the workspace, valid until the next forward).
    /// </summary>
    public DeviceTensor Forward(ForwardWorkspace workspace, ForwardInputs inputs, IReadOnlyList<ForwardSegment> segments)
    {
        int t = inputs.Count;
        int covered = 0;
        foreach (var segment in segments)
        {
            if (segment.Start != covered || segment.Count <= 0)
                throw new ArgumentException($"forward segments must tile the {t} input rows in order; got a segment at {segment.Start} of {segment.Count} after {covered} rows");
            covered += segment.Count;
            segment.Sequence.EnsureCapacity(segment.Committed + segment.Count);
            segment.Sequence.SyncBlockTable();
        }
        if (covered != t) throw new ArgumentException($"forward segments cover {covered} rows but there are {t} tokens");
        var b = Backend;
        var x = workspace.Residual.Slice(0, t);       // [T, D]
        var xNorm = workspace.Normed.Slice(0, t);     // [T, D]
        var qkv = workspace.Qkv.Slice(0, t);          // [T, (H + 2Hkv)·Dh]
        var attention = workspace.Attention.Slice(0, t); // [T, H·Dh]
        var gateUp = workspace.GateUp.Slice(0, t);    // [T, 2F]
        var ffn = workspace.Ffn.Slice(0, t);          // [T, F]

        b.Embedding(x, inputs.Tokens, _embedding);
        for (int layer = 0; layer < _layers.Length; layer++)
        {
            var w = _layers[layer];
            // Attention block: x += Wo · attention(rope(Wqkv · norm(x) [+ b_qkv] [, per-head norms of q and k]))
            b.NormMatMul(qkv, x, w.AttentionNorm, Config.RmsNormEps, w.Qkv, xNorm, accumulate: false);
            if (w.QkvBias is { } bias) b.Add(qkv, qkv, bias);
            if (w.QueryNorm is { } queryNorm) b.HeadRmsNorm(qkv, Config.Heads, Config.KvHeads, Config.HeadDim, queryNorm, w.KeyNorm!, Config.RmsNormEps);
            if (segments.Count == 1)
            {
                // One sequence: rotate and write the new keys and values in one op (fused on the ILGPU backend).
                var segment = segments[0];
                var cache = segment.Sequence.Cache;
                b.RopeKvWrite(qkv, inputs.Positions, Config.Heads, Config.HeadDim, Rope, cache, layer, segment.Sequence.DeviceBlockTable, segment.Committed);
                b.Attention(attention, qkv, cache, layer, segment.Sequence.DeviceBlockTable, segment.Committed, segment.Mask);
            }
            else
            {
                b.Rope(qkv, inputs.Positions, Config.Heads + Config.KvHeads, Config.HeadDim, Rope);
                foreach (var segment in segments)
                {
                    var rows = qkv.Slice(segment.Start, segment.Count);
                    var cache = segment.Sequence.Cache;
                    b.KvWrite(cache, layer, rows, Config.Heads, segment.Sequence.DeviceBlockTable, segment.Committed);
                    b.Attention(attention.Slice(segment.Start, segment.Count), rows, cache, layer, segment.Sequence.DeviceBlockTable, segment.Committed, segment.Mask);
                }
            }
            b.MatMul(x, attention, w.Output, accumulate: true);
            // Feed-forward block: x += W_down · (silu(W_gate · norm(x)) ⊙ W_up · norm(x))
            b.FfnGateUp(ffn, x, w.FfnNorm, Config.RmsNormEps, w.GateUp, xNorm, gateUp);
            b.MatMul(x, ffn, w.Down, accumulate: true);
        }
        b.RmsNorm(xNorm, x, _finalNorm, Config.RmsNormEps);
        return xNorm;
    }

    /// <summary>Logits F32[n, V] of hidden rows F32[n, D], written into the workspace's logits buffer.</summary>
    public DeviceTensor Logits(ForwardWorkspace workspace, DeviceTensor hidden)
    {
        var logits = workspace.Logits(hidden.Rows);
        Backend.MatMul(logits, hidden, _classifier, accumulate: false);
        return logits;
    }

    /// <summary>Logits F32[n, V] of hidden rows F32[n, D] into <paramref name="output"/>.</summary>
    public void Logits(DeviceTensor hidden, DeviceTensor output) => Backend.MatMul(output, hidden, _classifier, accumulate: false);

    /// <summary>
    /// The greedy token of each hidden row F32[n, D] into <paramref name="ids"/> I32[n, 1], without keeping the logits
    /// (the backend may never compute them all exactly; see <see cref="IComputeBackend.ProductArgMax"/>).
    /// </summary>
    public void GreedyTokens(ForwardWorkspace workspace, DeviceTensor hidden, DeviceTensor ids) =>
        Backend.ProductArgMax(ids, hidden, _classifier, workspace.Logits(hidden.Rows));

    /// <summary>As <see cref="GreedyTokens(ForwardWorkspace, DeviceTensor, DeviceTensor)"/> with a caller's scratch F32[rows, V].</summary>
    public void GreedyTokens(DeviceTensor hidden, DeviceTensor ids, DeviceTensor scratch) =>
        Backend.ProductArgMax(ids, hidden, _classifier, scratch);

    /// <summary>
    /// The greedy token of one hidden row F32[1, D] after <paramref name="adjust"/> is added to its logits (a constraint's
    /// mask), without keeping them (<see cref="IComputeBackend.AdjustedProductArgMax"/>); <paramref name="scratch"/> F32[1, V].
    /// </summary>
    public int GreedyToken(DeviceTensor hidden, DeviceTensor scratch, ReadOnlySpan<float> adjust) =>
        Backend.AdjustedProductArgMax(hidden, _classifier, scratch, adjust);

    /// <summary>Frees the weights.</summary>
    public void Dispose()
    {
        foreach (var l in _layers) l.Dispose();
        _embedding.Dispose();
        _finalNorm.Dispose();
        if (!ReferenceEquals(_classifier, _embedding)) _classifier.Dispose();
    }
}
