using System.Collections.Concurrent;

namespace IlgpuMedusa.Models;

/// <summary>How a checkpoint stretches RoPE past the context it was trained on (config.json's <c>rope_scaling</c>).</summary>
public enum RopeScalingKind
{
    /// <summary>Every frequency divided by the factor (<c>"rope_type": "linear"</c>).</summary>
    Linear,
    /// <summary>
    /// Llama 3.1's: frequencies whose wavelength exceeds original_max_position_embeddings / low_freq_factor are divided
    /// by the factor, those shorter than original_max_position_embeddings / high_freq_factor kept, those between blended.
    /// </summary>
    Llama3,
}

/// <summary>A <c>rope_scaling</c> this runtime follows exactly (the frequencies do not depend on the sequence's length).</summary>
/// <param name="Kind">Which formula.</param>
/// <param name="Factor">factor (at least 1).</param>
/// <param name="LowFrequencyFactor">low_freq_factor (Llama3).</param>
/// <param name="HighFrequencyFactor">high_freq_factor (Llama3; above the low one).</param>
/// <param name="OriginalMaxPositions">original_max_position_embeddings (Llama3).</param>
public sealed record RopeScaling(RopeScalingKind Kind, float Factor, float LowFrequencyFactor = 0, float HighFrequencyFactor = 0, int OriginalMaxPositions = 0);

/// <summary>
/// The rotary embedding of a model: base θ and an optional scaling. <see cref="Frequencies"/> is the one place the
/// per-dimension frequencies are computed; every backend and the head trainer rotate by them.
/// </summary>
/// <param name="Theta">RoPE base θ.</param>
/// <param name="Scaling">The scaling, or null for plain RoPE.</param>
public sealed record RopeParameters(float Theta, RopeScaling? Scaling = null)
{
    private static readonly ConcurrentDictionary<(RopeParameters, int), float[]> Tables = new();

    /// <summary>Plain RoPE with base <paramref name="theta"/>.</summary>
    public static implicit operator RopeParameters(float theta) => new(theta);

    /// <summary>
    /// The frequencies of dimensions j &lt; Dh/2: 1 / θ^(2j/Dh) in float32 (the formula every backend used before scaling
    /// existed, so plain RoPE rotates by the same angles), then scaled. The returned array is shared: do not modify it.
    /// </summary>
    public float[] Frequencies(int headDim)
    {
        if (headDim <= 0 || headDim % 2 != 0) throw new ArgumentOutOfRangeException(nameof(headDim), headDim, "the head dimension must be even and positive");
        return Tables.GetOrAdd((this, headDim), static key => key.Item1.Compute(key.Item2));
    }

    private float[] Compute(int headDim)
    {
        var result = new float[headDim / 2];
        for (int j = 0; j < result.Length; j++)
        {
            float frequency = 1f / MathF.Pow(Theta, 2f * j / headDim);
            result[j] = Scaling is { } s ? Scale(frequency, s) : frequency;
        }
        return result;
    }

    private static float Scale(float frequency, RopeScaling s)
    {
        if (s.Kind == RopeScalingKind.Linear) return frequency / s.Factor;
        double wavelength = 2 * Math.PI / frequency;
        double lowWavelength = s.OriginalMaxPositions / (double)s.LowFrequencyFactor;   // longer than this: divided
        double highWavelength = s.OriginalMaxPositions / (double)s.HighFrequencyFactor; // shorter than this: kept
        if (wavelength < highWavelength) return frequency;
        if (wavelength > lowWavelength) return frequency / s.Factor;
        double smooth = (s.OriginalMaxPositions / wavelength - s.LowFrequencyFactor) / (s.HighFrequencyFactor - s.LowFrequencyFactor);
        return (float)((1 - smooth) * frequency / s.Factor + smooth * frequency);
    }
}
