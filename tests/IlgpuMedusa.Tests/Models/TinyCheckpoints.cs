using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using IlgpuMedusa.Models;
using N = IlgpuMedusa.Models.LlamaTensorNames;

namespace IlgpuMedusa.Tests.Models;

/// <summary>Builders for small checkpoints and hand-made safetensors files used by the model-loading tests.</summary>
internal static class TinyCheckpoints
{
    /// <summary>A tiny Llama: D 8, F 16, 1 layer, H 2, Hkv 1 (grouped-query), V 16, context 32, tied embeddings.</summary>
    public static ModelConfig Config { get; } = new()
    {
        Dim = 8,
        HiddenDim = 16,
        Layers = 1,
        Heads = 2,
        KvHeads = 1,
        VocabSize = 16,
        MaxSequenceLength = 32,
        RmsNormEps = 1e-5f,
        TiedEmbeddings = true,
        BosTokenId = 1,
        EndTokenIds = [2],
    };

    /// <summary>Every tensor of <see cref="Config"/> with its shape, in Hugging Face order.</summary>
    public static List<(string Name, int[] Shape)> TensorShapes(ModelConfig c)
    {
        int d = c.Dim, f = c.HiddenDim, q = c.Heads * c.HeadDim, kv = c.KvDim;
        var list = new List<(string, int[])> { (N.Embedding, [c.VocabSize, d]) };
        for (int i = 0; i < c.Layers; i++)
        {
            list.Add((N.AttentionNorm(i), [d]));
            list.Add((N.Query(i), [q, d]));
            list.Add((N.Key(i), [kv, d]));
            list.Add((N.Value(i), [kv, d]));
            list.Add((N.Output(i), [d, q]));
            list.Add((N.FfnNorm(i), [d]));
            list.Add((N.Gate(i), [f, d]));
            list.Add((N.Up(i), [f, d]));
            list.Add((N.Down(i), [d, f]));
        }
        list.Add((N.FinalNorm, [d]));
        if (!c.TiedEmbeddings) list.Add((N.Classifier, [c.VocabSize, d]));
        return list;
    }

    /// <summary>
    /// Writes a Hugging Face directory for <see cref="Config"/> with deterministic F32 weights. <paramref name="omit"/>
    /// leaves one tensor out; <paramref name="reshape"/> gives one tensor another shape.
    /// </summary>
    public static string WriteHuggingFaceDirectory(string directory, string? omit = null, (string Name, int[] Shape)? reshape = null)
    {
        var c = Config;
        using (var stream = File.Create(Path.Combine(directory, "config.json"))) ModelConverter.WriteConfig(stream, c, DType.F32);
        var tensors = TensorShapes(c)
            .Where(t => t.Name != omit)
            .Select(t => reshape is { } r && r.Name == t.Name ? (t.Name, r.Shape) : t)
            .ToList();
        var infos = tensors.Select(t => new SafetensorsTensorInfo(t.Name, DType.F32, t.Shape)).ToArray();
        using var writer = new SafetensorsWriter(Path.Combine(directory, "model.safetensors"), infos);
        var random = new Random(1234);
        foreach (var info in infos)
        {
            var values = new float[info.ByteLength / 4];
            bool isNorm = info.Shape.Length == 1;
            for (int i = 0; i < values.Length; i++) values[i] = isNorm ? 1f : (float)(random.NextDouble() - 0.5);
            writer.WriteTensor(info.Name, MemoryMarshal.AsBytes(values.AsSpan()));
        }
        writer.Commit();
        return directory;
    }

    /// <summary>Writes a safetensors file by hand: 8-byte little-endian header length, the header text, then <paramref name="data"/>.</summary>
    public static string WriteRaw(string path, string header, byte[] data, ulong? declaredHeaderLength = null)
    {
        var headerBytes = Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + headerBytes.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, declaredHeaderLength ?? (ulong)headerBytes.Length);
        headerBytes.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + headerBytes.Length);
        File.WriteAllBytes(path, bytes);
        return path;
    }
}

/// <summary>A <see cref="TensorData"/> over a pinned managed array (tests only).</summary>
internal sealed class PinnedTensor : IDisposable
{
    private GCHandle _handle;

    public PinnedTensor(string name, DType type, int[] shape, Array values)
    {
        _handle = GCHandle.Alloc(values, GCHandleType.Pinned);
        Tensor = new TensorData(name, type, shape, _handle.AddrOfPinnedObject());
    }

    public TensorData Tensor { get; }

    public void Dispose()
    {
        if (_handle.IsAllocated) _handle.Free();
    }
}
