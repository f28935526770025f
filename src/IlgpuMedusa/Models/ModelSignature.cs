using System.Globalization;

namespace IlgpuMedusa.Models;

/// <summary>
/// Identifies a model well enough to refuse Medusa heads trained for another one: the shape numbers plus 32 embedding
/// values at fixed places. Compared with a relative tolerance so f32, f16 and bf16 copies of one model match.
/// Text form: <c>D/F/L/H/Hkv/V:v0,v1,...</c>.
/// </summary>
public sealed record ModelSignature(string Shape, float[] Samples)
{
    private const int SampleCount = 32;

    /// <summary>The signature of a checkpoint's model.</summary>
    public static unsafe ModelSignature Of(ICheckpoint checkpoint)
    {
        var c = checkpoint.Config;
        var embedding = checkpoint.GetTensor(LlamaTensorNames.Embedding, c.VocabSize, c.Dim);
        var samples = new float[SampleCount];
        int size = DTypeInfo.SizeOf(embedding.Type);
        var one = new float[1];
        for (int i = 0; i < SampleCount; i++)
        {
            // spread over the table: token (i · 997) mod V, column (i · 31) mod D; read by offset, as a table may hold 2 GiB or more
            long index = (long)(i * 997L % c.VocabSize) * c.Dim + i * 31L % c.Dim;
            HalfConversions.ToSingle(embedding.Type, new ReadOnlySpan<byte>((byte*)embedding.Pointer + index * size, size), one);
            samples[i] = one[0];
        }
        return new ModelSignature($"{c.Dim}/{c.HiddenDim}/{c.Layers}/{c.Heads}/{c.KvHeads}/{c.VocabSize}", samples);
    }

    /// <summary>Parses the text form; null when malformed.</summary>
    public static ModelSignature? Parse(string text)
    {
        var parts = text.Split(':');
        if (parts.Length != 2) return null;
        var values = parts[1].Split(',');
        var samples = new float[values.Length];
        for (int i = 0; i < values.Length; i++)
            if (!float.TryParse(values[i], NumberStyles.Float, CultureInfo.InvariantCulture, out samples[i])) return null;
        return new ModelSignature(parts[0], samples);
    }

    /// <summary>True when both describe the same model (same shape, samples equal within 1% + 1e-3).</summary>
    public bool Matches(ModelSignature other)
    {
        if (Shape != other.Shape || Samples.Length != other.Samples.Length) return false;
        for (int i = 0; i < Samples.Length; i++)
        {
            float a = Samples[i], b = other.Samples[i];
            if (MathF.Abs(a - b) > 0.01f * MathF.Max(MathF.Abs(a), MathF.Abs(b)) + 1e-3f) return false;
        }
        return true;
    }

    /// <inheritdoc />
    public override string ToString() =>
        Shape + ":" + string.Join(',', Samples.Select(v => v.ToString("R", CultureInfo.InvariantCulture)));
}
