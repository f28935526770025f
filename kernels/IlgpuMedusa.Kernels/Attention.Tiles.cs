using ILGPU;
using ILGPU.Algorithms;

namespace IlgpuMedusa.Kernels;

public static partial class AttentionKernel
{
    /// <summary>Keys <see cref="Tiles"/> stages per chunk: 16 lanes × 2.</summary>
    public const int TileKeys = 32;

    /// <summary>Largest head dimension <see cref="Tiles"/> takes (its query and key tiles hold whole rows).</summary>
    public const int TileMaxHeadDim = 128;

    /// <summary>Largest group of <see cref="Tiles"/>: 256 threads, 32 query rows.</summary>
    public const int TileMaxGroupSize = 256;

    /// <summary>Query rows one group of <see cref="Tiles"/> takes: two per 16 threads.</summary>
    public static int TileRows(int groupSize) => groupSize / 8;

    private const int TileStride = TileMaxHeadDim + 1;   // floats per staged row: one of padding, so rows start in different banks
    private const int ProbabilityStride = TileKeys + 1;

    /// <summary>
    /// Attention for T ≥ 2 (tree verification, prefill) as a tiled product, flash-attention style on float32 cores: one
    /// group of G threads (64, 128 or 256) per (key/value head g, tile of R = G/8 query rows, key split z), grid
    /// (Hkv, ⌈T·H/Hkv / R⌉, Z). A query row is a pair (token t, query head h of g's group), row = t·(H/Hkv) + h mod
    /// (H/Hkv), so heads that share a key/value head (GQA) share its reads too. The tile's queries stay in shared
    /// memory; keys go in chunks of 32: the chunk's key rows are staged (coalesced), then the 16 lanes of each half warp
    /// own two query rows and score two keys each (2 × 2 scores per thread, four shared loads per four multiply-adds,
    /// against one load per multiply-add in <see cref="Block"/>); the chunk's max and sum of exponentials of a row are
    /// shuffle reductions within the half warp, so the online-softmax state lives in registers, replicated over the 16
    /// lanes, with no tree reduction through shared memory. The probabilities go to shared memory, the chunk's value rows
    /// replace its key rows, and the same 16 lanes accumulate their two rows' outputs, 8 dimensions a lane (l + 16i), in
    /// registers. Five barriers per chunk (offsets, keys, scores, values, P·V). Splits write the partials of <see cref="Run"/>, merged by
    /// <see cref="Combine"/>. Warp shuffles: CUDA (and the CPU emulator, for tests). Dh ≤ 128.
    /// </summary>
    /// <param name="output">F32[T, H·Dh] (Z = 1).</param>
    /// <param name="partials">F32[T·H·Z, Dh + 2] (Z &gt; 1).</param>
    /// <param name="qkv">F32[T, stride]: Q | K | V, RoPE applied.</param>
    /// <param name="keys">The layer's key plane.</param>
    /// <param name="values">The layer's value plane.</param>
    /// <param name="blockTable">I32[blocks].</param>
    /// <param name="mask">I32[T, T] (ignored when args.HasMask is 0).</param>
    /// <param name="args">Shapes.</param>
    public static void Tiles<TKv, TFormat>(ArrayView<float> output, ArrayView<float> partials, ArrayView<float> qkv, ArrayView<TKv> keys, ArrayView<TKv> values,
        ArrayView<int> blockTable, ArrayView<int> mask, AttentionArgs args)
        where TKv : unmanaged
        where TFormat : struct, IKvFormat<TKv>
    {
        var query = SharedMemory.Allocate<float>(TileMaxGroupSize / 8 * TileStride); // [row][d], scaled by 1/√Dh
        var tile = SharedMemory.Allocate<float>(TileKeys * TileStride);              // [key][d]: the chunk's keys, then its values
        var probability = SharedMemory.Allocate<float>(TileMaxGroupSize / 8 * ProbabilityStride); // [row][key]
        var slotOffset = SharedMemory.Allocate<long>(TileKeys);

        int tid = Group.IdxX;
        var kv = default(TFormat);
        int groupSize = Group.DimX;
        int tileRows = groupSize / 8;
        int kvHead = Grid.IdxX;
        int row0 = Grid.IdxY * tileRows;
        int split = Grid.IdxZ;
        int dh = args.HeadDim;
        int perKv = args.Heads / args.KvHeads;
        int rows = args.Tokens * perKv;
        int kvDim = args.KvHeads * dh;
        long slotCount = keys.Length / (kvDim > 0 ? kvDim : 1); // Hkv · Dh ≥ 1 (the launcher checks; clamped all the same)
        long headOffset = (long)kvHead * dh;

        for (int i = tid; i < tileRows * dh; i += groupSize)
        {
            int r = i / dh;
            int d = i - r * dh;
            int row = row0 + r < rows ? row0 + r : rows - 1; // rows past the end repeat the last one and are not written
            int token = row / perKv;
            int head = kvHead * perKv + row - token * perKv;
            query[r * TileStride + d] = qkv[(long)token * args.QkvStride + (long)head * dh + d] * args.Scale;
        }

        // This thread: rows 2p and 2p + 1 of the tile (p = tid / 16), keys 2l and 2l + 1 of each chunk (l = tid mod 16).
        int lane = tid & 15;
        int rowA = 2 * (tid >> 4);
        int rowB = rowA + 1;
        int lastRow = rows - 1;
        int tokenA = (row0 + rowA < lastRow ? row0 + rowA : lastRow) / perKv;
        int tokenB = (row0 + rowB < lastRow ? row0 + rowB : lastRow) / perKv;
        int lastToken = (row0 + tileRows - 1 < lastRow ? row0 + tileRows - 1 : lastRow) / perKv;
        int keyCount = args.HasMask != 0 ? args.Committed + args.Tokens : args.Committed + lastToken + 1;
        int perSplit = (keyCount + args.Splits - 1) / args.Splits;
        int begin = split * perSplit;
        int end = begin + perSplit < keyCount ? begin + perSplit : keyCount;

        // Staging: element i = k·Dh + d of a chunk's rows goes to thread i mod G; the walk over i += G without divisions.
        int firstKey = tid / dh, firstDim = tid - tid / dh * dh;
        int stepKeys = groupSize / dh, stepDims = groupSize - groupSize / dh * dh;

        float maxA = Hidden, maxB = Hidden, sumA = 0f, sumB = 0f;
        var zero = new LaneSlice(0f, 0f, 0f, 0f, 0f, 0f, 0f, 0f);
        var accA = zero;
        var accB = zero;
        int qa = rowA * TileStride, qb = rowB * TileStride;
        int ka = 2 * lane * TileStride, kb = ka + TileStride;
        for (int chunk = begin; chunk < end; chunk += TileKeys)
        {
            if (tid < TileKeys) slotOffset[tid] = KeyRowOffset(blockTable, args, chunk + tid, end, kvDim, headOffset, slotCount);
            Group.Barrier();
            for (int k = firstKey, d = firstDim; k < TileKeys; k += stepKeys, d += stepDims)
            {
                if (d >= dh) { d -= dh; k++; if (k >= TileKeys) break; }
                tile[k * TileStride + d] = kv.Decode(keys[slotOffset[k] + d]);
            }
            Group.Barrier();

            // 2 × 2 scores: a half warp reads 16 different key rows (padded: 16 banks) and one query row (a broadcast).
            float sAA = 0f, sAB = 0f, sBA = 0f, sBB = 0f;
            int d4 = 0;
            for (; d4 + 4 <= dh; d4 += 4)
            {
                float qA0 = query[qa + d4], qA1 = query[qa + d4 + 1], qA2 = query[qa + d4 + 2], qA3 = query[qa + d4 + 3];
                float qB0 = query[qb + d4], qB1 = query[qb + d4 + 1], qB2 = query[qb + d4 + 2], qB3 = query[qb + d4 + 3];
                float kA0 = tile[ka + d4], kA1 = tile[ka + d4 + 1], kA2 = tile[ka + d4 + 2], kA3 = tile[ka + d4 + 3];
                float kB0 = tile[kb + d4], kB1 = tile[kb + d4 + 1], kB2 = tile[kb + d4 + 2], kB3 = tile[kb + d4 + 3];
                sAA += (qA0 * kA0 + qA1 * kA1) + (qA2 * kA2 + qA3 * kA3);
                sAB += (qA0 * kB0 + qA1 * kB1) + (qA2 * kB2 + qA3 * kB3);
                sBA += (qB0 * kA0 + qB1 * kA1) + (qB2 * kA2 + qB3 * kA3);
                sBB += (qB0 * kB0 + qB1 * kB1) + (qB2 * kB2 + qB3 * kB3);
            }
            for (; d4 < dh; d4++)
            {
                float qA = query[qa + d4], qB = query[qb + d4];
                float kA = tile[ka + d4], kB = tile[kb + d4];
                sAA += qA * kA;
                sAB += qA * kB;
                sBA += qB * kA;
                sBB += qB * kB;
            }
            int key0 = chunk + 2 * lane;
            bool vAA = TileVisible(mask, args, key0, end, tokenA), vAB = TileVisible(mask, args, key0 + 1, end, tokenA);
            bool vBA = TileVisible(mask, args, key0, end, tokenB), vBB = TileVisible(mask, args, key0 + 1, end, tokenB);
            sAA = vAA ? sAA : Hidden;
            sAB = vAB ? sAB : Hidden;
            sBA = vBA ? sBA : Hidden;
            sBB = vBB ? sBB : Hidden;

            // Each row's chunk max over its 16 lanes (xor shuffles below 16 stay within the half warp), then the online update.
            float mA = sAA > sAB ? sAA : sAB, mB = sBA > sBB ? sBA : sBB;
            for (int offset = 8; offset > 0; offset >>= 1)
            {
                float oA = Warp.ShuffleXor(mA, offset), oB = Warp.ShuffleXor(mB, offset);
                mA = mA > oA ? mA : oA;
                mB = mB > oB ? mB : oB;
            }
            float newA = maxA > mA ? maxA : mA, newB = maxB > mB ? maxB : mB;
            float rA = XMath.Exp(maxA - newA), rB = XMath.Exp(maxB - newB);
            float pAA = vAA ? XMath.Exp(sAA - newA) : 0f, pAB = vAB ? XMath.Exp(sAB - newA) : 0f;
            float pBA = vBA ? XMath.Exp(sBA - newB) : 0f, pBB = vBB ? XMath.Exp(sBB - newB) : 0f;
            float cA = pAA + pAB, cB = pBA + pBB;
            for (int offset = 8; offset > 0; offset >>= 1)
            {
                cA += Warp.ShuffleXor(cA, offset);
                cB += Warp.ShuffleXor(cB, offset);
            }
            sumA = sumA * rA + cA;
            sumB = sumB * rB + cB;
            maxA = newA;
            maxB = newB;
            probability[rowA * ProbabilityStride + 2 * lane] = pAA;
            probability[rowA * ProbabilityStride + 2 * lane + 1] = pAB;
            probability[rowB * ProbabilityStride + 2 * lane] = pBA;
            probability[rowB * ProbabilityStride + 2 * lane + 1] = pBB;
            Group.Barrier(); // every score of the chunk is taken: its key rows can go

            for (int k = firstKey, d = firstDim; k < TileKeys; k += stepKeys, d += stepDims)
            {
                if (d >= dh) { d -= dh; k++; if (k >= TileKeys) break; }
                tile[k * TileStride + d] = kv.Decode(values[slotOffset[k] + d]);
            }
            Group.Barrier();

            // P·V: a half warp reads 16 consecutive floats of one value row and two probabilities (broadcasts).
            int count = end - chunk < TileKeys ? end - chunk : TileKeys;
            accA = accA.ScaleAddRow(rA, tile, 0, lane, dh, probability[rowA * ProbabilityStride], 16);
            accB = accB.ScaleAddRow(rB, tile, 0, lane, dh, probability[rowB * ProbabilityStride], 16);
            for (int k = 1; k < count; k++)
            {
                accA = accA.ScaleAddRow(1f, tile, k * TileStride, lane, dh, probability[rowA * ProbabilityStride + k], 16);
                accB = accB.ScaleAddRow(1f, tile, k * TileStride, lane, dh, probability[rowB * ProbabilityStride + k], 16);
            }
            Group.Barrier(); // the next chunk overwrites the offsets, the tile and the probabilities
        }

        TileStore(output, partials, args, row0 + rowA, rows, perKv, kvHead, split, lane, accA, maxA, sumA);
        TileStore(output, partials, args, row0 + rowB, rows, perKv, kvHead, split, lane, accB, maxB, sumB);
    }

    private static bool TileVisible(ArrayView<int> mask, AttentionArgs args, int key, int end, int token) =>
        key < end && (key < args.Committed
            || (args.HasMask != 0 ? mask[token * args.Tokens + key - args.Committed] != 0 : key - args.Committed <= token));

    private static void TileStore(ArrayView<float> output, ArrayView<float> partials, AttentionArgs args, int row, int rows, int perKv, int kvHead,
        int split, int lane, LaneSlice acc, float max, float sum)
    {
        if (row >= rows) return;
        int dh = args.HeadDim;
        int token = row / perKv;
        int head = kvHead * perKv + row - token * perKv;
        if (args.Splits == 1)
        {
            acc.Store(output, (long)token * args.Heads * dh + (long)head * dh, lane, dh, sum > 0f ? 1f / sum : 0f, 16);
            return;
        }
        long at = (((long)token * args.Heads + head) * args.Splits + split) * (dh + 2);
        acc.Store(partials, at, lane, dh, 1f, 16);
        if (lane == 0)
        {
            partials[at + dh] = max;
            partials[at + dh + 1] = sum;
        }
    }
}
