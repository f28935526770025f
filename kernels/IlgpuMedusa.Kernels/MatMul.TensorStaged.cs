using ILGPU;

namespace IlgpuMedusa.Kernels;

/// <summary>How many 1 KB weight chunks each warp of the staged tensor-core kernel has requested ahead (a compile-time choice).</summary>
public interface IPrefetchDepth
{
    /// <summary>1 to 4.</summary>
    int Chunks { get; }
}

/// <summary>One chunk ahead.</summary>
public readonly struct PrefetchOne : IPrefetchDepth
{
    /// <inheritdoc />
    public int Chunks => 1;
}

/// <summary>Two chunks ahead.</summary>
public readonly struct PrefetchTwo : IPrefetchDepth
{
    /// <inheritdoc />
    public int Chunks => 2;
}

/// <summary>Three chunks ahead.</summary>
public readonly struct PrefetchThree : IPrefetchDepth
{
    /// <inheritdoc />
    public int Chunks => 3;
}

/// <summary>Four chunks ahead.</summary>
public readonly struct PrefetchFour : IPrefetchDepth
{
    /// <inheritdoc />
    public int Chunks => 4;
}

public static partial class MatMulKernels
{
    /// <summary>Weight rows one warp of <see cref="TensorStaged{TTiles, TInput, TDepth}"/> computes (one 16-row tile).</summary>
    public const int StagedRowsPerWarp = 16;

    /// <summary>Packs of eight fp16 inputs one plane of the staging buffer holds: 64 tokens × one 32-column chunk.</summary>
    private const int StagedPacks = 8 * TensorTileTokens * (TensorChunk / 8);

    /// <summary>
    /// The tensor-core matmul of <see cref="TensorCore{TTiles, TInput}"/> (same operands, same fragments and products)
    /// with the group's warps splitting the rows instead of K: warp w of a group computes the 16-row tile 16w of the
    /// group's rows for every token of the group's token tile, so no sums meet at the end. The input chunk all warps
    /// need is loaded once per group into shared memory (each thread one or two 16-byte loads per plane, the next
    /// chunk's loads in flight while this chunk's products run: double buffering, one barrier per chunk), and each warp
    /// streams its own weights with <typeparamref name="TDepth"/> (1 to 4) chunks requested ahead of the one it
    /// multiplies (more bytes in flight per warp, a few more registers). Input traffic from L2 per
    /// weight byte is a quarter of <see cref="TensorCore{TTiles, TInput}"/>'s, where every warp loads its own inputs.
    /// Grid: (⌈T / (8 · Count)⌉, ⌈N / (16 · warps)⌉, Z) groups of 32 · warps threads (1 to 4 warps); split-K over z as in
    /// <see cref="TensorCore{TTiles, TInput}"/> (partials reduced by <see cref="TensorReduce"/>).
    /// </summary>
    /// <param name="output">F32[T, N], or F32[Z, T, N] with split-K.</param>
    /// <param name="inputHi">fp16 hi plane [T, K] as packs of eight.</param>
    /// <param name="inputLo">fp16 lo plane [T, K] (<see cref="SplitInput"/>; any view otherwise, not read).</param>
    /// <param name="weight">F16[N, stride] as packs of eight.</param>
    /// <param name="args">Shapes; WeightStride in packs of eight; ChunksPerSplit.</param>
    /// <typeparam name="TTiles">8-token tiles per group.</typeparam>
    /// <typeparam name="TInput">Split or rounded fp16 inputs.</typeparam>
    /// <typeparam name="TDepth">Weight chunks (16 rows × 32 columns, 1 KB per warp) requested ahead.</typeparam>
    public static void TensorStaged<TTiles, TInput, TDepth>(ArrayView<float> output, ArrayView<Pack8> inputHi, ArrayView<Pack8> inputLo, ArrayView<Pack8> weight, MatMulArgs args)
        where TTiles : struct, ITokenTiles
        where TInput : struct, ITensorInput
        where TDepth : struct, IPrefetchDepth
    {
        // [buffer][token][pack of the chunk] for each plane.
        var stageHi = SharedMemory.Allocate<Pack8>(2 * StagedPacks);
        var stageLo = SharedMemory.Allocate<Pack8>(2 * StagedPacks);
        int tiles = default(TTiles).Count;
        int tid = Group.IdxX;
        int threads = Group.DimX;
        int lane = tid & 31;
        int g = lane >> 2;
        int q = lane & 3;
        int tokens = TensorTileTokens * tiles;
        int token0 = Grid.IdxX * tokens;
        int row0 = (Grid.IdxY * (threads >> 5) + (tid >> 5)) * StagedRowsPerWarp;
        int lastRow = args.Rows - 1;
        int lastToken = args.Tokens - 1;
        long stride = args.WeightStride;
        long wa = IntMin(row0 + g, lastRow) * stride + q;
        long wb = IntMin(row0 + g + 8, lastRow) * stride + q;
        long packsPerRow = args.Columns / 8;

        int chunks = args.Columns / TensorChunk;
        int perSplit = args.ChunksPerSplit > 0 ? args.ChunksPerSplit : chunks;
        int begin = Grid.IdxZ * perSplit;
        int end = begin + perSplit < chunks ? begin + perSplit : chunks;

        // The staging loads: the tile's tokens × 4 packs per chunk, spread over the group's threads (at most two each).
        int stagePacks = tokens * 4;
        int s0 = tid, s1 = tid + threads;
        long x0 = IntMin(token0 + (s0 >> 2), lastToken) * packsPerRow + (s0 & 3);
        long x1 = IntMin(token0 + (s1 >> 2), lastToken) * packsPerRow + (s1 & 3);
        bool has0 = s0 < stagePacks, has1 = s1 < stagePacks;

        StagePair p0 = default, p1 = default;
        if (begin < end)
        {
            p0 = LoadStage<TInput>(inputHi, inputLo, x0 + 4L * begin, has0, p0);
            p1 = LoadStage<TInput>(inputHi, inputLo, x1 + 4L * begin, has1, p1);
        }
        int firstChunk = begin < end ? begin : 0;
        // The warp's weight chunks in flight: n1 holds chunk c (multiplied next), n2 .. nD the chunks after it (D, 1 to 4,
        // is a compile-time constant: the unused registers and branches vanish). Chunks past the end are not loaded.
        int depth = default(TDepth).Chunks;
        Pack8 n1a = weight[wa + 4L * firstChunk], n1b = weight[wb + 4L * firstChunk];
        Pack8 n2a = n1a, n2b = n1b, n3a = n1a, n3b = n1b, n4a = n1a, n4b = n1b;
        if (depth > 1 && firstChunk + 1 < end)
        {
            n2a = weight[wa + 4L * (firstChunk + 1)];
            n2b = weight[wb + 4L * (firstChunk + 1)];
        }
        if (depth > 2 && firstChunk + 2 < end)
        {
            n3a = weight[wa + 4L * (firstChunk + 2)];
            n3b = weight[wb + 4L * (firstChunk + 2)];
        }
        if (depth > 3 && firstChunk + 3 < end)
        {
            n4a = weight[wa + 4L * (firstChunk + 3)];
            n4b = weight[wb + 4L * (firstChunk + 3)];
        }

        var zeroFragment = new Fragment(0f, 0f, 0f, 0f);
        Fragment c0 = zeroFragment, c1 = zeroFragment, c2 = zeroFragment, c3 = zeroFragment, c4 = zeroFragment, c5 = zeroFragment, c6 = zeroFragment, c7 = zeroFragment;
        int buffer = 0;
        for (int c = begin; c < end; c++)
        {
            int at = buffer * StagedPacks;
            StoreStage<TInput>(stageHi, stageLo, at + s0, has0, p0);
            StoreStage<TInput>(stageHi, stageLo, at + s1, has1, p1);
            Group.Barrier();
            // Next chunk's inputs and the weight chunk D ahead: in flight during this chunk's products.
            Pack8 a = n1a, b = n1b;
            if (c + 1 < end)
            {
                p0 = LoadStage<TInput>(inputHi, inputLo, x0 + 4L * (c + 1), has0, p0);
                p1 = LoadStage<TInput>(inputHi, inputLo, x1 + 4L * (c + 1), has1, p1);
            }
            // The ring moves up one chunk (D is a constant: the shifts past it vanish), then chunk c + D is requested
            // into its last slot.
            if (depth > 1)
            {
                n1a = n2a;
                n1b = n2b;
            }
            if (depth > 2)
            {
                n2a = n3a;
                n2b = n3b;
            }
            if (depth > 3)
            {
                n3a = n4a;
                n3b = n4b;
            }
            if (c + depth < end)
            {
                long ahead = 4L * (c + depth);
                Pack8 la = weight[wa + ahead], lb = weight[wb + ahead];
                if (depth == 1)
                {
                    n1a = la;
                    n1b = lb;
                }
                else if (depth == 2)
                {
                    n2a = la;
                    n2b = lb;
                }
                else if (depth == 3)
                {
                    n3a = la;
                    n3b = lb;
                }
                else
                {
                    n4a = la;
                    n4b = lb;
                }
            }
            // Token tile j: lane (g, q) takes token 8j + g, pack q of the chunk.
            int mine = at + g * 4 + q;
            c0 = StagedTile<TInput>(c0, a, b, stageHi, stageLo, mine);
            if (tiles > 1) c1 = StagedTile<TInput>(c1, a, b, stageHi, stageLo, mine + 32);
            if (tiles > 2)
            {
                c2 = StagedTile<TInput>(c2, a, b, stageHi, stageLo, mine + 64);
                c3 = StagedTile<TInput>(c3, a, b, stageHi, stageLo, mine + 96);
            }
            if (tiles > 4)
            {
                c4 = StagedTile<TInput>(c4, a, b, stageHi, stageLo, mine + 128);
                c5 = StagedTile<TInput>(c5, a, b, stageHi, stageLo, mine + 160);
                c6 = StagedTile<TInput>(c6, a, b, stageHi, stageLo, mine + 192);
                c7 = StagedTile<TInput>(c7, a, b, stageHi, stageLo, mine + 224);
            }
            buffer ^= 1;
        }

        long slice = (long)Grid.IdxZ * args.Tokens * args.Rows;
        StoreStaged(output, args, slice, row0 + g, token0 + 2 * q, c0);
        if (tiles > 1) StoreStaged(output, args, slice, row0 + g, token0 + 8 + 2 * q, c1);
        if (tiles > 2)
        {
            StoreStaged(output, args, slice, row0 + g, token0 + 16 + 2 * q, c2);
            StoreStaged(output, args, slice, row0 + g, token0 + 24 + 2 * q, c3);
        }
        if (tiles > 4)
        {
            StoreStaged(output, args, slice, row0 + g, token0 + 32 + 2 * q, c4);
            StoreStaged(output, args, slice, row0 + g, token0 + 40 + 2 * q, c5);
            StoreStaged(output, args, slice, row0 + g, token0 + 48 + 2 * q, c6);
            StoreStaged(output, args, slice, row0 + g, token0 + 56 + 2 * q, c7);
        }
    }

    /// <summary>One thread's share of a staged chunk: a pack of eight of each input plane.</summary>
    private struct StagePair
    {
        public Pack8 Hi, Lo;
    }

    /// <summary>The pack at x of each plane (lo only with split inputs); <paramref name="old"/> when the thread has none.</summary>
    private static StagePair LoadStage<TInput>(ArrayView<Pack8> inputHi, ArrayView<Pack8> inputLo, long x, bool has, StagePair old)
        where TInput : struct, ITensorInput
    {
        if (!has) return old;
        var p = new StagePair { Hi = inputHi[x] };
        if (default(TInput).Split) p.Lo = inputLo[x];
        return p;
    }

    private static void StoreStage<TInput>(ArrayView<Pack8> stageHi, ArrayView<Pack8> stageLo, int at, bool has, StagePair p)
        where TInput : struct, ITensorInput
    {
        if (!has) return;
        stageHi[at] = p.Hi;
        if (default(TInput).Split) stageLo[at] = p.Lo;
    }

    /// <summary>One chunk of one 8-token tile from the staged inputs: two m16n8k16 products (four with split inputs).</summary>
    private static Fragment StagedTile<TInput>(Fragment s, Pack8 a, Pack8 b, ArrayView<Pack8> stageHi, ArrayView<Pack8> stageLo, int at)
        where TInput : struct, ITensorInput
    {
        Pack8 h = stageHi[at];
        s = Mma(s, a.P0, b.P0, a.P1, b.P1, h.P0, h.P1);
        s = Mma(s, a.P2, b.P2, a.P3, b.P3, h.P2, h.P3);
        if (default(TInput).Split)
        {
            Pack8 l = stageLo[at];
            s = Mma(s, a.P0, b.P0, a.P1, b.P1, l.P0, l.P1);
            s = Mma(s, a.P2, b.P2, a.P3, b.P3, l.P2, l.P3);
        }
        return s;
    }

    /// <summary>A lane's four sums of one tile: rows r, r + 8 and tokens t, t + 1 (those inside the matrix).</summary>
    private static void StoreStaged(ArrayView<float> output, MatMulArgs args, long slice, int row, int token, Fragment f)
    {
        StoreOne(output, args, slice, row, token, f.C0);
        StoreOne(output, args, slice, row, token + 1, f.C1);
        StoreOne(output, args, slice, row + 8, token, f.C2);
        StoreOne(output, args, slice, row + 8, token + 1, f.C3);
    }

    private static void StoreOne(ArrayView<float> output, MatMulArgs args, long slice, int row, int token, float v)
    {
        if (row >= args.Rows || token >= args.Tokens) return;
        long o = slice + (long)token * args.Rows + row;
        output[o] = args.Accumulate != 0 ? output[o] + v : v;
    }
}
