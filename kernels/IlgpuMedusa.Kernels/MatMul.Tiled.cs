using ILGPU;

namespace IlgpuMedusa.Kernels;

public static partial class MatMulKernels
{
    /// <summary>Most k values per shared-memory step of the tiled kernel (the step is √G: 16, 8 or 4).</summary>
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
    /// E = 4·S with S = √G. Each step stages E tokens × S values of k of the input and E rows × S of the weights (decoded
    /// to float) in shared memory, four values per thread, while the next step's values are already being loaded into
    /// registers (so global latency overlaps the arithmetic); thread (tx, ty) accumulates a 4 × 4 micro-tile: tokens
    /// ty + i·S, rows tx + j·S (strided so that a warp's shared reads and global writes are contiguous). Edges are
    /// zero-filled. Grid: (⌈N/E⌉, ⌈T/E⌉) groups of G ∈ {16, 64, 256} threads.
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
        int side = groupSize == 256 ? 16 : groupSize == 64 ? 8 : 4; // also the k depth of one step
        int edge = 4 * side;
        int tx = tid % side;
        int ty = tid / side;
        int row0 = Grid.IdxX * edge;
        int token0 = Grid.IdxY * edge;
        var c0 = new Vec4(0f, 0f, 0f, 0f); // token ty, rows tx + j·S
        var c1 = c0;                        // token ty + S
        var c2 = c0;                        // token ty + 2S
        var c3 = c0;                        // token ty + 3S
        // Staging: this thread loads k = k0 + tx of tokens / rows ty + i·S (i < 4).
        var nextX = StageInput(input, args, token0 + ty, side, tx);
        var nextW = StageWeight<TElement, TFormat>(weight, args, row0 + ty, side, tx);
        for (int k0 = 0; k0 < args.Columns; k0 += side)
        {
            int slot = tx * MaxTile + ty;
            xs[slot] = nextX.X;
            xs[slot + side] = nextX.Y;
            xs[slot + 2 * side] = nextX.Z;
            xs[slot + 3 * side] = nextX.W;
            ws[slot] = nextW.X;
            ws[slot + side] = nextW.Y;
            ws[slot + 2 * side] = nextW.Z;
            ws[slot + 3 * side] = nextW.W;
            Group.Barrier();
            if (k0 + side < args.Columns)
            {
                nextX = StageInput(input, args, token0 + ty, side, k0 + side + tx);
                nextW = StageWeight<TElement, TFormat>(weight, args, row0 + ty, side, k0 + side + tx);
            }
            for (int kk = 0; kk < side; kk++)
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

    /// <summary>input[token + i·S, k] for i &lt; 4, zero outside [T, K].</summary>
    private static Vec4 StageInput(ArrayView<float> input, MatMulArgs args, int token, int side, int k)
    {
        bool inK = k < args.Columns;
        return new Vec4(
            inK && token < args.Tokens ? input[(long)token * args.Columns + k] : 0f,
            inK && token + side < args.Tokens ? input[(long)(token + side) * args.Columns + k] : 0f,
            inK && token + 2 * side < args.Tokens ? input[(long)(token + 2 * side) * args.Columns + k] : 0f,
            inK && token + 3 * side < args.Tokens ? input[(long)(token + 3 * side) * args.Columns + k] : 0f);
    }

    /// <summary>weight[row + i·S, k] decoded, for i &lt; 4, zero outside [N, K].</summary>
    private static Vec4 StageWeight<TElement, TFormat>(ArrayView<TElement> weight, MatMulArgs args, int row, int side, int k)
        where TElement : unmanaged
        where TFormat : struct, IElementFormat<TElement>
    {
        var f = default(TFormat);
        bool inK = k < args.Columns;
        return new Vec4(
            inK && row < args.Rows ? f.Decode(weight[(long)row * args.WeightStride + k]) : 0f,
            inK && row + side < args.Rows ? f.Decode(weight[(long)(row + side) * args.WeightStride + k]) : 0f,
            inK && row + 2 * side < args.Rows ? f.Decode(weight[(long)(row + 2 * side) * args.WeightStride + k]) : 0f,
            inK && row + 3 * side < args.Rows ? f.Decode(weight[(long)(row + 3 * side) * args.WeightStride + k]) : 0f);
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
