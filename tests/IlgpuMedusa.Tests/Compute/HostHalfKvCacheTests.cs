using System.Runtime.Intrinsics;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Models;
using Xunit;

namespace IlgpuMedusa.Tests.Compute;

/// <summary>
/// The host backend's F16 KV cache: a key or value is stored as IEEE binary16 rounded to nearest even when written,
/// read back widened exactly, and the attention over it is float32 math on the widened values. The golden values are
/// binary16 facts worked out by hand, .NET's scalar (Half) conversions, and a double-precision attention written here.
/// </summary>
public sealed unsafe class HostHalfKvCacheTests : IDisposable
{
    private readonly HostBackend _backend = new(threads: 2);

    public void Dispose() => _backend.Dispose();

    private static float Bits(uint bits) => BitConverter.UInt32BitsToSingle(bits);

    /// <summary>(float input, the float value of its binary16 rounding) worked out by hand.</summary>
    public static TheoryData<float, float> HandRoundings => new()
    {
        { 1f, 1f },
        { 1f + MathF.ScaleB(1, -11), 1f },                                   // halfway between 1 and 1 + 2^-10: to even (1)
        { 1f + 3 * MathF.ScaleB(1, -11), 1f + MathF.ScaleB(1, -9) },         // halfway between 1 + 2^-10 and 1 + 2^-9: to even
        { 1f + MathF.ScaleB(1, -11) + MathF.ScaleB(1, -20), 1f + MathF.ScaleB(1, -10) }, // just above halfway: up
        { -2.5f, -2.5f },
        { 65504f, 65504f },                                                  // the largest half
        { 65519.996f, 65504f },                                              // just below halfway to 2^16: down
        { 65520f, float.PositiveInfinity },                                  // halfway to 2^16: to even, which overflows (stored: 65504)
        { -1e6f, float.NegativeInfinity },                                   // (stored: -65504)
        { float.PositiveInfinity, float.PositiveInfinity },                  // (stored: 65504)
        { MathF.ScaleB(1, -24), MathF.ScaleB(1, -24) },                      // the smallest subnormal
        { MathF.ScaleB(1, -25), 0f },                                        // halfway between 0 and 2^-24: to even (0)
        { MathF.ScaleB(3, -26), MathF.ScaleB(1, -24) },                      // 0.75 · 2^-24: up
        { MathF.ScaleB(3, -25), MathF.ScaleB(2, -24) },                      // 1.5 · 2^-24: halfway, to even (2 · 2^-24)
        { MathF.ScaleB(5, -25), MathF.ScaleB(2, -24) },                      // 2.5 · 2^-24: halfway, to even (2 · 2^-24)
        { MathF.ScaleB(2047, -25), MathF.ScaleB(1, -14) },                   // halfway between the largest subnormal and 2^-14: to even
        { -MathF.ScaleB(1023, -24), -MathF.ScaleB(1023, -24) },              // the largest subnormal, negative
        { 1e-8f, 0f },
        { -1e-8f, -0f },                                                     // rounds to negative zero
        { -0f, -0f },
        { 0.1f, 0.0999755859375f },                                          // 1638 · 2^-14
    };

    private static KvCacheLayout Layout(DType type, int layers = 2, int kvHeads = 2, int headDim = 20, int blockSize = 4, int blockCount = 6) =>
        new(layers, kvHeads, headDim, blockSize, blockCount, type);

    /// <summary>Writes rows F32[T, (H + 2Hkv)·Dh] of queries | keys | values with KvWrite at positions start.. of the table.</summary>
    private void Write(KvCache cache, int layer, float[] qkv, int tokens, int queryHeads, int[] table, int start)
    {
        var l = cache.Layout;
        using var input = _backend.Allocate(DType.F32, tokens, (queryHeads + 2 * l.KvHeads) * l.HeadDim);
        using var blocks = _backend.Allocate(DType.I32, 1, table.Length);
        _backend.Upload(input, qkv);
        _backend.Upload(blocks, table);
        _backend.KvWrite(cache, layer, input, queryHeads, blocks, start);
    }

    private static int PhysicalSlot(KvCacheLayout l, int[] table, int position) => table[position / l.BlockSize] * l.BlockSize + position % l.BlockSize;

    [Theory]
    [MemberData(nameof(HandRoundings))]
    public void F16_kv_write_rounds_to_nearest_even_binary16(float input, float rounding)
    {
        // The .NET conversion agrees with the hand-worked rounding (a check of the golden value itself) ...
        Assert.Equal(BitConverter.SingleToUInt32Bits(rounding), BitConverter.SingleToUInt32Bits((float)(Half)input));
        // ... and the cache stores it, saturated: a rounding that overflows to ±infinity (and an infinite input) is kept
        // as the largest finite half, ±65504, so that no weight-0 read of the element can make 0 · infinity = NaN.
        float expected = float.IsInfinity(rounding) ? MathF.CopySign(65504f, rounding) : rounding;
        var l = Layout(DType.F16, layers: 1, kvHeads: 1, headDim: 20, blockSize: 4, blockCount: 2);
        using var cache = _backend.AllocateKvCache(l);
        // ... and every key and value element of the slot (vector part and scalar tail of the 20) stores it.
        var row = new float[(1 + 2) * 20];
        Array.Fill(row, input);
        Write(cache, 0, row, 1, 1, [1, 0], 0);
        var read = new float[20];
        for (int part = 0; part < 2; part++)
        {
            cache.ReadSlot(0, part, 4, read);
            foreach (float v in read) Assert.Equal(BitConverter.SingleToUInt32Bits(expected), BitConverter.SingleToUInt32Bits(v));
        }
    }

    [Fact]
    public void F16_kv_write_stores_exactly_the_scalar_half_rounding_of_random_floats_in_the_right_slots()
    {
        // Random float bit patterns of every exponent (normal, subnormal and saturating halves, infinities, NaNs), and
        // random values near 1, written at positions 3..12 through a permuted block table on layer 1 of 2.
        var l = Layout(DType.F16, blockCount: 5);
        int[] table = [3, 0, 4, 2, 1];
        const int queryHeads = 3, tokens = 10, start = 3;
        int width = (queryHeads + 2 * l.KvHeads) * l.HeadDim;
        var random = new Random(16);
        var qkv = new float[tokens * width];
        for (int i = 0; i < qkv.Length; i++)
            qkv[i] = i % 3 == 0 ? (float)(random.NextDouble() * 4 - 2) : Bits((uint)random.NextInt64(0, 1L << 32));
        using var cache = _backend.AllocateKvCache(l);
        Write(cache, 1, qkv, tokens, queryHeads, table, start);
        var read = new float[l.KvDim];
        for (int t = 0; t < tokens; t++)
        {
            for (int part = 0; part < 2; part++)
            {
                cache.ReadSlot(1, part, PhysicalSlot(l, table, start + t), read);
                for (int e = 0; e < l.KvDim; e++)
                {
                    float x = qkv[t * width + (queryHeads + part * l.KvHeads) * l.HeadDim + e];
                    float expected = (float)(Half)(x > 65504f ? 65504f : x < -65504f ? -65504f : x); // saturated, then rounded
                    if (float.IsNaN(expected)) Assert.True(float.IsNaN(read[e]), $"token {t} part {part} element {e}: {read[e]} for NaN");
                    else Assert.True(BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(read[e]),
                        $"token {t} part {part} element {e}: {read[e]} for {x} (expected {expected})");
                }
            }
        }
        // Nothing else was written: layer 0 and the slots of positions 0..2 and 13..19 are still zero.
        var zero = new float[l.KvDim];
        for (int layer = 0; layer < 2; layer++)
            for (int position = 0; position < l.BlockCount * l.BlockSize; position++)
            {
                if (layer == 1 && position >= start && position < start + tokens) continue;
                for (int part = 0; part < 2; part++)
                {
                    cache.ReadSlot(layer, part, PhysicalSlot(l, table, position), read);
                    Assert.Equal(zero, read);
                }
            }
    }

    [Fact]
    public void Widening_every_half_bit_pattern_is_exact()
    {
        // All 65536 patterns through the 512-bit, 256-bit and pointer (vector plus scalar tail) widenings, against .NET's
        // scalar conversion, plus hand-checked patterns.
        var all = new ushort[65536 + 5];
        for (int i = 0; i < all.Length; i++) all[i] = (ushort)i;
        var widened = new float[all.Length];
        fixed (ushort* source = all)
        fixed (float* destination = widened)
        {
            HostMatMul.WidenHalves(source, destination, all.Length);
            for (int i = 0; i < 65536; i++)
            {
                float expected = (float)BitConverter.UInt16BitsToHalf((ushort)i);
                float wide = HostMatMul.WidenHalves(Vector256.Load(source + i / 16 * 16)).GetElement(i % 16);
                float narrow = HostMatMul.WidenHalves(Vector128.Load(source + i / 8 * 8)).GetElement(i % 8);
                foreach (float actual in new[] { widened[i], wide, narrow })
                {
                    if (float.IsNaN(expected))
                        Assert.True(float.IsNaN(actual) && float.IsNegative(actual) == float.IsNegative(expected), $"half 0x{i:X4}: {actual}");
                    else
                        Assert.True(BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(actual), $"half 0x{i:X4}: {actual}, expected {expected}");
                }
            }
        }
        for (int i = 65536; i < all.Length; i++) Assert.Equal(widened[i - 65536], widened[i]); // the scalar tail
        Assert.Equal(1f, widened[0x3C00]);
        Assert.Equal(MathF.ScaleB(1, -24), widened[0x0001]);
        Assert.Equal(MathF.ScaleB(1023, -24), widened[0x03FF]);
        Assert.Equal(MathF.ScaleB(1, -14), widened[0x0400]);
        Assert.Equal(65504f, widened[0x7BFF]);
        Assert.Equal(float.PositiveInfinity, widened[0x7C00]);
        Assert.Equal(float.NegativeInfinity, widened[0xFC00]);
        Assert.Equal(0x8000_0000u, BitConverter.SingleToUInt32Bits(widened[0x8000]));
        Assert.Equal(-2f, widened[0xC000]);
    }

    [Fact]
    public void Scaling_down_every_half_bit_pattern_is_exact()
    {
        // The attention reads a half x as the float x / 2^112 (and scales the other operand up): all 65536 patterns
        // through the 512-bit, 256-bit and pointer (vector plus scalar tail) versions, times 2^112, against .NET's scalar
        // widening; and the finite-only versions for every pattern but the infinities and NaNs.
        var all = new ushort[65536 + 5];
        for (int i = 0; i < all.Length; i++) all[i] = (ushort)i;
        var scaled = new float[all.Length];
        fixed (ushort* source = all)
        fixed (float* destination = scaled)
        {
            HostMatMul.ScaleDownHalves(source, destination, all.Length, finite: false);
            for (int i = 0; i < 65536; i++)
            {
                float expected = (float)BitConverter.UInt16BitsToHalf((ushort)i);
                var results = new List<float>
                {
                    scaled[i],
                    HostMatMul.ScaleDownHalves(Vector256.Load(source + i / 16 * 16)).GetElement(i % 16),
                    HostMatMul.ScaleDownHalves(Vector128.Load(source + i / 8 * 8)).GetElement(i % 8),
                };
                if (float.IsFinite(expected))
                {
                    results.Add(HostMatMul.ScaleDownFiniteHalves(Vector256.Load(source + i / 16 * 16)).GetElement(i % 16));
                    results.Add(HostMatMul.ScaleDownFiniteHalves(Vector128.Load(source + i / 8 * 8)).GetElement(i % 8));
                }
                foreach (float actual in results)
                {
                    float up = actual * HostMatMul.HalfScale;
                    if (float.IsNaN(expected))
                        Assert.True(float.IsNaN(up) && float.IsNegative(up) == float.IsNegative(expected), $"half 0x{i:X4}: {up}");
                    else
                        Assert.True(BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(up), $"half 0x{i:X4}: {up}, expected {expected}");
                }
            }
        }
        for (int i = 65536; i < all.Length; i++) Assert.Equal(scaled[i - 65536], scaled[i]); // the scalar tail
        Assert.Equal(MathF.ScaleB(1, -112), scaled[0x3C00]);
        Assert.Equal(MathF.ScaleB(1, -136), scaled[0x0001]); // a subnormal half: a subnormal float
        Assert.Equal(float.NegativeInfinity, scaled[0xFC00]);
        Assert.Equal(HostMatMul.HalfScale, MathF.ScaleB(1, 112));
    }

    /// <summary>
    /// Attention in double precision written out here: query t (float) against the binary16-rounded keys and values of
    /// logical positions 0..committed+T−1, visible as the interface says, scores q·k/√Dh, softmax, Σ p·v.
    /// </summary>
    private static double[] ReferenceAttention(float[] queries, int tokens, int heads, int kvHeads, int dh, Func<int, int, int, double> key,
        Func<int, int, int, double> value, int committed, int[]? mask)
    {
        var output = new double[tokens * heads * dh];
        int groups = heads / kvHeads;
        for (int t = 0; t < tokens; t++)
            for (int h = 0; h < heads; h++)
            {
                int g = h / groups;
                var scores = new List<(int Position, double Score)>();
                for (int j = 0; j < committed + tokens; j++)
                {
                    bool visible = j < committed || (mask is null ? j - committed <= t : mask[t * tokens + j - committed] != 0);
                    if (!visible) continue;
                    double s = 0;
                    for (int e = 0; e < dh; e++) s += (double)queries[t * heads * dh + h * dh + e] * key(j, g, e);
                    scores.Add((j, s / Math.Sqrt(dh)));
                }
                double max = scores.Max(p => p.Score), sum = scores.Sum(p => Math.Exp(p.Score - max));
                foreach (var (j, s) in scores)
                {
                    double p = Math.Exp(s - max) / sum;
                    for (int e = 0; e < dh; e++) output[t * heads * dh + h * dh + e] += p * value(j, g, e);
                }
            }
        return output;
    }

    [Theory]
    [InlineData(4, 2)] // GQA: two query heads per KV head
    [InlineData(3, 3)]
    public void F16_attention_equals_double_precision_attention_over_the_rounded_keys_and_values(int heads, int kvHeads)
    {
        // Dh = 20 (a 16-wide vector step and a scalar tail), blocks of 4 slots through a permuted table, layer 1 of 2: a
        // causal prefill of 11 tokens, a decode step, then a tree of 5 under a mask.
        const int dh = 20;
        var l = Layout(DType.F16, kvHeads: kvHeads, headDim: dh, blockSize: 4, blockCount: 6);
        int[] table = [4, 1, 5, 0, 3, 2];
        int width = (heads + 2 * kvHeads) * dh;
        var random = new Random(1616 + heads);
        using var cache = _backend.AllocateKvCache(l);
        using var blocks = _backend.Allocate(DType.I32, 1, table.Length);
        _backend.Upload(blocks, table);
        var written = new Dictionary<int, float[]>(); // logical position -> its qkv row as given (keys and values unrounded)

        void Step(int committed, int tokens, int[]? mask)
        {
            var qkv = new float[tokens * width];
            for (int i = 0; i < qkv.Length; i++) qkv[i] = (float)((random.NextDouble() * 2 - 1) * 3);
            for (int t = 0; t < tokens; t++) written[committed + t] = qkv.AsSpan(t * width, width).ToArray();
            Write(cache, 1, qkv, tokens, heads, table, committed);
            using var input = _backend.Allocate(DType.F32, tokens, width);
            using var output = _backend.Allocate(DType.F32, tokens, heads * dh);
            using var maskTensor = mask is null ? null : _backend.Allocate(DType.I32, tokens, tokens);
            _backend.Upload(input, qkv);
            if (maskTensor is not null) _backend.Upload(maskTensor, mask);
            _backend.Attention(output, input, cache, 1, blocks, committed, maskTensor);
            var actual = new float[tokens * heads * dh];
            _backend.Download(output, actual);

            var queries = new float[tokens * heads * dh];
            for (int t = 0; t < tokens; t++) Array.Copy(qkv, t * width, queries, t * heads * dh, heads * dh);
            double Rounded(int position, int column) => (double)(float)(Half)written[position][column];
            var expected = ReferenceAttention(queries, tokens, heads, kvHeads, dh,
                (j, g, e) => Rounded(j, heads * dh + g * dh + e), (j, g, e) => Rounded(j, (heads + kvHeads) * dh + g * dh + e), committed, mask);
            for (int i = 0; i < expected.Length; i++)
                Assert.True(Math.Abs(actual[i] - expected[i]) <= 2e-6 * (1 + Math.Abs(expected[i])),
                    $"committed {committed}, T {tokens}, element {i}: {actual[i]} vs {expected[i]}");
            // And the float32 ones differ from attention over the unrounded values by more than that: the test sees the rounding.
            if (committed == 0)
            {
                var unrounded = ReferenceAttention(queries, tokens, heads, kvHeads, dh,
                    (j, g, e) => written[j][heads * dh + g * dh + e], (j, g, e) => written[j][(heads + kvHeads) * dh + g * dh + e], committed, mask);
                Assert.True(Enumerable.Range(0, expected.Length).Max(i => Math.Abs(unrounded[i] - expected[i])) > 1e-4);
            }
        }

        Step(0, 11, null);  // prefill: positions 0..10 over three blocks (the last one ragged)
        Step(11, 1, null);  // decode: position 11
        // A tree of 5: root 0, children 1 and 2 of the root, 3 under 1, 4 under 2 (each sees itself and its ancestors).
        int[] tree =
        [
            1, 0, 0, 0, 0,
            1, 1, 0, 0, 0,
            1, 0, 1, 0, 0,
            1, 1, 0, 1, 0,
            1, 0, 1, 0, 1,
        ];
        Step(12, 5, tree);
    }

    [Theory]
    [InlineData(6, 3, 64, 9, 14, false)]  // GQA prefill large enough to split each KV head's tokens into two runs
    [InlineData(6, 3, 12, 9, 14, false)]  // one run per KV head; Dh = 12: a narrower vector step and a tail
    [InlineData(4, 4, 64, 1, 30, false)]  // a decode step without GQA, on one thread
    [InlineData(8, 8, 32, 1, 200, false)] // a decode step over a long context, across the threads
    [InlineData(8, 2, 64, 7, 40, true)]   // a tree under a mask, GQA of 4, split into runs
    public void F16_attention_gives_the_same_bits_as_f32_attention_over_the_rounded_values(int heads, int kvHeads, int dh, int tokens, int committed, bool masked)
    {
        // The same float32 sums in the same order: an F32 cache holding (float)(Half)x gives the identical output.
        var random = new Random(heads * 1000 + dh * 10 + tokens);
        int width = (heads + 2 * kvHeads) * dh, blockCount = (committed + tokens + 15) / 16 + 1;
        int[] table = Enumerable.Range(0, blockCount).OrderBy(_ => random.Next()).ToArray();
        using var blocks = _backend.Allocate(DType.I32, 1, table.Length);
        _backend.Upload(blocks, table);
        using var half = _backend.AllocateKvCache(Layout(DType.F16, layers: 1, kvHeads: kvHeads, headDim: dh, blockSize: 16, blockCount: blockCount));
        using var single = _backend.AllocateKvCache(Layout(DType.F32, layers: 1, kvHeads: kvHeads, headDim: dh, blockSize: 16, blockCount: blockCount));
        var all = new float[(committed + tokens) * width];
        for (int i = 0; i < all.Length; i++) all[i] = (float)((random.NextDouble() * 2 - 1) * 5);
        var rounded = all.Select(x => (float)(Half)x).ToArray();
        Write(half, 0, all, committed + tokens, heads, table, 0);
        Write(single, 0, rounded, committed + tokens, heads, table, 0);
        using var queries = _backend.Allocate(DType.F32, tokens, width);
        _backend.Upload(queries, all.AsSpan(committed * width));
        // A mask where token t sees itself and the earlier tokens of the same parity (a tree of two chains).
        var mask = new int[tokens * tokens];
        for (int t = 0; t < tokens; t++)
            for (int u = 0; u <= t; u++) mask[t * tokens + u] = (t - u) % 2 == 0 ? 1 : 0;
        using var maskTensor = masked ? _backend.Allocate(DType.I32, tokens, tokens) : null;
        if (maskTensor is not null) _backend.Upload(maskTensor, mask);
        var outputs = new List<float[]>();
        foreach (var cache in new[] { half, single })
        {
            using var output = _backend.Allocate(DType.F32, tokens, heads * dh);
            _backend.Attention(output, queries, cache, 0, blocks, committed, maskTensor);
            var values = new float[tokens * heads * dh];
            _backend.Download(output, values);
            outputs.Add(values);
        }
        Assert.Equal(outputs[1].Select(BitConverter.SingleToUInt32Bits), outputs[0].Select(BitConverter.SingleToUInt32Bits));
    }

    [Theory]
    [InlineData(4, 4, 1, false)] // a decode step without GQA: one query per work item
    [InlineData(8, 2, 1, false)] // a decode step with GQA: four queries per work item
    [InlineData(6, 3, 5, true)]  // a tree under a mask
    public void F16_attention_keeps_the_f32_results_with_a_nan_in_the_cache_and_queries_of_2_to_the_16_or_more(int heads, int kvHeads, int tokens, bool masked)
    {
        // The attention scales queries by 2^112 and reads the halves in fewer steps while the cache has never held a
        // NaN; a query of 2^16 or more, or a NaN anywhere, takes the exact widening. Each case against an F32 cache of the
        // rounded values: the same bits, NaN where it has NaN. Dh = 40: vectors and a scalar tail.
        const int dh = 40, committed = 37;
        var random = new Random(heads * 100 + tokens);
        int width = (heads + 2 * kvHeads) * dh, blockCount = (committed + tokens + 15) / 16 + 1;
        int[] table = Enumerable.Range(0, blockCount).OrderBy(_ => random.Next()).ToArray();
        using var blocks = _backend.Allocate(DType.I32, 1, table.Length);
        _backend.Upload(blocks, table);
        var all = new float[(committed + tokens) * width];
        for (int i = 0; i < all.Length; i++) all[i] = (float)(Half)((random.NextDouble() * 2 - 1) * 4);
        var mask = new int[tokens * tokens];
        for (int t = 0; t < tokens; t++)
            for (int u = 0; u <= t; u++) mask[t * tokens + u] = (t - u) % 2 == 0 ? 1 : 0;
        using var maskTensor = masked ? _backend.Allocate(DType.I32, tokens, tokens) : null;
        if (maskTensor is not null) _backend.Upload(maskTensor, mask);

        float[] Attend(DType type, float[] rows, float[] queries)
        {
            using var cache = _backend.AllocateKvCache(Layout(type, layers: 1, kvHeads: kvHeads, headDim: dh, blockSize: 16, blockCount: blockCount));
            Write(cache, 0, rows, committed + tokens, heads, table, 0);
            using var input = _backend.Allocate(DType.F32, tokens, width);
            _backend.Upload(input, queries);
            using var output = _backend.Allocate(DType.F32, tokens, heads * dh);
            _backend.Attention(output, input, cache, 0, blocks, committed, maskTensor);
            var values = new float[tokens * heads * dh];
            _backend.Download(output, values);
            return values;
        }

        void Check(float[] rows, float[] queries, string what, bool expectNaN)
        {
            var half = Attend(DType.F16, rows, queries);
            var single = Attend(DType.F32, rows, queries);
            for (int i = 0; i < half.Length; i++)
                Assert.True(float.IsNaN(single[i]) ? float.IsNaN(half[i]) : BitConverter.SingleToUInt32Bits(single[i]) == BitConverter.SingleToUInt32Bits(half[i]),
                    $"{what}: element {i}: {half[i]} vs {single[i]}");
            Assert.Equal(expectNaN, single.Any(float.IsNaN));
        }

        var queries = all.AsSpan(committed * width).ToArray();
        Check(all, queries, "finite", false);
        // Query elements of 2^16 and more (one query head of every token): still finite results, the same bits.
        var huge = (float[])queries.Clone();
        for (int t = 0; t < tokens; t++) huge[t * width + 5] = 70000f;
        Check(all, huge, "a query of 70000", false);
        // A NaN in a committed key (every query sees it: all of its KV head's outputs are NaN) and one in a value.
        var withNaN = (float[])all.Clone();
        withNaN[3 * width + heads * dh + 7] = float.NaN;                        // position 3, KV head 0's key
        withNaN[5 * width + (heads + kvHeads) * dh + (kvHeads - 1) * dh + 39] = float.NaN; // position 5, the last KV head's value, tail element
        Check(withNaN, queries, "a NaN in the cache", true);
    }

    [Fact]
    public void F16_kv_compact_moves_the_slots_of_the_sources_to_the_destination()
    {
        // Positions 0..15 hold distinct halves on both layers; compacting sources 6, 9, 10, 14 to position 5 leaves
        // positions 5..8 with what 6, 9, 10, 14 held and every other position as it was.
        var l = Layout(DType.F16, kvHeads: 1, headDim: 8, blockSize: 4, blockCount: 4);
        int[] table = [2, 3, 0, 1];
        const int positions = 16, queryHeads = 1;
        int width = (queryHeads + 2 * l.KvHeads) * l.HeadDim;
        using var cache = _backend.AllocateKvCache(l);
        // Value of (layer, part, position, element): exact in binary16, distinct everywhere.
        static float Value(int layer, int part, int position, int element) => layer * 512 + part * 256 + position * 8 + element + 0.5f;
        for (int layer = 0; layer < 2; layer++)
        {
            var qkv = new float[positions * width];
            for (int p = 0; p < positions; p++)
                for (int part = 0; part < 2; part++)
                    for (int e = 0; e < l.KvDim; e++) qkv[p * width + (queryHeads + part) * l.HeadDim + e] = Value(layer, part, p, e);
            Write(cache, layer, qkv, positions, queryHeads, table, 0);
        }
        int[] sources = [6, 9, 10, 14];
        using var blocks = _backend.Allocate(DType.I32, 1, table.Length);
        using var sourceTensor = _backend.Allocate(DType.I32, sources.Length, 1);
        _backend.Upload(blocks, table);
        _backend.Upload(sourceTensor, sources);
        _backend.KvCompact(cache, blocks, sourceTensor, 5);
        var read = new float[l.KvDim];
        for (int layer = 0; layer < 2; layer++)
            for (int part = 0; part < 2; part++)
                for (int p = 0; p < positions; p++)
                {
                    int from = p is >= 5 and <= 8 ? sources[p - 5] : p;
                    cache.ReadSlot(layer, part, PhysicalSlot(l, table, p), read);
                    for (int e = 0; e < l.KvDim; e++) Assert.Equal(Value(layer, part, from, e), read[e]);
                }
    }

    [Fact]
    public void F16_cache_takes_two_bytes_per_element_and_refuses_other_types()
    {
        var l = Layout(DType.F16);
        Assert.Equal(2, l.ElementBytes);
        Assert.Equal(2L * 2 * 6 * 4 * 2 * 20 * 2, l.TotalBytes); // 2 layers · K,V · 24 slots · 40 elements · 2 bytes
        using var cache = _backend.AllocateKvCache(l);
        Assert.Equal(DType.F16, cache.Layout.ElementType);
        var e = Assert.Throws<ArgumentException>(() => _backend.AllocateKvCache(Layout(DType.BF16)));
        Assert.Contains("bf16", e.Message, StringComparison.Ordinal);
        // Refused when the layout is made, by construction or by a with-expression, not when a size is first read.
        Assert.Throws<ArgumentException>(() => new KvCacheLayout(1, 1, 4, 4, 1, DType.BF16));
        var with = Assert.Throws<ArgumentException>(() => l with { ElementType = DType.I32 });
        Assert.Contains("i32", with.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ReadSlot_outside_the_cache_is_refused_naming_it()
    {
        var l = Layout(DType.F16, layers: 2, blockCount: 2);
        using var cache = _backend.AllocateKvCache(l);
        var slot = new float[l.KvDim];
        foreach (var (layer, part, physical, length) in new[] { (2, 0, 0, l.KvDim), (0, 2, 0, l.KvDim), (0, 0, 8, l.KvDim), (0, 1, -1, l.KvDim), (0, 0, 0, l.KvDim + 1) })
        {
            var e = Assert.Throws<ArgumentException>(() => cache.ReadSlot(layer, part, physical, new float[length]));
            Assert.Contains("ReadSlot", e.Message, StringComparison.Ordinal);
        }
        cache.ReadSlot(1, 1, 7, slot);
        Assert.All(slot, v => Assert.Equal(0f, v));
    }
}
