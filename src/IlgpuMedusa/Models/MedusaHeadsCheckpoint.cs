using System.Globalization;
using System.Runtime.InteropServices;

namespace IlgpuMedusa.Models;

/// <summary>
/// Medusa head weights in host memory (managed arrays), as made by training or at random for tests.
/// Head i: <see cref="LayerCount"/> ResBlocks x ← x + SiLU(W x + b), W [D, D], b [D], then an lm_head [V, D]
/// (its own, or the base model's classifier when <see cref="LmHeads"/> is null).
/// </summary>
public sealed class MedusaHeadWeights
{
    /// <summary>Creates the container; arrays are [head][layer] of D·D (weights) and D (biases).</summary>
    public MedusaHeadWeights(int hiddenSize, float[][][] linear, float[][][] bias, float[][]? lmHeads, int vocabSize)
    {
        HiddenSize = hiddenSize;
        Linear = linear;
        Bias = bias;
        LmHeads = lmHeads;
        VocabSize = vocabSize;
    }

    /// <summary>D.</summary>
    public int HiddenSize { get; }
    /// <summary>V.</summary>
    public int VocabSize { get; }
    /// <summary>Number of heads.</summary>
    public int HeadCount => Linear.Length;
    /// <summary>ResBlocks per head.</summary>
    public int LayerCount => Linear.Length == 0 ? 0 : Linear[0].Length;
    /// <summary>[head][layer] → W, row-major [D, D] (out, in).</summary>
    public float[][][] Linear { get; }
    /// <summary>[head][layer] → b [D].</summary>
    public float[][][] Bias { get; }
    /// <summary>[head] → lm_head [V, D], or null when the heads share the base model's classifier.</summary>
    public float[][]? LmHeads { get; }

    /// <summary>
    /// Random heads (for tests and as a training start): W ~ N(0, <paramref name="scale"/>²), b = 0; own lm_heads copied
    /// from <paramref name="baseClassifier"/> when given (as Medusa initialises them), otherwise shared.
    /// </summary>
    public static MedusaHeadWeights CreateRandom(ModelConfig config, int heads, int layers, int seed, float scale = 0.02f, float[]? baseClassifier = null)
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
        float[][]? lmHeads = baseClassifier is null ? null : Enumerable.Range(0, heads).Select(_ => (float[])baseClassifier.Clone()).ToArray();
        return new MedusaHeadWeights(d, linear, bias, lmHeads, config.VocabSize);
    }

    private static float Gaussian(Random random)
    {
        // Box–Muller
        double u = 1.0 - random.NextDouble(), v = random.NextDouble();
        return (float)(Math.Sqrt(-2 * Math.Log(u)) * Math.Cos(2 * Math.PI * v));
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
/// </summary>
public sealed class MedusaHeadsCheckpoint : IDisposable
{
    /// <summary>The released file name.</summary>
    public const string ReleasedFileName = "medusa_lm_head.safetensors";
    /// <summary>Value of the "format" metadata of our files.</summary>
    public const string CompactFormat = "ilgpu-medusa-heads";

    private readonly SafetensorsFile _file;

    private MedusaHeadsCheckpoint(SafetensorsFile file, int heads, int layers, int hidden, int? vocab)
    {
        _file = file;
        HeadCount = heads;
        LayerCount = layers;
        HiddenSize = hidden;
        VocabSize = vocab;
    }

    /// <summary>The file.</summary>
    public string Path => _file.Path;
    /// <summary>Number of heads.</summary>
    public int HeadCount { get; }
    /// <summary>ResBlocks per head.</summary>
    public int LayerCount { get; }
    /// <summary>D of the heads.</summary>
    public int HiddenSize { get; }
    /// <summary>V of the heads' own lm_heads; null when they share the base model's.</summary>
    public int? VocabSize { get; }
    /// <summary>True when the heads use the base model's classifier.</summary>
    public bool SharedLmHead => VocabSize is null;
    /// <summary>Metadata of the file.</summary>
    public IReadOnlyDictionary<string, string> Metadata => _file.Metadata;
    /// <summary>The signature of the model the heads were trained for, when recorded.</summary>
    public ModelSignature? BaseModel => Metadata.TryGetValue("base_model_signature", out var s) ? ModelSignature.Parse(s) : null;

    /// <summary>W of a ResBlock [D, D].</summary>
    public TensorData Linear(int head, int layer) => _file.Tensors[$"{head}.{layer}.linear.weight"];
    /// <summary>b of a ResBlock [D].</summary>
    public TensorData Bias(int head, int layer) => _file.Tensors[$"{head}.{layer}.linear.bias"];
    /// <summary>A head's own lm_head [V, D].</summary>
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
        var file = SafetensorsFile.Open(path);
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
        int layers = 0;
        while (t.ContainsKey($"0.{layers}.linear.weight")) layers++;
        int heads = 0;
        while (t.ContainsKey(layers == 0 ? $"{heads}.0.weight" : $"{heads}.0.linear.weight")) heads++;
        if (heads == 0) throw Bad("no tensor named 0.0.linear.weight (or 0.0.weight)");
        int? hidden = null, vocab = null;
        int expected = 0;
        for (int h = 0; h < heads; h++)
        {
            for (int l = 0; l < layers; l++)
            {
                var w = Need(t, file, $"{h}.{l}.linear.weight");
                var b = Need(t, file, $"{h}.{l}.linear.bias");
                hidden ??= w.Shape[^1];
                Shape(file, w, hidden.Value, hidden.Value);
                Shape(file, b, hidden.Value);
                expected += 2;
            }
            if (shared) continue;
            var lm = Need(t, file, $"{h}.{layers}.weight");
            if (lm.Shape.Length != 2) throw Bad($"tensor '{lm.Name}' has shape {lm.ShapeText}, expected [V, D]");
            hidden ??= lm.Shape[1];
            vocab ??= lm.Shape[0];
            Shape(file, lm, vocab.Value, hidden.Value);
            expected++;
        }
        if (hidden is null) throw Bad("shared-lm_head heads without ResBlocks carry no weights");
        if (t.Count != expected)
        {
            var extra = t.Keys.FirstOrDefault(k => !IsKnown(k, heads, layers, shared));
            throw Bad($"{t.Count - expected} unexpected tensors (e.g. '{extra}'); expected {heads} heads of {layers} ResBlocks{(shared ? "" : " and an lm_head")}");
        }
        return new MedusaHeadsCheckpoint(file, heads, layers, hidden.Value, shared ? null : vocab);
    }

    private static bool IsKnown(string name, int heads, int layers, bool shared)
    {
        for (int h = 0; h < heads; h++)
        {
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
    /// Writes heads: the compact format when they share the base lm_head, else the released layout.
    /// <paramref name="metadata"/> is added to the file (training facts such as accuracies); the base model's signature is recorded.
    /// </summary>
    public static void Write(string path, MedusaHeadWeights weights, ModelSignature baseModel, IReadOnlyDictionary<string, string>? metadata = null, DType storeAs = DType.F32)
    {
        var meta = new Dictionary<string, string>(metadata ?? new Dictionary<string, string>())
        {
            ["format"] = CompactFormat,
            ["shared_lm_head"] = weights.LmHeads is null ? "true" : "false",
            ["medusa_num_heads"] = weights.HeadCount.ToString(CultureInfo.InvariantCulture),
            ["medusa_num_layers"] = weights.LayerCount.ToString(CultureInfo.InvariantCulture),
            ["hidden_size"] = weights.HiddenSize.ToString(CultureInfo.InvariantCulture),
            ["base_model_signature"] = baseModel.ToString(),
        };
        var pins = new List<GCHandle>();
        try
        {
            var tensors = new List<TensorData>();
            TensorData View(string name, float[] data, params int[] shape)
            {
                var handle = GCHandle.Alloc(data, GCHandleType.Pinned);
                pins.Add(handle);
                return new TensorData(name, DType.F32, shape, handle.AddrOfPinnedObject());
            }
            int d = weights.HiddenSize;
            for (int h = 0; h < weights.HeadCount; h++)
            {
                for (int l = 0; l < weights.LayerCount; l++)
                {
                    tensors.Add(View($"{h}.{l}.linear.weight", weights.Linear[h][l], d, d));
                    tensors.Add(View($"{h}.{l}.linear.bias", weights.Bias[h][l], d));
                }
                if (weights.LmHeads is { } lm) tensors.Add(View($"{h}.{weights.LayerCount}.weight", lm[h], weights.VocabSize, d));
            }
            var directory = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path));
            if (directory is not null) Directory.CreateDirectory(directory);
            SafetensorsWriter.Write(path, tensors, storeAs, meta);
        }
        finally
        {
            foreach (var p in pins) p.Free();
        }
    }

    /// <summary>Closes the file.</summary>
    public void Dispose() => _file.Dispose();
}
