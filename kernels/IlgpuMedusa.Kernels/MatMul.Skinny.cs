using ILGPU;
using ILGPU.Algorithms;

namespace IlgpuMedusa.Kernels;

public static partial class MatMulKernels
{
    /// <summary>Tokens the skinny kernel computes per pass over its weight rows.</summary>
    public const int SkinnyTokens = 4;

    /// <summary>
    /// Small-T matmul: group x computes output[:, 4x .. 4x+3] for every token, four tokens per pass, so each weight
    /// pack loaded from memory serves four tokens (later passes find the group's rows in cache). Loads are coalesced as
    /// in <see cref="Vector{TPack, TFormat, TMode}"/>; 16 partial sums per thread go through one shared tree reduction per pass.
    /// With <see cref="NormedInput"/> the four input rows are RMS-normalised on the fly as in
    /// <see cref="Vector{TPack, TFormat, TMode}"/> (four more sums of squares in the reduction), and with
    /// <see cref="NormedSwiGlu"/> the (gate, up) row pairs give silu(gate)·up.
    /// Grid: (⌈N/4⌉, 1) groups of G threads (a power of two).
    /// </summary>
    /// <param name="output">F32[T, N] (F32[T, N/2] for <see cref="NormedSwiGlu"/>).</param>
    /// <param name="input">F32[T, K].</param>
    /// <param name="weight">[N, stride] packs.</param>
    /// <param name="norm">F32[K] RMSNorm weights (<see cref="NormedInput"/>; any view otherwise, not read).</param>
    /// <param name="args">Shapes; WeightStride in packs; ε.</param>
    public static void Skinny<TPack, TFormat, TMode>(ArrayView<float> output, ArrayView<float> input, ArrayView<TPack> weight, ArrayView<float> norm, MatMulArgs args)
        where TPack : unmanaged
        where TFormat : struct, IPackFormat<TPack>
        where TMode : struct, IMatMulMode
    {
        var partial = SharedMemory.Allocate<float>((RowsPerGroup + 1) * SkinnyTokens * KernelLimits.MaxGroupSize);
        bool normed = default(TMode).Normalizes;
        int sums = normed ? (RowsPerGroup + 1) * SkinnyTokens : RowsPerGroup * SkinnyTokens;
        const int M = KernelLimits.MaxGroupSize;
        int tid = Group.IdxX;
        int groupSize = Group.DimX;
        int row0 = Grid.IdxX * RowsPerGroup;
        int last = args.Rows - 1;
        long w0 = (long)row0 * args.WeightStride;
        long w1 = (long)IntMin(row0 + 1, last) * args.WeightStride;
        long w2 = (long)IntMin(row0 + 2, last) * args.WeightStride;
        long w3 = (long)IntMin(row0 + 3, last) * args.WeightStride;
        var f = default(TFormat);
        int width = f.Width;
        int packs = args.Columns / width;
        bool oddTail = width == 2 && (args.Columns & 1) != 0;
        for (int t0 = 0; t0 < args.Tokens; t0 += SkinnyTokens)
        {
            // Tokens past T re-read token T−1 and are not written.
            long xa = (long)t0 * args.Columns;
            long xb = (long)IntMin(t0 + 1, args.Tokens - 1) * args.Columns;
            long xc = (long)IntMin(t0 + 2, args.Tokens - 1) * args.Columns;
            long xd = (long)IntMin(t0 + 3, args.Tokens - 1) * args.Columns;
            // acc{row}: the four tokens' sums for one weight row.
            var acc0 = new Vec4(0f, 0f, 0f, 0f);
            var acc1 = acc0;
            var acc2 = acc0;
            var acc3 = acc0;
            var squares = acc0; // the four tokens' Σx² (NormedInput)
            for (int p = tid; p < packs; p += groupSize)
            {
                TPack a0 = weight[w0 + p], a1 = weight[w1 + p], a2 = weight[w2 + p], a3 = weight[w3 + p];
                int e = p * width;
                var x = new Vec4(input[xa + e], input[xb + e], input[xc + e], input[xd + e]);
                if (normed)
                {
                    squares = squares.AddSquares(x);
                    x = x.Scale(norm[e]);
                }
                acc0 = acc0.MulAdd(x, f.First(a0));
                acc1 = acc1.MulAdd(x, f.First(a1));
                acc2 = acc2.MulAdd(x, f.First(a2));
                acc3 = acc3.MulAdd(x, f.First(a3));
                if (width == 2)
                {
                    var y = new Vec4(input[xa + e + 1], input[xb + e + 1], input[xc + e + 1], input[xd + e + 1]);
                    if (normed)
                    {
                        squares = squares.AddSquares(y);
                        y = y.Scale(norm[e + 1]);
                    }
                    acc0 = acc0.MulAdd(y, f.Second(a0));
                    acc1 = acc1.MulAdd(y, f.Second(a1));
                    acc2 = acc2.MulAdd(y, f.Second(a2));
                    acc3 = acc3.MulAdd(y, f.Second(a3));
                }
            }
            if (oddTail && tid == 0)
            {
                int e = args.Columns - 1;
                var x = new Vec4(input[xa + e], input[xb + e], input[xc + e], input[xd + e]);
                if (normed)
                {
                    squares = squares.AddSquares(x);
                    x = x.Scale(norm[e]);
                }
                acc0 = acc0.MulAdd(x, f.First(weight[w0 + packs]));
                acc1 = acc1.MulAdd(x, f.First(weight[w1 + packs]));
                acc2 = acc2.MulAdd(x, f.First(weight[w2 + packs]));
                acc3 = acc3.MulAdd(x, f.First(weight[w3 + packs]));
            }
            // partial[(row · 4 + token) · M + tid]
            Store(partial, 0, tid, acc0);
            Store(partial, 4, tid, acc1);
            Store(partial, 8, tid, acc2);
            Store(partial, 12, tid, acc3);
            if (normed) Store(partial, 16, tid, squares);
            Group.Barrier();
            for (int stride = groupSize / 2; stride > 0; stride >>= 1)
            {
                if (tid < stride)
                {
                    for (int s = 0; s < sums; s++)
                        partial[s * M + tid] += partial[s * M + tid + stride];
                }
                Group.Barrier();
            }
            if (default(TMode).SwiGluPairs)
            {
                // Thread (pair, token) for pair 0, 1: rows row0 + 2·pair (gate) and row0 + 2·pair + 1 (up), slot row · 4 + token.
                if (tid < 2 * SkinnyTokens)
                {
                    int pair = tid / SkinnyTokens;
                    int k = tid % SkinnyTokens;
                    int token = t0 + k;
                    int row = row0 + 2 * pair;
                    if (row + 1 < args.Rows && token < args.Tokens)
                    {
                        float scale = normed ? 1f / XMath.Sqrt(partial[(16 + k) * M] / args.Columns + args.Eps) : 1f;
                        float gate = partial[(2 * pair * SkinnyTokens + k) * M] * scale;
                        float up = partial[((2 * pair + 1) * SkinnyTokens + k) * M] * scale;
                        output[(long)token * (args.Rows / 2) + row / 2] = gate / (1f + XMath.Exp(-gate)) * up;
                    }
                }
            }
            else if (tid < RowsPerGroup * SkinnyTokens)
            {
                int row = row0 + tid / SkinnyTokens;
                int token = t0 + tid % SkinnyTokens;
                if (row < args.Rows && token < args.Tokens)
                {
                    float v = partial[tid * M];
                    if (normed) v *= 1f / XMath.Sqrt(partial[(16 + tid % SkinnyTokens) * M] / args.Columns + args.Eps);
                    long o = (long)token * args.Rows + row;
                    output[o] = args.Accumulate != 0 ? output[o] + v : v;
                }
            }
            Group.Barrier(); // the next pass overwrites partial
        }
    }

    private static void Store(ArrayView<float> partial, int first, int tid, Vec4 v)
    {
        const int M = KernelLimits.MaxGroupSize;
        partial[first * M + tid] = v.X;
        partial[(first + 1) * M + tid] = v.Y;
        partial[(first + 2) * M + tid] = v.Z;
        partial[(first + 3) * M + tid] = v.W;
    }
}
