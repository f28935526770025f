using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace IlgpuMedusa.Medusa.Training;

/// <summary>
/// A left operand A[M, K] read through two strides: element (i, k) is at <c>Data[i · RowStride + k · ColumnStride]</c>,
/// so a row-major matrix and its transpose are both views (no copy).
/// </summary>
internal readonly unsafe struct GemmA(float* data, long rowStride, long columnStride)
{
    public float* Data { get; } = data;
    public long RowStride { get; } = rowStride;
    public long ColumnStride { get; } = columnStride;

    /// <summary>A row-major [M, K] matrix with <paramref name="ld"/> floats per row.</summary>
    public static GemmA RowMajor(float* data, long ld) => new(data, ld, 1);

    /// <summary>The transpose of a row-major [K, M] matrix with <paramref name="ld"/> floats per row.</summary>
    public static GemmA Transposed(float* data, long ld) => new(data, 1, ld);
}

/// <summary>
/// A right operand B[K, N] cut into panels of <see cref="TrainingGemm.PanelWidth"/> columns: element (k, j) is at
/// <c>Data[(j / 32) · PanelStride + k · RowStride + j % 32]</c>. A row-major matrix is the case PanelStride = 32,
/// RowStride = ld; a packed one (<see cref="TrainingGemm.PackTransposed"/>) has PanelStride = 32·K, RowStride = 32, so each
/// panel is one contiguous block and the kernel's loads run in order.
/// </summary>
internal readonly unsafe struct GemmB(float* data, long rowStride, long panelStride)
{
    public float* Data { get; } = data;
    public long RowStride { get; } = rowStride;
    public long PanelStride { get; } = panelStride;

    /// <summary>A row-major [K, N] matrix with <paramref name="ld"/> floats per row.</summary>
    public static GemmB RowMajor(float* data, long ld) => new(data, ld, TrainingGemm.PanelWidth);

    /// <summary>A matrix packed by <see cref="TrainingGemm.PackTransposed"/> with inner dimension <paramref name="k"/>.</summary>
    public static GemmB Packed(float* data, int k) => new(data, TrainingGemm.PanelWidth, (long)TrainingGemm.PanelWidth * k);

    public float* Panel(int panel) => Data + panel * PanelStride;
}

/// <summary>
/// Single-precision matrix products for head training: C[M, N] (+)= A[M, K] · B[K, N]. The kernel keeps a 4 x 32 block
/// of C in 16 256-bit registers and adds one rank-1 update per k (4 B loads, 4 broadcasts, 16 fused multiply-adds), the
/// usual register-blocked outer-product loop; where 512-bit vectors run natively an 8 x 32 block takes 16 512-bit
/// registers (2 B loads, 8 broadcasts, 16 fused multiply-adds of twice the width). K is cut in blocks so the B block and the A rows stay in the core's cache;
/// the larger of M and N is split over threads. Edges (M not a multiple of 4, N not of 32) take a scalar loop.
/// </summary>
internal static unsafe class TrainingGemm
{
    /// <summary>Columns of C computed by one kernel call (4 vectors of 8 floats).</summary>
    public const int PanelWidth = 32;
    private const int RowBlock = 4;
    private const int KBlock = 256;
    /// <summary>Below this many multiply-adds a product runs on the calling thread.</summary>
    private const long ParallelThreshold = 1 << 20;

    /// <summary>C[M, N] (row-major, <paramref name="ldc"/>) = (or +=) A · B, using up to <paramref name="threads"/> threads.</summary>
    public static void Multiply(int m, int n, int k, GemmA a, GemmB b, float* c, long ldc, bool accumulate, int threads)
    {
        if (m == 0 || n == 0) return;
        if (k == 0)
        {
            if (!accumulate)
                for (int i = 0; i < m; i++) new Span<float>(c + i * ldc, n).Clear();
            return;
        }
        int rowBlocks = (m + RowBlock - 1) / RowBlock, panels = (n + PanelWidth - 1) / PanelWidth;
        bool splitRows = rowBlocks >= panels;
        int units = splitRows ? rowBlocks : panels;
        int parts = (long)m * n * k < ParallelThreshold || threads <= 1 ? 1 : Math.Min(units, threads * 2);
        int kBlock = k <= 2 * KBlock ? k : KBlock;
        void Part(int part)
        {
            int u0 = (int)((long)units * part / parts), u1 = (int)((long)units * (part + 1) / parts);
            int r0 = splitRows ? u0 * RowBlock : 0, r1 = splitRows ? Math.Min(m, u1 * RowBlock) : m;
            int p0 = splitRows ? 0 : u0, p1 = splitRows ? panels : u1;
            for (int k0 = 0; k0 < k; k0 += kBlock)
            {
                int kc = Math.Min(kBlock, k - k0);
                bool add = accumulate || k0 > 0;
                for (int panel = p0; panel < p1; panel++)
                {
                    int j0 = panel * PanelWidth, width = Math.Min(PanelWidth, n - j0);
                    float* bBlock = b.Panel(panel) + k0 * b.RowStride;
                    for (int i = r0; i < r1;)
                    {
                        int rows = r1 - i;
                        float* aBlock = a.Data + i * a.RowStride + k0 * a.ColumnStride;
                        float* cBlock = c + i * ldc + j0;
                        if (rows >= 2 * RowBlock && width == PanelWidth && Vector512.IsHardwareAccelerated)
                        {
                            Kernel8x32(aBlock, a.RowStride, a.ColumnStride, bBlock, b.RowStride, kc, cBlock, ldc, add);
                            i += 2 * RowBlock;
                        }
                        else if (rows >= RowBlock && width == PanelWidth && Vector256.IsHardwareAccelerated)
                        {
                            Kernel4x32(aBlock, a.RowStride, a.ColumnStride, bBlock, b.RowStride, kc, cBlock, ldc, add);
                            i += RowBlock;
                        }
                        else
                        {
                            rows = Math.Min(RowBlock, rows);
                            KernelEdge(rows, width, aBlock, a.RowStride, a.ColumnStride, bBlock, b.RowStride, kc, cBlock, ldc, add);
                            i += rows;
                        }
                    }
                }
            }
        }
        if (parts == 1) Part(0);
        else Parallel.For(0, parts, new ParallelOptions { MaxDegreeOfParallelism = threads }, Part);
    }

    /// <summary>Floats <see cref="PackTransposed"/> writes for a [rows, k] source: whole panels of 32 rows.</summary>
    public static long PackedLength(int rows, int k) => (long)((rows + PanelWidth - 1) / PanelWidth) * PanelWidth * k;

    /// <summary>
    /// Packs the transpose of a row-major matrix M[rows, k] as a <see cref="GemmB"/> of shape [k, rows]: panel p holds
    /// M[32p + c, kk] at kk · 32 + c (missing rows of the last panel are zero). For logits = Z · Eᵀ with E [V, D].
    /// </summary>
    public static void PackTransposed(ReadOnlySpan<float> source, int rows, int k, Span<float> packed, int threads)
    {
        int panels = (rows + PanelWidth - 1) / PanelWidth;
        if (packed.Length < PackedLength(rows, k)) throw new ArgumentException($"packed buffer of {packed.Length} floats is smaller than {PackedLength(rows, k)}");
        fixed (float* src = source)
        fixed (float* dst = packed)
        {
            float* s = src, d = dst;
            Parallel.For(0, panels, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads) }, p =>
            {
                float* panel = d + (long)p * PanelWidth * k;
                for (int c = 0; c < PanelWidth; c++)
                {
                    int row = p * PanelWidth + c;
                    if (row < rows)
                    {
                        float* r = s + (long)row * k;
                        for (int kk = 0; kk < k; kk++) panel[kk * PanelWidth + c] = r[kk];
                    }
                    else
                    {
                        for (int kk = 0; kk < k; kk++) panel[kk * PanelWidth + c] = 0;
                    }
                }
            });
        }
    }

    // C[8, 32] (+)= Σ_p A[0..7, p] ⊗ B[p, 0..31], with 512-bit vectors: 2 B loads and 8 broadcasts feed 16 fused multiply-adds
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel8x32(float* a, long ars, long acs, float* b, long brs, int k, float* c, long ldc, bool accumulate)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default;
        Vector512<float> c40 = default, c41 = default, c50 = default, c51 = default, c60 = default, c61 = default, c70 = default, c71 = default;
        float* a0 = a;
        for (int p = 0; p < k; p++)
        {
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            var x = Vector512.Create(a0[0]);
            c00 = Vector512.FusedMultiplyAdd(x, b0, c00);
            c01 = Vector512.FusedMultiplyAdd(x, b1, c01);
            x = Vector512.Create(a0[ars]);
            c10 = Vector512.FusedMultiplyAdd(x, b0, c10);
            c11 = Vector512.FusedMultiplyAdd(x, b1, c11);
            x = Vector512.Create(a0[2 * ars]);
            c20 = Vector512.FusedMultiplyAdd(x, b0, c20);
            c21 = Vector512.FusedMultiplyAdd(x, b1, c21);
            x = Vector512.Create(a0[3 * ars]);
            c30 = Vector512.FusedMultiplyAdd(x, b0, c30);
            c31 = Vector512.FusedMultiplyAdd(x, b1, c31);
            x = Vector512.Create(a0[4 * ars]);
            c40 = Vector512.FusedMultiplyAdd(x, b0, c40);
            c41 = Vector512.FusedMultiplyAdd(x, b1, c41);
            x = Vector512.Create(a0[5 * ars]);
            c50 = Vector512.FusedMultiplyAdd(x, b0, c50);
            c51 = Vector512.FusedMultiplyAdd(x, b1, c51);
            x = Vector512.Create(a0[6 * ars]);
            c60 = Vector512.FusedMultiplyAdd(x, b0, c60);
            c61 = Vector512.FusedMultiplyAdd(x, b1, c61);
            x = Vector512.Create(a0[7 * ars]);
            c70 = Vector512.FusedMultiplyAdd(x, b0, c70);
            c71 = Vector512.FusedMultiplyAdd(x, b1, c71);
            a0 += acs;
            b += brs;
        }
        Store(c, accumulate, c00, c01);
        Store(c + ldc, accumulate, c10, c11);
        Store(c + 2 * ldc, accumulate, c20, c21);
        Store(c + 3 * ldc, accumulate, c30, c31);
        Store(c + 4 * ldc, accumulate, c40, c41);
        Store(c + 5 * ldc, accumulate, c50, c51);
        Store(c + 6 * ldc, accumulate, c60, c61);
        Store(c + 7 * ldc, accumulate, c70, c71);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(float* c, bool accumulate, Vector512<float> v0, Vector512<float> v1)
    {
        if (accumulate)
        {
            v0 += Vector512.Load(c);
            v1 += Vector512.Load(c + 16);
        }
        v0.Store(c);
        v1.Store(c + 16);
    }

    // C[4, 32] (+)= Σ_p A[0..3, p] ⊗ B[p, 0..31]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel4x32(float* a, long ars, long acs, float* b, long brs, int k, float* c, long ldc, bool accumulate)
    {
        Vector256<float> c00 = default, c01 = default, c02 = default, c03 = default;
        Vector256<float> c10 = default, c11 = default, c12 = default, c13 = default;
        Vector256<float> c20 = default, c21 = default, c22 = default, c23 = default;
        Vector256<float> c30 = default, c31 = default, c32 = default, c33 = default;
        float* a0 = a, a1 = a + ars, a2 = a + 2 * ars, a3 = a + 3 * ars;
        for (int p = 0; p < k; p++)
        {
            var b0 = Vector256.Load(b);
            var b1 = Vector256.Load(b + 8);
            var b2 = Vector256.Load(b + 16);
            var b3 = Vector256.Load(b + 24);
            var x = Vector256.Create(*a0);
            c00 = Vector256.FusedMultiplyAdd(x, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(x, b1, c01);
            c02 = Vector256.FusedMultiplyAdd(x, b2, c02);
            c03 = Vector256.FusedMultiplyAdd(x, b3, c03);
            x = Vector256.Create(*a1);
            c10 = Vector256.FusedMultiplyAdd(x, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(x, b1, c11);
            c12 = Vector256.FusedMultiplyAdd(x, b2, c12);
            c13 = Vector256.FusedMultiplyAdd(x, b3, c13);
            x = Vector256.Create(*a2);
            c20 = Vector256.FusedMultiplyAdd(x, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(x, b1, c21);
            c22 = Vector256.FusedMultiplyAdd(x, b2, c22);
            c23 = Vector256.FusedMultiplyAdd(x, b3, c23);
            x = Vector256.Create(*a3);
            c30 = Vector256.FusedMultiplyAdd(x, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(x, b1, c31);
            c32 = Vector256.FusedMultiplyAdd(x, b2, c32);
            c33 = Vector256.FusedMultiplyAdd(x, b3, c33);
            a0 += acs;
            a1 += acs;
            a2 += acs;
            a3 += acs;
            b += brs;
        }
        Store(c, accumulate, c00, c01, c02, c03);
        Store(c + ldc, accumulate, c10, c11, c12, c13);
        Store(c + 2 * ldc, accumulate, c20, c21, c22, c23);
        Store(c + 3 * ldc, accumulate, c30, c31, c32, c33);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(float* c, bool accumulate, Vector256<float> v0, Vector256<float> v1, Vector256<float> v2, Vector256<float> v3)
    {
        if (accumulate)
        {
            v0 += Vector256.Load(c);
            v1 += Vector256.Load(c + 8);
            v2 += Vector256.Load(c + 16);
            v3 += Vector256.Load(c + 24);
        }
        v0.Store(c);
        v1.Store(c + 8);
        v2.Store(c + 16);
        v3.Store(c + 24);
    }

    private static void KernelEdge(int rows, int width, float* a, long ars, long acs, float* b, long brs, int k, float* c, long ldc, bool accumulate)
    {
        Span<float> sums = stackalloc float[PanelWidth];
        for (int i = 0; i < rows; i++)
        {
            sums.Clear();
            float* ai = a + i * ars;
            for (int p = 0; p < k; p++)
            {
                float x = ai[p * acs];
                float* bp = b + p * brs;
                for (int j = 0; j < width; j++) sums[j] += x * bp[j];
            }
            float* ci = c + i * ldc;
            for (int j = 0; j < width; j++) ci[j] = accumulate ? ci[j] + sums[j] : sums[j];
        }
    }
}
