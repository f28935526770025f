namespace IlgpuMedusa.Kernels.Tests;

/// <summary>
/// <see cref="HalfBits"/> on the host against .NET's IEEE binary16 conversion (an independent implementation of the
/// same rounding rule).
/// </summary>
public sealed class HalfBitsTests
{
    /// <summary>Every binary16 value survives float32 and back, and decodes as .NET decodes it.</summary>
    [Fact]
    public void Every_half_round_trips()
    {
        for (int i = 0; i < 65536; i++)
        {
            float value = (float)BitConverter.UInt16BitsToHalf((ushort)i);
            float decoded = HalfBits.ToSingle((uint)i);
            if (float.IsNaN(value)) Assert.True(float.IsNaN(decoded), $"NaN {i:X4} decodes to {decoded}");
            else Assert.Equal(BitConverter.SingleToInt32Bits(value), BitConverter.SingleToInt32Bits(decoded));
            uint back = HalfBits.FromSingle(value);
            if (float.IsNaN(value)) Assert.True((back & 0x7C00u) == 0x7C00u && (back & 0x3FFu) != 0, $"NaN {i:X4} -> {back:X4}");
            else Assert.Equal((uint)i, back);
        }
    }

    /// <summary>Floats between halves, ties, subnormals and the overflow edge round as IEEE conversion rounds them.</summary>
    [Fact]
    public void Floats_round_to_nearest_even()
    {
        var random = new Random(7);
        var cases = new List<float> { 65504f, 65519.99f, 65520f, 65536f, 1e-8f, 2.9802322e-8f, 5.9604645e-8f, 8.940697e-8f, 6.1035156e-5f, 6.1035153e-5f, -0f, float.MaxValue, float.Epsilon };
        for (int i = 0; i < 65535; i++)
        {
            // Exactly halfway between two neighbouring halves: ties must go to the even one.
            float a = (float)BitConverter.UInt16BitsToHalf((ushort)i), b = (float)BitConverter.UInt16BitsToHalf((ushort)(i + 1));
            if (float.IsFinite(a) && float.IsFinite(b) && Math.Sign(a) == Math.Sign(b)) cases.Add((a + b) / 2);
        }
        for (int i = 0; i < 200_000; i++) cases.Add(BitConverter.Int32BitsToSingle(random.Next()) * (random.Next(2) == 0 ? 1 : -1));
        foreach (float x in cases)
        {
            if (float.IsNaN(x)) continue;
            ushort expected = BitConverter.HalfToUInt16Bits((Half)x);
            Assert.True(expected == HalfBits.FromSingle(x), $"{x:R} ({BitConverter.SingleToInt32Bits(x):X8}): expected {expected:X4}, got {HalfBits.FromSingle(x):X4}");
        }
    }
}
