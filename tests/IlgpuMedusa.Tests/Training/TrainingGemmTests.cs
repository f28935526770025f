using IlgpuMedusa.Medusa.Training;

namespace IlgpuMedusa.Tests.Training;

/// <summary>The training matrix product against a plain double-precision triple loop, on shapes around its block sizes.</summary>
public unsafe class TrainingGemmTests
{
    public static TheoryData<int, int, int> Shapes() => new()
    {
        { 1, 1, 1 },
        { 3, 5, 7 },
        { 4, 32, 16 },
        { 5, 33, 31 },
        { 8, 64, 300 },
        { 9, 70, 513 },   // K cut in blocks of 256, with a remainder
        { 13, 95, 600 },
        { 64, 288, 40 },  // above the parallel threshold
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void ProductMatchesTripleLoopForEveryOperandLayout(int m, int n, int k)
    {
        var random = new Random(m * 1000 + n * 10 + k);
        float[] Fill(int count) => Enumerable.Range(0, count).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        var a = Fill(m * k);            // A [M, K]
        var aTransposed = new float[k * m];
        for (int i = 0; i < m; i++)
            for (int p = 0; p < k; p++) aTransposed[p * m + i] = a[i * k + p];
        var b = Fill(k * n);            // B [K, N]
        var bTransposed = new float[n * k]; // [N, K]: what PackTransposed takes
        for (int p = 0; p < k; p++)
            for (int j = 0; j < n; j++) bTransposed[j * k + p] = b[p * n + j];
        var packed = new float[TrainingGemm.PackedLength(n, k)];
        TrainingGemm.PackTransposed(bTransposed, n, k, packed, threads: 2);
        var initial = Fill(m * n);
        var expected = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int p = 0; p < k; p++) sum += (double)a[i * k + p] * b[p * n + j];
                expected[i * n + j] = sum;
            }

        foreach (bool transposedA in new[] { false, true })
            foreach (bool packedB in new[] { false, true })
                foreach (bool accumulate in new[] { false, true })
                    foreach (int threads in new[] { 1, 2 })
                    {
                        var c = (float[])initial.Clone();
                        fixed (float* pa = transposedA ? aTransposed : a, pb = packedB ? packed : b, pc = c)
                        {
                            var left = transposedA ? GemmA.Transposed(pa, m) : GemmA.RowMajor(pa, k);
                            var right = packedB ? GemmB.Packed(pb, k) : GemmB.RowMajor(pb, n);
                            TrainingGemm.Multiply(m, n, k, left, right, pc, n, accumulate, threads);
                        }
                        for (int i = 0; i < m * n; i++)
                        {
                            double want = expected[i] + (accumulate ? initial[i] : 0);
                            Assert.True(Math.Abs(c[i] - want) <= 1e-4 * (1 + Math.Sqrt(k)),
                                $"[{m}x{k}]·[{k}x{n}] transposedA={transposedA} packedB={packedB} accumulate={accumulate} threads={threads}: C[{i / n}, {i % n}] = {c[i]}, expected {want}");
                        }
                    }
    }

    [Fact]
    public void EmptyInnerDimensionClearsOrKeepsTheOutput()
    {
        var c = new float[] { 1, 2, 3, 4 };
        var a = new float[1];
        fixed (float* pa = a, pc = c)
        {
            TrainingGemm.Multiply(2, 2, 0, GemmA.RowMajor(pa, 0), GemmB.RowMajor(pa, 2), pc, 2, accumulate: true, threads: 1);
            Assert.Equal([1f, 2, 3, 4], c);
            TrainingGemm.Multiply(2, 2, 0, GemmA.RowMajor(pa, 0), GemmB.RowMajor(pa, 2), pc, 2, accumulate: false, threads: 1);
            Assert.Equal([0f, 0, 0, 0], c);
        }
    }
}
