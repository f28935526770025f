using ILGPU;
using ILGPU.Algorithms;

namespace IlgpuMedusa.Kernels;

/// <summary>The matmul kernels: output[T, N] = (accumulate ? output : 0) + input[T, K] · W[N, K]ᵀ.</summary>
public static partial class MatMulKernels
{
    /// <summary>Weight rows one group of the vector and skinny kernels computes.</summary>
    public const int RowsPerGroup = 4;

    /// <summary>
    /// GEMV, one token per grid row: group (x, t) computes output[t, 4x .. 4x+3]. Thread i reads packs i, i + G, ...
    /// of each of the four weight rows, so consecutive threads read consecutive words (coalesced), two packs per
    /// iteration to keep more loads in flight; then one shared-memory tree reduction sums the four rows at once.
    /// With <see cref="NormedInput"/> the input row is RMS-normalised on the fly: each element is multiplied by its norm
    /// weight as it is read, its square is summed alongside (a fifth sum in the same reduction), and the four results
    /// are scaled by 1/√(mean(x²) + ε) at the end: RMSNorm and the matmul in one launch, no extra memory traffic. With
    /// <see cref="NormedSwiGlu"/> the four rows are two (gate, up) pairs and the group writes silu(gate)·up for each.
    /// Grouped (<see cref="MatMulArgs.GroupRows"/> &gt; 0, T = 1): rows of matrix g read input row g.
    /// Grid: (⌈N/4⌉, T) groups of G threads (a power of two).
    /// </summary>
    /// <param name="output">F32[T, N] (F32[T, N/2] for <see cref="NormedSwiGlu"/>).</param>
    /// <param name="input">F32[T, K].</param>
    /// <param name="weight">[N, stride] packs (see <see cref="IPackFormat{TPack}"/>).</param>
    /// <param name="norm">F32[K] RMSNorm weights (<see cref="NormedInput"/>; any view otherwise, not read).</param>
    /// <param name="args">Shapes; WeightStride in packs; ε.</param>
    public static void Vector<TPack, TFormat, TMode>(ArrayView<float> output, ArrayView<float> input, ArrayView<TPack> weight, ArrayView<float> norm, MatMulArgs args)
        where TPack : unmanaged
        where TFormat : struct, IPackFormat<TPack>
        where TMode : struct, IMatMulMode
    {
        var partial = SharedMemory.Allocate<float>((RowsPerGroup + 1) * KernelLimits.MaxGroupSize);
        bool normed = default(TMode).Normalizes;
        float squares = 0f;
        const int M = KernelLimits.MaxGroupSize;
        int tid = Group.IdxX;
        int groupSize = Group.DimX;
        int row0 = Grid.IdxX * RowsPerGroup;
        int token = Grid.IdxY;
        int last = args.Rows - 1;
        // Rows past N re-read row N−1 (no branch in the loop) and are not written.
        long w0 = (long)row0 * args.WeightStride;
        long w1 = (long)IntMin(row0 + 1, last) * args.WeightStride;
        long w2 = (long)IntMin(row0 + 2, last) * args.WeightStride;
        long w3 = (long)IntMin(row0 + 3, last) * args.WeightStride;
        // The divisor is never 0, even where the grouping is off: compilers may evaluate both sides of the choice, and an
        // integer division by zero traps on CPUs (PoCL).
        int groupRows = args.GroupRows > 0 ? args.GroupRows : 1;
        long x0 = args.GroupRows > 0 ? (long)(row0 / groupRows) * args.GroupInputStride : (long)token * args.Columns;
        var f = default(TFormat);
        float s0 = 0f, s1 = 0f, s2 = 0f, s3 = 0f;
        if (f.Width == 1)
        {
            int packs = args.Columns;
            int p = tid;
            for (; p + groupSize < packs; p += 2 * groupSize)
            {
                int q = p + groupSize;
                float xa = input[x0 + p];
                float xb = input[x0 + q];
                if (normed)
                {
                    squares += xa * xa + xb * xb;
                    xa *= norm[p];
                    xb *= norm[q];
                }
                TPack a0 = weight[w0 + p], a1 = weight[w1 + p], a2 = weight[w2 + p], a3 = weight[w3 + p];
                TPack b0 = weight[w0 + q], b1 = weight[w1 + q], b2 = weight[w2 + q], b3 = weight[w3 + q];
                s0 += f.First(a0) * xa + f.First(b0) * xb;
                s1 += f.First(a1) * xa + f.First(b1) * xb;
                s2 += f.First(a2) * xa + f.First(b2) * xb;
                s3 += f.First(a3) * xa + f.First(b3) * xb;
            }
            if (p < packs)
            {
                float xa = input[x0 + p];
                if (normed)
                {
                    squares += xa * xa;
                    xa *= norm[p];
                }
                s0 += f.First(weight[w0 + p]) * xa;
                s1 += f.First(weight[w1 + p]) * xa;
                s2 += f.First(weight[w2 + p]) * xa;
                s3 += f.First(weight[w3 + p]) * xa;
            }
        }
        else
        {
            int packs = args.Columns / 2; // full pairs; an odd K leaves one element in the zero-padded last pair
            int p = tid;
            for (; p + groupSize < packs; p += 2 * groupSize)
            {
                int q = p + groupSize;
                float xa = input[x0 + 2 * p], xb = input[x0 + 2 * p + 1];
                float xc = input[x0 + 2 * q], xd = input[x0 + 2 * q + 1];
                if (normed)
                {
                    squares += xa * xa + xb * xb + xc * xc + xd * xd;
                    xa *= norm[2 * p];
                    xb *= norm[2 * p + 1];
                    xc *= norm[2 * q];
                    xd *= norm[2 * q + 1];
                }
                TPack a0 = weight[w0 + p], a1 = weight[w1 + p], a2 = weight[w2 + p], a3 = weight[w3 + p];
                TPack b0 = weight[w0 + q], b1 = weight[w1 + q], b2 = weight[w2 + q], b3 = weight[w3 + q];
                s0 += f.First(a0) * xa + f.Second(a0) * xb + f.First(b0) * xc + f.Second(b0) * xd;
                s1 += f.First(a1) * xa + f.Second(a1) * xb + f.First(b1) * xc + f.Second(b1) * xd;
                s2 += f.First(a2) * xa + f.Second(a2) * xb + f.First(b2) * xc + f.Second(b2) * xd;
                s3 += f.First(a3) * xa + f.Second(a3) * xb + f.First(b3) * xc + f.Second(b3) * xd;
            }
            if (p < packs)
            {
                float xa = input[x0 + 2 * p], xb = input[x0 + 2 * p + 1];
                if (normed)
                {
                    squares += xa * xa + xb * xb;
                    xa *= norm[2 * p];
                    xb *= norm[2 * p + 1];
                }
                TPack a0 = weight[w0 + p], a1 = weight[w1 + p], a2 = weight[w2 + p], a3 = weight[w3 + p];
                s0 += f.First(a0) * xa + f.Second(a0) * xb;
                s1 += f.First(a1) * xa + f.Second(a1) * xb;
                s2 += f.First(a2) * xa + f.Second(a2) * xb;
                s3 += f.First(a3) * xa + f.Second(a3) * xb;
            }
            if ((args.Columns & 1) != 0 && tid == 0)
            {
                float xa = input[x0 + args.Columns - 1];
                if (normed)
                {
                    squares += xa * xa;
                    xa *= norm[args.Columns - 1];
                }
                s0 += f.First(weight[w0 + packs]) * xa;
                s1 += f.First(weight[w1 + packs]) * xa;
                s2 += f.First(weight[w2 + packs]) * xa;
                s3 += f.First(weight[w3 + packs]) * xa;
            }
        }
        partial[tid] = s0;
        partial[M + tid] = s1;
        partial[2 * M + tid] = s2;
        partial[3 * M + tid] = s3;
        if (normed) partial[4 * M + tid] = squares;
        Group.Barrier();
        for (int stride = groupSize / 2; stride > 0; stride >>= 1)
        {
            if (tid < stride)
            {
                partial[tid] += partial[tid + stride];
                partial[M + tid] += partial[M + tid + stride];
                partial[2 * M + tid] += partial[2 * M + tid + stride];
                partial[3 * M + tid] += partial[3 * M + tid + stride];
                if (normed) partial[4 * M + tid] += partial[4 * M + tid + stride];
            }
            Group.Barrier();
        }
        float scale = normed ? 1f / XMath.Sqrt(partial[4 * M] / args.Columns + args.Eps) : 1f;
        if (default(TMode).SwiGluPairs)
        {
            // Rows (gate i, up i, gate i + 1, up i + 1) with i = row0 / 2: output[t, i + pair] = silu(gate) · up.
            if (tid < RowsPerGroup / 2 && row0 + 2 * tid + 1 < args.Rows)
            {
                float gate = partial[2 * tid * M] * scale;
                float up = partial[(2 * tid + 1) * M] * scale;
                long o = (long)token * (args.Rows / 2) + row0 / 2 + tid;
                output[o] = gate / (1f + XMath.Exp(-gate)) * up;
            }
        }
        else if (tid < RowsPerGroup && row0 + tid < args.Rows)
        {
            float v = partial[tid * M] * scale;
            long o = (long)token * args.Rows + row0 + tid;
            output[o] = args.Accumulate != 0 ? output[o] + v : v;
        }
    }

    private static int IntMin(int a, int b) => a < b ? a : b;
}
