using System.Runtime.InteropServices;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Tests.Medusa;

/// <summary>
/// A tiny random Llama written as a Hugging Face directory (F32, untied classifier, GQA: 4 query heads, 2 KV heads),
/// small enough that whole Medusa runs and head training take a moment on the host. A config with another
/// <see cref="ModelArchitecture"/> gets that block's extra tensors too (Qwen2's q/k/v biases, Qwen3's q/k norms).
/// </summary>
internal static class TinyRandomModel
{
    public static ModelConfig Config { get; } = new()
    {
        Dim = 32, HiddenDim = 64, Layers = 2, Heads = 4, KvHeads = 2, VocabSize = 96, MaxSequenceLength = 160,
        RopeTheta = 10000f, RmsNormEps = 1e-5f, TiedEmbeddings = false, BosTokenId = 1, EndTokenIds = [2], Source = "tiny",
    };

    /// <summary>Writes config.json and model.safetensors into a new temporary directory; <paramref name="seed"/> picks the weights.</summary>
    public static string Write(int seed = 5) => Write(Config, seed, projectionScale: 0.4f, outputScale: 0.3f);

    /// <summary>
    /// As <see cref="Write(int)"/> for any small <paramref name="config"/> (untied classifier): q/k/v, gate and up
    /// weights uniform in ±<paramref name="projectionScale"/>, attention output and down in ±<paramref name="outputScale"/>.
    /// </summary>
    public static string Write(ModelConfig config, int seed, float projectionScale, float outputScale)
    {
        var directory = TestModels.TempDirectory("tiny-model");
        var random = new Random(seed);
        var arrays = new List<(string Name, float[] Data, int[] Shape)>();
        void Matrix(string name, int rows, int columns, float scale) =>
            arrays.Add((name, Enumerable.Range(0, rows * columns).Select(_ => (float)(random.NextDouble() * 2 - 1) * scale).ToArray(), [rows, columns]));
        void Norm(string name, int? length = null) =>
            arrays.Add((name, Enumerable.Range(0, length ?? config.Dim).Select(_ => 1f + (float)(random.NextDouble() - 0.5) * (length is null ? 0.2f : 0.6f)).ToArray(), [length ?? config.Dim]));
        void Bias(string name, int length) => arrays.Add((name, Enumerable.Range(0, length).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray(), [length]));
        int d = config.Dim, dh = config.HeadDim;
        Matrix(LlamaTensorNames.Embedding, config.VocabSize, d, 1f);
        for (int l = 0; l < config.Layers; l++)
        {
            Norm(LlamaTensorNames.AttentionNorm(l));
            Matrix(LlamaTensorNames.Query(l), config.Heads * dh, d, projectionScale);
            Matrix(LlamaTensorNames.Key(l), config.KvHeads * dh, d, projectionScale);
            Matrix(LlamaTensorNames.Value(l), config.KvHeads * dh, d, projectionScale);
            if (config.HasQkvBias)
            {
                Bias(LlamaTensorNames.QueryBias(l), config.Heads * dh);
                Bias(LlamaTensorNames.KeyBias(l), config.KvHeads * dh);
                Bias(LlamaTensorNames.ValueBias(l), config.KvHeads * dh);
            }
            if (config.HasQkNorm)
            {
                Norm(LlamaTensorNames.QueryNorm(l), dh);
                Norm(LlamaTensorNames.KeyNorm(l), dh);
            }
            Matrix(LlamaTensorNames.Output(l), d, config.Heads * dh, outputScale);
            Norm(LlamaTensorNames.FfnNorm(l));
            Matrix(LlamaTensorNames.Gate(l), config.HiddenDim, d, projectionScale);
            Matrix(LlamaTensorNames.Up(l), config.HiddenDim, d, projectionScale);
            Matrix(LlamaTensorNames.Down(l), d, config.HiddenDim, outputScale);
        }
        Norm(LlamaTensorNames.FinalNorm);
        Matrix(LlamaTensorNames.Classifier, config.VocabSize, d, 1f);
        WriteDirectory(directory, config, arrays);
        return directory;
    }

    /// <summary>Writes <paramref name="arrays"/> as model.safetensors (F32) and <paramref name="config"/> as config.json into <paramref name="directory"/>.</summary>
    public static void WriteDirectory(string directory, ModelConfig config, IReadOnlyList<(string Name, float[] Data, int[] Shape)> arrays)
    {
        var handles = arrays.Select(a => GCHandle.Alloc(a.Data, GCHandleType.Pinned)).ToList();
        try
        {
            var tensors = arrays.Select((a, i) => new TensorData(a.Name, DType.F32, a.Shape, handles[i].AddrOfPinnedObject())).ToList();
            SafetensorsWriter.Write(Path.Combine(directory, "model.safetensors"), tensors, DType.F32, new Dictionary<string, string> { ["format"] = "pt" });
        }
        finally
        {
            foreach (var h in handles) h.Free();
        }
        using var stream = File.Create(Path.Combine(directory, "config.json"));
        ModelConverter.WriteConfig(stream, config, DType.F32);
    }
}
