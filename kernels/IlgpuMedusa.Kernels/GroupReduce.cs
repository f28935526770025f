using ILGPU;

namespace IlgpuMedusa.Kernels;

/// <summary>
/// Tree reductions across one group through static shared memory and barriers: the portable way (no warp shuffles,
/// no atomics, no ILGPU.Algorithms group reductions, which do not build on every OpenCL). Every thread of the group must
/// call them (they contain barriers); the group size must be a power of two.
/// </summary>
internal static class GroupReduce
{
    /// <summary>Sum of <paramref name="value"/> over the group, returned to every thread. scratch: [≥ group size].</summary>
    public static float Sum(ArrayView<float> scratch, float value)
    {
        int tid = Group.IdxX;
        scratch[tid] = value;
        Group.Barrier();
        for (int stride = Group.DimX / 2; stride > 0; stride >>= 1)
        {
            if (tid < stride) scratch[tid] += scratch[tid + stride];
            Group.Barrier();
        }
        float result = scratch[0];
        Group.Barrier(); // scratch may be reused right after
        return result;
    }

    /// <summary>Maximum of <paramref name="value"/> over the group, returned to every thread. scratch: [≥ group size].</summary>
    public static float Max(ArrayView<float> scratch, float value)
    {
        int tid = Group.IdxX;
        scratch[tid] = value;
        Group.Barrier();
        for (int stride = Group.DimX / 2; stride > 0; stride >>= 1)
        {
            if (tid < stride) scratch[tid] = IntrinsicMax(scratch[tid], scratch[tid + stride]);
            Group.Barrier();
        }
        float result = scratch[0];
        Group.Barrier();
        return result;
    }

    /// <summary>max(a, b) without NaN rules (inputs are finite or the sentinel).</summary>
    public static float IntrinsicMax(float a, float b) => a > b ? a : b;

    /// <summary>
    /// The index of the first (value, index) of the group in the order "larger value first, then lower index", returned
    /// to every thread (−1 when no thread offered one). Threads with nothing to offer pass index −1.
    /// values, indices: [≥ group size] scratch. (No ref parameters: they need the generic address space on OpenCL.)
    /// </summary>
    public static int ArgBest(ArrayView<float> values, ArrayView<int> indices, float value, int index)
    {
        int tid = Group.IdxX;
        values[tid] = value;
        indices[tid] = index;
        Group.Barrier();
        for (int stride = Group.DimX / 2; stride > 0; stride >>= 1)
        {
            if (tid < stride)
            {
                float otherValue = values[tid + stride];
                int otherIndex = indices[tid + stride];
                if (Precedes(otherValue, otherIndex, values[tid], indices[tid]))
                {
                    values[tid] = otherValue;
                    indices[tid] = otherIndex;
                }
            }
            Group.Barrier();
        }
        int result = indices[0];
        Group.Barrier();
        return result;
    }

    /// <summary>
    /// True when (a, ia) comes before (b, ib) in the order "larger value first, ties: lower index first"; index −1 means
    /// "no candidate" and comes last.
    /// </summary>
    public static bool Precedes(float a, int ia, float b, int ib)
    {
        if (ia < 0) return false;
        if (ib < 0) return true;
        bool aNaN = float.IsNaN(a), bNaN = float.IsNaN(b);
        if (aNaN || bNaN) return aNaN && (!bNaN || ia < ib); // NaN ranks first, like TensorPrimitives.IndexOfMax
        return a > b || (a == b && ia < ib);
    }
}
