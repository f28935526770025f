using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using System.Runtime.Intrinsics;
using IlgpuMedusa.Kernels;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Compute.Host;

/// <summary>
/// The CPU backend: System.Numerics.Tensors and a four-row SIMD matmul for the inner loops, a spinning fork-join pool (HostWorkers) across rows. It is the production
/// CPU path and the reference the ILGPU kernels are tested against, so every op is written the obvious way.
/// </summary>
public sealed unsafe class HostBackend : IComputeBackend, IDeviceDiagnostics
{
    /// <summary>Below this many multiply-adds an op runs on one thread; thread hand-off costs more than it saves.</summary>
    private const long ParallelThreshold = 48 * 1024;
    private readonly int _threads;
    private readonly HostWorkers _workers;

    /// <summary>Creates the backend using up to <paramref name="threads"/> threads (default: all cores).</summary>
    public HostBackend(int? threads = null)
    {
        if (threads is < 1 or > MaxThreads)
            throw new ArgumentOutOfRangeException(nameof(threads), threads, $"host threads (--threads) must be between 1 and {MaxThreads}.");
        _threads = threads ?? Environment.ProcessorCount;
        _workers = new HostWorkers(_threads);
    }

    /// <summary>Most worker threads a host backend starts (one per core is the useful number).</summary>
    public const int MaxThreads = 1024;

    /// <inheritdoc />
    public DeviceKind Kind => DeviceKind.Host;
    /// <inheritdoc />
    /// <remarks>
    /// Measured on stories15M, 2 cores (`bench --concurrency`, `dynamic-3`, with the 8-bit classifier pass): with no limit
    /// Medusa's total tokens/s over plain decoding was 1.07x, 1.11x, 0.86x and 0.88x with 1 to 4 sequences (every tree row
    /// costs compute on a CPU); with this limit of 2, 1.18 / 1.16x, 1.11 / 1.05x, 0.93 / 1.03x, 1.04 / 1.01x and
    /// 0.98 / 1.00x with 1, 2, 3, 4 and 8 sequences in two runs.
    /// </remarks>
    public int SpeculationBatchLimit => 2;

    /// <inheritdoc />
    /// <remarks>
    /// Measured on stories15M, 2 cores: the classifier's greedy pass costs about 0.25 ms for one row (its 8-bit copy read
    /// from memory) and 0.03-0.05 ms more per further row (the integer pass and settling the row), so a second pass for an
    /// accepted leaf costs what five to eight extra rows do. With 16 eager leaves instead of 4, trees of 5 to 8 nodes ran
    /// level (1.12x against 1.08-1.09x) and trees of 12 to 16 nodes slower (0.76x against 0.83x for <c>dynamic-12</c>).
    /// </remarks>
    public int EagerLeafRows => 4;

    /// <inheritdoc />
    public bool ArgMaxSkipsLogits => true;

    /// <inheritdoc />
    /// <remarks>
    /// BF16 for an F32 model where matrices are packed (512-bit vectors): a step's heads stream half the bytes, widened by
    /// a shift. Measured on stories15M (2 cores, <c>dynamic-3</c>, two heads): 54 -> 37 µs up to the lm_head and 48 -> 31-33
    /// µs for the 2,048-row lm_head, 1.91 accepted tokens per step either way. (F16 saves the same bytes but takes about
    /// ten instructions per 16 weights to widen: 69-72 µs up to the lm_head.)
    /// </remarks>
    public DType HeadsWeightType(DType modelWeights) =>
        modelWeights == DType.F32 && System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated ? DType.BF16 : modelWeights;

    /// <inheritdoc />
    /// <remarks>
    /// Groups of whole 16-row panels of a packed weight (the Medusa heads' stacked ResBlocks): one parallel region for
    /// every head's GEMV instead of one each. Measured on stories15M (2 cores): the two heads of a <c>dynamic-3</c> step
    /// took 95 µs up to their lm_head with one op per head and layer.
    /// </remarks>
    public bool CanGroupMatMul(int rowsPerGroup) => rowsPerGroup > 0 && rowsPerGroup % HostTensor.PanelRows == 0 && System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated;

    /// <inheritdoc />
    public void GroupedMatMul(DeviceTensor output, DeviceTensor input, DeviceTensor weight)
    {
        Shapes.GroupedMatMul(output, input, weight);
        var o = Own(output);
        var x = Own(input);
        var w = OwnWeight(weight);
        int groups = o.Rows, n = o.Columns, k = w.Columns;
        bool shared = x.Rows == 1;
        if (!w.Packed)
        {
            for (int g = 0; g < groups; g++) MatMul(o.Slice(g, 1), shared ? x : x.Slice(g, 1), w.Slice(g * n, n), accumulate: false);
            return;
        }
        if (n % HostTensor.PanelRows != 0 || w.Split)
            throw new ArgumentException($"GroupedMatMul: groups of {n} rows of the packed weight {w.ShapeText} do not start on {HostTensor.PanelRows}-row panels (check CanGroupMatMul)", nameof(weight));
        int pairs = (n / HostTensor.PanelRows + 1) / 2;
        var type = w.Type;
        long groupBytes = (long)n * k * DTypeInfo.SizeOf(w.Type);
        byte* weights = (byte*)w.Pointer;
        float* inputs = (float*)x.Pointer, outputs = (float*)o.Pointer;
        void Run(int item)
        {
            int g = item / pairs, pair = item % pairs;
            byte* group = weights + g * groupBytes;
            float* row = inputs + (shared ? 0 : (long)g * k), target = outputs + (long)g * n;
            if (type == DType.F16) HostMatMul.Panels<HostMatMul.F16Panel>(group, 0, n, k, pair, pair + 1, row, 1, target, accumulate: false);
            else if (type == DType.BF16) HostMatMul.Panels<HostMatMul.HighHalfPanel>(group, 0, n, k, pair, pair + 1, row, 1, target, accumulate: false);
            else HostMatMul.Panels<HostMatMul.F32Panel>(group, 0, n, k, pair, pair + 1, row, 1, target, accumulate: false);
        }
        if ((long)groups * n * k < ParallelThreshold) for (int i = 0; i < groups * pairs; i++) Run(i);
        else _workers.For(groups * pairs, Run);
    }

    /// <inheritdoc />
    public string DeviceName => $"host ({_threads} threads, {RuntimeInformation.ProcessArchitecture}{(System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated ? ", 512-bit SIMD" : System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated ? ", 256-bit SIMD" : "")})";

    /// <inheritdoc />
    public DeviceTensor Allocate(DType type, int rows, int columns)
    {
        var buffer = new NativeBuffer((long)rows * columns * DTypeInfo.SizeOf(type));
        NativeMemory.Clear((void*)buffer.Pointer, (nuint)buffer.Length);
        return new HostTensor(this, type, rows, columns, buffer);
    }

    /// <inheritdoc />
    public DeviceTensor UploadWeight(IReadOnlyList<TensorData> parts, DType storeAs)
    {
        if (parts.Count == 0) throw new ArgumentException("no weight parts", nameof(parts));
        int columns = Columns(parts[0]);
        int rows = 0;
        foreach (var p in parts)
        {
            if (Columns(p) != columns)
                throw new ArgumentException($"weight parts have different widths: '{parts[0].Name}' {parts[0].ShapeText} vs '{p.Name}' {p.ShapeText}", nameof(parts));
            rows += checked((int)(p.ElementCount / columns));
        }
        // Always a copy, never a view of the mapped checkpoint: the backend's own 2 MiB-aligned memory (huge pages where
        // the OS gives them, 64-byte aligned rows) streams measurably faster than the file's 4 KiB pages at odd offsets
        // (llama2.c's tables start 28 bytes into the file), and the checkpoint can be closed once the model is loaded,
        // so its pages leave the process.
        // F32, F16 and BF16 matrices are packed in panels for the matmul where the CPU has 512-bit vectors (the panel
        // kernel's width; 16-bit elements are widened exactly in registers); elsewhere they stay row-major for the
        // four-row kernel.
        if (storeAs is DType.F32 or DType.F16 or DType.BF16 && rows > 1 && System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated)
            return UploadPacked(parts, rows, columns, half: storeAs != DType.F32 ? storeAs : null);

        var result = (HostTensor)Allocate(storeAs, rows, columns);
        byte* destination = (byte*)result.Pointer;
        int elementSize = DTypeInfo.SizeOf(storeAs);
        long offset = 0;
        float[] scratch = [];
        const int Chunk = 1 << 22; // elements per copy: a tensor may hold more than a span can (2 GiB and up)
        foreach (var p in parts)
        {
            int sourceSize = DTypeInfo.SizeOf(p.Type);
            for (long done = 0; done < p.ElementCount; done += Chunk)
            {
                int count = (int)Math.Min(Chunk, p.ElementCount - done);
                var source = new ReadOnlySpan<byte>((byte*)p.Pointer + done * sourceSize, count * sourceSize);
                var target = new Span<byte>(destination + (offset + done) * elementSize, count * elementSize);
                if (p.Type == storeAs)
                {
                    source.CopyTo(target);
                }
                else
                {
                    if (scratch.Length < count) scratch = new float[count];
                    HalfConversions.ToSingle(p.Type, source, scratch.AsSpan(0, count));
                    HalfConversions.FromSingle(storeAs, scratch.AsSpan(0, count), target);
                }
            }
            offset += p.ElementCount;
        }
        return result;
    }

    /// <summary>Rows of a weight copied between releases of their mapped pages (see <see cref="UploadPacked"/>).</summary>
    private const int ReleaseRows = 1024;

    /// <summary>
    /// An F32 weight matrix in panels (see <see cref="HostTensor.Packed"/>), filled row by row from the parts; with
    /// <paramref name="split"/>, as high and low 16-bit halves with per-row norms (<see cref="HostTensor.Split"/>); with
    /// <paramref name="half"/> (F16 or BF16), a matrix of that type in panels of 16-bit elements (each value rounded to it).
    /// </summary>
    private HostTensor UploadPacked(IReadOnlyList<TensorData> parts, int rows, int columns, bool split = false, DType? half = null)
    {
        const int P = HostTensor.PanelRows;
        long elements = (long)(rows + P - 1) / P * P * columns;
        var buffer = new NativeBuffer(elements * (half is null ? sizeof(float) : sizeof(ushort)));
        NativeMemory.Clear((void*)buffer.Pointer, (nuint)buffer.Length);
        float[]? l1 = split ? new float[rows] : null, l2 = split ? new float[rows] : null;
        bool int8 = split && Avx512BW.IsSupported;
        int quadColumns = (columns + 3) / 4 * 4;
        var quantised = int8 ? new NativeBuffer((long)(rows + P - 1) / P * P * quadColumns) : null;
        float[]? scale = int8 ? new float[rows] : null, bound = int8 ? new float[rows] : null;
        double normMax = 0;
        double roundingPerNorm = 4.0 * columns * Math.Pow(2, -24) * (1 + 1e-3); // k-term float sums, with a wide margin
        if (quantised is not null) NativeMemory.Clear((void*)quantised.Pointer, (nuint)quantised.Length);
        var result = new HostTensor(this, half ?? DType.F32, rows, columns, buffer)
        {
            Packed = true, Split = split, RowL1 = l1, RowL2 = l2, Int8 = quantised, Int8Scale = scale, Int8Bound = bound,
        };
        float* packed = (float*)buffer.Pointer;
        ushort* high = (ushort*)buffer.Pointer, low = high + elements;
        sbyte* q = quantised is null ? null : (sbyte*)quantised.Pointer;
        var row = new float[columns];
        int r = 0;
        foreach (var p in parts)
        {
            int size = DTypeInfo.SizeOf(p.Type);
            long partRows = p.ElementCount / columns;
            for (long i = 0; i < partRows; i++, r++)
            {
                if (i > 0 && i % ReleaseRows == 0)
                {
                    // The rows copied so far need not stay resident: a large matrix (the classifier) would otherwise sit
                    // in memory twice, mapped and packed, until the whole of it is copied.
                    Models.MappedFile.ReleasePages(new TensorData(p.Name, p.Type, [ReleaseRows, columns], (nint)((byte*)p.Pointer + (i - ReleaseRows) * columns * size)));
                }
                var bytes = new ReadOnlySpan<byte>((byte*)p.Pointer + i * columns * size, columns * size);
                HalfConversions.ToSingle(p.Type, bytes, row);
                long first = (long)(r / P) * columns * P + r % P;
                if (half is { } narrow)
                {
                    if (narrow == DType.F16)
                        for (int j = 0; j < columns; j++) high[first + (long)j * P] = BitConverter.HalfToUInt16Bits((Half)row[j]);
                    else
                        for (int j = 0; j < columns; j++) high[first + (long)j * P] = HalfConversions.SingleToBFloat16(row[j]);
                    continue;
                }
                if (!split)
                {
                    for (int j = 0; j < columns; j++) packed[first + (long)j * P] = row[j];
                    continue;
                }
                for (int j = 0; j < columns; j++)
                {
                    uint bits = BitConverter.SingleToUInt32Bits(row[j]);
                    high[first + (long)j * P] = (ushort)(bits >> 16);
                    low[first + (long)j * P] = (ushort)bits;
                }
                l1![r] = TensorPrimitives.SumOfMagnitudes(row);
                l2![r] = TensorPrimitives.Norm(row);
                if (q is null) continue;
                // 8 bits per element with a scale per row, in quad panels; the error of the row and the norms of its
                // 8-bit copy, in double, rounded up
                float s = TensorPrimitives.MaxMagnitude(row);
                s = float.IsFinite(s) ? MathF.Abs(s) / 127f : 0f;
                double squared = 0, quadratic = 0;
                sbyte* quads = q + (long)(r / P) * P * quadColumns + r % P * 4;
                for (int j = 0; j < columns; j++)
                {
                    int v = s > 0 ? (int)Math.Clamp(Math.Round(row[j] / (double)s), -127, 127) : 0;
                    quads[j / 4 * 4 * P + j % 4] = (sbyte)v;
                    double e = row[j] - (double)s * v;
                    squared += e * e;
                    quadratic += (double)v * v;
                }
                scale![r] = s;
                normMax = Math.Max(normMax, s * Math.Sqrt(quadratic));
                double error = Math.Sqrt(squared);
                bound![r] = (float)((error + roundingPerNorm * (l2[r] + error)) * (1 + 1e-6)) + float.Epsilon;
            }
        }
        if (int8) result.Int8NormMax = (float)(normMax * (1 + 1e-6));
        return result;
    }

    /// <inheritdoc />
    /// <remarks>
    /// On CPUs with 512-bit vectors an F32 classifier is stored split into high and low 16-bit halves
    /// (<see cref="HostTensor.Split"/>, the same memory as F32, exact for every op) and, with AVX-512F, also as an 8-bit
    /// copy with a scale per row (<see cref="HostTensor.Int8"/>, a quarter of the bytes). <see cref="ProductArgMax"/>
    /// streams only the 8-bit copy (or, without it, the high halves), then settles the few near-ties exactly.
    /// </remarks>
    public DeviceTensor UploadClassifier(IReadOnlyList<TensorData> parts, DType storeAs)
    {
        if (storeAs != DType.F32 || parts.Count != 1 || parts[0].Shape.Length != 2 || !System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated)
            return UploadWeight(parts, storeAs);
        return UploadPacked(parts, parts[0].Shape[0], parts[0].Shape[1], split: true);
    }

    /// <inheritdoc />
    /// <remarks>
    /// With an 8-bit copy (<see cref="HostTensor.Int8"/>) the first pass reads it instead, with the bound of
    /// <see cref="SettleInt8ArgMax"/>; the exact pass is the same. On stories15M (2 cores) that made decoding 20-27% faster
    /// than the high-half pass, which streams twice the bytes. The input rows are rounded to 16 bits too, so the pass
    /// multiplies integers (<see cref="HostMatMul.QuadPanels"/>); one row stays bound by memory (about 0.25 ms for the
    /// 9.2 MB), and each further row costs a fraction of its cost as floats (a Medusa step's 3 rows: about 0.2 ms more than
    /// one row with the 8-bit weights widened to floats, about 0.06 ms more now), and the settling runs on every thread.
    /// With a split classifier: first every logit from the high halves alone, ŷ[v], each within
    /// B[v] = c · min(‖w_v‖₁ · ‖x‖∞, ‖w_v‖₂ · ‖x‖₂) of the exact float result y[v] (truncating a float to its top 16
    /// bits changes it by less than 2^-7 of its magnitude, so |ŷ − y| ≤ 2^-7 · Σ|w·x| plus float rounding, and both
    /// norm products bound Σ|w·x|). The row whose y is largest has ŷ + B ≥ max over u of (ŷ[u] − B[u]); only those
    /// candidates (usually one to a handful) are computed exactly from both halves, by one fixed-order dot product
    /// whatever the batch, and the largest wins (the lowest index on ties).
    /// </remarks>
    public void ProductArgMax(DeviceTensor ids, DeviceTensor input, DeviceTensor weight, DeviceTensor scratch) => BoundedArgMax(ids, input, weight, scratch, null);

    /// <summary><see cref="ProductArgMax"/> of (input · weight[v] + adjust[v]) (adjust null: none; one per weight row).</summary>
    private void BoundedArgMax(DeviceTensor ids, DeviceTensor input, DeviceTensor weight, DeviceTensor scratch, float* adjust)
    {
        var w = OwnWeight(weight);
        if (!w.Split)
        {
            MatMul(scratch, input, weight, accumulate: false);
            ArgMax(ids, scratch);
            return;
        }
        var o = Own(ids);
        var x = Own(input);
        var s = Own(scratch);
        Shapes.MatMul(s, x, w);
        Shapes.ArgMax(o, s);
        int n = w.Rows, k = w.Columns, tokens = x.Rows;
        long work = (long)n * k * tokens;
        int pairs = (w.Panels + 1) / 2;
        int chunks = work < ParallelThreshold ? 1 : Math.Min(pairs, _threads * 4);
        // (The integer pass needs 16-bit room for the inputs: 127 · k · 127 below 2^31, any hidden size in practice.)
        if (w.Int8 is { } quantised && w.Int8Columns <= int.MaxValue / (127 * 127) && AllFinite(x))
        {
            int kq = w.Int8Columns;
            short[] rented = ArrayPool<short>.Shared.Rent(tokens * kq);
            var inputs = new InputQuantisation[tokens];
            try
            {
                for (int t = 0; t < tokens; t++) inputs[t] = QuantiseInput(x.FloatRow(t), rented.AsSpan(t * kq, kq));
                fixed (short* u = rented)
                {
                    byte* weights = (byte*)quantised.Pointer;
                    short* up = u;
                    int* sums = (int*)s.Pointer;
                    if (chunks == 1) HostMatMul.QuadPanels(weights, n, kq, 0, pairs, up, tokens, sums);
                    else _workers.For(chunks, c => HostMatMul.QuadPanels(weights, n, kq, (int)((long)pairs * c / chunks), (int)((long)pairs * (c + 1) / chunks), up, tokens, sums));
                }
            }
            finally
            {
                ArrayPool<short>.Shared.Return(rented);
            }
            // One token's settling is independent of the others'.
            if (tokens == 1) o.Ints[0] = SettleInt8ArgMax(w, x.FloatRow(0), s.FloatRow(0), inputs[0], adjust);
            else _workers.For(tokens, t => o.Ints[t] = SettleInt8ArgMax(w, x.FloatRow(t), s.FloatRow(t), inputs[t], adjust));
            return;
        }
        RunPanels<HostMatMul.HighHalfPanel>(w, (float*)x.Pointer, tokens, (float*)s.Pointer, accumulate: false, chunks);
        for (int t = 0; t < tokens; t++) o.Ints[t] = SettleArgMax(w, x.FloatRow(t), s.FloatRow(t), adjust);
    }

    /// <inheritdoc />
    /// <remarks>
    /// With a split classifier, as <see cref="ProductArgMax"/> with the adjustment added to each row's first-pass value
    /// and to its exact value (the bound on their difference is unchanged): a row whose adjustment is −∞ (a token a
    /// constraint rules out) is never computed exactly, so a constrained choice costs about one 8-bit pass, not a whole
    /// row of float logits.
    /// </remarks>
    public int AdjustedProductArgMax(DeviceTensor input, DeviceTensor weight, DeviceTensor scratch, ReadOnlySpan<float> adjust)
    {
        var w = OwnWeight(weight);
        var x = Own(input);
        if (x.Rows != 1) throw new ArgumentException($"AdjustedProductArgMax takes one input row, not {x.Rows}", nameof(input));
        if (adjust.Length != w.Rows) throw new ArgumentException($"the adjustment has {adjust.Length} values for {w.Rows} weight rows", nameof(adjust));
        if (!w.Split) return IComputeBackend.AdjustedArgMaxByRows(this, input, weight, scratch, adjust);
        using var id = Allocate(DType.I32, 1, 1);
        fixed (float* a = adjust) BoundedArgMax(id, input, weight, scratch, a);
        return Own(id).Ints[0];
    }

    /// <summary>Bound factor c of <see cref="ProductArgMax"/>: 2^-7 for the truncation, plus float rounding of two k-term sums with margin.</summary>
    private static double SplitBoundFactor(int k) => Math.Pow(2, -7) + 4.0 * k * Math.Pow(2, -24);

    /// <summary>The exact argmax of one row given its high-half logits (see <see cref="ProductArgMax"/>).</summary>
    private static int SettleArgMax(HostTensor w, Span<float> x, Span<float> approximate, float* adjust)
    {
        if (adjust is not null) TensorPrimitives.Add(approximate, new ReadOnlySpan<float>(adjust, approximate.Length), approximate);
        double c = SplitBoundFactor(w.Columns);
        float xInf = MathF.Abs(TensorPrimitives.MaxMagnitude(x)), x2 = TensorPrimitives.Norm(x); // MaxMagnitude keeps the sign
        if (!float.IsFinite(xInf) || !float.IsFinite(x2)) return TensorPrimitives.IndexOfMax(approximate); // NaN or ∞ in: nothing to bound (adjusted)
        var l1 = w.RowL1!;
        var l2 = w.RowL2!;
        // B[v] rounded up a little so float rounding of the bound itself cannot make it smaller than the true bound.
        float scale1 = (float)(c * xInf * (1 + 1e-6)), scale2 = (float)(c * x2 * (1 + 1e-6));
        int n = approximate.Length, v = 0;
        fixed (float* y = approximate, p1 = l1, p2 = l2)
        {
            // Pass 1: floor = max over v of (ŷ[v] − B[v]).
            var s1 = Vector512.Create(scale1);
            var s2 = Vector512.Create(scale2);
            var floors = Vector512.Create(float.NegativeInfinity);
            for (; v + 16 <= n; v += 16)
            {
                var b = Vector512.Min(Vector512.Load(p1 + v) * s1, Vector512.Load(p2 + v) * s2);
                floors = Vector512.Max(floors, Vector512.Load(y + v) - b);
            }
            float floor = float.NegativeInfinity;
            for (int i = 0; i < 16; i++) floor = MathF.Max(floor, floors.GetElement(i));
            for (; v < n; v++) floor = MathF.Max(floor, y[v] - MathF.Min(p1[v] * scale1, p2[v] * scale2));

            // Pass 2: the candidates ŷ[v] + B[v] ≥ floor, settled exactly.
            int best = -1;
            float bestValue = float.NegativeInfinity;
            var floorVector = Vector512.Create(floor);
            fixed (float* xp = x)
            {
                for (v = 0; v + 16 <= n; v += 16)
                {
                    var b = Vector512.Min(Vector512.Load(p1 + v) * s1, Vector512.Load(p2 + v) * s2);
                    ConsiderEach(w, v, Vector512.GreaterThanOrEqual(Vector512.Load(y + v) + b, floorVector).ExtractMostSignificantBits(), xp, adjust, ref best, ref bestValue);
                }
                for (; v < n; v++)
                    if (y[v] + MathF.Min(p1[v] * scale1, p2[v] * scale2) >= floor) Consider(w, v, xp, adjust, ref best, ref bestValue);
            }
            return best;
        }
    }

    private static bool AllFinite(HostTensor x)
    {
        for (int t = 0; t < x.Rows; t++)
        {
            var row = x.FloatRow(t);
            if (!float.IsFinite(TensorPrimitives.SumOfMagnitudes(row)) || !float.IsFinite(TensorPrimitives.Norm(row))) return false;
        }
        return true;
    }

    /// <summary>An input row's 16-bit copy: x ≈ <see cref="Scale"/> · u, and the norm of its error, rounded up.</summary>
    private readonly record struct InputQuantisation(float Scale, float Error2);

    /// <summary>
    /// Writes u[j] = round(x[j] / σ) (0 past the end), σ = max |x| / m with m = min(32767, (2^31 − 1) / (127 · u.Length))
    /// so that no 32-bit sum of the first pass can overflow, and returns σ with the error norm ‖x − σu‖₂, computed in
    /// double and rounded up.
    /// </summary>
    private static InputQuantisation QuantiseInput(Span<float> x, Span<short> u)
    {
        int limit = (int)Math.Min(short.MaxValue, int.MaxValue / (127L * u.Length));
        float sigma = MathF.Abs(TensorPrimitives.MaxMagnitude(x)) / limit;
        double squared = 0;
        for (int j = 0; j < x.Length; j++)
        {
            int v = sigma > 0 ? (int)Math.Clamp(Math.Round(x[j] / (double)sigma), -limit, limit) : 0;
            u[j] = (short)v;
            double e = x[j] - (double)sigma * v;
            squared += e * e;
        }
        u[x.Length..].Clear();
        return new InputQuantisation(sigma, (float)(Math.Sqrt(squared) * (1 + 1e-6)));
    }

    /// <summary>
    /// The exact argmax of one row from its 8-bit first pass: <paramref name="scratch"/> holds, as ints, Σ_j q[v, j]·u[j]
    /// with u the input's 16-bit copy (see <see cref="QuantiseInput"/>), so ŷ[v] = s_v·σ·sums[v] is the product of the
    /// weight's 8-bit copy ŵ = s q and the input's copy x̂ = σu. Since w·x − ŵ·x̂ = (w − ŵ)·x + ŵ·(x − x̂), Cauchy-Schwarz
    /// gives |ŷ[v] − y[v]| ≤ B[v] = (e_v + 4k·2^-24·(‖w_v‖₂ + e_v)) · ‖x‖₂ + ‖ŵ_v‖₂ · ‖x − x̂‖₂ + 2^-20 · |ŷ[v]|, with
    /// e_v = ‖w_v − ŵ_v‖₂, the float rounding of the exact dot product, and that of the scaling, with margin. As in
    /// <see cref="SettleArgMax"/>, every row whose interval reaches the largest lower bound is recomputed exactly and
    /// the largest wins (the lowest index on ties). ‖ŵ_v‖₂ is taken as its largest value over the rows
    /// (<see cref="HostTensor.Int8NormMax"/>; with 16-bit inputs that term is small), so two per-row numbers (s_v and
    /// <see cref="HostTensor.Int8Bound"/>) are read once; the second pass reads the upper ends ŷ + B kept in the scratch.
    /// </summary>
    private static int SettleInt8ArgMax(HostTensor w, Span<float> x, Span<float> scratch, InputQuantisation input, float* adjust)
    {
        int n = scratch.Length;
        // ‖x‖₂ is a k-term float sum itself, so it is taken a little larger.
        float a2 = TensorPrimitives.Norm(x) * (1 + 1e-4f);
        const float Relative = 1f / (1 << 20);
        fixed (float* y = scratch, scale = w.Int8Scale, bound = w.Int8Bound)
        {
            int* raw = (int*)y;
            var x2 = Vector512.Create(a2);
            float inputTerm = w.Int8NormMax * input.Error2 * (1 + 1e-6f);
            var d2 = Vector512.Create(inputTerm);
            var sigma = Vector512.Create(input.Scale);
            var relative = Vector512.Create(Relative);
            var floors = Vector512.Create(float.NegativeInfinity);
            int v = 0;
            // Pass 1: floor = max over v of (ŷ[v] − B[v]); ŷ[v] + B[v] replaces the sum.
            for (; v + 16 <= n; v += 16)
            {
                var yv = Avx512F.ConvertToVector512Single(Vector512.Load(raw + v)) * (Vector512.Load(scale + v) * sigma);
                var b = Vector512.Load(bound + v) * x2 + d2 + Vector512.Abs(yv) * relative;
                if (adjust is not null) yv += Vector512.Load(adjust + v); // after the bound, which is that of the unadjusted value
                floors = Vector512.Max(floors, yv - b);
                (yv + b).Store(y + v);
            }
            float floor = float.NegativeInfinity;
            for (int i = 0; i < 16; i++) floor = MathF.Max(floor, floors.GetElement(i));
            for (; v < n; v++)
            {
                float yv = raw[v] * (scale[v] * input.Scale);
                float b = bound[v] * a2 + inputTerm + MathF.Abs(yv) * Relative;
                if (adjust is not null) yv += adjust[v];
                floor = MathF.Max(floor, yv - b);
                y[v] = yv + b;
            }
            // Pass 2: the candidates ŷ[v] + B[v] ≥ floor, settled exactly.
            int best = -1;
            float bestValue = float.NegativeInfinity;
            var floorVector = Vector512.Create(floor);
            fixed (float* xp = x)
            {
                for (v = 0; v + 16 <= n; v += 16)
                    ConsiderEach(w, v, Vector512.GreaterThanOrEqual(Vector512.Load(y + v), floorVector).ExtractMostSignificantBits(), xp, adjust, ref best, ref bestValue);
                for (; v < n; v++)
                    if (y[v] >= floor) Consider(w, v, xp, adjust, ref best, ref bestValue);
            }
            return best;
        }
    }

    /// <summary>Considers rows v + i for each bit i set in <paramref name="bits"/>, in increasing order.</summary>
    private static void ConsiderEach(HostTensor w, int v, ulong bits, float* x, float* adjust, ref int best, ref float bestValue)
    {
        while (bits != 0)
        {
            int u = v + System.Numerics.BitOperations.TrailingZeroCount(bits);
            bits &= bits - 1;
            Consider(w, u, x, adjust, ref best, ref bestValue);
        }
    }

    /// <summary>
    /// Keeps candidate u when its exact logit (plus its adjustment, when given) beats the best so far (candidates come in
    /// increasing order, so ties keep the lower index). A row adjusted to −∞ is not computed.
    /// </summary>
    private static void Consider(HostTensor w, int u, float* x, float* adjust, ref int best, ref float bestValue)
    {
        float offset = adjust is null ? 0f : adjust[u];
        if (offset == float.NegativeInfinity)
        {
            if (best < 0) (best, bestValue) = (u, float.NegativeInfinity);
            return;
        }
        float exact = ExactRowDot(w, u, x) + offset;
        if (best < 0 || exact > bestValue)
        {
            best = u;
            bestValue = exact;
        }
    }

    /// <summary>Row v of a split weight dotted with x in float32, in one fixed order (16 lanes, then their sum) whatever the batch.</summary>
    private static float ExactRowDot(HostTensor w, int v, float* x)
    {
        int k = w.Columns;
        float* row = stackalloc float[k];
        // Row v's elements are 16 apart in both halves' panels (see HostTensor.Packed).
        long first = (long)(v / HostTensor.PanelRows) * k * HostTensor.PanelRows + v % HostTensor.PanelRows;
        ushort* high = (ushort*)w.Pointer + first, low = (ushort*)(w.Pointer + (nint)w.LowOffset) + first;
        for (int j = 0; j < k; j++) row[j] = BitConverter.UInt32BitsToSingle((uint)high[(long)j * HostTensor.PanelRows] << 16 | low[(long)j * HostTensor.PanelRows]);
        return HostMatMul.Dot(row, x, k);
    }
    private static int Columns(TensorData t) => t.Shape.Length == 1 ? t.Shape[0] : t.Shape[^1];

    /// <inheritdoc />
    public void Upload(DeviceTensor destination, ReadOnlySpan<float> source) => source.CopyTo(Check(destination, DType.F32, source.Length).Floats);

    /// <inheritdoc />
    public void Upload(DeviceTensor destination, ReadOnlySpan<int> source) => source.CopyTo(Check(destination, DType.I32, source.Length).Ints);

    /// <inheritdoc />
    public void Download(DeviceTensor source, Span<float> destination)
    {
        var t = source as HostTensor is { Packed: true } p && ReferenceEquals(p.Backend, this) ? p : Check(source, DType.F32, destination.Length);
        if (!t.Packed)
        {
            t.Floats.CopyTo(destination);
            return;
        }
        if (t.Length != destination.Length) throw new ArgumentException($"copy of {destination.Length} F32 values does not fit tensor {t.ShapeText}");
        for (int r = 0; r < t.Rows; r++)
            for (int j = 0; j < t.Columns; j++) destination[r * t.Columns + j] = t.PackedAt(r, j);
    }

    /// <inheritdoc />
    public void Download(DeviceTensor source, Span<int> destination) => Check(source, DType.I32, destination.Length).Ints.CopyTo(destination);

    private HostTensor Check(DeviceTensor tensor, DType type, int length)
    {
        var t = Own(tensor);
        if (t.Type != type || t.Length != length)
            throw new ArgumentException($"copy of {length} {type} values does not fit tensor {t.ShapeText}");
        return t;
    }

    /// <inheritdoc />
    public KvCache AllocateKvCache(KvCacheLayout layout)
    {
        ArgumentNullException.ThrowIfNull(layout);
        return new HostKvCache(this, layout);
    }

    /// <inheritdoc />
    public void Synchronize()
    {
    }

    /// <inheritdoc />
    public void Embedding(DeviceTensor output, DeviceTensor tokens, DeviceTensor table)
    {
        var o = Own(output);
        var ids = Own(tokens).Ints;
        var w = OwnWeight(table);
        Shapes.Embedding(o, tokens, w);
        for (int t = 0; t < o.Rows; t++)
        {
            int id = ids[t];
            if ((uint)id >= (uint)w.Rows) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {id} outside the vocabulary of {w.Rows}");
            var row = o.FloatRow(t);
            if (w.Packed)
                for (int j = 0; j < row.Length; j++) row[j] = w.PackedAt(id, j);
            else
                DecodeRow(w, id, row);
        }
    }

    /// <inheritdoc />
    public void RmsNorm(DeviceTensor output, DeviceTensor input, DeviceTensor weight, float eps)
    {
        var o = Own(output);
        var x = Own(input);
        var w = Own(weight);
        Shapes.RmsNorm(o, x, w);
        float[] decodedWeight = ArrayPool<float>.Shared.Rent(w.Columns);
        var wf = decodedWeight.AsSpan(0, w.Columns);
        DecodeRow(w, 0, wf);
        for (int t = 0; t < x.Rows; t++)
        {
            var row = x.FloatRow(t);
            float sumSquares = TensorPrimitives.SumOfSquares(row);
            float scale = 1f / MathF.Sqrt(sumSquares / row.Length + eps);
            var dst = o.FloatRow(t);
            TensorPrimitives.Multiply(row, scale, dst);
            TensorPrimitives.Multiply(dst, wf, dst);
        }
        ArrayPool<float>.Shared.Return(decodedWeight);
    }

    /// <inheritdoc />
    public void HeadRmsNorm(DeviceTensor qkv, int queryHeads, int kvHeads, int headDim, DeviceTensor queryWeight, DeviceTensor keyWeight, float eps)
    {
        var x = Own(qkv);
        var qw = Own(queryWeight);
        var kw = Own(keyWeight);
        Shapes.HeadRmsNorm(x, queryHeads, kvHeads, headDim, qw, kw);
        float[] decoded = ArrayPool<float>.Shared.Rent(2 * headDim);
        var q = decoded.AsSpan(0, headDim);
        var k = decoded.AsSpan(headDim, headDim);
        DecodeRow(qw, 0, q);
        DecodeRow(kw, 0, k);
        for (int t = 0; t < x.Rows; t++)
        {
            var row = x.FloatRow(t);
            for (int h = 0; h < queryHeads + kvHeads; h++)
            {
                var head = row.Slice(h * headDim, headDim);
                float scale = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(head) / headDim + eps);
                TensorPrimitives.Multiply(head, scale, head);
                TensorPrimitives.Multiply(head, h < queryHeads ? q : k, head);
            }
        }
        ArrayPool<float>.Shared.Return(decoded);
    }

    /// <inheritdoc />
    public void MatMul(DeviceTensor output, DeviceTensor input, DeviceTensor weight, bool accumulate)
    {
        var o = Own(output);
        var x = Own(input);
        var w = OwnWeight(weight);
        Shapes.MatMul(o, x, w);
        int n = w.Rows, k = w.Columns, tokens = x.Rows;
        long work = (long)n * k * tokens;
        if (w.Packed)
        {
            MatMulPacked(o, x, w, accumulate, work);
            return;
        }
        int chunks = work < ParallelThreshold ? 1 : Math.Min(n, _threads * 4);
        if (chunks == 1) MatMulRows(o, x, w, 0, n, accumulate);
        else
        {
            _workers.For(chunks, c =>
            {
                int start = (int)((long)n * c / chunks) & ~3, end = c == chunks - 1 ? n : (int)((long)n * (c + 1) / chunks) & ~3;
                MatMulRows(o, x, w, start, end, accumulate);
            });
        }
    }

    /// <summary>MatMul with a packed weight: threads take runs of panel pairs (32 rows).</summary>
    private void MatMulPacked(HostTensor o, HostTensor x, HostTensor w, bool accumulate, long work)
    {
        int pairs = (w.Panels + 1) / 2;
        int chunks = work < ParallelThreshold ? 1 : Math.Min(pairs, _threads * 4);
        float* input = (float*)x.Pointer, output = (float*)o.Pointer;
        int tokens = x.Rows;
        if (w.Split) RunPanels<HostMatMul.SplitPanel>(w, input, tokens, output, accumulate, chunks);
        else if (w.Type == DType.F16) RunPanels<HostMatMul.F16Panel>(w, input, tokens, output, accumulate, chunks);
        else if (w.Type == DType.BF16) RunPanels<HostMatMul.HighHalfPanel>(w, input, tokens, output, accumulate, chunks);
        else RunPanels<HostMatMul.F32Panel>(w, input, tokens, output, accumulate, chunks);
    }

    private void RunPanels<TLoad>(HostTensor w, float* input, int tokens, float* output, bool accumulate, int chunks, byte* panels = null) where TLoad : struct, HostMatMul.IPanelLoad
    {
        int pairs = (w.Panels + 1) / 2, n = w.Rows, k = w.Columns;
        byte* weights = panels != null ? panels : (byte*)w.Pointer;
        long low = w.LowOffset;
        if (chunks == 1) HostMatMul.Panels<TLoad>(weights, low, n, k, 0, pairs, input, tokens, output, accumulate);
        else
        {
            _workers.For(chunks, c =>
                HostMatMul.Panels<TLoad>(weights, low, n, k, (int)((long)pairs * c / chunks), (int)((long)pairs * (c + 1) / chunks), input, tokens, output, accumulate));
        }
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static void MatMulRows(HostTensor o, HostTensor x, HostTensor w, int start, int end, bool accumulate)
    {
        const int Block = 4;
        int k = w.Columns, tokens = x.Rows, n = w.Rows;
        float* outBase = (float*)o.Pointer;
        float* inBase = (float*)x.Pointer;
        float[]? rented = w.Type == DType.F32 ? null : ArrayPool<float>.Shared.Rent(Block * k);
        for (int row = start; row < end; row += Block)
        {
            int rows = Math.Min(Block, end - row);
            if (rented is null)
            {
                HostMatMul.RowBlock((float*)w.Pointer + (long)row * k, rows, k, inBase, tokens, outBase, n, row, accumulate);
                continue;
            }
            for (int i = 0; i < rows; i++) DecodeRow(w, row + i, rented.AsSpan(i * k, k));
            fixed (float* decoded = rented)
                HostMatMul.RowBlock(decoded, rows, k, inBase, tokens, outBase, n, row, accumulate);
        }
        if (rented is not null) ArrayPool<float>.Shared.Return(rented);
    }

    /// <summary>Decodes one row of a float tensor of any dtype into float32.</summary>
    private static void DecodeRow(HostTensor tensor, int row, Span<float> destination)
    {
        int size = DTypeInfo.SizeOf(tensor.Type);
        var bytes = new ReadOnlySpan<byte>((byte*)tensor.Pointer + (long)row * tensor.Columns * size, tensor.Columns * size);
        HalfConversions.ToSingle(tensor.Type, bytes, destination);
    }

    /// <inheritdoc />
    public void Rope(DeviceTensor x, DeviceTensor positions, int heads, int headDim, RopeParameters rope)
    {
        ArgumentNullException.ThrowIfNull(rope);
        var t = Own(x);
        var pos = Own(positions).Ints;
        Shapes.Rope(t, positions, heads, headDim);
        int half = headDim / 2;
        var frequencies = rope.Frequencies(headDim);
        for (int row = 0; row < t.Rows; row++)
        {
            var r = t.FloatRow(row);
            float p = pos[row];
            for (int j = 0; j < half; j++)
            {
                float angle = p * frequencies[j];
                float cos = MathF.Cos(angle), sin = MathF.Sin(angle);
                for (int h = 0; h < heads; h++)
                {
                    int i = h * headDim + j;
                    float a = r[i], b = r[i + half];
                    r[i] = a * cos - b * sin;
                    r[i + half] = a * sin + b * cos;
                }
            }
        }
    }

    /// <inheritdoc />
    public void KvWrite(KvCache cache, int layer, DeviceTensor qkv, int queryHeads, DeviceTensor blockTable, int startPosition)
    {
        var c = OwnCache(cache);
        var q = Own(qkv);
        var table = Own(blockTable).Ints;
        var l = c.Layout;
        Shapes.KvWrite(l, layer, q, queryHeads, blockTable, startPosition);
        int kOffset = queryHeads * l.HeadDim;
        Span<float> clamped = !c.IsHalf ? default : l.KvDim <= 4096 ? stackalloc float[l.KvDim] : new float[l.KvDim];
        for (int t = 0; t < q.Rows; t++)
        {
            long slot = PhysicalSlot(l, table, startPosition + t);
            var row = q.FloatRow(t);
            if (c.IsHalf)
            {
                // Saturated to ±65504 (see HalfKv.Saturate), then rounded to nearest even binary16 as (Half)x does.
                for (int part = 0; part < 2; part++)
                {
                    var source = row.Slice(kOffset + part * l.KvDim, l.KvDim);
                    for (int i = 0; i < clamped.Length; i++) clamped[i] = HalfKv.Saturate(source[i]);
                    // Max is NaN where any element is: the attention reads a cache that has never held a NaN faster.
                    if (float.IsNaN(TensorPrimitives.Max(clamped))) c.MayHoldNaN = true;
                    TensorPrimitives.ConvertToHalf(clamped, c.HalfSlot(layer, part, slot));
                }
                continue;
            }
            row.Slice(kOffset, l.KvDim).CopyTo(c.Slot(layer, 0, slot));
            row.Slice(kOffset + l.KvDim, l.KvDim).CopyTo(c.Slot(layer, 1, slot));
        }
    }

    private static long PhysicalSlot(KvCacheLayout layout, ReadOnlySpan<int> table, int position)
    {
        int block = table[position / layout.BlockSize];
        if ((uint)block >= (uint)layout.BlockCount)
            throw new InvalidOperationException($"block table entry {block} for position {position} is outside the pool of {layout.BlockCount} blocks");
        return (long)block * layout.BlockSize + position % layout.BlockSize;
    }

    /// <inheritdoc />
    public void Attention(DeviceTensor output, DeviceTensor qkv, KvCache cache, int layer, DeviceTensor blockTable, int committed, DeviceTensor? mask)
    {
        var o = Own(output);
        var q = Own(qkv);
        var c = OwnCache(cache);
        var l = c.Layout;
        var tableTensor = Own(blockTable);
        HostTensor? m = mask is null ? null : Own(mask);
        Shapes.Attention(o, q, l, blockTable, committed, mask);
        int heads = o.Columns / l.HeadDim, tokens = q.Rows, groups = heads / l.KvHeads, dh = l.HeadDim;
        float scale = 1f / MathF.Sqrt(dh);
        long work = (long)tokens * heads * (committed + tokens) * dh;
        // Element offsets of every key's slot, looked up in the block table once for all heads and tokens.
        long[] slotsArray = ArrayPool<long>.Shared.Rent(committed + tokens);
        var table = tableTensor.Ints;
        for (int j = 0; j < committed + tokens; j++) slotsArray[j] = PhysicalSlot(l, table, j) * l.KvDim;
        if (c.IsHalf)
        {
            AttentionHalf(o, q, c, layer, slotsArray, committed, m);
            ArrayPool<long>.Shared.Return(slotsArray);
            return;
        }
        int items = tokens * heads;
        float* layerKeys = c.SlotPointer<float>(layer, 0, 0), layerValues = c.SlotPointer<float>(layer, 1, 0);
        void Run(int item)
        {
            int t = item / heads, h = item % heads, kvHead = h / groups;
            float* query = (float*)q.Pointer + (long)t * q.Columns + h * dh;
            float* keyBase = layerKeys + kvHead * dh, valueBase = layerValues + kvHead * dh;
            float* result = (float*)o.Pointer + (long)t * o.Columns + h * dh;
            AttendOne(query, keyBase, valueBase, slotsArray.AsSpan(0, committed + tokens), committed, tokens, t, m is null ? null : (int*)m.Pointer, result, dh, scale);
        }
        if (work < ParallelThreshold || items == 1) for (int i = 0; i < items; i++) Run(i);
        else _workers.For(items, Run);
        ArrayPool<long>.Shared.Return(slotsArray);
    }

    /// <summary>
    /// The attention over an F16 cache. A work item is one KV head and a run of tokens, whose queries (the run's tokens
    /// times the group's query heads) it takes together (<see cref="AttendHalves"/>); a head's tokens are split into runs
    /// only where there are fewer than two KV heads per thread, each run reading the head again.
    /// </summary>
    private void AttentionHalf(HostTensor o, HostTensor q, HostKvCache c, int layer, long[] slotsArray, int committed, HostTensor? m)
    {
        var l = c.Layout;
        int heads = o.Columns / l.HeadDim, tokens = q.Rows, groups = heads / l.KvHeads, dh = l.HeadDim, keys = committed + tokens;
        float scale = 1f / MathF.Sqrt(dh);
        long work = (long)tokens * heads * keys * dh;
        int runs = work < ParallelThreshold ? 1 : Math.Clamp((2 * _threads + l.KvHeads - 1) / l.KvHeads, 1, tokens);
        int perRun = (tokens + runs - 1) / runs;
        runs = (tokens + perRun - 1) / perRun;
        ushort* cachedKeys = c.SlotPointer<ushort>(layer, 0, 0), cachedValues = c.SlotPointer<ushort>(layer, 1, 0);
        int* mask = m is null ? null : (int*)m.Pointer;
        bool finite = !c.MayHoldNaN;
        void Run(int item)
        {
            int kvHead = item / runs, first = item % runs * perRun, last = Math.Min(tokens, first + perRun);
            // Keys a token of the run can see: committed ones, then up to the run's last token (causal) or all T (mask).
            int visible = m is null ? committed + last : keys;
            AttendHalves(q, o, cachedKeys + kvHead * dh, cachedValues + kvHead * dh, slotsArray.AsSpan(0, visible), committed, tokens, mask,
                first, last, kvHead * groups, groups, dh, scale, finite);
        }
        int items = l.KvHeads * runs;
        if (work < ParallelThreshold || items == 1) for (int i = 0; i < items; i++) Run(i);
        else _workers.For(items, Run);
    }

    /// <summary>Floats of the rows <see cref="AttendHalves"/> converts at a time: 16 KiB, which stay in the core's L1 cache.</summary>
    private const int TileFloats = 4096;

    /// <summary>
    /// Query heads firstHead..firstHead + groups − 1 of tokens first..last − 1 (their results too) over the binary16 keys
    /// and values at keyBase + slots[j] and valueBase + slots[j] (visibility as for <see cref="AttendOne"/>). Each query
    /// gets the float32 sums of AttendOne over an F32 cache of the widened values, in the same order, so the same bits.
    /// A half divided by 2^112 is a float made of its bits in three instructions, six where the cache may hold a NaN
    /// (<paramref name="finite"/> false; see <see cref="HostMatMul.ScaleDownHalves(Vector256{ushort})"/>), against a dozen
    /// to widen it, so the rows are read that way and the queries and weights multiplied by 2^112 instead, exactly while a
    /// query is below 2^16 in magnitude: every product, and so every sum, is the same. One query (a decode step without
    /// GQA) reads each row in registers as it goes (<see cref="AttendOneHalves"/>). Several take the rows a tile at a
    /// time: a tile of key rows is converted once into a buffer that stays in the L1 cache and scored against every
    /// query, then the value rows likewise; a query of 2^16 or more goes this way too, with the rows widened and the
    /// queries and weights as they are. (Widening the whole history into a scratch first made the attention take twice
    /// the time of the F32 cache's at T = 1.)
    /// </summary>
    private static void AttendHalves(HostTensor q, HostTensor o, ushort* keyBase, ushort* valueBase, ReadOnlySpan<long> slots, int committed, int tokens,
        int* mask, int first, int last, int firstHead, int groups, int dh, float scale, bool finite)
    {
        int count = (last - first) * groups, visible = slots.Length;
        float* results = (float*)o.Pointer + (long)first * o.Columns + firstHead * dh;
        if (count == 1 && dh <= MaxStackHeadDim)
        {
            var query = new ReadOnlySpan<float>((float*)q.Pointer + (long)first * q.Columns + firstHead * dh, dh);
            if (TensorPrimitives.MaxMagnitude(query) < ScalableQuery) // false for NaN too
            {
                float* scaledQuery = stackalloc float[dh];
                TensorPrimitives.Multiply(query, HostMatMul.HalfScale, new Span<float>(scaledQuery, dh));
                AttendOneHalves(scaledQuery, keyBase, valueBase, slots, committed, tokens, first, mask, results, dh, scale, finite);
                return;
            }
        }
        // Row i of scores holds query i's scores, then its weights; query i is token first + i / groups, query head
        // firstHead + i % groups. factors[i] holds its maximum score, then the reciprocal of its weights' sum; queries its
        // row, scaled by 2^112 where they all allow it.
        float[] rented = ArrayPool<float>.Shared.Rent(count * (visible + 1 + dh));
        int tile = Math.Max(1, TileFloats / dh);
        Span<float> tileSpan = dh <= TileFloats ? stackalloc float[tile * dh] : new float[dh];
        fixed (float* scores = rented, rows = tileSpan)
        {
            float* factors = scores + (long)count * visible, queries = factors + count;
            bool scaled = true;
            for (int t = first; t < last; t++)
            {
                var row = new ReadOnlySpan<float>((float*)q.Pointer + (long)t * q.Columns + firstHead * dh, groups * dh);
                scaled &= TensorPrimitives.MaxMagnitude(row) < ScalableQuery;
                row.CopyTo(new Span<float>(queries + (long)(t - first) * groups * dh, groups * dh));
            }
            float up = scaled ? HostMatMul.HalfScale : 1f;
            var allQueries = new Span<float>(queries, count * dh);
            TensorPrimitives.Multiply(allQueries, up, allQueries);
            new Span<float>(factors, count).Fill(float.NegativeInfinity);
            for (int start = 0; start < visible; start += tile)
            {
                int end = Math.Min(visible, start + tile);
                ConvertTile(keyBase, slots, start, end, rows, dh, scaled, finite);
                for (int t = first, i = 0; t < last; t++)
                {
                    int* maskRow = mask is null ? null : mask + (long)t * tokens;
                    for (int g = 0; g < groups; g++, i++)
                    {
                        float* query = queries + (long)i * dh, row = scores + (long)i * visible;
                        float max = factors[i];
                        for (int j = start; j < end; j++)
                        {
                            if (!(j < committed || (maskRow is null ? j - committed <= t : maskRow[j - committed] != 0)))
                            {
                                row[j] = float.NegativeInfinity;
                                continue;
                            }
                            float s = HostMatMul.Dot(query, rows + (long)(j - start) * dh, dh) * scale;
                            row[j] = s;
                            if (s > max) max = s;
                        }
                        factors[i] = max;
                    }
                }
            }
            for (int i = 0; i < count; i++) factors[i] = Exponentiate(new Span<float>(scores + (long)i * visible, visible), factors[i]);
            for (int t = first; t < last; t++) new Span<float>(results + (long)(t - first) * o.Columns, groups * dh).Clear();
            for (int start = 0; start < visible; start += tile)
            {
                int end = Math.Min(visible, start + tile);
                ConvertTile(valueBase, slots, start, end, rows, dh, scaled, finite);
                for (int t = first, i = 0; t < last; t++)
                {
                    float* result = results + (long)(t - first) * o.Columns;
                    for (int g = 0; g < groups; g++, i++, result += dh)
                    {
                        float* weights = scores + (long)i * visible;
                        for (int j = start; j < end; j++)
                        {
                            if (weights[j] == 0f) continue;
                            // The scale rounded as AttendOne's, then times 2^112 or 1 (exact).
                            HostMatMul.AddScaled(result, rows + (long)(j - start) * dh, weights[j] * factors[i] * up, dh);
                        }
                    }
                }
            }
        }
        ArrayPool<float>.Shared.Return(rented);
    }

    /// <summary>Largest head size whose scaled query <see cref="AttendHalves"/> keeps on the stack.</summary>
    private const int MaxStackHeadDim = 1024;

    /// <summary>Queries below this in magnitude times 2^112 stay finite (and exact): 2^16.</summary>
    private const float ScalableQuery = 65536f;

    /// <summary>Rows start..end − 1 at base + slots[j], (exactly) divided by 2^112 or widened, into consecutive rows of tile.</summary>
    private static void ConvertTile(ushort* rowBase, ReadOnlySpan<long> slots, int start, int end, float* tile, int dh, bool scaled, bool finite)
    {
        for (int j = start; j < end; j++)
        {
            float* row = tile + (long)(j - start) * dh;
            if (scaled) HostMatMul.ScaleDownHalves(rowBase + slots[j], row, dh, finite);
            else HostMatMul.WidenHalves(rowBase + slots[j], row, dh);
        }
    }

    /// <summary>
    /// <see cref="AttendOne"/> over binary16 keys and values, with the query times 2^112 (see <see cref="AttendHalves"/>):
    /// the same scores, weights and result. <paramref name="finite"/>: the cache holds no NaN (nor infinity, which it
    /// never holds), so a row is divided by 2^112 in three instructions instead of six.
    /// </summary>
    private static void AttendOneHalves(float* scaledQuery, ushort* keyBase, ushort* valueBase, ReadOnlySpan<long> slots, int committed, int tokens, int t,
        int* mask, float* result, int dh, float scale, bool finite)
    {
        int keys = slots.Length;
        float[] scoresArray = ArrayPool<float>.Shared.Rent(keys);
        int* maskRow = mask is null ? null : mask + (long)t * tokens;
        float max = float.NegativeInfinity;
        fixed (float* scores = scoresArray)
        {
            for (int j = 0; j < keys; j++)
            {
                if (!(j < committed || (maskRow is null ? j - committed <= t : maskRow[j - committed] != 0)))
                {
                    scores[j] = float.NegativeInfinity;
                    continue;
                }
                float s = HostMatMul.DotScaledHalves(scaledQuery, keyBase + slots[j], dh, finite) * scale;
                scores[j] = s;
                if (s > max) max = s;
            }
            float inverse = Exponentiate(new Span<float>(scores, keys), max);
            HostMatMul.WeightedSumHalves(result, valueBase, slots, scores, inverse, dh, finite);
        }
        ArrayPool<float>.Shared.Return(scoresArray);
    }

    /// <summary>
    /// One query head of token t over the keys and values of its KV head: key j at keyBase + slots[j], visible when
    /// j &lt; committed, or per the mask row (causal without one; mask is T × T) among the T new keys; keys past slots'
    /// end are not visible to t. Scores q·k · scale, softmax, result = Σ p·v.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AttendOne(float* query, float* keyBase, float* valueBase, ReadOnlySpan<long> slots, int committed, int tokens, int t, int* mask,
        float* result, int dh, float scale)
    {
        int keys = slots.Length;
        float[] scoresArray = ArrayPool<float>.Shared.Rent(keys);
        var scores = scoresArray.AsSpan(0, keys);
        int* maskRow = mask is null ? null : mask + (long)t * tokens;
        float max = float.NegativeInfinity;
        for (int j = 0; j < keys; j++)
        {
            bool visible = j < committed || (maskRow is null ? j - committed <= t : maskRow[j - committed] != 0);
            if (!visible)
            {
                scores[j] = float.NegativeInfinity;
                continue;
            }
            float s = HostMatMul.Dot(query, keyBase + slots[j], dh) * scale;
            scores[j] = s;
            if (s > max) max = s;
        }
        new Span<float>(result, dh).Clear();
        float inverse = Exponentiate(scores, max);
        for (int j = 0; j < keys; j++)
        {
            if (scores[j] == 0f) continue;
            HostMatMul.AddScaled(result, valueBase + slots[j], scores[j] * inverse, dh);
        }
        ArrayPool<float>.Shared.Return(scoresArray);
    }

    /// <summary>
    /// The softmax of the attention, but for the division: scores (−∞ for a key not visible) become e^(s − max), and the
    /// reciprocal of their sum is returned, by which each is multiplied where it is used.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Exponentiate(Span<float> scores, float max)
    {
        float sum = 0;
        for (int j = 0; j < scores.Length; j++)
        {
            float e = float.IsNegativeInfinity(scores[j]) ? 0f : MathF.Exp(scores[j] - max);
            scores[j] = e;
            sum += e;
        }
        return 1f / sum;
    }

    /// <inheritdoc />
    public void SwiGlu(DeviceTensor output, DeviceTensor gateUp)
    {
        var o = Own(output);
        var g = Own(gateUp);
        Shapes.SwiGlu(o, g);
        int f = o.Columns;
        for (int t = 0; t < o.Rows; t++)
        {
            var row = g.FloatRow(t);
            var gate = row[..f];
            var up = row[f..];
            var dst = o.FloatRow(t);
            // silu(g) = g · sigmoid(g)
            TensorPrimitives.Sigmoid(gate, dst);
            TensorPrimitives.Multiply(dst, gate, dst);
            TensorPrimitives.Multiply(dst, up, dst);
        }
    }

    /// <inheritdoc />
    public void SiluResidual(DeviceTensor output, DeviceTensor input, DeviceTensor linear, DeviceTensor bias)
    {
        var o = Own(output);
        var x = Own(input);
        var lin = Own(linear);
        var b = Own(bias);
        Shapes.SiluResidual(o, x, lin, b);
        float[] rented = ArrayPool<float>.Shared.Rent(3 * o.Columns);
        var decodedBias = rented.AsSpan(0, o.Columns);
        var z = rented.AsSpan(o.Columns, o.Columns);
        var silu = rented.AsSpan(2 * o.Columns, o.Columns);
        for (int r = 0; r < o.Rows; r++)
        {
            if (r == 0 || b.Rows > 1) DecodeRow(b, b.Rows > 1 ? r : 0, decodedBias);
            // silu(z) = z · sigmoid(z), z = linear + bias; output may alias input, so it is written last
            TensorPrimitives.Add(lin.FloatRow(r), decodedBias, z);
            TensorPrimitives.Sigmoid(z, silu);
            TensorPrimitives.Multiply(silu, z, silu);
            TensorPrimitives.Add(silu, x.FloatRow(r), o.FloatRow(r));
        }
        ArrayPool<float>.Shared.Return(rented);
    }

    /// <inheritdoc />
    public void Add(DeviceTensor output, DeviceTensor a, DeviceTensor b)
    {
        var o = Own(output);
        var x = Own(a);
        var y = Own(b);
        Shapes.Add(o, x, y);
        if (y.Rows == x.Rows) TensorPrimitives.Add(x.Floats, y.Floats, o.Floats);
        else for (int r = 0; r < x.Rows; r++) TensorPrimitives.Add(x.FloatRow(r), y.FloatRow(0), o.FloatRow(r));
    }

    /// <inheritdoc />
    public void ArgMax(DeviceTensor output, DeviceTensor logits)
    {
        var o = Own(output);
        var x = Own(logits);
        Shapes.ArgMax(o, x);
        for (int t = 0; t < x.Rows; t++) o.Ints[t] = TensorPrimitives.IndexOfMax(x.FloatRow(t));
    }

    /// <inheritdoc />
    public void TopK(DeviceTensor indices, DeviceTensor values, DeviceTensor logits)
    {
        var idx = Own(indices);
        var val = Own(values);
        var x = Own(logits);
        Shapes.TopK(idx, val, x);
        int k = idx.Columns;
        for (int t = 0; t < x.Rows; t++)
        {
            var row = x.FloatRow(t);
            var outIdx = idx.Ints.Slice(t * k, k);
            var outVal = val.FloatRow(t);
            int count = 0;
            // Insertion into a sorted list of k: stable for ties because a later equal value never moves ahead.
            for (int i = 0; i < row.Length; i++)
            {
                float v = row[i];
                if (count == k && !(v > outVal[k - 1])) continue;
                int pos = count < k ? count : k - 1;
                while (pos > 0 && v > outVal[pos - 1])
                {
                    if (pos < k)
                    {
                        outVal[pos] = outVal[pos - 1];
                        outIdx[pos] = outIdx[pos - 1];
                    }
                    pos--;
                }
                outVal[pos] = v;
                outIdx[pos] = i;
                if (count < k) count++;
            }
        }
    }

    /// <inheritdoc />
    public void SoftmaxStats(DeviceTensor output, DeviceTensor logits)
    {
        var o = Own(output);
        var x = Own(logits);
        Shapes.SoftmaxStats(o, x);
        for (int t = 0; t < x.Rows; t++)
        {
            var row = x.FloatRow(t);
            float max = TensorPrimitives.Max(row);
            double sum = 0, weighted = 0;
            foreach (float v in row)
            {
                double e = Math.Exp(v - max);
                sum += e;
                weighted += e * (v - max);
            }
            double logSum = Math.Log(sum);
            // H = −Σ p ln p with p = e^(x−m)/Z: H = ln Z − Σ p (x − m)
            var r = o.FloatRow(t);
            r[0] = max;
            r[1] = (float)(max + logSum);
            r[2] = (float)(logSum - weighted / sum);
        }
    }

    /// <inheritdoc />
    public void GatherInts(DeviceTensor output, DeviceTensor source, ReadOnlySpan<int> indices, DeviceTensor? map)
    {
        Shapes.GatherInts(output, source, indices, map);
        var o = Own(output).Ints;
        var s = Own(source).Ints;
        var m = map is null ? default : Own(map).Ints;
        for (int i = 0; i < indices.Length; i++)
        {
            int value = s[indices[i]];
            o[i] = map is null ? value : value >= 0 && value < m.Length ? m[value] : 0;
        }
    }

    /// <inheritdoc />
    public void KvCompact(KvCache cache, DeviceTensor blockTable, DeviceTensor sources, int destinationStart)
    {
        var c = OwnCache(cache);
        var table = Own(blockTable).Ints;
        var src = Own(sources).Ints;
        Shapes.KvCompact(c.Layout, blockTable, sources, destinationStart);
        var l = c.Layout;
        for (int i = 0; i < src.Length; i++)
        {
            if (src[i] == destinationStart + i) continue;
            long from = PhysicalSlot(l, table, src[i]), to = PhysicalSlot(l, table, destinationStart + i);
            for (int layer = 0; layer < l.Layers; layer++)
            {
                for (int part = 0; part < 2; part++) c.SlotBytes(layer, part, from).CopyTo(c.SlotBytes(layer, part, to));
            }
        }
    }

    private HostTensor Own(DeviceTensor tensor)
    {
        var t = OwnWeight(tensor);
        return t.Packed ? throw new ArgumentException($"the weight matrix {tensor.ShapeText} can only be used as a matmul weight or an embedding table") : t;
    }

    /// <summary>As <see cref="Own"/>, also accepting packed weights (for the ops that read them: MatMul, Embedding).</summary>
    private HostTensor OwnWeight(DeviceTensor tensor) =>
        tensor as HostTensor is { } t && ReferenceEquals(t.Backend, this)
            ? t
            : throw new ArgumentException($"tensor {tensor.ShapeText} does not belong to the host backend");

    private HostKvCache OwnCache(KvCache cache) =>
        cache as HostKvCache is { } c && ReferenceEquals(c.Backend, this)
            ? c
            : throw new ArgumentException("KV cache does not belong to the host backend");

    /// <inheritdoc />
    public double MeasureCopyBandwidth(long bytes, int repeats)
    {
        using var source = new NativeBuffer(bytes);
        using var destination = new NativeBuffer(bytes);
        NativeMemory.Fill((void*)source.Pointer, (nuint)bytes, 1);
        NativeMemory.Clear((void*)destination.Pointer, (nuint)bytes);
        var seconds = new List<double>();
        for (int r = 0; r < Math.Max(1, repeats); r++)
        {
            long start = System.Diagnostics.Stopwatch.GetTimestamp();
            Buffer.MemoryCopy((void*)source.Pointer, (void*)destination.Pointer, bytes, bytes);
            seconds.Add(System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalSeconds);
        }
        seconds.Sort();
        return 2.0 * bytes / seconds[seconds.Count / 2] / 1e9;
    }

    /// <inheritdoc />
    public void Dispose() => _workers.Dispose();
}
