using IlgpuMedusa.Compute;
using IlgpuMedusa.Models;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Medusa;

/// <summary>
/// Medusa heads on a backend. Head i maps the base model's final hidden state at position t to logits for the token
/// at t + 2 + i: z ← h; per ResBlock z ← z + SiLU(W z + b); logits = lm_head(z). All heads' logits come from one
/// classifier matmul when they share the base lm_head; each head's top-k is computed on the device and only the
/// ids cross to the host.
/// </summary>
public sealed class MedusaHeads : IDisposable
{
    /// <summary>Top-k computed per head (the largest index a tree may use is TopK − 1).</summary>
    public const int TopK = 10;

    private readonly LlamaModel _model;
    private readonly DeviceTensor[][] _linear;   // [head][layer] [D, D]
    private readonly DeviceTensor[][] _bias;     // [head][layer] [1, D]
    private readonly DeviceTensor[]? _lmHeads;   // [head] [V, D], null = shared classifier
    private readonly DeviceTensor _z;            // [K, D] head states
    private readonly DeviceTensor _linearOut;    // [K, D]
    private readonly DeviceTensor _logits;       // [K, V]
    private readonly DeviceTensor _topIndices;   // [K, TopK]
    private readonly DeviceTensor _topValues;    // [K, TopK]
    private readonly int[] _hostTop;             // [K · TopK]

    private MedusaHeads(LlamaModel model, DeviceTensor[][] linear, DeviceTensor[][] bias, DeviceTensor[]? lmHeads, string source)
    {
        _model = model;
        _linear = linear;
        _bias = bias;
        _lmHeads = lmHeads;
        Source = source;
        var b = model.Backend;
        int k = linear.Length, d = model.Config.Dim, v = model.Config.VocabSize;
        _z = b.Allocate(DType.F32, k, d);
        _linearOut = b.Allocate(DType.F32, k, d);
        _logits = b.Allocate(DType.F32, k, v);
        _topIndices = b.Allocate(DType.I32, k, TopK);
        _topValues = b.Allocate(DType.F32, k, TopK);
        _hostTop = new int[k * TopK];
    }

    /// <summary>Number of heads.</summary>
    public int HeadCount => _linear.Length;
    /// <summary>ResBlocks per head.</summary>
    public int LayerCount => _linear.Length == 0 ? 0 : _linear[0].Length;
    /// <summary>True when the heads use the base model's classifier.</summary>
    public bool SharedLmHead => _lmHeads is null;
    /// <summary>Where the heads came from.</summary>
    public string Source { get; }

    /// <summary>
    /// Uploads heads for <paramref name="model"/>, refusing heads whose hidden size or vocabulary differ from the model's
    /// or that were trained for another model (when the file records which).
    /// </summary>
    public static MedusaHeads Load(MedusaHeadsCheckpoint checkpoint, LlamaModel model)
    {
        var c = model.Config;
        if (checkpoint.HiddenSize != c.Dim)
            throw new InvalidDataException($"{checkpoint.Path}: the Medusa heads have hidden size {checkpoint.HiddenSize} but the model's is {c.Dim}; they belong to another model.");
        if (checkpoint.VocabSize is int v && v != c.VocabSize)
            throw new InvalidDataException($"{checkpoint.Path}: the Medusa heads' lm_head has a vocabulary of {v} but the model's is {c.VocabSize}; they belong to another model.");
        if (checkpoint.BaseModel is { } signature && !signature.Matches(model.Signature))
            throw new InvalidDataException($"{checkpoint.Path}: these Medusa heads were trained for another model (its signature {signature.Shape} does not match this model's weights, {model.Signature.Shape}).");
        var b = model.Backend;
        var weightType = model.WeightType;
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
            var linear = new DeviceTensor[heads][];
            var bias = new DeviceTensor[heads][];
            for (int h = 0; h < heads; h++)
            {
                linear[h] = new DeviceTensor[layers];
                bias[h] = new DeviceTensor[layers];
                for (int l = 0; l < layers; l++)
                {
                    linear[h][l] = Up(checkpoint.Linear(h, l), weightType);
                    bias[h][l] = Up(checkpoint.Bias(h, l), DType.F32);
                }
            }
            var lmHeads = checkpoint.SharedLmHead ? null : Enumerable.Range(0, heads).Select(h => Up(checkpoint.LmHead(h), weightType)).ToArray();
            return new MedusaHeads(model, linear, bias, lmHeads, checkpoint.Path);
        }
        catch
        {
            foreach (var t in created) t.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Runs every head on one hidden state F32[1, D] and returns the top-k token ids, head-major: [head · TopK + rank].
    /// The span is valid until the next call.
    /// </summary>
    public ReadOnlySpan<int> Predict(DeviceTensor hidden)
    {
        var b = _model.Backend;
        for (int h = 0; h < HeadCount; h++)
        {
            var z = _z.Slice(h, 1);
            var linear = _linearOut.Slice(h, 1);
            for (int l = 0; l < LayerCount; l++)
            {
                // z ← z + SiLU(W z + b), with z = hidden before the first block
                b.MatMul(linear, l == 0 ? hidden : z, _linear[h][l], accumulate: false);
                b.SiluResidual(z, l == 0 ? hidden : z, linear, _bias[h][l]);
            }
            if (LayerCount == 0) b.Add(z, hidden, _zeroLike ??= b.Allocate(DType.F32, 1, hidden.Columns));
            if (_lmHeads is not null) b.MatMul(_logits.Slice(h, 1), z, _lmHeads[h], accumulate: false);
        }
        if (_lmHeads is null) b.MatMul(_logits, _z, _model.Classifier, accumulate: false);
        b.TopK(_topIndices, _topValues, _logits);
        b.Download(_topIndices, _hostTop);
        return _hostTop;
    }

    private DeviceTensor? _zeroLike;

    /// <summary>Frees the device memory.</summary>
    public void Dispose()
    {
        foreach (var head in _linear) foreach (var t in head) t.Dispose();
        foreach (var head in _bias) foreach (var t in head) t.Dispose();
        if (_lmHeads is not null) foreach (var t in _lmHeads) t.Dispose();
        _z.Dispose();
        _linearOut.Dispose();
        _logits.Dispose();
        _topIndices.Dispose();
        _topValues.Dispose();
        _zeroLike?.Dispose();
    }
}
