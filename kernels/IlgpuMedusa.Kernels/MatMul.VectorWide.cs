using ILGPU;
using ILGPU.Algorithms;

namespace IlgpuMedusa.Kernels;

/// <summary>Four floats (16 bytes): one vector load of the wide GEMV's input and norm rows.</summary>
public struct Quad
{
    /// <summary>The elements in memory order.</summary>
    public float X, Y, Z, W;
}

public static partial class MatMulKernels
{
    /// <summary>Weight rows one warp of <see cref="VectorWide{TFormat, TMode}"/> computes.</summary>
    public const int WideRowsPerWarp = 2;

    /// <summary>
    /// <see cref="VectorWide{TFormat, TMode}"/> with one weight row per warp (<see cref="PlainInput"/> and
    /// <see cref="NormedInput"/> only): lane l reads packs l, l + 32, l + 64, l + 96 of the row per iteration (four
    /// 16-byte loads in flight per lane, as the two-row kernel), so a matrix gets twice the warps, each with half the
    /// iterations. For matrices of few rows (4096-row projections of a 7B model give the two-row kernel 2,048 warps,
    /// under half of what an H100's or H200's 132 multiprocessors keep resident) the device holds twice the bytes in
    /// flight. Grid: (⌈N / warps⌉, T) groups of 32 · warps threads.
    /// </summary>
    /// <param name="output">F32[T, N].</param>
    /// <param name="input">F32[T, K] as quads.</param>
    /// <param name="weight">16-bit [N, stride] as packs of eight.</param>
    /// <param name="norm">F32[K] RMSNorm weights as quads (<see cref="NormedInput"/>; any view otherwise, not read).</param>
    /// <param name="args">Shapes; WeightStride in packs of eight; ε.</param>
    public static void VectorWideRow<TFormat, TMode>(ArrayView<float> output, ArrayView<Quad> input, ArrayView<Pack8> weight, ArrayView<Quad> norm, MatMulArgs args)
        where TFormat : struct, IPackFormat<uint>
        where TMode : struct, IMatMulMode
    {
        bool normed = default(TMode).Normalizes;
        int lane = Group.IdxX & 31;
        int row = Grid.IdxX * (Group.DimX >> 5) + (Group.IdxX >> 5);
        int token = Grid.IdxY;
        if (row >= args.Rows) return; // the whole warp: no barrier below
        long w0 = (long)row * args.WeightStride;
        long x0 = (long)token * (args.Columns / 4);
        int packs = args.Columns / 8;
        float a0 = 0f, a1 = 0f, a2 = 0f, a3 = 0f, squares = 0f;
        int p = lane;
        for (; p + 96 < packs; p += 128)
        {
            Pack8 r0 = weight[w0 + p], r1 = weight[w0 + p + 32], r2 = weight[w0 + p + 64], r3 = weight[w0 + p + 96];
            InputPack(input, norm, x0, p, normed, ref squares, out var x, out var y);
            InputPack(input, norm, x0, p + 32, normed, ref squares, out var u, out var v);
            InputPack(input, norm, x0, p + 64, normed, ref squares, out var e, out var f);
            InputPack(input, norm, x0, p + 96, normed, ref squares, out var g, out var h);
            a0 += Dot8<TFormat>(r0, x, y);
            a1 += Dot8<TFormat>(r1, u, v);
            a2 += Dot8<TFormat>(r2, e, f);
            a3 += Dot8<TFormat>(r3, g, h);
        }
        for (; p < packs; p += 32)
        {
            InputPack(input, norm, x0, p, normed, ref squares, out var x, out var y);
            a0 += Dot8<TFormat>(weight[w0 + p], x, y);
        }
        float sum = (a0 + a1) + (a2 + a3);
        for (int offset = 16; offset > 0; offset >>= 1)
        {
            sum += Warp.ShuffleXor(sum, offset);
            if (normed) squares += Warp.ShuffleXor(squares, offset);
        }
        if (lane != 0) return;
        if (normed) sum *= 1f / XMath.Sqrt(squares / args.Columns + args.Eps);
        long o = (long)token * args.Rows + row;
        output[o] = args.Accumulate != 0 ? output[o] + sum : sum;
    }

    /// <summary>
    /// GEMV for 16-bit weights with 16-byte loads: each warp computes two weight rows (a (gate, up) pair with
    /// <see cref="NormedSwiGlu"/>) for token Grid.Y; lane l reads packs of eight weights l, l + 32, ... of both rows, two
    /// packs per row per iteration (four 16-byte loads in flight per lane), with the matching eight inputs as two float
    /// quads (all warps read the same input row: cache hits after the first), and the warp adds its lanes' sums by
    /// shuffles: no shared memory, no barrier, and a group's warps never wait for each other. With
    /// <see cref="NormedInput"/> every warp also sums the squares of the input row it reads anyway (RMSNorm fused at no
    /// extra memory traffic). Needs K a multiple of 8, the weight row stride a multiple of 8 elements, the views 16-byte
    /// aligned, T rows of input (not grouped): <see cref="MatMulLauncher"/> checks, and uses
    /// <see cref="Vector{TPack, TFormat, TMode}"/> otherwise. Warp operations: CUDA (and the CPU emulator, for tests).
    /// Grid: (⌈N / (2 · warps)⌉, T) groups of 32 · warps threads.
    /// </summary>
    /// <param name="output">F32[T, N] (F32[T, N/2] for <see cref="NormedSwiGlu"/>).</param>
    /// <param name="input">F32[T, K] as quads.</param>
    /// <param name="weight">16-bit [N, stride] as packs of eight.</param>
    /// <param name="norm">F32[K] RMSNorm weights as quads (<see cref="NormedInput"/>; any view otherwise, not read).</param>
    /// <param name="args">Shapes; WeightStride in packs of eight; ε.</param>
    public static void VectorWide<TFormat, TMode>(ArrayView<float> output, ArrayView<Quad> input, ArrayView<Pack8> weight, ArrayView<Quad> norm, MatMulArgs args)
        where TFormat : struct, IPackFormat<uint>
        where TMode : struct, IMatMulMode
    {
        bool normed = default(TMode).Normalizes;
        int lane = Group.IdxX & 31;
        int warps = Group.DimX >> 5;
        int row0 = (Grid.IdxX * warps + (Group.IdxX >> 5)) * WideRowsPerWarp;
        int token = Grid.IdxY;
        if (row0 >= args.Rows) return; // the whole warp: no barrier below
        int last = args.Rows - 1;
        long wa = (long)row0 * args.WeightStride;
        long wb = (long)IntMin(row0 + 1, last) * args.WeightStride;
        long x0 = (long)token * (args.Columns / 4);
        int packs = args.Columns / 8;
        float a0 = 0f, a1 = 0f, b0 = 0f, b1 = 0f, squares = 0f;
        int p = lane;
        for (; p + 32 < packs; p += 64)
        {
            int q = p + 32;
            Pack8 ra = weight[wa + p], rb = weight[wb + p], sa = weight[wa + q], sb = weight[wb + q];
            Quad x = input[x0 + 2 * p], y = input[x0 + 2 * p + 1], u = input[x0 + 2 * q], v = input[x0 + 2 * q + 1];
            if (normed)
            {
                squares += SumOfSquares(x) + SumOfSquares(y) + SumOfSquares(u) + SumOfSquares(v);
                x = Scale(x, norm[2 * p]);
                y = Scale(y, norm[2 * p + 1]);
                u = Scale(u, norm[2 * q]);
                v = Scale(v, norm[2 * q + 1]);
            }
            a0 += Dot8<TFormat>(ra, x, y);
            b0 += Dot8<TFormat>(rb, x, y);
            a1 += Dot8<TFormat>(sa, u, v);
            b1 += Dot8<TFormat>(sb, u, v);
        }
        if (p < packs)
        {
            Pack8 ra = weight[wa + p], rb = weight[wb + p];
            InputPack(input, norm, x0, p, normed, ref squares, out var x, out var y);
            a0 += Dot8<TFormat>(ra, x, y);
            b0 += Dot8<TFormat>(rb, x, y);
        }
        float sumA = a0 + a1, sumB = b0 + b1;
        for (int offset = 16; offset > 0; offset >>= 1)
        {
            sumA += Warp.ShuffleXor(sumA, offset);
            sumB += Warp.ShuffleXor(sumB, offset);
            if (normed) squares += Warp.ShuffleXor(squares, offset);
        }
        if (lane != 0) return;
        float scale = normed ? 1f / XMath.Sqrt(squares / args.Columns + args.Eps) : 1f;
        sumA *= scale;
        sumB *= scale;
        if (default(TMode).SwiGluPairs)
        {
            if (row0 + 1 < args.Rows)
                output[(long)token * (args.Rows / 2) + row0 / 2] = sumA / (1f + XMath.Exp(-sumA)) * sumB;
            return;
        }
        long o = (long)token * args.Rows + row0;
        output[o] = args.Accumulate != 0 ? output[o] + sumA : sumA;
        if (row0 + 1 < args.Rows) output[o + 1] = args.Accumulate != 0 ? output[o + 1] + sumB : sumB;
    }

    private static float Dot8<TFormat>(Pack8 w, Quad x, Quad y)
        where TFormat : struct, IPackFormat<uint>
    {
        var f = default(TFormat);
        return f.First(w.P0) * x.X + f.Second(w.P0) * x.Y + f.First(w.P1) * x.Z + f.Second(w.P1) * x.W
            + f.First(w.P2) * y.X + f.Second(w.P2) * y.Y + f.First(w.P3) * y.Z + f.Second(w.P3) * y.W;
    }

    /// <summary>
    /// The two input quads of pack p (columns 8p .. 8p + 7) of the row starting at quad x0; when normed, their squares are
    /// added to <paramref name="squares"/> and they come back scaled by the norm weights (the 1/rms factor is applied to
    /// the finished sum).
    /// </summary>
    private static void InputPack(ArrayView<Quad> input, ArrayView<Quad> norm, long x0, int p, bool normed, ref float squares, out Quad x, out Quad y)
    {
        x = input[x0 + 2 * p];
        y = input[x0 + 2 * p + 1];
        if (!normed) return;
        squares += SumOfSquares(x) + SumOfSquares(y);
        x = Scale(x, norm[2 * p]);
        y = Scale(y, norm[2 * p + 1]);
    }

    private static float SumOfSquares(Quad x) => x.X * x.X + x.Y * x.Y + x.Z * x.Z + x.W * x.W;

    private static Quad Scale(Quad x, Quad w) => new() { X = x.X * w.X, Y = x.Y * w.Y, Z = x.Z * w.Z, W = x.W * w.W };
}
