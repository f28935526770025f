using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime.Cuda;

namespace IlgpuMedusa.Kernels;

/// <summary>Eight 16-bit weights (16 bytes): one vector load of the tensor-core kernel.</summary>
public struct Pack8
{
    /// <summary>Elements 0 and 1 (element 0 in the low half), 2 and 3, 4 and 5, 6 and 7.</summary>
    public uint P0, P1, P2, P3;
}

/// <summary>How many 8-token column tiles one group of the tensor-core kernel computes (a compile-time choice).</summary>
public interface ITokenTiles
{
    /// <summary>1, 2, 4 or 8.</summary>
    int Count { get; }
}

/// <summary>8 tokens per group.</summary>
public readonly struct OneTokenTile : ITokenTiles
{
    /// <inheritdoc />
    public int Count => 1;
}

/// <summary>16 tokens per group.</summary>
public readonly struct TwoTokenTiles : ITokenTiles
{
    /// <inheritdoc />
    public int Count => 2;
}

/// <summary>32 tokens per group.</summary>
public readonly struct FourTokenTiles : ITokenTiles
{
    /// <inheritdoc />
    public int Count => 4;
}

/// <summary>64 tokens per group.</summary>
public readonly struct EightTokenTiles : ITokenTiles
{
    /// <inheritdoc />
    public int Count => 8;
}

/// <summary>How the tensor-core kernel feeds float32 inputs to fp16 tensor cores (a compile-time choice).</summary>
public interface ITensorInput
{
    /// <summary>
    /// True: each input x goes in as two fp16 halves, hi = fp16(x) and lo = fp16(x − hi), two products per tile (about 22
    /// bits of the input kept, as close to the float32 kernels as a different summation order). False: x rounded to fp16
    /// once (11 bits), half the tensor work.
    /// </summary>
    bool Split { get; }
}

/// <summary>Inputs as hi + lo fp16 pairs (the default).</summary>
public readonly struct SplitInput : ITensorInput
{
    /// <inheritdoc />
    public bool Split => true;
}

/// <summary>Inputs rounded to fp16 once.</summary>
public readonly struct RoundedInput : ITensorInput
{
    /// <inheritdoc />
    public bool Split => false;
}

/// <summary>The four float32 accumulators one lane holds of a 16×8 tile (mma fragment C/D).</summary>
internal readonly struct Fragment
{
    public Fragment(float c0, float c1, float c2, float c3)
    {
        C0 = c0;
        C1 = c1;
        C2 = c2;
        C3 = c3;
    }

    public readonly float C0, C1, C2, C3;
}

/// <summary>One lane's accumulators for the kernel's two 16-row tiles against one 8-token tile.</summary>
internal readonly struct FragmentPair
{
    public FragmentPair(Fragment upper, Fragment lower)
    {
        Upper = upper;
        Lower = lower;
    }

    /// <summary>Rows 0-15 of the group's 32.</summary>
    public readonly Fragment Upper;
    /// <summary>Rows 16-31.</summary>
    public readonly Fragment Lower;
}

public static partial class MatMulKernels
{
    /// <summary>Weight rows one group of the tensor-core kernel computes (two 16-row tiles).</summary>
    public const int TensorRows = 32;

    /// <summary>Columns (K) one warp takes per step: two k16 products; K must be a multiple.</summary>
    public const int TensorChunk = 32;

    /// <summary>Warps per group of the tensor-core kernel; they share the group's rows and split K between them.</summary>
    public const int TensorWarps = 4;

    /// <summary>Threads per group of the tensor-core kernel.</summary>
    public const int TensorGroupSize = TensorWarps * 32;

    /// <summary>Tokens per 8-token column tile.</summary>
    public const int TensorTileTokens = 8;

    /// <summary>Accumulators one lane holds at most: 2 row tiles × 8 token tiles × 4.</summary>
    private const int TensorLaneSums = 2 * 8 * 4;

    /// <summary>
    /// Prepares the input of <see cref="TensorCore{TTiles, TInput}"/>: x[T, K] float32 to fp16 pairs, hi = fp16(x) (round to
    /// nearest even, <see cref="HalfBits.FromSingle"/>) and, with <see cref="SplitInput"/>, lo = fp16(x − hi). Element pair i (elements 2i, 2i + 1) becomes
    /// one word of each plane, element 2i in the low half. One thread per pair.
    /// </summary>
    /// <param name="pair">Pair index in [0, T·K/2).</param>
    /// <param name="input">F32[T, K] (K even).</param>
    /// <param name="hi">fp16 pairs [T·K/2].</param>
    /// <param name="lo">fp16 pairs [T·K/2] (<see cref="SplitInput"/>; any view otherwise, not written).</param>
    public static void TensorInput<TInput>(Index1D pair, ArrayView<float> input, ArrayView<uint> hi, ArrayView<uint> lo)
        where TInput : struct, ITensorInput
    {
        WriteHalfPair<TInput>(hi, lo, pair, input[2L * pair], input[2L * pair + 1]);
    }

    /// <summary>x, y as one fp16 pair in hi[at] (x in the low half) and, with split inputs, their residuals in lo[at].</summary>
    private static void WriteHalfPair<TInput>(ArrayView<uint> hi, ArrayView<uint> lo, long at, float x, float y)
        where TInput : struct, ITensorInput
    {
        uint hx = HalfBits.FromSingle(x);
        uint hy = HalfBits.FromSingle(y);
        hi[at] = hx | (hy << 16);
        if (default(TInput).Split)
            lo[at] = HalfBits.FromSingle(x - HalfBits.ToSingle(hx)) | (HalfBits.FromSingle(y - HalfBits.ToSingle(hy)) << 16);
    }

    /// <summary>
    /// <see cref="TensorInput{TInput}"/> of RMSNorm(x) = x / √(mean(x²) + ε) ⊙ w: the norm fused into the tensor-core
    /// matmul's input preparation (no normalised copy written and read back). One group per token row: a shared-memory
    /// reduction of Σx², then the row's pairs as in <see cref="TensorInput{TInput}"/>. G a power of two.
    /// </summary>
    /// <param name="input">F32[T, K] (K even).</param>
    /// <param name="norm">F32[K] RMSNorm weights.</param>
    /// <param name="hi">fp16 pairs [T·K/2].</param>
    /// <param name="lo">fp16 pairs [T·K/2] (<see cref="SplitInput"/>; any view otherwise, not written).</param>
    /// <param name="columns">K.</param>
    /// <param name="eps">ε.</param>
    public static void TensorInputNormed<TInput>(ArrayView<float> input, ArrayView<float> norm, ArrayView<uint> hi, ArrayView<uint> lo, int columns, float eps)
        where TInput : struct, ITensorInput
    {
        var partial = SharedMemory.Allocate<float>(KernelLimits.MaxGroupSize);
        int tid = Group.IdxX;
        int groupSize = Group.DimX;
        long x0 = (long)Grid.IdxX * columns;
        float squares = 0f;
        for (int i = tid; i < columns; i += groupSize)
        {
            float v = input[x0 + i];
            squares += v * v;
        }
        partial[tid] = squares;
        Group.Barrier();
        for (int stride = groupSize / 2; stride > 0; stride >>= 1)
        {
            if (tid < stride) partial[tid] += partial[tid + stride];
            Group.Barrier();
        }
        float scale = 1f / XMath.Sqrt(partial[0] / columns + eps);
        int pairs = columns / 2;
        long p0 = (long)Grid.IdxX * pairs;
        for (int p = tid; p < pairs; p += groupSize)
        {
            WriteHalfPair<TInput>(hi, lo, p0 + p, input[x0 + 2 * p] * scale * norm[2 * p], input[x0 + 2 * p + 1] * scale * norm[2 * p + 1]);
        }
    }

    /// <summary>
    /// Small-T and prefill matmul on fp16 tensor cores: output[T, N] = (accumulate ? output : 0) + x[T, K] · W[N, K]ᵀ with
    /// W in binary16, x given as fp16 planes by <see cref="TensorInput{TInput}"/> (hi, and lo with <see cref="SplitInput"/>:
    /// x ≈ hi + lo to about 22 bits), float32 accumulation and output. Group (x, y) computes token tile x (8 · Count
    /// tokens) against weight rows 32y .. 32y + 31 with its warps; warp w takes the 32-column chunks w, w + W, ... of K
    /// (the next chunk's weights requested before this chunk's products, and all of a chunk's inputs before its first
    /// product), and the warps' sums meet in shared memory at
    /// the end, added in a fixed order (deterministic). Per chunk, lane (g = lane / 4, q = lane % 4) loads eight
    /// consecutive weights at column 8q of rows g and g + 8 of each 16-row tile and eight consecutive inputs at column 8q
    /// of token g of each token tile (one 16-byte load each), and the chunk becomes two m16n8k16 products per pair of
    /// tiles: the products' k order is a permutation of the chunk's columns, the same for both operands, so the sums are
    /// the plain dot products. On CUDA each product is one `mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32` (inline
    /// PTX; sm_80 and later); elsewhere (the CPU emulator, for tests) the same fragments are multiplied through warp
    /// shuffles with the same lane layout. Needs K a multiple of 32 and the weight row stride a multiple of 8 elements,
    /// the weight view 16-byte aligned (<see cref="MatMulLauncher.CanUseTensorCores"/>).
    /// Grid: (⌈T / (8 · Count)⌉, ⌈N / 32⌉, Z) groups of 32 to 128 threads (1 to 4 warps); with Z &gt; 1 (split-K,
    /// <see cref="MatMulArgs.ChunksPerSplit"/> chunks each) group z writes its partial sums to slice z of output, and
    /// <see cref="TensorReduce"/> adds the slices up.
    /// </summary>
    /// <param name="output">F32[T, N], or F32[Z, T, N] with split-K.</param>
    /// <param name="inputHi">fp16 hi plane [T, K] as packs of eight (K/8 per row).</param>
    /// <param name="inputLo">fp16 lo plane [T, K] (<see cref="SplitInput"/>; any view otherwise, not read).</param>
    /// <param name="weight">F16[N, stride] as packs of eight (stride/8 per row).</param>
    /// <param name="args">Shapes; WeightStride in packs of eight.</param>
    public static void TensorCore<TTiles, TInput>(ArrayView<float> output, ArrayView<Pack8> inputHi, ArrayView<Pack8> inputLo, ArrayView<Pack8> weight, MatMulArgs args)
        where TTiles : struct, ITokenTiles
        where TInput : struct, ITensorInput
    {
        var sums = SharedMemory.Allocate<float>(TensorWarps * TensorLaneSums * 32);
        int tiles = default(TTiles).Count;
        int lane = Group.IdxX & 31;
        int warp = Group.IdxX >> 5;
        int warps = Group.DimX >> 5;
        int g = lane >> 2;
        int q = lane & 3;
        int token0 = Grid.IdxX * TensorTileTokens * tiles;
        int row0 = Grid.IdxY * TensorRows;
        int lastRow = args.Rows - 1;
        int lastToken = args.Tokens - 1;

        // Rows and tokens past the end re-read the last one (no branch in the loop) and are not written.
        long stride = args.WeightStride;
        long wa = IntMin(row0 + g, lastRow) * stride + q;
        long wb = IntMin(row0 + g + 8, lastRow) * stride + q;
        long wc = IntMin(row0 + g + 16, lastRow) * stride + q;
        long wd = IntMin(row0 + g + 24, lastRow) * stride + q;
        long packsPerRow = args.Columns / 8;
        long x0 = IntMin(token0 + g, lastToken) * packsPerRow + q;
        long x1 = IntMin(token0 + 8 + g, lastToken) * packsPerRow + q;
        long x2 = IntMin(token0 + 16 + g, lastToken) * packsPerRow + q;
        long x3 = IntMin(token0 + 24 + g, lastToken) * packsPerRow + q;
        long x4 = IntMin(token0 + 32 + g, lastToken) * packsPerRow + q;
        long x5 = IntMin(token0 + 40 + g, lastToken) * packsPerRow + q;
        long x6 = IntMin(token0 + 48 + g, lastToken) * packsPerRow + q;
        long x7 = IntMin(token0 + 56 + g, lastToken) * packsPerRow + q;

        var zero = new FragmentPair(new Fragment(0f, 0f, 0f, 0f), new Fragment(0f, 0f, 0f, 0f));
        FragmentPair s0 = zero, s1 = zero, s2 = zero, s3 = zero, s4 = zero, s5 = zero, s6 = zero, s7 = zero;
        // This group's share of K (grid z: split-K, so that few row groups still fill the device): chunks [begin, end).
        int chunks = args.Columns / TensorChunk;
        int perSplit = args.ChunksPerSplit > 0 ? args.ChunksPerSplit : chunks;
        int begin = Grid.IdxZ * perSplit;
        int end = begin + perSplit < chunks ? begin + perSplit : chunks;
        int c = begin + warp;
        int first = c < end ? c : begin;
        // A chunk is 4 packs of eight of each row.
        Pack8 na = weight[wa + 4L * first], nb = weight[wb + 4L * first], nc = weight[wc + 4L * first], nd = weight[wd + 4L * first];
        bool split = default(TInput).Split;
        for (; c < end; c += warps)
        {
            Pack8 a = na, b = nb, cc = nc, d = nd;
            int next = c + warps < end ? c + warps : c;
            na = weight[wa + 4L * next];
            nb = weight[wb + 4L * next];
            nc = weight[wc + 4L * next];
            nd = weight[wd + 4L * next];
            // Every input load of the chunk is issued before the first product, so their latencies overlap.
            long xo = 4L * c;
            Pack8 h0 = inputHi[x0 + xo], l0 = split ? inputLo[x0 + xo] : h0;
            Pack8 h1 = h0, l1 = l0, h2 = h0, l2 = l0, h3 = h0, l3 = l0, h4 = h0, l4 = l0, h5 = h0, l5 = l0, h6 = h0, l6 = l0, h7 = h0, l7 = l0;
            if (tiles > 1)
            {
                h1 = inputHi[x1 + xo];
                if (split) l1 = inputLo[x1 + xo];
            }
            if (tiles > 2)
            {
                h2 = inputHi[x2 + xo];
                h3 = inputHi[x3 + xo];
                if (split)
                {
                    l2 = inputLo[x2 + xo];
                    l3 = inputLo[x3 + xo];
                }
            }
            if (tiles > 4)
            {
                h4 = inputHi[x4 + xo];
                h5 = inputHi[x5 + xo];
                h6 = inputHi[x6 + xo];
                h7 = inputHi[x7 + xo];
                if (split)
                {
                    l4 = inputLo[x4 + xo];
                    l5 = inputLo[x5 + xo];
                    l6 = inputLo[x6 + xo];
                    l7 = inputLo[x7 + xo];
                }
            }
            s0 = TensorTile<TInput>(s0, a, b, cc, d, h0, l0);
            if (tiles > 1) s1 = TensorTile<TInput>(s1, a, b, cc, d, h1, l1);
            if (tiles > 2)
            {
                s2 = TensorTile<TInput>(s2, a, b, cc, d, h2, l2);
                s3 = TensorTile<TInput>(s3, a, b, cc, d, h3, l3);
            }
            if (tiles > 4)
            {
                s4 = TensorTile<TInput>(s4, a, b, cc, d, h4, l4);
                s5 = TensorTile<TInput>(s5, a, b, cc, d, h5, l5);
                s6 = TensorTile<TInput>(s6, a, b, cc, d, h6, l6);
                s7 = TensorTile<TInput>(s7, a, b, cc, d, h7, l7);
            }
        }

        // sums[((warp · 8 + tile) · 8 + e) · 32 + lane], e = 4 · (lower row tile) + accumulator.
        int own = warp * TensorLaneSums * 32 + lane;
        StoreTile(sums, own, 0, s0);
        if (tiles > 1) StoreTile(sums, own, 1, s1);
        if (tiles > 2)
        {
            StoreTile(sums, own, 2, s2);
            StoreTile(sums, own, 3, s3);
        }
        if (tiles > 4)
        {
            StoreTile(sums, own, 4, s4);
            StoreTile(sums, own, 5, s5);
            StoreTile(sums, own, 6, s6);
            StoreTile(sums, own, 7, s7);
        }
        Group.Barrier();
        int values = tiles * 8 * 32;
        for (int i = Group.IdxX; i < values; i += Group.DimX)
        {
            float v = 0f;
            for (int w = 0; w < warps; w++) v += sums[w * TensorLaneSums * 32 + i];
            int l = i & 31;
            int e = (i >> 5) & 7;
            int tile = i >> 8;
            int row = row0 + 16 * (e >> 2) + (l >> 2) + ((e & 2) != 0 ? 8 : 0);
            int token = token0 + TensorTileTokens * tile + 2 * (l & 3) + (e & 1);
            if (row < args.Rows && token < args.Tokens)
            {
                // With split-K, split z writes its partial sums to slice z of output (TensorReduce adds them up).
                long o = (long)Grid.IdxZ * args.Tokens * args.Rows + (long)token * args.Rows + row;
                output[o] = args.Accumulate != 0 ? output[o] + v : v;
            }
        }
    }

    private static void StoreTile(ArrayView<float> sums, int own, int tile, FragmentPair s)
    {
        int at = own + tile * 8 * 32;
        sums[at] = s.Upper.C0;
        sums[at + 32] = s.Upper.C1;
        sums[at + 64] = s.Upper.C2;
        sums[at + 96] = s.Upper.C3;
        sums[at + 128] = s.Lower.C0;
        sums[at + 160] = s.Lower.C1;
        sums[at + 192] = s.Lower.C2;
        sums[at + 224] = s.Lower.C3;
    }

    /// <summary>
    /// One chunk of 32 columns for one 8-token tile: the lane's eight inputs (token g, columns 8q .. 8q + 7 of the chunk)
    /// times the two row tiles' fragments (a, b: rows g and g + 8 of the upper tile; c, d: of the lower tile). Product 0
    /// takes each lane's columns 8q .. 8q + 3, product 1 the columns 8q + 4 .. 8q + 7, in the places where m16n8k16
    /// expects columns 2q, 2q + 1, 2q + 8, 2q + 9.
    /// </summary>
    private static FragmentPair TensorTile<TInput>(FragmentPair s, Pack8 a, Pack8 b, Pack8 c, Pack8 d, Pack8 h, Pack8 l)
        where TInput : struct, ITensorInput
    {
        var upper = s.Upper;
        var lower = s.Lower;
        upper = Mma(upper, a.P0, b.P0, a.P1, b.P1, h.P0, h.P1);
        lower = Mma(lower, c.P0, d.P0, c.P1, d.P1, h.P0, h.P1);
        upper = Mma(upper, a.P2, b.P2, a.P3, b.P3, h.P2, h.P3);
        lower = Mma(lower, c.P2, d.P2, c.P3, d.P3, h.P2, h.P3);
        if (default(TInput).Split)
        {
            upper = Mma(upper, a.P0, b.P0, a.P1, b.P1, l.P0, l.P1);
            lower = Mma(lower, c.P0, d.P0, c.P1, d.P1, l.P0, l.P1);
            upper = Mma(upper, a.P2, b.P2, a.P3, b.P3, l.P2, l.P3);
            lower = Mma(lower, c.P2, d.P2, c.P3, d.P3, l.P2, l.P3);
        }
        return new FragmentPair(upper, lower);
    }

    /// <summary>
    /// Adds up the split-K partial sums of <see cref="TensorCore{TTiles, TInput}"/>: output[i] = (accumulate ? output[i] :
    /// 0) + Σ_z partials[z · T·N + i], the splits in order (deterministic). One thread per output element.
    /// </summary>
    /// <param name="index">Element of output [T·N].</param>
    /// <param name="output">F32[T, N].</param>
    /// <param name="partials">F32[splits, T, N].</param>
    /// <param name="elements">T·N.</param>
    /// <param name="splits">Number of K splits.</param>
    /// <param name="accumulate">1: add to output.</param>
    public static void TensorReduce(Index1D index, ArrayView<float> output, ArrayView<float> partials, int elements, int splits, int accumulate)
    {
        float v = 0f;
        for (int z = 0; z < splits; z++) v += partials[(long)z * elements + index];
        output[index] = accumulate != 0 ? output[index] + v : v;
    }

    /// <summary>
    /// D = A·B + C for one m16n8k16 tile, fp16 inputs and float32 accumulation, with the lane layout of PTX's
    /// mma.m16n8k16 (a0..a3 and b0, b1 each hold two fp16; lane g·4 + q holds A rows g, g + 8 at columns 2q, 2q + 1
    /// (a0, a1) and 2q + 8, 2q + 9 (a2, a3), B column g at rows 2q, 2q + 1 (b0) and 2q + 8, 2q + 9 (b1), and D at rows g
    /// (c0, c1), g + 8 (c2, c3), columns 2q, 2q + 1).
    /// </summary>
    private static Fragment Mma(Fragment c, uint a0, uint a1, uint a2, uint a3, uint b0, uint b1)
    {
        if (CudaAsm.IsSupported)
        {
            var d0 = new Ref<float> { Value = c.C0 };
            var d1 = new Ref<float> { Value = c.C1 };
            var d2 = new Ref<float> { Value = c.C2 };
            var d3 = new Ref<float> { Value = c.C3 };
            Input<uint> i0 = a0, i1 = a1, i2 = a2, i3 = a3, j0 = b0, j1 = b1;
            CudaAsm.EmitRef(
                "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};",
                ref d0, ref d1, ref d2, ref d3, ref i0, ref i1, ref i2, ref i3, ref j0, ref j1);
            return new Fragment(d0.Value, d1.Value, d2.Value, d3.Value);
        }
        return EmulatedMma(c, a0, a1, a2, a3, b0, b1);
    }

    /// <summary><see cref="Mma"/> without tensor cores: each lane gathers its rows of A and columns of B by warp shuffles.</summary>
    private static Fragment EmulatedMma(Fragment c, uint a0, uint a1, uint a2, uint a3, uint b0, uint b1)
    {
        int lane = Warp.LaneIdx;
        int g = lane >> 2;
        int q = lane & 3;
        float s0 = c.C0, s1 = c.C1, s2 = c.C2, s3 = c.C3;
        for (int p = 0; p < 4; p++)
        {
            // Lane 4g + p holds row g (and g + 8) at columns 2p, 2p + 1, 2p + 8, 2p + 9; lane 4n + p holds column n of B there.
            uint rowLow = Warp.Shuffle(a0, 4 * g + p), rowHigh = Warp.Shuffle(a2, 4 * g + p);
            uint row8Low = Warp.Shuffle(a1, 4 * g + p), row8High = Warp.Shuffle(a3, 4 * g + p);
            uint colLow = Warp.Shuffle(b0, 8 * q + p), colHigh = Warp.Shuffle(b1, 8 * q + p);
            uint col1Low = Warp.Shuffle(b0, 8 * q + 4 + p), col1High = Warp.Shuffle(b1, 8 * q + 4 + p);
            s0 += HalfDot(rowLow, colLow) + HalfDot(rowHigh, colHigh);
            s1 += HalfDot(rowLow, col1Low) + HalfDot(rowHigh, col1High);
            s2 += HalfDot(row8Low, colLow) + HalfDot(row8High, colHigh);
            s3 += HalfDot(row8Low, col1Low) + HalfDot(row8High, col1High);
        }
        return new Fragment(s0, s1, s2, s3);
    }

    private static float HalfDot(uint x, uint y) =>
        HalfBits.ToSingle(x & 0xFFFFu) * HalfBits.ToSingle(y & 0xFFFFu) + HalfBits.ToSingle(x >> 16) * HalfBits.ToSingle(y >> 16);
}
