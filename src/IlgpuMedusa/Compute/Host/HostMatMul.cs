using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace IlgpuMedusa.Compute.Host;

/// <summary>
/// The inner loop of the host matmul: dot products of four weight rows with one input row at once, so each input
/// vector load feeds four fused multiply-adds. Uses the widest vector the CPU accelerates (512 or 256 bits).
/// </summary>
internal static unsafe class HostMatMul
{
    /// <summary>
    /// out[t·n + row + i] (+)= Σ_k x[t·k + j] · w[(row + i)·k + j] for i &lt; rows (≤ 4) and t &lt; tokens.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RowBlock(float* w, int rows, int k, float* x, int tokens, float* output, int n, int row, bool accumulate)
    {
        int t = 0;
        if (rows == 4 && Vector512.IsHardwareAccelerated && k % 16 == 0)
        {
            // Four rows by four tokens: 8 loads feed 16 FMAs (the single-token loop needs 5 loads per 4 FMAs).
            for (; t + 4 <= tokens; t += 4)
            {
                float* xt = x + (long)t * k;
                Dot4x4(w, k, xt, out var d0, out var d1, out var d2, out var d3);
                Store(output + (long)t * n + row, d0, accumulate);
                Store(output + (long)(t + 1) * n + row, d1, accumulate);
                Store(output + (long)(t + 2) * n + row, d2, accumulate);
                Store(output + (long)(t + 3) * n + row, d3, accumulate);
            }
        }
        for (; t < tokens; t++)
        {
            float* xt = x + (long)t * k;
            float* target = output + (long)t * n + row;
            if (rows == 4)
            {
                Dot4(w, w + k, w + 2 * k, w + 3 * k, xt, k, out float d0, out float d1, out float d2, out float d3);
                if (accumulate)
                {
                    target[0] += d0;
                    target[1] += d1;
                    target[2] += d2;
                    target[3] += d3;
                }
                else
                {
                    target[0] = d0;
                    target[1] = d1;
                    target[2] = d2;
                    target[3] = d3;
                }
            }
            else
            {
                for (int i = 0; i < rows; i++)
                {
                    float d = Dot(w + (long)i * k, xt, k);
                    target[i] = accumulate ? target[i] + d : d;
                }
            }
        }
    }

    /// <summary>
    /// out[t·n + r] (+)= Σ_j x[t·k + j] · W[r, j] for the rows of panel pairs [pairStart, pairEnd) of a packed weight
    /// (<see cref="HostTensor.Packed"/>) and every token t; <typeparamref name="TLoad"/> reads a panel column (F32, the
    /// high halves of a split weight, or both halves). Tokens go in groups of up to eight: for each column j the two
    /// panels' columns are loaded once and multiplied by each token's x[j] broadcast into its own accumulators, so there
    /// is nothing to reduce at the end and a pair is read from memory once per call.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Panels<TLoad>(byte* weights, long lowOffset, int n, int k, int pairStart, int pairEnd, float* x, int tokens, float* output, bool accumulate)
        where TLoad : struct, IPanelLoad
    {
        long panelBytes = (long)k * HostTensor.PanelRows * TLoad.ElementBytes;
        for (int pair = pairStart; pair < pairEnd; pair++)
        {
            var (p0, p1, next, row, valid0, valid1) = PanelPair.Of(weights, panelBytes, n, pair);
            for (int t = 0; t < tokens; t += 8)
            {
                float* xt = x + (long)t * k;
                float* ot = output + (long)t * n + row;
                switch (Math.Min(8, tokens - t))
                {
                    case 1: Group<G1, TLoad>(p0, p1, next, lowOffset, k, xt, ot, n, valid0, valid1, accumulate); break;
                    case 2: Group<G2, TLoad>(p0, p1, next, lowOffset, k, xt, ot, n, valid0, valid1, accumulate); break;
                    case 3: Group<G3, TLoad>(p0, p1, next, lowOffset, k, xt, ot, n, valid0, valid1, accumulate); break;
                    case 4: Group<G4, TLoad>(p0, p1, next, lowOffset, k, xt, ot, n, valid0, valid1, accumulate); break;
                    case 5: Group<G5, TLoad>(p0, p1, next, lowOffset, k, xt, ot, n, valid0, valid1, accumulate); break;
                    case 6: Group<G6, TLoad>(p0, p1, next, lowOffset, k, xt, ot, n, valid0, valid1, accumulate); break;
                    case 7: Group<G7, TLoad>(p0, p1, next, lowOffset, k, xt, ot, n, valid0, valid1, accumulate); break;
                    default: Group<G8, TLoad>(p0, p1, next, lowOffset, k, xt, ot, n, valid0, valid1, accumulate); break;
                }
            }
        }
    }

    /// <summary>Where panel pair <c>pair</c> of a packed weight of n rows starts, and how many rows of each panel are real.</summary>
    private readonly struct PanelPair(byte* p0, byte* p1, byte* next, int row, int valid0, int valid1)
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Deconstruct(out byte* p0Out, out byte* p1Out, out byte* nextOut, out int rowOut, out int valid0Out, out int valid1Out)
        {
            p0Out = p0;
            p1Out = p1;
            nextOut = next;
            rowOut = row;
            valid0Out = valid0;
            valid1Out = valid1;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static PanelPair Of(byte* weights, long panelBytes, int n, int pair)
        {
            const int P = HostTensor.PanelRows;
            int panels = (n + P - 1) / P;
            int panel = 2 * pair;
            byte* p0 = weights + panel * panelBytes;
            byte* p1 = panel + 1 < panels ? p0 + panelBytes : p0; // an odd last panel is computed twice, stored once
            byte* next = p0 + 2 * panelBytes; // the pair after this one, prefetched while this one is computed
            int row = panel * P;
            return new PanelPair(p0, p1, next, row, Math.Min(P, n - row), panel + 1 < panels ? Math.Min(P, n - row - P) : 0);
        }
    }

    /// <summary>Reads column j (16 rows) of a panel as floats; known when the JIT compiles the kernel.</summary>
    public interface IPanelLoad
    {
        /// <summary>Bytes per element in the panel array at the panel pointer.</summary>
        static abstract int ElementBytes { get; }
        /// <summary>The 16 floats of panel element offset <paramref name="column"/> (= j · 16).</summary>
        static abstract Vector512<float> Load(byte* panel, int column, long lowOffset);
    }

    /// <summary>Plain F32 panels.</summary>
    public struct F32Panel : IPanelLoad
    {
        public static int ElementBytes => sizeof(float);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load(byte* panel, int column, long lowOffset) => Vector512.Load((float*)panel + column);
    }

    /// <summary>The high halves of a split weight: each float truncated to its top 16 bits (bfloat16).</summary>
    public struct HighHalfPanel : IPanelLoad
    {
        public static int ElementBytes => sizeof(ushort);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load(byte* panel, int column, long lowOffset) =>
            Vector512.ShiftLeft(Avx512F.ConvertToVector512UInt32(Vector256.Load((ushort*)panel + column)), 16).AsSingle();
    }

    /// <summary>
    /// F16 panels, widened exactly: the half's exponent and mantissa moved into a float's place and scaled by 2^112 (the
    /// difference of the biases; subnormal halves become the right normal floats), infinities and NaNs rebuilt, the sign
    /// put back.
    /// </summary>
    public struct F16Panel : IPanelLoad
    {
        public static int ElementBytes => sizeof(ushort);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load(byte* panel, int column, long lowOffset)
        {
            var h = Avx512F.ConvertToVector512UInt32(Vector256.Load((ushort*)panel + column));
            var magnitude = (h & Vector512.Create(0x7FFFu)) << 13;
            var value = magnitude.AsSingle() * Vector512.Create(BitConverter.UInt32BitsToSingle((127u + 112u) << 23));
            var special = Vector512.GreaterThanOrEqual(magnitude, Vector512.Create(0x7C00u << 13));
            var bits = Vector512.ConditionalSelect(special, magnitude | Vector512.Create(0x7F800000u), value.AsUInt32());
            return (bits | ((h & Vector512.Create(0x8000u)) << 16)).AsSingle();
        }
    }

    /// <summary>Both halves of a split weight: the exact floats.</summary>
    public struct SplitPanel : IPanelLoad
    {
        public static int ElementBytes => sizeof(ushort);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load(byte* panel, int column, long lowOffset) =>
            (Vector512.ShiftLeft(Avx512F.ConvertToVector512UInt32(Vector256.Load((ushort*)panel + column)), 16)
             | Avx512F.ConvertToVector512UInt32(Vector256.Load((ushort*)(panel + lowOffset) + column))).AsSingle();
    }

    /// <summary>A token count known when the JIT compiles <see cref="Group{TCount, TLoad}"/>, so unused accumulators vanish.</summary>
    private interface ITokens
    {
        static abstract int Count { get; }
    }

    private struct G1 : ITokens { public static int Count => 1; }
    private struct G2 : ITokens { public static int Count => 2; }
    private struct G3 : ITokens { public static int Count => 3; }
    private struct G4 : ITokens { public static int Count => 4; }
    private struct G5 : ITokens { public static int Count => 5; }
    private struct G6 : ITokens { public static int Count => 6; }
    private struct G7 : ITokens { public static int Count => 7; }
    private struct G8 : ITokens { public static int Count => 8; }

    /// <summary>One panel pair times TCount tokens (rows of x with stride k; outputs with stride n).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Group<TCount, TLoad>(byte* p0, byte* p1, byte* next, long lowOffset, int k, float* x, float* output, int n, int valid0, int valid1, bool accumulate)
        where TCount : struct, ITokens
        where TLoad : struct, IPanelLoad
    {
        const int P = HostTensor.PanelRows;
        int g = TCount.Count;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default, b4 = default, b5 = default, b6 = default, b7 = default;
        float* x0 = x, x1 = x + k, x2 = x + 2 * k, x3 = x + 3 * k, x4 = x + 4 * k, x5 = x + 5 * k, x6 = x + 6 * k, x7 = x + 7 * k;
        byte* q0 = next, q1 = next + (long)k * P * TLoad.ElementBytes;
        // One 64-byte line holds 64 / (16 · ElementBytes) panel columns: prefetch the next pair's line once per line.
        int lineColumns = 64 / (P * TLoad.ElementBytes);
        int j = 0;
        if (TCount.Count == 1)
        {
            // One token has only two accumulator chains, each waiting on its previous FMA; odd columns go to a
            // second pair of accumulators so four chains are in flight.
            for (; j + 2 <= k; j += 2)
            {
                int c = j * P;
                if (j % lineColumns == 0) { PrefetchLine(q0 + (long)c * TLoad.ElementBytes); PrefetchLine(q1 + (long)c * TLoad.ElementBytes); }
                if ((j + 1) % lineColumns == 0) { PrefetchLine(q0 + (long)(c + P) * TLoad.ElementBytes); PrefetchLine(q1 + (long)(c + P) * TLoad.ElementBytes); }
                var v = Vector512.Create(x0[j]);
                a0 = Vector512.FusedMultiplyAdd(TLoad.Load(p0, c, lowOffset), v, a0);
                b0 = Vector512.FusedMultiplyAdd(TLoad.Load(p1, c, lowOffset), v, b0);
                v = Vector512.Create(x0[j + 1]);
                a1 = Vector512.FusedMultiplyAdd(TLoad.Load(p0, c + P, lowOffset), v, a1);
                b1 = Vector512.FusedMultiplyAdd(TLoad.Load(p1, c + P, lowOffset), v, b1);
            }
            a0 += a1;
            b0 += b1;
            a1 = b1 = default;
        }
        for (; j < k; j++)
        {
            int c = j * P;
            if (j % lineColumns == 0) { PrefetchLine(q0 + (long)c * TLoad.ElementBytes); PrefetchLine(q1 + (long)c * TLoad.ElementBytes); }
            var w0 = TLoad.Load(p0, c, lowOffset);
            var w1 = TLoad.Load(p1, c, lowOffset);
            var v = Vector512.Create(x0[j]);
            a0 = Vector512.FusedMultiplyAdd(w0, v, a0);
            b0 = Vector512.FusedMultiplyAdd(w1, v, b0);
            if (TCount.Count > 1) { v = Vector512.Create(x1[j]); a1 = Vector512.FusedMultiplyAdd(w0, v, a1); b1 = Vector512.FusedMultiplyAdd(w1, v, b1); }
            if (TCount.Count > 2) { v = Vector512.Create(x2[j]); a2 = Vector512.FusedMultiplyAdd(w0, v, a2); b2 = Vector512.FusedMultiplyAdd(w1, v, b2); }
            if (TCount.Count > 3) { v = Vector512.Create(x3[j]); a3 = Vector512.FusedMultiplyAdd(w0, v, a3); b3 = Vector512.FusedMultiplyAdd(w1, v, b3); }
            if (TCount.Count > 4) { v = Vector512.Create(x4[j]); a4 = Vector512.FusedMultiplyAdd(w0, v, a4); b4 = Vector512.FusedMultiplyAdd(w1, v, b4); }
            if (TCount.Count > 5) { v = Vector512.Create(x5[j]); a5 = Vector512.FusedMultiplyAdd(w0, v, a5); b5 = Vector512.FusedMultiplyAdd(w1, v, b5); }
            if (TCount.Count > 6) { v = Vector512.Create(x6[j]); a6 = Vector512.FusedMultiplyAdd(w0, v, a6); b6 = Vector512.FusedMultiplyAdd(w1, v, b6); }
            if (TCount.Count > 7) { v = Vector512.Create(x7[j]); a7 = Vector512.FusedMultiplyAdd(w0, v, a7); b7 = Vector512.FusedMultiplyAdd(w1, v, b7); }
        }
        Put(output, a0, b0, valid0, valid1, accumulate);
        if (g > 1) Put(output + n, a1, b1, valid0, valid1, accumulate);
        if (g > 2) Put(output + 2L * n, a2, b2, valid0, valid1, accumulate);
        if (g > 3) Put(output + 3L * n, a3, b3, valid0, valid1, accumulate);
        if (g > 4) Put(output + 4L * n, a4, b4, valid0, valid1, accumulate);
        if (g > 5) Put(output + 5L * n, a5, b5, valid0, valid1, accumulate);
        if (g > 6) Put(output + 6L * n, a6, b6, valid0, valid1, accumulate);
        if (g > 7) Put(output + 7L * n, a7, b7, valid0, valid1, accumulate);
    }

    /// <summary>
    /// sums[t·n + r] = Σ_j q[r, j] · u[t·kPadded + j] for the rows of panel pairs [pairStart, pairEnd) of an 8-bit
    /// weight in quad panels (<see cref="HostTensor.Int8"/>: per panel, 4 columns of 16 rows in each 64 bytes) and 16-bit
    /// inputs u, exact in 32 bits (the caller keeps 127 · k · max |u| below 2^31). Each 64 bytes of a panel widen to
    /// two vectors of 16-bit weights (rows 0-7 and 8-15, four columns each); one <c>vpmaddwd</c> per vector and token
    /// multiplies them by the token's four inputs and adds pairs into 32-bit lanes, two lanes per row, summed at the
    /// end: 32 multiply-adds per instruction, and the weights are widened once for up to four tokens (converting them
    /// to floats for FMAs takes two instructions per 16 weights).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void QuadPanels(byte* weights, int n, int kPadded, int pairStart, int pairEnd, short* inputs, int tokens, int* sums)
    {
        long panelBytes = (long)kPadded * HostTensor.PanelRows;
        for (int pair = pairStart; pair < pairEnd; pair++)
        {
            var (p0, p1, next, row, valid0, valid1) = PanelPair.Of(weights, panelBytes, n, pair);
            for (int t = 0; t < tokens; t += 4)
            {
                short* ut = inputs + (long)t * kPadded;
                int* ot = sums + (long)t * n + row;
                switch (Math.Min(4, tokens - t))
                {
                    case 1: QuadGroup<G1>(p0, p1, next, kPadded, ut, ot, n, valid0, valid1); break;
                    case 2: QuadGroup<G2>(p0, p1, next, kPadded, ut, ot, n, valid0, valid1); break;
                    case 3: QuadGroup<G3>(p0, p1, next, kPadded, ut, ot, n, valid0, valid1); break;
                    default: QuadGroup<G4>(p0, p1, next, kPadded, ut, ot, n, valid0, valid1); break;
                }
            }
        }
    }

    /// <summary>One quad panel pair times TCount (≤ 4) tokens (inputs with stride kPadded; sums with stride n).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void QuadGroup<TCount>(byte* p0, byte* p1, byte* next, int kPadded, short* u, int* sums, int n, int valid0, int valid1)
        where TCount : struct, ITokens
    {
        const int P = HostTensor.PanelRows;
        int g = TCount.Count;
        // Per token: panel 0 rows 0-7 (a), rows 8-15 (b); panel 1 rows 0-7 (c), rows 8-15 (d); lanes 2i, 2i + 1 are row i.
        Vector512<int> a0 = default, b0 = default, c0 = default, d0 = default, a1 = default, b1 = default, c1 = default, d1 = default;
        Vector512<int> a2 = default, b2 = default, c2 = default, d2 = default, a3 = default, b3 = default, c3 = default, d3 = default;
        byte* q0 = next, q1 = next + (long)kPadded * P;
        for (int j = 0; j < kPadded; j += 4)
        {
            int c = j * P; // quad j / 4 starts at byte 64 · (j / 4): one cache line
            PrefetchLine(q0 + c);
            PrefetchLine(q1 + c);
            var w0 = Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)(p0 + c)));
            var x0 = Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)(p0 + c + 32)));
            var w1 = Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)(p1 + c)));
            var x1 = Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)(p1 + c + 32)));
            var v = Vector512.Create(*(long*)(u + j)).AsInt16();
            a0 += Avx512BW.MultiplyAddAdjacent(w0, v); b0 += Avx512BW.MultiplyAddAdjacent(x0, v);
            c0 += Avx512BW.MultiplyAddAdjacent(w1, v); d0 += Avx512BW.MultiplyAddAdjacent(x1, v);
            if (TCount.Count > 1)
            {
                v = Vector512.Create(*(long*)(u + kPadded + j)).AsInt16();
                a1 += Avx512BW.MultiplyAddAdjacent(w0, v); b1 += Avx512BW.MultiplyAddAdjacent(x0, v);
                c1 += Avx512BW.MultiplyAddAdjacent(w1, v); d1 += Avx512BW.MultiplyAddAdjacent(x1, v);
            }
            if (TCount.Count > 2)
            {
                v = Vector512.Create(*(long*)(u + 2 * kPadded + j)).AsInt16();
                a2 += Avx512BW.MultiplyAddAdjacent(w0, v); b2 += Avx512BW.MultiplyAddAdjacent(x0, v);
                c2 += Avx512BW.MultiplyAddAdjacent(w1, v); d2 += Avx512BW.MultiplyAddAdjacent(x1, v);
            }
            if (TCount.Count > 3)
            {
                v = Vector512.Create(*(long*)(u + 3 * kPadded + j)).AsInt16();
                a3 += Avx512BW.MultiplyAddAdjacent(w0, v); b3 += Avx512BW.MultiplyAddAdjacent(x0, v);
                c3 += Avx512BW.MultiplyAddAdjacent(w1, v); d3 += Avx512BW.MultiplyAddAdjacent(x1, v);
            }
        }
        PutInts(sums, RowSums(a0, b0), RowSums(c0, d0), valid0, valid1);
        if (g > 1) PutInts(sums + n, RowSums(a1, b1), RowSums(c1, d1), valid0, valid1);
        if (g > 2) PutInts(sums + 2L * n, RowSums(a2, b2), RowSums(c2, d2), valid0, valid1);
        if (g > 3) PutInts(sums + 3L * n, RowSums(a3, b3), RowSums(c3, d3), valid0, valid1);
    }

    private static readonly Vector512<int> EvenLanes = Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    private static readonly Vector512<int> OddLanes = Vector512.Create(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);

    /// <summary>The 16 row sums of a panel: lanes 2i + 2i+1 of <paramref name="low"/> (rows 0-7), then of <paramref name="high"/> (rows 8-15).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> RowSums(Vector512<int> low, Vector512<int> high) =>
        Avx512F.PermuteVar16x32x2(low, EvenLanes, high) + Avx512F.PermuteVar16x32x2(low, OddLanes, high);

    /// <summary>Stores the first valid0 lanes of a and valid1 lanes of b at target[0..] and target[16..].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PutInts(int* target, Vector512<int> a, Vector512<int> b, int valid0, int valid1)
    {
        const int P = HostTensor.PanelRows;
        if (valid0 == P) a.Store(target);
        else for (int i = 0; i < valid0; i++) target[i] = a.GetElement(i);
        if (valid1 == P) b.Store(target + P);
        else for (int i = 0; i < valid1; i++) target[P + i] = b.GetElement(i);
    }

    /// <summary>Writes (or adds) the first valid0 lanes of a and valid1 lanes of b at target[0..] and target[16..].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Put(float* target, Vector512<float> a, Vector512<float> b, int valid0, int valid1, bool accumulate)
    {
        PutOne(target, a, valid0, accumulate);
        if (valid1 > 0) PutOne(target + HostTensor.PanelRows, b, valid1, accumulate);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PutOne(float* target, Vector512<float> v, int valid, bool accumulate)
    {
        if (valid == HostTensor.PanelRows)
        {
            if (accumulate) v += Vector512.Load(target);
            v.Store(target);
            return;
        }
        for (int i = 0; i < valid; i++) target[i] = accumulate ? target[i] + v.GetElement(i) : v.GetElement(i);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PrefetchLine(void* p)
    {
        if (Sse.IsSupported) Sse.Prefetch0(p);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(float* target, Vector128<float> dots, bool accumulate)
    {
        if (accumulate) dots += Vector128.Load(target);
        dots.Store(target);
    }

    /// <summary>Dots of rows w[0..3] (stride k) with tokens x[0..3] (stride k); result j holds token j's four row dots.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4x4(float* w, int k, float* x, out Vector128<float> t0, out Vector128<float> t1, out Vector128<float> t2, out Vector128<float> t3)
    {
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default;
        Vector512<float> a10 = default, a11 = default, a12 = default, a13 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default;
        Vector512<float> a30 = default, a31 = default, a32 = default, a33 = default;
        float* w1 = w + k, w2 = w + 2 * k, w3 = w + 3 * k;
        float* x1 = x + k, x2 = x + 2 * k, x3 = x + 3 * k;
        float* next = w + 4 * k;
        for (int j = 0; j < k; j += 16)
        {
            PrefetchNext(next + 4 * j);
            var r0 = Vector512.Load(w + j);
            var r1 = Vector512.Load(w1 + j);
            var r2 = Vector512.Load(w2 + j);
            var r3 = Vector512.Load(w3 + j);
            var v = Vector512.Load(x + j);
            a00 = Vector512.FusedMultiplyAdd(r0, v, a00);
            a01 = Vector512.FusedMultiplyAdd(r1, v, a01);
            a02 = Vector512.FusedMultiplyAdd(r2, v, a02);
            a03 = Vector512.FusedMultiplyAdd(r3, v, a03);
            v = Vector512.Load(x1 + j);
            a10 = Vector512.FusedMultiplyAdd(r0, v, a10);
            a11 = Vector512.FusedMultiplyAdd(r1, v, a11);
            a12 = Vector512.FusedMultiplyAdd(r2, v, a12);
            a13 = Vector512.FusedMultiplyAdd(r3, v, a13);
            v = Vector512.Load(x2 + j);
            a20 = Vector512.FusedMultiplyAdd(r0, v, a20);
            a21 = Vector512.FusedMultiplyAdd(r1, v, a21);
            a22 = Vector512.FusedMultiplyAdd(r2, v, a22);
            a23 = Vector512.FusedMultiplyAdd(r3, v, a23);
            v = Vector512.Load(x3 + j);
            a30 = Vector512.FusedMultiplyAdd(r0, v, a30);
            a31 = Vector512.FusedMultiplyAdd(r1, v, a31);
            a32 = Vector512.FusedMultiplyAdd(r2, v, a32);
            a33 = Vector512.FusedMultiplyAdd(r3, v, a33);
        }
        t0 = Vector128.Create(Vector512.Sum(a00), Vector512.Sum(a01), Vector512.Sum(a02), Vector512.Sum(a03));
        t1 = Vector128.Create(Vector512.Sum(a10), Vector512.Sum(a11), Vector512.Sum(a12), Vector512.Sum(a13));
        t2 = Vector128.Create(Vector512.Sum(a20), Vector512.Sum(a21), Vector512.Sum(a22), Vector512.Sum(a23));
        t3 = Vector128.Create(Vector512.Sum(a30), Vector512.Sum(a31), Vector512.Sum(a32), Vector512.Sum(a33));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4(float* w0, float* w1, float* w2, float* w3, float* x, int k, out float d0, out float d1, out float d2, out float d3)
    {
        int j = 0;
        if (Vector512.IsHardwareAccelerated && k >= 16)
        {
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            float* next = w0 + 4L * k; // the rows are consecutive: the block after this one starts here
            for (; j <= k - 16; j += 16)
            {
                PrefetchNext(next + 4 * j);
                var xv = Vector512.Load(x + j);
                a0 = Vector512.FusedMultiplyAdd(Vector512.Load(w0 + j), xv, a0);
                a1 = Vector512.FusedMultiplyAdd(Vector512.Load(w1 + j), xv, a1);
                a2 = Vector512.FusedMultiplyAdd(Vector512.Load(w2 + j), xv, a2);
                a3 = Vector512.FusedMultiplyAdd(Vector512.Load(w3 + j), xv, a3);
            }
            d0 = Vector512.Sum(a0);
            d1 = Vector512.Sum(a1);
            d2 = Vector512.Sum(a2);
            d3 = Vector512.Sum(a3);
        }
        else if (Vector256.IsHardwareAccelerated && k >= 8)
        {
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; j <= k - 8; j += 8)
            {
                var xv = Vector256.Load(x + j);
                a0 = Vector256.FusedMultiplyAdd(Vector256.Load(w0 + j), xv, a0);
                a1 = Vector256.FusedMultiplyAdd(Vector256.Load(w1 + j), xv, a1);
                a2 = Vector256.FusedMultiplyAdd(Vector256.Load(w2 + j), xv, a2);
                a3 = Vector256.FusedMultiplyAdd(Vector256.Load(w3 + j), xv, a3);
            }
            d0 = Vector256.Sum(a0);
            d1 = Vector256.Sum(a1);
            d2 = Vector256.Sum(a2);
            d3 = Vector256.Sum(a3);
        }
        else
        {
            d0 = d1 = d2 = d3 = 0;
        }
        for (; j < k; j++)
        {
            float xv = x[j];
            d0 += w0[j] * xv;
            d1 += w1[j] * xv;
            d2 += w2[j] * xv;
            d3 += w3[j] * xv;
        }
    }

    /// <summary>
    /// Asks for the four cache lines at <paramref name="p"/>: a block of four rows reads 4·k floats while the loop
    /// steps 16 columns at a time, so four lines per step fetch the next block exactly as this one is consumed. The
    /// hardware prefetcher alone keeps far fewer lines in flight (it stops at every 4 KiB page); measured on the
    /// 2-core EPYC, this lifts a GEMV from about 20 to about 45 GB/s. A prefetch past the end of the weights is harmless.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PrefetchNext(float* p)
    {
        PrefetchLine(p);
        PrefetchLine(p + 16);
        PrefetchLine(p + 32);
        PrefetchLine(p + 48);
    }

    /// <summary>Σ a[i]·b[i] for i &lt; n (attention scores: n is the head size).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dot(float* a, float* b, int n)
    {
        int i = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            var acc = Vector512<float>.Zero;
            for (; i <= n - 16; i += 16) acc = Vector512.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(b + i), acc);
            sum = Vector512.Sum(acc);
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var acc = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), acc);
            sum = Vector256.Sum(acc);
        }
        for (; i < n; i++) sum += a[i] * b[i];
        return sum;
    }

    /// <summary>target[i] += scale · source[i] for i &lt; n (the attention-weighted sum of values).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AddScaled(float* target, float* source, float scale, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var s = Vector512.Create(scale);
            for (; i <= n - 16; i += 16) Vector512.FusedMultiplyAdd(Vector512.Load(source + i), s, Vector512.Load(target + i)).Store(target + i);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var s = Vector256.Create(scale);
            for (; i <= n - 8; i += 8) Vector256.FusedMultiplyAdd(Vector256.Load(source + i), s, Vector256.Load(target + i)).Store(target + i);
        }
        for (; i < n; i++) target[i] += scale * source[i];
    }

    /// <summary>2^112: a binary16 value is the float32 that <see cref="ScaleDownHalves(ushort*, float*, int, bool)"/> makes of it times this.</summary>
    public const float HalfScale = 5.192296858534828e33f;

    /// <summary>
    /// <see cref="Dot"/> with b given as IEEE binary16 bits and a as the other operand times <see cref="HalfScale"/>:
    /// Σ a[i] · (b[i] / HalfScale), in registers. Where a is x · HalfScale without overflow (|x| &lt; 2^16), every
    /// product is exactly x[i] · b[i], so the sum has the same bits as Dot of x and the widened b. With
    /// <paramref name="finite"/>, b must hold no infinity or NaN (see <see cref="ScaleDownFiniteHalves(Vector256{ushort})"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float DotScaledHalves(float* a, ushort* b, int n, bool finite)
    {
        int i = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            var acc = Vector512<float>.Zero;
            for (; i <= n - 16; i += 16) acc = Vector512.FusedMultiplyAdd(Vector512.Load(a + i), ScaleDown(Vector256.Load(b + i), finite), acc);
            sum = Vector512.Sum(acc);
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var acc = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), ScaleDown(Vector128.Load(b + i), finite), acc);
            sum = Vector256.Sum(acc);
        }
        for (; i < n; i++) sum += a[i] * ScaleDownHalf(b[i]);
        return sum;
    }

    /// <summary>
    /// result[c] = Σ_j (weights[j] · inverse) · v_j[c] for c &lt; n, v_j the IEEE binary16 row at valueBase + rows[j],
    /// over j in order, skipping zero weights: the same bits as <see cref="AddScaled"/> of each widened row in turn, with
    /// scale weights[j] · inverse, on a cleared result. Up to four vectors of the result stay in registers across all the
    /// rows (AddScaled stores the result and loads it back for the next row, which chains every row's multiply-adds
    /// behind the previous row's for a small head). <paramref name="finite"/> as for <see cref="DotScaledHalves"/>.
    /// </summary>
    public static void WeightedSumHalves(float* result, ushort* valueBase, ReadOnlySpan<long> rows, float* weights, float inverse, int n, bool finite)
    {
        int c = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            while (c <= n - 16)
            {
                int vectors = Math.Min(4, (n - c) / 16);
                Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (int j = 0; j < rows.Length; j++)
                {
                    if (weights[j] == 0f) continue;
                    // The scale rounded as AddScaled's, then times 2^112 (exact): each product is exactly AddScaled's.
                    var s = Vector512.Create(weights[j] * inverse * HalfScale);
                    ushort* v = valueBase + rows[j] + c;
                    a0 = Vector512.FusedMultiplyAdd(ScaleDown(Vector256.Load(v), finite), s, a0);
                    if (vectors > 1) a1 = Vector512.FusedMultiplyAdd(ScaleDown(Vector256.Load(v + 16), finite), s, a1);
                    if (vectors > 2) a2 = Vector512.FusedMultiplyAdd(ScaleDown(Vector256.Load(v + 32), finite), s, a2);
                    if (vectors > 3) a3 = Vector512.FusedMultiplyAdd(ScaleDown(Vector256.Load(v + 48), finite), s, a3);
                }
                a0.Store(result + c);
                if (vectors > 1) a1.Store(result + c + 16);
                if (vectors > 2) a2.Store(result + c + 32);
                if (vectors > 3) a3.Store(result + c + 48);
                c += 16 * vectors;
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            while (c <= n - 8)
            {
                int vectors = Math.Min(4, (n - c) / 8);
                Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (int j = 0; j < rows.Length; j++)
                {
                    if (weights[j] == 0f) continue;
                    var s = Vector256.Create(weights[j] * inverse * HalfScale);
                    ushort* v = valueBase + rows[j] + c;
                    a0 = Vector256.FusedMultiplyAdd(ScaleDown(Vector128.Load(v), finite), s, a0);
                    if (vectors > 1) a1 = Vector256.FusedMultiplyAdd(ScaleDown(Vector128.Load(v + 8), finite), s, a1);
                    if (vectors > 2) a2 = Vector256.FusedMultiplyAdd(ScaleDown(Vector128.Load(v + 16), finite), s, a2);
                    if (vectors > 3) a3 = Vector256.FusedMultiplyAdd(ScaleDown(Vector128.Load(v + 24), finite), s, a3);
                }
                a0.Store(result + c);
                if (vectors > 1) a1.Store(result + c + 8);
                if (vectors > 2) a2.Store(result + c + 16);
                if (vectors > 3) a3.Store(result + c + 24);
                c += 8 * vectors;
            }
        }
        for (; c < n; c++)
        {
            float sum = 0;
            for (int j = 0; j < rows.Length; j++)
                if (weights[j] != 0f) sum += weights[j] * inverse * HalfScale * ScaleDownHalf(valueBase[rows[j] + c]);
            result[c] = sum;
        }
    }

    /// <summary>
    /// destination[i] = source[i] (IEEE binary16 bits) / <see cref="HalfScale"/>, exactly, for i &lt; n.
    /// <paramref name="finite"/> as for <see cref="DotScaledHalves"/>.
    /// </summary>
    public static void ScaleDownHalves(ushort* source, float* destination, int n, bool finite)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i <= n - 16; i += 16) ScaleDown(Vector256.Load(source + i), finite).Store(destination + i);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= n - 8; i += 8) ScaleDown(Vector128.Load(source + i), finite).Store(destination + i);
        }
        for (; i < n; i++) destination[i] = ScaleDownHalf(source[i]);
    }

    // A binary16 value divided by 2^112 is a float32 made of the half's bits, moved: the sign to bit 31, exponent and
    // fraction 13 bits up, under a float exponent field that keeps the half's exponent e (a normal half's 2^(e-15)·1.f
    // becomes 2^(e-127)·1.f; a subnormal half, e = 0, a subnormal float of the same fraction). That is a sign extension,
    // a shift and a mask, against the dozen steps of an exact widening (WidenHalves), and the 2^112 goes into the other
    // operand of the multiply instead. Only exponent 31 (infinities, NaNs) needs more: the float's field must be 255.
    // (A subnormal half makes a subnormal operand, which may cost a microcode assist on some x86 cores; such small keys
    // and values are rare.)
    private const int ScaledKeep = unchecked((int)0x8FFFFFFF);
    private const uint HalfSpecialShifted = 0xF8000000; // a half's exponent field all ones, shifted to the top

    /// <summary>16 IEEE binary16 values (bits) divided exactly by <see cref="HalfScale"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> ScaleDownHalves(Vector256<ushort> halves)
    {
        var x = Vector512.WidenLower(halves.AsInt16().ToVector512Unsafe());
        // Bits 30..28 of x << 13 are copies of the sign; they must be 0, or 1 where the exponent is 31 (which with
        // bits 27..23 makes 255); the sign bit and the rest are right.
        var special = Vector512.GreaterThanOrEqual((x << 17).AsUInt32(), Vector512.Create(HalfSpecialShifted)).AsInt32();
        return Vector512.ConditionalSelect(Vector512.Create(ScaledKeep), x << 13, special).AsSingle();
    }

    /// <summary>8 IEEE binary16 values (bits) divided exactly by <see cref="HalfScale"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> ScaleDownHalves(Vector128<ushort> halves)
    {
        var x = Vector256.WidenLower(halves.AsInt16().ToVector256Unsafe());
        var special = Vector256.GreaterThanOrEqual((x << 17).AsUInt32(), Vector256.Create(HalfSpecialShifted)).AsInt32();
        return Vector256.ConditionalSelect(Vector256.Create(ScaledKeep), x << 13, special).AsSingle();
    }

    /// <summary>
    /// <see cref="ScaleDownHalves(Vector256{ushort})"/> of 16 finite binary16 values (no infinity, no NaN: for those it
    /// gives finite garbage), in half the instructions.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> ScaleDownFiniteHalves(Vector256<ushort> halves) =>
        ((Vector512.WidenLower(halves.AsInt16().ToVector512Unsafe()) << 13) & Vector512.Create(ScaledKeep)).AsSingle();

    /// <summary><see cref="ScaleDownHalves(Vector128{ushort})"/> of 8 finite binary16 values (as ScaleDownFiniteHalves of 16).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> ScaleDownFiniteHalves(Vector128<ushort> halves) =>
        ((Vector256.WidenLower(halves.AsInt16().ToVector256Unsafe()) << 13) & Vector256.Create(ScaledKeep)).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> ScaleDown(Vector256<ushort> halves, bool finite) => finite ? ScaleDownFiniteHalves(halves) : ScaleDownHalves(halves);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> ScaleDown(Vector128<ushort> halves, bool finite) => finite ? ScaleDownFiniteHalves(halves) : ScaleDownHalves(halves);

    /// <summary>One IEEE binary16 value (bits) divided exactly by <see cref="HalfScale"/> (a power of two, so the quotient is exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float ScaleDownHalf(ushort half) => (float)BitConverter.UInt16BitsToHalf(half) * (1f / HalfScale);

    /// <summary>destination[i] = source[i] (IEEE binary16 bits) widened exactly to float32, for i &lt; n.</summary>
    public static void WidenHalves(ushort* source, float* destination, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i <= n - 16; i += 16) WidenHalves(Vector256.Load(source + i)).Store(destination + i);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= n - 8; i += 8) WidenHalves(Vector128.Load(source + i)).Store(destination + i);
        }
        for (; i < n; i++) destination[i] = (float)BitConverter.UInt16BitsToHalf(source[i]);
    }

    // Exact binary16 -> binary32 in integer steps and one subtraction, with no denormal operand (which would cost a
    // microcode assist per instruction on many x86 cores). A half with exponent e and fraction f, shifted left 13, has f
    // in place; adding 112 to the exponent field gives 2^(e-15)·1.f for normal halves, and adding 224 turns exponent 31
    // into 255 (infinities and NaNs, fraction kept). A subnormal (e = 0) gets exponent 113, i.e. 2^-14 + f·2^-24, from
    // which 2^-14 is subtracted: f·2^-24 exactly (zero included). The sign is put back last.
    private const uint HalfSign = 0x8000, HalfMagnitude = 0x7FFF, HalfExponent = 0x7C00;
    private const uint NormalRebias = 112u << 23, SpecialRebias = 224u << 23, SubnormalRebias = 113u << 23;

    /// <summary>16 IEEE binary16 values (bits) widened exactly to float32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> WidenHalves(Vector256<ushort> halves)
    {
        var x = Vector512.WidenLower(halves.ToVector512Unsafe());
        var exponent = x & Vector512.Create(HalfExponent);
        var subnormalBias = Vector512.Equals(exponent, Vector512<uint>.Zero) & Vector512.Create(SubnormalRebias);
        var bias = Vector512.ConditionalSelect(Vector512.Equals(exponent, Vector512.Create(HalfExponent)),
            Vector512.Create(SpecialRebias), Vector512.Create(NormalRebias) | subnormalBias);
        var magnitude = (((x & Vector512.Create(HalfMagnitude)) << 13) + bias).AsSingle() - subnormalBias.AsSingle();
        return (magnitude.AsUInt32() | ((x & Vector512.Create(HalfSign)) << 16)).AsSingle();
    }

    /// <summary>8 IEEE binary16 values (bits) widened exactly to float32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> WidenHalves(Vector128<ushort> halves)
    {
        var x = Vector256.WidenLower(halves.ToVector256Unsafe());
        var exponent = x & Vector256.Create(HalfExponent);
        var subnormalBias = Vector256.Equals(exponent, Vector256<uint>.Zero) & Vector256.Create(SubnormalRebias);
        var bias = Vector256.ConditionalSelect(Vector256.Equals(exponent, Vector256.Create(HalfExponent)),
            Vector256.Create(SpecialRebias), Vector256.Create(NormalRebias) | subnormalBias);
        var magnitude = (((x & Vector256.Create(HalfMagnitude)) << 13) + bias).AsSingle() - subnormalBias.AsSingle();
        return (magnitude.AsUInt32() | ((x & Vector256.Create(HalfSign)) << 16)).AsSingle();
    }
}
