namespace IlgpuMedusa.Models;

/// <summary>
/// Reader for Karpathy's llama2.c checkpoint (<c>.bin</c>): a header of 7 int32
/// (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means a separate
/// classifier), then float32 tensors in a fixed order. The legacy export keeps two RoPE tables
/// (seq_len · Dh/2 floats each) after the final norm; both layouts are accepted. The file is memory-mapped;
/// only the q/k projections are copied, to re-order their rows (see <see cref="RotaryLayout"/>).
/// </summary>
public sealed class Llama2cCheckpoint : ICheckpoint
{
    private const int HeaderBytes = 7 * sizeof(int);
    private readonly MappedFile _file;
    private readonly Dictionary<string, TensorData> _tensors = new(StringComparer.Ordinal);
    private readonly List<NativeBuffer> _owned = [];

    private Llama2cCheckpoint(MappedFile file, ModelConfig config)
    {
        _file = file;
        Config = config;
    }

    /// <inheritdoc />
    public ModelConfig Config { get; }
    /// <inheritdoc />
    public string Location => _file.Path;
    /// <inheritdoc />
    public IReadOnlyCollection<string> TensorNames => _tensors.Keys;

    /// <summary>Opens and validates a llama2.c checkpoint. Throws <see cref="InvalidDataException"/> naming the file.</summary>
    public static Llama2cCheckpoint Open(string path)
    {
        var file = new MappedFile(path);
        try
        {
            var checkpoint = new Llama2cCheckpoint(file, ReadConfig(file));
            checkpoint.MapTensors();
            return checkpoint;
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    private static ModelConfig ReadConfig(MappedFile file)
    {
        if (file.Length < HeaderBytes)
            throw new InvalidDataException($"{file.Path}: truncated llama2.c checkpoint: {file.Length} bytes, the header alone needs {HeaderBytes}.");
        var header = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(file.Slice(0, HeaderBytes));
        int vocab = header[5];
        if (vocab == int.MinValue)
            throw new InvalidDataException($"{file.Path}: llama2.c header field vocab_size is {vocab}; expected a positive count (negative when the classifier is stored separately).");
        return new ModelConfig
        {
            Dim = header[0],
            HiddenDim = header[1],
            Layers = header[2],
            Heads = header[3],
            KvHeads = header[4],
            VocabSize = Math.Abs(vocab),
            MaxSequenceLength = header[6],
            TiedEmbeddings = vocab > 0,
            RopeTheta = 10000f,
            RmsNormEps = 1e-5f,
            BosTokenId = 1,
            // llama2.c ends a story when the model produces BOS; EOS ends it too.
            EndTokenIds = [1, 2],
            Source = file.Path,
        }.Validate();
    }

    private void MapTensors()
    {
        var c = Config;
        // The sizes the header implies, in 128-bit integers: header fields near int.MaxValue must not wrap around to
        // the file's length (the header is not trusted).
        Int128 D = c.Dim, F = c.HiddenDim, L = c.Layers, V = c.VocabSize, Dh = c.HeadDim;
        Int128 qRows = c.Heads * Dh, kvRows = c.KvHeads * Dh;
        Int128 weightFloats = V * D + L * D + L * qRows * D + 2 * L * kvRows * D + L * D * qRows
            + L * D + 2 * L * F * D + L * D * F + D;
        Int128 ropeFloats = c.MaxSequenceLength * Dh; // two tables of seq_len * Dh/2
        Int128 classifierFloats = c.TiedEmbeddings ? 0 : V * D;
        Int128 withRope = HeaderBytes + 4 * (weightFloats + ropeFloats + classifierFloats);
        Int128 withoutRope = HeaderBytes + 4 * (weightFloats + classifierFloats);
        bool hasRope;
        if (_file.Length == withRope) hasRope = true;
        else if (_file.Length == withoutRope) hasRope = false;
        else
            throw new InvalidDataException(
                $"{_file.Path}: llama2.c checkpoint has {_file.Length} bytes; its header " +
                $"(dim {c.Dim}, hidden {c.HiddenDim}, layers {c.Layers}, heads {c.Heads}/{c.KvHeads}, vocab {c.VocabSize}, seq {c.MaxSequenceLength}, " +
                $"{(c.TiedEmbeddings ? "shared" : "separate")} classifier) needs {withRope} bytes (legacy, with RoPE tables) or {withoutRope}" +
                (_file.Length < withoutRope ? ": the file is truncated." : "."));

        // The file holds exactly these sizes, so every product below fits a long.
        long d = c.Dim, f = c.HiddenDim, l = c.Layers, v = c.VocabSize, dh = c.HeadDim;
        long qRowsL = c.Heads * dh, kvRowsL = c.KvHeads * dh, ropeFloatsL = c.MaxSequenceLength * dh;
        long offset = HeaderBytes;
        TensorData Next(string name, params long[] shape)
        {
            var dims = shape.Select(x => checked((int)x)).ToArray();
            var t = new TensorData(name, DType.F32, dims, _file.Pointer + (nint)offset);
            offset += t.ByteLength;
            return t;
        }
        // Each llama2.c tensor holds all layers; slice them per layer.
        TensorData[] PerLayer(Func<int, string> name, long rows, long cols)
        {
            var result = new TensorData[l];
            for (int i = 0; i < l; i++) result[i] = Next(name(i), rows, cols);
            return result;
        }

        Add(Next(LlamaTensorNames.Embedding, v, d));
        foreach (var t in PerLayerVector(LlamaTensorNames.AttentionNorm)) Add(t);
        foreach (var t in PerLayer(LlamaTensorNames.Query, qRowsL, d)) Add(Reordered(t, c.Heads));
        foreach (var t in PerLayer(LlamaTensorNames.Key, kvRowsL, d)) Add(Reordered(t, c.KvHeads));
        foreach (var t in PerLayer(LlamaTensorNames.Value, kvRowsL, d)) Add(t);
        foreach (var t in PerLayer(LlamaTensorNames.Output, d, qRowsL)) Add(t);
        foreach (var t in PerLayerVector(LlamaTensorNames.FfnNorm)) Add(t);
        foreach (var t in PerLayer(LlamaTensorNames.Gate, f, d)) Add(t);
        foreach (var t in PerLayer(LlamaTensorNames.Down, d, f)) Add(t);
        foreach (var t in PerLayer(LlamaTensorNames.Up, f, d)) Add(t);
        Add(Next(LlamaTensorNames.FinalNorm, d));
        if (hasRope) offset += 4 * ropeFloatsL;
        if (!c.TiedEmbeddings) Add(Next(LlamaTensorNames.Classifier, v, d));

        TensorData[] PerLayerVector(Func<int, string> name)
        {
            var result = new TensorData[l];
            for (int i = 0; i < l; i++) result[i] = Next(name(i), d);
            return result;
        }
    }

    private TensorData Reordered(TensorData interleaved, int heads)
    {
        var buffer = new NativeBuffer(interleaved.ByteLength);
        _owned.Add(buffer);
        RotaryLayout.InterleavedToRotateHalf(interleaved.Bytes, buffer.Bytes, heads, Config.HeadDim, interleaved.Shape[1] * sizeof(float));
        return new TensorData(interleaved.Name, interleaved.Type, interleaved.Shape, buffer.Pointer);
    }

    private void Add(TensorData tensor) => _tensors.Add(tensor.Name, tensor);

    /// <inheritdoc />
    public bool TryGetTensor(string name, out TensorData tensor) => _tensors.TryGetValue(name, out tensor);

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var b in _owned) b.Dispose();
        _owned.Clear();
        _file.Dispose();
    }
}
