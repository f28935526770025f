using System.Runtime.InteropServices;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Models;
using Xunit;

namespace IlgpuMedusa.Tests.Compute;

/// <summary>
/// The host backend's packed weights (F32 matrices stored in 16-row panels) against a plain triple loop in double
/// precision: every token-group size of the panel kernel (1..8 and remainders), odd panel counts, ragged last panels.
/// </summary>
public sealed unsafe class HostBackendTests : IDisposable
{
    private readonly HostBackend _backend = new(threads: 2);
    private readonly List<nint> _native = [];

    public void Dispose()
    {
        _backend.Dispose();
        foreach (var p in _native) NativeMemory.Free((void*)p);
    }

    private TensorData Weight(float[] values, int rows, int columns)
    {
        var p = (nint)NativeMemory.Alloc((nuint)(values.Length * sizeof(float)));
        _native.Add(p);
        values.CopyTo(new Span<float>((void*)p, values.Length));
        return new TensorData("w", DType.F32, [rows, columns], p);
    }

    private static float[] Random(Random random, int count)
    {
        var v = new float[count];
        for (int i = 0; i < count; i++) v[i] = (float)(random.NextDouble() * 2 - 1);
        return v;
    }

    /// <summary>Qwen3's per-head norm worked by hand: Dh 2, one query head, one key head, the value untouched.</summary>
    [Fact]
    public void Head_rms_norm_matches_hand_computed_values()
    {
        using var qkv = _backend.Allocate(DType.F32, 2, 6);
        // Row 0: q = (3, 4), k = (0, 2), v = (7, 9). Row 1: q = (−1, 1), k = (6, −8), v = (5, 5).
        _backend.Upload(qkv, new float[] { 3, 4, 0, 2, 7, 9, -1, 1, 6, -8, 5, 5 });
        using var queryWeight = _backend.UploadWeight([Weight([1f, 2f], 1, 2)], DType.F32);
        using var keyWeight = _backend.UploadWeight([Weight([0.5f, 3f], 1, 2)], DType.F32);
        _backend.HeadRmsNorm(qkv, 1, 1, 2, queryWeight, keyWeight, 1e-6f);
        var actual = new float[12];
        _backend.Download(qkv, actual);
        // q: mean square 12.5, so (3, 4)/√12.5 ⊙ (1, 2) = (0.848528, 2.262742); k: mean square 2, (0, 2)/√2 ⊙ (0.5, 3) =
        // (0, 4.242641); row 1: q mean square 1 → (−1, 2); k mean square 50 → (6, −8)/√50 ⊙ (0.5, 3) = (0.424264, −3.394113).
        float[] expected = [0.848528f, 2.262742f, 0f, 4.242641f, 7f, 9f, -1f, 2f, 0.424264f, -3.394113f, 5f, 5f];
        for (int i = 0; i < 12; i++) Assert.True(Math.Abs(expected[i] - actual[i]) < 2e-5f, $"element {i}: expected {expected[i]}, got {actual[i]}");
        // Four heads of 2 do not fit 6 columns; a weight of another length is not a head's.
        var tooMany = Assert.ThrowsAny<ArgumentException>(() => _backend.HeadRmsNorm(qkv, 3, 1, 2, queryWeight, keyWeight, 1e-6f));
        Assert.Contains("HeadRmsNorm", tooMany.Message);
        Assert.ThrowsAny<ArgumentException>(() => _backend.HeadRmsNorm(qkv, 1, 1, 3, queryWeight, keyWeight, 1e-6f));
    }

    [Theory]
    [InlineData(2, 3)]
    [InlineData(16, 16)]
    [InlineData(33, 31)]   // three panels: an odd pair, a ragged last panel
    [InlineData(64, 288)]
    [InlineData(100, 17)]
    public void Packed_matmul_matches_a_plain_loop_for_every_token_count(int n, int k)
    {
        var random = new Random(n * 1000 + k);
        var w = Random(random, n * k);
        using var weight = _backend.UploadWeight([Weight(w, n, k)], DType.F32);
        foreach (int tokens in new[] { 1, 2, 3, 4, 5, 6, 7, 8, 9, 17 })
        {
            foreach (bool accumulate in new[] { false, true })
            {
                var x = Random(random, tokens * k);
                var start = Random(random, tokens * n);
                using var input = _backend.Allocate(DType.F32, tokens, k);
                using var output = _backend.Allocate(DType.F32, tokens, n);
                _backend.Upload(input, x);
                _backend.Upload(output, start);
                _backend.MatMul(output, input, weight, accumulate);
                var actual = new float[tokens * n];
                _backend.Download(output, actual);
                for (int t = 0; t < tokens; t++)
                {
                    for (int r = 0; r < n; r++)
                    {
                        double sum = accumulate ? start[t * n + r] : 0, magnitude = Math.Abs(sum);
                        for (int j = 0; j < k; j++)
                        {
                            sum += (double)w[r * k + j] * x[t * k + j];
                            magnitude += Math.Abs((double)w[r * k + j] * x[t * k + j]);
                        }
                        Assert.True(Math.Abs(actual[t * n + r] - sum) <= 1e-5 * magnitude + 1e-6,
                            $"n={n} k={k} T={tokens} accumulate={accumulate}: out[{t},{r}] = {actual[t * n + r]}, expected {sum}");
                    }
                }
            }
        }
    }

    [Fact]
    public void SlicesWhoseEndOverflowsAnIntAreRefused()
    {
        using var tensor = _backend.Allocate(DType.I32, 4, 1);
        // 2 + (int.MaxValue − 1) wraps to a negative int: the range check must not pass it (it let a later upload write
        // past the buffer).
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => tensor.Slice(2, int.MaxValue - 1));
        Assert.Contains("2147483648", e.Message, StringComparison.Ordinal);
        Assert.Equal(2, tensor.Slice(2, 2).Rows);
    }

    [Fact]
    public void Packed_weight_downloads_and_embeds_its_rows_exactly()
    {
        const int n = 37, k = 29;
        var w = Random(new Random(7), n * k);
        using var table = _backend.UploadWeight([Weight(w, n, k)], DType.F32);
        var back = new float[n * k];
        _backend.Download(table, back);
        Assert.Equal(w, back);

        int[] ids = [0, 15, 16, 36];
        using var tokens = _backend.Allocate(DType.I32, ids.Length, 1);
        using var rows = _backend.Allocate(DType.F32, ids.Length, k);
        _backend.Upload(tokens, ids);
        _backend.Embedding(rows, tokens, table);
        var embedded = new float[ids.Length * k];
        _backend.Download(rows, embedded);
        for (int i = 0; i < ids.Length; i++)
            Assert.Equal(w.AsSpan(ids[i] * k, k).ToArray(), embedded.AsSpan(i * k, k).ToArray());
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Grouped_matmul_equals_one_matmul_per_group_also_on_whole_panels_of_the_stack(bool sharedInput)
    {
        // Three groups of 48 rows (three panels each: an odd panel count per group) of a packed [144, 40] weight.
        const int groups = 3, n = 48, k = 40;
        var random = new Random(sharedInput ? 1 : 2);
        var w = Random(random, groups * n * k);
        var x = Random(random, (sharedInput ? 1 : groups) * k);
        // Matrices are packed in panels, and grouped in one launch, only where the CPU has 512-bit vectors; elsewhere they
        // stay row-major and GroupedMatMul runs one matmul per group. Both must give the same products.
        bool panels = System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated;
        Assert.Equal(panels, _backend.CanGroupMatMul(n));
        Assert.False(_backend.CanGroupMatMul(40));
        using var stacked = _backend.UploadWeight([Weight(w, groups * n, k)], DType.F32);
        Assert.Equal(panels, ((HostTensor)stacked).Packed);
        using var input = _backend.Allocate(DType.F32, sharedInput ? 1 : groups, k);
        _backend.Upload(input, x);
        for (int used = 1; used <= groups; used++)
        {
            using var output = _backend.Allocate(DType.F32, used, n);
            var weight = used == groups ? stacked : stacked.Slice(0, used * n);
            _backend.GroupedMatMul(output, sharedInput ? input : input.Slice(0, used), weight);
            var actual = new float[used * n];
            _backend.Download(output, actual);
            for (int g = 0; g < used; g++)
                for (int r = 0; r < n; r++)
                {
                    double expected = 0;
                    for (int j = 0; j < k; j++) expected += (double)w[(g * n + r) * k + j] * x[(sharedInput ? 0 : g) * k + j];
                    Assert.True(Math.Abs(actual[g * n + r] - expected) <= 1e-5 * (1 + Math.Abs(expected)), $"group {g} row {r}: {actual[g * n + r]} vs {expected}");
                }
        }
        if (panels) Assert.Throws<InvalidOperationException>(() => stacked.Slice(8, 16)); // not on a panel boundary
        else Assert.Equal(16, stacked.Slice(8, 16).Rows);
    }

    [Fact]
    public void Packed_f16_weight_widens_every_half_exactly_subnormals_and_specials_included()
    {
        // 40 rows x 24 columns of halves: normal values of every size, subnormals, ±0 and the largest half; column 5 of
        // the second weight holds ±∞ and NaN. A one-hot input picks one column, so each output is one weight times 1.
        const int n = 40, k = 24;
        var random = new Random(8);
        var halves = new Half[n * k];
        for (int i = 0; i < halves.Length; i++)
        {
            halves[i] = (i % 7) switch
            {
                0 => BitConverter.UInt16BitsToHalf((ushort)random.Next(1, 0x400)),            // subnormal
                1 => BitConverter.UInt16BitsToHalf((ushort)(0x8000 | random.Next(1, 0x400))), // negative subnormal
                2 => i % 2 == 0 ? Half.Zero : Half.NegativeZero,
                3 => Half.MaxValue,
                _ => (Half)((random.NextDouble() - 0.5) * Math.Pow(2, random.Next(-14, 15))),
            };
        }
        var specials = (Half[])halves.Clone();
        for (int r = 0; r < n; r++) specials[r * k + 5] = (r % 3) switch { 0 => Half.PositiveInfinity, 1 => Half.NegativeInfinity, _ => Half.NaN };
        foreach (var (values, columns) in new[] { (halves, Enumerable.Range(0, k).ToArray()), (specials, new[] { 5 }) })
        {
            var bytes = new byte[values.Length * 2];
            for (int i = 0; i < values.Length; i++) BitConverter.TryWriteBytes(bytes.AsSpan(2 * i), BitConverter.HalfToUInt16Bits(values[i]));
            var handle = System.Runtime.InteropServices.GCHandle.Alloc(bytes, System.Runtime.InteropServices.GCHandleType.Pinned);
            try
            {
                using var weight = _backend.UploadWeight([new TensorData("w", DType.F16, [n, k], handle.AddrOfPinnedObject())], DType.F16);
                Assert.Equal(DType.F16, weight.Type);
                using var input = _backend.Allocate(DType.F32, 1, k);
                using var output = _backend.Allocate(DType.F32, 1, n);
                var result = new float[n];
                foreach (int j in columns)
                {
                    var x = new float[k];
                    x[j] = 1f;
                    _backend.Upload(input, x);
                    _backend.MatMul(output, input, weight, accumulate: false);
                    _backend.Download(output, result);
                    for (int r = 0; r < n; r++)
                        Assert.True(result[r].Equals((float)values[r * k + j]), $"row {r} column {j}: {result[r]} for the half {(float)values[r * k + j]}");
                }
            }
            finally
            {
                handle.Free();
            }
        }
    }

    [Fact]
    public void Packed_bf16_weight_multiplies_the_rounded_values()
    {
        // An F32 matrix stored as BF16 (rounded to nearest even): the matmul, a download and an embedding lookup all see
        // the rounded values. 37 rows: a last panel pair with one partial panel.
        const int n = 37, k = 32, tokens = 3;
        var random = new Random(12);
        var w = Random(random, n * k);
        var x = Random(random, tokens * k);
        var rounded = w.Select(v => IlgpuMedusa.Models.HalfConversions.BFloat16ToSingle(IlgpuMedusa.Models.HalfConversions.SingleToBFloat16(v))).ToArray();
        Assert.NotEqual(w, rounded);
        using var weight = _backend.UploadWeight([Weight(w, n, k)], DType.BF16);
        Assert.Equal(DType.BF16, weight.Type);
        var back = new float[n * k];
        if (((HostTensor)weight).Packed)
        {
            _backend.Download(weight, back);
        }
        else
        {
            // Row-major (no 512-bit vectors): the stored halves themselves, read in place.
            var bits = new ReadOnlySpan<ushort>((void*)((HostTensor)weight).Pointer, n * k);
            for (int i = 0; i < back.Length; i++) back[i] = IlgpuMedusa.Models.HalfConversions.BFloat16ToSingle(bits[i]);
        }
        Assert.Equal(rounded, back);
        using var input = _backend.Allocate(DType.F32, tokens, k);
        using var output = _backend.Allocate(DType.F32, tokens, n);
        _backend.Upload(input, x);
        _backend.MatMul(output, input, weight, accumulate: false);
        var actual = new float[tokens * n];
        _backend.Download(output, actual);
        for (int t = 0; t < tokens; t++)
            for (int r = 0; r < n; r++)
            {
                double expected = 0;
                for (int j = 0; j < k; j++) expected += (double)rounded[r * k + j] * x[t * k + j];
                Assert.True(Math.Abs(actual[t * n + r] - expected) <= 1e-5 * (1 + Math.Abs(expected)), $"token {t} row {r}: {actual[t * n + r]} vs {expected}");
            }
        using var ids = _backend.Allocate(DType.I32, 1, 1);
        using var row = _backend.Allocate(DType.F32, 1, k);
        _backend.Upload(ids, [30]);
        _backend.Embedding(row, ids, weight);
        var embedded = new float[k];
        _backend.Download(row, embedded);
        Assert.Equal(rounded.AsSpan(30 * k, k).ToArray(), embedded);
    }

    [Fact]
    public void Packed_weight_refuses_uses_that_need_rows_in_order()
    {
        using var weight = _backend.UploadWeight([Weight(new float[4 * 8], 4, 8)], DType.F32);
        using var output = _backend.Allocate(DType.F32, 4, 8);
        if (!((HostTensor)weight).Packed)
        {
            // Without 512-bit vectors weights stay row-major, so rows in order are there to use.
            Assert.False(System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated);
            Assert.Equal(2, weight.Slice(0, 2).Rows);
            _backend.Add(output, weight, weight);
            return;
        }
        Assert.Throws<InvalidOperationException>(() => weight.Slice(0, 2));
        var e = Assert.Throws<ArgumentException>(() => _backend.Add(output, weight, weight));
        Assert.Contains("[4, 8]", e.Message);
    }

    [Theory]
    [InlineData(1, 2, 3)]
    [InlineData(1, 1000, 288)]
    [InlineData(9, 1000, 64)]
    [InlineData(3, 37, 29)]
    public void Split_classifier_argmax_equals_the_argmax_of_exact_logits(int tokens, int n, int k)
    {
        var random = new Random(n + 31 * k + tokens);
        var w = Random(random, n * k);
        using var classifier = _backend.UploadClassifier([Weight(w, n, k)], DType.F32);
        using var input = _backend.Allocate(DType.F32, tokens, k);
        using var scratch = _backend.Allocate(DType.F32, tokens, n);
        using var ids = _backend.Allocate(DType.I32, tokens, 1);
        for (int trial = 0; trial < 20; trial++)
        {
            var x = Random(random, tokens * k);
            if (trial % 2 == 1)
            {
                // Near-ties: make row 7 % n a copy of the current best row plus a tiny change, so the high halves cannot tell them apart.
                int a = 0, b = 7 % n;
                for (int j = 0; j < k; j++) w[b * k + j] = w[a * k + j] + (j == 0 ? 1e-6f : 0f);
            }
            using var c = trial % 2 == 1 ? _backend.UploadClassifier([Weight(w, n, k)], DType.F32) : null;
            var weight = c ?? classifier;
            _backend.Upload(input, x);
            _backend.ProductArgMax(ids, input, weight, scratch);
            var actual = new int[tokens];
            _backend.Download(ids, actual);
            for (int t = 0; t < tokens; t++)
            {
                // Exact logits in double: the argmax must be the best row, or a row within float rounding of it.
                double best = double.NegativeInfinity;
                int bestRow = -1;
                var exact = new double[n];
                for (int r = 0; r < n; r++)
                {
                    for (int j = 0; j < k; j++) exact[r] += (double)w[r * k + j] * x[t * k + j];
                    if (exact[r] > best) (best, bestRow) = (exact[r], r);
                }
                Assert.True(actual[t] >= 0 && actual[t] < n, $"trial {trial} row {t}: id {actual[t]} is not a row");
                Assert.True(actual[t] == bestRow || best - exact[actual[t]] <= 1e-5 * Math.Max(1, Math.Abs(best)),
                    $"T={tokens} n={n} k={k} trial {trial} row {t}: argmax {actual[t]} (logit {exact[actual[t]]}) but row {bestRow} has {best}");
            }
        }
    }

    /// <summary>
    /// The argmax under a mask (a constraint's 0 / −∞, and finite offsets too) is the best allowed row of the exact
    /// logits computed in double, or one within float rounding of it, for a split classifier (its bounded pass) and a
    /// plain weight (the whole row); a mask that leaves one row picks it, and the −∞ rows are never chosen.
    /// </summary>
    [Theory]
    [InlineData(1000, 288, true)]
    [InlineData(37, 29, true)]
    [InlineData(300, 64, false)]
    public void Adjusted_argmax_is_the_best_allowed_row_of_exact_logits(int n, int k, bool classifier)
    {
        var random = new Random(n + 7 * k);
        var w = Random(random, n * k);
        using var weight = classifier ? _backend.UploadClassifier([Weight(w, n, k)], DType.F32) : _backend.UploadWeight([Weight(w, n, k)], DType.F32);
        using var input = _backend.Allocate(DType.F32, 1, k);
        using var scratch = _backend.Allocate(DType.F32, 1, n);
        for (int trial = 0; trial < 30; trial++)
        {
            var x = Random(random, k);
            _backend.Upload(input, x);
            var exact = new double[n];
            for (int r = 0; r < n; r++)
                for (int j = 0; j < k; j++) exact[r] += (double)w[r * k + j] * x[j];
            var adjust = new float[n];
            int only = random.Next(n);
            for (int r = 0; r < n; r++)
                adjust[r] = trial % 3 == 2 ? (r == only ? 0f : float.NegativeInfinity) // one row left
                    : random.NextDouble() < 0.7 ? float.NegativeInfinity : trial % 3 == 1 ? (float)(20 * random.NextDouble() - 10) : 0f; // offsets as wide as the logits
            if (trial == 0)
            {
                // The unmasked argmax masked out: the choice must move to another row.
                int top = Array.IndexOf(exact, exact.Max());
                adjust[top] = float.NegativeInfinity;
                adjust[(top + 1) % n] = 0f;
            }
            double best = double.NegativeInfinity;
            int bestRow = -1;
            for (int r = 0; r < n; r++)
                if (adjust[r] != float.NegativeInfinity && exact[r] + adjust[r] > best) (best, bestRow) = (exact[r] + adjust[r], r);
            int actual = _backend.AdjustedProductArgMax(input, weight, scratch, adjust);
            Assert.True(actual >= 0 && actual < n && adjust[actual] != float.NegativeInfinity, $"trial {trial}: row {actual} is masked out");
            Assert.True(actual == bestRow || best - (exact[actual] + adjust[actual]) <= 1e-5 * Math.Max(1, Math.Abs(best)),
                $"n={n} k={k} trial {trial}: argmax {actual} ({exact[actual] + adjust[actual]}) but row {bestRow} has {best}");
            if (trial % 3 == 2) Assert.Equal(only, actual);
        }
        var e = Assert.Throws<ArgumentException>(() => _backend.AdjustedProductArgMax(input, weight, scratch, new float[n + 1]));
        Assert.Contains("adjust", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void Classifier_argmax_stays_exact_when_an_outlier_makes_a_rows_8_bit_copy_coarse(int tokens)
    {
        // Row 5 is row 2 plus a tiny change, with one huge weight whose input is 0: its 8-bit step is 50 / 127, far above
        // the gap between the two rows, so only the exact pass can tell them apart. Then the other way round.
        const int n = 300, k = 64;
        var random = new Random(17 + tokens);
        for (int variant = 0; variant < 2; variant++)
        {
            var w = Random(random, n * k);
            for (int j = 0; j < k; j++) w[5 * k + j] = w[2 * k + j];
            w[5 * k] += variant == 0 ? 1e-5f : -1e-5f;
            w[5 * k + k - 1] = 50f;
            var x = Random(random, tokens * k);
            for (int t = 0; t < tokens; t++)
            {
                x[t * k + k - 1] = 0f;
                x[t * k] = 1f; // the tiny change shows in the logit
                for (int j = 1; j < k - 1; j++) x[t * k + j] = w[2 * k + j]; // rows 2 and 5 lead by far
            }
            Assert.All(ClassifierArgMax(w, n, k, x, tokens), id => Assert.Equal(variant == 0 ? 5 : 2, id));
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(6)]
    public void Classifier_argmax_stays_exact_when_rounding_the_input_reverses_two_rows(int tokens)
    {
        // The first pass also rounds the input, to 16 bits with one scale per row of x: an input of 32767 (whose weights
        // are all 0) makes that scale 1, so x[0] = 0.49 rounds to 0 and x[1] = 0.51 to 1. Row 5 reads x[0] (exact logit
        // 0.49, rounded 0) and row 2 reads x[1] at 0.9 (exact 0.459, rounded 0.9): the rounded input puts row 2 ahead by
        // far more than the float rounding allows, so only a bound that counts the input's rounding finds row 5.
        // k = 7 also checks the padding of the columns to a multiple of 4.
        const int n = 40, k = 7;
        var random = new Random(29 + tokens);
        var w = new float[n * k];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(random.NextDouble() - 0.5) * 1e-3f;
        for (int r = 0; r < n; r++) w[r * k + 6] = 0f;
        for (int j = 0; j < k; j++) w[2 * k + j] = w[5 * k + j] = 0f;
        w[5 * k] = 1f;
        w[2 * k + 1] = 0.9f;
        var x = new float[tokens * k];
        for (int t = 0; t < tokens; t++)
        {
            x[t * k] = 0.49f;
            x[t * k + 1] = 0.51f;
            x[t * k + 6] = 32767f;
        }
        Assert.All(ClassifierArgMax(w, n, k, x, tokens), id => Assert.Equal(5, id));
    }

    /// <summary><see cref="HostBackend.ProductArgMax"/> of x (tokens rows) with w (n x k) uploaded as a classifier.</summary>
    private int[] ClassifierArgMax(float[] w, int n, int k, float[] x, int tokens)
    {
        using var classifier = _backend.UploadClassifier([Weight(w, n, k)], DType.F32);
        using var input = _backend.Allocate(DType.F32, tokens, k);
        using var scratch = _backend.Allocate(DType.F32, tokens, n);
        using var ids = _backend.Allocate(DType.I32, tokens, 1);
        _backend.Upload(input, x);
        _backend.ProductArgMax(ids, input, classifier, scratch);
        var actual = new int[tokens];
        _backend.Download(ids, actual);
        return actual;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void Classifier_argmax_breaks_an_exact_tie_between_distant_rows_to_the_lower_index(int tokens)
    {
        // Rows 3 and 995 are the same row and lead by far: the tie must go to row 3, as ArgMax's rule says, however the
        // rows are shared out among threads (then to 995 once row 3 falls behind).
        const int n = 1000, k = 64;
        var random = new Random(41 + tokens);
        var w = Random(random, n * k);
        for (int j = 0; j < k; j++) w[995 * k + j] = w[3 * k + j];
        var x = new float[tokens * k];
        for (int t = 0; t < tokens; t++)
            for (int j = 0; j < k; j++) x[t * k + j] = w[3 * k + j];
        Assert.All(ClassifierArgMax(w, n, k, x, tokens), id => Assert.Equal(3, id));
        w[3 * k] -= 0.01f * Math.Sign(x[0]);
        Assert.All(ClassifierArgMax(w, n, k, x, tokens), id => Assert.Equal(995, id));
    }

    [Fact]
    public void Split_classifier_is_exact_for_matmul_embedding_and_download()
    {
        const int n = 45, k = 33;
        var w = Random(new Random(3), n * k);
        using var table = _backend.UploadClassifier([Weight(w, n, k)], DType.F32);
        var back = new float[n * k];
        _backend.Download(table, back);
        Assert.Equal(w, back);
        var x = Random(new Random(4), 2 * k);
        using var input = _backend.Allocate(DType.F32, 2, k);
        using var output = _backend.Allocate(DType.F32, 2, n);
        _backend.Upload(input, x);
        _backend.MatMul(output, input, table, accumulate: false);
        var logits = new float[2 * n];
        _backend.Download(output, logits);
        for (int t = 0; t < 2; t++)
            for (int r = 0; r < n; r++)
            {
                double sum = 0, magnitude = 0;
                for (int j = 0; j < k; j++)
                {
                    sum += (double)w[r * k + j] * x[t * k + j];
                    magnitude += Math.Abs((double)w[r * k + j] * x[t * k + j]);
                }
                Assert.True(Math.Abs(logits[t * n + r] - sum) <= 1e-5 * magnitude + 1e-6, $"logit [{t},{r}] = {logits[t * n + r]}, expected {sum}");
            }
    }
}
