using ILGPU;

namespace IlgpuMedusa.Kernels;

/// <summary>
/// Decodes one stored weight element to float32. Kernels are generic over a struct implementing this, so each
/// storage type compiles to its own kernel (no branch on the dtype at run time).
/// </summary>
/// <typeparam name="TElement">How one element is stored: <see cref="float"/> or the raw bits as <see cref="ushort"/>.</typeparam>
public interface IElementFormat<TElement>
    where TElement : unmanaged
{
    /// <summary>The element as float32.</summary>
    float Decode(TElement raw);
}

/// <summary>
/// Decodes a pack of <see cref="Width"/> consecutive weight elements, the unit a matrix-vector kernel loads per thread:
/// one float, or two 16-bit values in one 32-bit word (two bytes per thread would halve the width of each coalesced load).
/// </summary>
/// <typeparam name="TPack">The pack type: <see cref="float"/> or <see cref="uint"/> holding two 16-bit values.</typeparam>
public interface IPackFormat<TPack>
    where TPack : unmanaged
{
    /// <summary>Elements per pack (1 or 2).</summary>
    int Width { get; }

    /// <summary>Element 0 (the one at the lower address).</summary>
    float First(TPack pack);

    /// <summary>Element 1 (only meaningful when <see cref="Width"/> is 2).</summary>
    float Second(TPack pack);
}

/// <summary>float32 weights.</summary>
public readonly struct F32Format : IElementFormat<float>, IPackFormat<float>
{
    /// <inheritdoc />
    public int Width => 1;

    /// <inheritdoc />
    public float Decode(float raw) => raw;

    /// <inheritdoc />
    public float First(float pack) => pack;

    /// <inheritdoc />
    public float Second(float pack) => 0f;
}

/// <summary>IEEE binary16 weights stored as raw bits, decoded by hand (ILGPU's Half type does not build on every OpenCL).</summary>
public readonly struct F16Format : IElementFormat<ushort>, IPackFormat<uint>
{
    /// <inheritdoc />
    public int Width => 2;

    /// <inheritdoc />
    public float Decode(ushort raw) => HalfBits.ToSingle(raw);

    /// <inheritdoc />
    public float First(uint pack) => HalfBits.ToSingle(pack & 0xFFFFu);

    /// <inheritdoc />
    public float Second(uint pack) => HalfBits.ToSingle(pack >> 16);
}

/// <summary>
/// IEEE binary16 weights decoded with ILGPU's Half conversion: one cvt instruction on CUDA, where the portable bit
/// decoding of <see cref="F16Format"/> made the fp16 GEMV instruction-bound (about 1.9 TB/s against 3.0 TB/s for bf16
/// on an H200). CUDA-only variant: OpenCL devices without cl_khr_fp16 (PoCL) reject the Half type. Also runs on the CPU
/// emulator, where the tests check it against the host.
/// </summary>
public readonly struct F16NativeFormat : IElementFormat<ushort>, IPackFormat<uint>
{
    /// <inheritdoc />
    public int Width => 2;

    /// <inheritdoc />
    public float Decode(ushort raw) => Interop.IntAsFloat(raw);

    /// <inheritdoc />
    public float First(uint pack) => Interop.IntAsFloat((ushort)(pack & 0xFFFFu));

    /// <inheritdoc />
    public float Second(uint pack) => Interop.IntAsFloat((ushort)(pack >> 16));
}

/// <summary>bfloat16 weights: the stored bits are the top half of a float32.</summary>
public readonly struct BF16Format : IElementFormat<ushort>, IPackFormat<uint>
{
    /// <inheritdoc />
    public int Width => 2;

    /// <inheritdoc />
    public float Decode(ushort raw) => Interop.IntAsFloat((uint)raw << 16);

    /// <inheritdoc />
    public float First(uint pack) => Interop.IntAsFloat(pack << 16);

    /// <inheritdoc />
    public float Second(uint pack) => Interop.IntAsFloat(pack & 0xFFFF0000u);
}

/// <summary>IEEE binary16 to float32 by bit manipulation; exact for every input (normals, subnormals, ±0, ±inf, NaN).</summary>
public static class HalfBits
{
    /// <summary>2^112 = 2^(127 − 15): moves a binary16 exponent placed in a float32 to the float32 bias.</summary>
    private const float ExponentRebias = 5.192296858534828E+33f;

    /// <summary>
    /// Decodes the binary16 value in the low 16 bits of <paramref name="bits"/>. Exponent and mantissa shifted into
    /// float32 position read as a float 2^−112 times the value (subnormal halves land on float32 subnormals), so one
    /// exact multiplication by 2^112 decodes normals and subnormals alike; only inf/NaN need a select. No branches: on
    /// GPUs the fp16 GEMV is bound by these instructions, not by memory.
    /// </summary>
    public static float ToSingle(uint bits)
    {
        uint magnitude = (bits & 0x7FFFu) << 13;
        float value = Interop.IntAsFloat(magnitude) * ExponentRebias;
        uint result = (bits & 0x7C00u) == 0x7C00u ? magnitude | 0x7F800000u : Interop.FloatAsInt(value);
        return Interop.IntAsFloat(result | ((bits & 0x8000u) << 16));
    }

    /// <summary>
    /// Encodes a float32 as binary16 bits, rounding to nearest even like IEEE conversion (and CUDA's cvt.rn.f16.f32):
    /// overflow to ±inf, subnormal halves, ±0, inf and NaN (quiet) included. Written by hand because ILGPU's CPU emulator
    /// converts its Half type differently; the tensor-core input must round the same on every device.
    /// </summary>
    public static uint FromSingle(float value)
    {
        uint bits = Interop.FloatAsInt(value);
        uint sign = (bits >> 16) & 0x8000u;
        uint magnitude = bits & 0x7FFFFFFFu;
        if (magnitude >= 0x7F800000u) return sign | (magnitude > 0x7F800000u ? 0x7E00u : 0x7C00u);
        if (magnitude >= 0x477FF000u) return sign | 0x7C00u; // ≥ 65520 rounds to infinity
        if (magnitude < 0x38800000u)
        {
            // |x| < 2^−14: a subnormal half (or 0). 0.5 + |x| rounds |x| to a multiple of 2^−24 (the float ulp at 0.5),
            // and the bits above 0.5's are the half's mantissa (0x400 when it rounds up to the smallest normal).
            float shifted = Interop.IntAsFloat(magnitude) + 0.5f;
            return sign | (Interop.FloatAsInt(shifted) - 0x3F000000u);
        }
        uint odd = (magnitude >> 13) & 1u;
        // Rebias the exponent (−112 · 2^23) and round the 13 dropped bits to nearest even.
        return sign | ((magnitude + 0xC8000FFFu + odd) >> 13);
    }
}
