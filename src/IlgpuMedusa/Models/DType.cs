namespace IlgpuMedusa.Models;

/// <summary>Element types of tensors in checkpoints and on devices. 16-bit floats are stored as raw bits.</summary>
public enum DType
{
    /// <summary>IEEE 754 binary32.</summary>
    F32,
    /// <summary>IEEE 754 binary16, stored as <see cref="ushort"/> bits.</summary>
    F16,
    /// <summary>bfloat16 (the top 16 bits of a binary32), stored as <see cref="ushort"/> bits.</summary>
    BF16,
    /// <summary>32-bit signed integer (token ids, positions, block tables, masks).</summary>
    I32,
}

/// <summary>Facts about <see cref="DType"/> values.</summary>
public static class DTypeInfo
{
    /// <summary>Bytes of one element.</summary>
    public static int SizeOf(DType type) => type switch
    {
        DType.F32 or DType.I32 => 4,
        DType.F16 or DType.BF16 => 2,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "unknown dtype"),
    };

    /// <summary>Parses a dtype as written on the command line (f32, f16, bf16).</summary>
    public static DType ParseFloat(string text, string optionName) => text.ToLowerInvariant() switch
    {
        "f32" or "float32" or "fp32" => DType.F32,
        "f16" or "float16" or "fp16" => DType.F16,
        "bf16" or "bfloat16" => DType.BF16,
        _ => throw new ArgumentException($"{optionName}: unknown dtype '{text}'; expected f32, f16 or bf16.", optionName),
    };
}
