namespace IlgpuMedusa.Kernels;

/// <summary>
/// Compile-time sizes of the static shared memory the grouped kernels use. Launch-time group sizes and shapes must
/// stay within them; the launchers check.
/// </summary>
public static class KernelLimits
{
    /// <summary>Largest group (threads) of the row-reduction kernels; group sizes are powers of two up to this.</summary>
    public const int MaxGroupSize = 256;

    /// <summary>Largest attention head dimension Dh.</summary>
    public const int MaxHeadDim = 256;

    /// <summary>Largest k of the top-k kernel.</summary>
    public const int MaxTopK = 64;

    /// <summary>Throws <see cref="ArgumentException"/> unless <paramref name="groupSize"/> is a power of two in [1, <see cref="MaxGroupSize"/>].</summary>
    public static void CheckGroupSize(int groupSize)
    {
        if (groupSize < 1 || groupSize > MaxGroupSize || (groupSize & (groupSize - 1)) != 0)
            throw new ArgumentException($"group size {groupSize} must be a power of two in [1, {MaxGroupSize}]", nameof(groupSize));
    }
}
