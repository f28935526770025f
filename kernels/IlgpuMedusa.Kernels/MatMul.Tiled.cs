using ILGPU;

namespace IlgpuMedusa.Kernels;

public static partial class MatMulKernels
{
    /// <summary>K elements per shared-memory tile step of the tiled kernel.</summary>
    public const int TileDepth = 16;

    /// <summary>Largest tile edge (tokens or rows) of the tiled kernel: 4 · √256.</summary>
    public const int MaxTile = 64;

    /// <summary>Tile edge for a group of <paramref name="groupSize"/> threads (16, 64 or 256): 4 · √G.</summary>
    public static int TileFor(int groupSize) => groupSize switch
    {
        256 => 64,
        64 => 32,
        16 => 16,
        _ => throw new ArgumentException($"the tiled matmul needs 16, 64 or 256 threads per group, got {groupSize}", nameof(groupSize)),
    };

    /// <summary>
    /// Tiled matmul for larger T: group (x, y) computes the output tile tokens [y·E, y·E + E) × rows [x·E, x·E + E),
    /// E = 4·S with S = √G. Each step stages E tokens × 16 k of the input and E rows × 16 k of the weights (decoded to
    /// float) in shared memory; thread (tx, ty) then accumulates a 4 × 4 micro-tile: tokens ty + i·S, rows tx + j·S
    /// (strided so that a warp's shared reads and global writes are contiguous). Edges are zero-filled.
    /// Grid: (⌈N/E⌉, ⌈T/E⌉) groups of G ∈ {16, 64, 256} threads.
    /// </summary>
    /// <param name="output">F32[T, N].</param>
    /// <param name="input">F32[T, K].</param>
    /// <param name="weight">[N, stride] elements.</param>
    /// <param name="args">Shapes; WeightStride in elements.</param>
    public static void Tiled<TElement, TFormat>(ArrayView<float> output, ArrayView<float> input, ArrayView<TElement> weight, MatMulArgs args)
        where TElement : unmanaged
        where TFormat : struct, IElementFormat<TElement>
    {
        var xs = SharedMemory.Allocate<float>(TileDepth * MaxTile); // xs[kk · 64 + token]
        var ws = SharedMemory.Allocate<float>(TileDepth * MaxTile); // ws[kk · 64 + row]
        int tid = Group.IdxX;
        int groupSize = Group.DimX;
        int side = groupSize == 256 ? 16 : groupSize == 64 ? 8 : 4;
        int edge = 4 * side;
        int tx = tid % side;
        int ty = tid / side;
        int row0 = Grid.IdxX * edge;
        int token0 = Grid.IdxY * edge;
        var f = default(TFormat);
        var c0 = new Vec4(0f, 0f, 0f, 0f); // token ty, rows tx + j·S
        var c1 = c0;                        // token ty + S
        var c2 = c0;                        // token ty + 2S
        var c3 = c0;                        // token ty + 3S
        int stageSize = edge * TileDepth;
        for (int k0 = 0; k0 < args.Columns; k0 += TileDepth)
        {
            for (int e = tid; e < stageSize; e += groupSize)
            {
                int kk = e % TileDepth;
                int local = e / TileDepth;
                int k = k0 + kk;
                int token = token0 + local;
                int row = row0 + local;
                xs[kk * MaxTile + local] = token < args.Tokens && k < args.Columns ? input[(long)token * args.Columns + k] : 0f;
                ws[kk * MaxTile + local] = row < args.Rows && k < args.Columns ? f.Decode(weight[(long)row * args.WeightStride + k]) : 0f;
            }
            Group.Barrier();
            for (int kk = 0; kk < TileDepth; kk++)
            {
                int xBase = kk * MaxTile + ty;
                int wBase = kk * MaxTile + tx;
                var w = new Vec4(ws[wBase], ws[wBase + side], ws[wBase + 2 * side], ws[wBase + 3 * side]);
                c0 = c0.MulAdd(w, xs[xBase]);
                c1 = c1.MulAdd(w, xs[xBase + side]);
                c2 = c2.MulAdd(w, xs[xBase + 2 * side]);
                c3 = c3.MulAdd(w, xs[xBase + 3 * side]);
            }
            Group.Barrier();
        }
        WriteRow(output, args, token0 + ty, row0 + tx, side, c0);
        WriteRow(output, args, token0 + ty + side, row0 + tx, side, c1);
        WriteRow(output, args, token0 + ty + 2 * side, row0 + tx, side, c2);
        WriteRow(output, args, token0 + ty + 3 * side, row0 + tx, side, c3);
    }

    private static void WriteRow(ArrayView<float> output, MatMulArgs args, int token, int row, int side, Vec4 values)
    {
        if (token >= args.Tokens) return;
        long o = (long)token * args.Rows;
        for (int j = 0; j < 4; j++)
        {
            int r = row + j * side;
            if (r < args.Rows)
            {
                float v = values.Get(j);
                output[o + r] = args.Accumulate != 0 ? output[o + r] + v : v;
            }
        }
    }
}
