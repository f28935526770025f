using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace IlgpuMedusa.Models;

/// <summary>Conversions between float32 and the 16-bit float encodings stored as raw <see cref="ushort"/> bits.</summary>
public static class HalfConversions
{
    /// <summary>bfloat16 bits to float32: the bits are the top half of a binary32.</summary>
    public static float BFloat16ToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>float32 to bfloat16 bits, rounding to nearest even (NaN stays NaN).</summary>
    public static ushort SingleToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((bits >> 16) | 0x40);
        uint roundingBias = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + roundingBias) >> 16);
    }

    /// <summary>IEEE binary16 bits to float32.</summary>
    public static float HalfToSingle(ushort bits) => (float)BitConverter.UInt16BitsToHalf(bits);

    /// <summary>float32 to IEEE binary16 bits (round to nearest even).</summary>
    public static ushort SingleToHalf(float value) => BitConverter.HalfToUInt16Bits((Half)value);

    /// <summary>Decodes <paramref name="source"/> (raw bytes of <paramref name="type"/>) into float32.</summary>
    public static void ToSingle(DType type, ReadOnlySpan<byte> source, Span<float> destination)
    {
        switch (type)
        {
            case DType.F32:
                MemoryMarshal.Cast<byte, float>(source).CopyTo(destination);
                break;
            case DType.F16:
                TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(source), destination);
                break;
            case DType.BF16:
                var bf = MemoryMarshal.Cast<byte, ushort>(source);
                var asBits = MemoryMarshal.Cast<float, uint>(destination);
                for (int i = 0; i < bf.Length; i++) asBits[i] = (uint)bf[i] << 16;
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, "not a float dtype");
        }
    }

    /// <summary>Encodes float32 values as <paramref name="type"/> into raw bytes.</summary>
    public static void FromSingle(DType type, ReadOnlySpan<float> source, Span<byte> destination)
    {
        switch (type)
        {
            case DType.F32:
                MemoryMarshal.Cast<float, byte>(source).CopyTo(destination);
                break;
            case DType.F16:
                TensorPrimitives.ConvertToHalf(source, MemoryMarshal.Cast<byte, Half>(destination));
                break;
            case DType.BF16:
                var bf = MemoryMarshal.Cast<byte, ushort>(destination);
                for (int i = 0; i < source.Length; i++) bf[i] = SingleToBFloat16(source[i]);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, "not a float dtype");
        }
    }
}
