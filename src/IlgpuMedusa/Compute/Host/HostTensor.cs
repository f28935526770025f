using IlgpuMedusa.Models;

namespace IlgpuMedusa.Compute.Host;

/// <summary>
/// A tensor in host memory: owned aligned native memory, or borrowed (a view of another tensor). Row-major, except
/// F32, F16 and BF16 weight matrices, which <see cref="HostBackend.UploadWeight"/> stores <see cref="Packed"/> in panels for the matmul.
/// </summary>
internal sealed unsafe class HostTensor : DeviceTensor
{
    /// <summary>Rows per panel of a packed weight.</summary>
    public const int PanelRows = 16;

    private NativeBuffer? _owned;

    public HostTensor(IComputeBackend backend, DType type, int rows, int columns, NativeBuffer owned)
        : base(backend, type, rows, columns)
    {
        _owned = owned;
        Pointer = owned.Pointer;
    }

    public HostTensor(IComputeBackend backend, DType type, int rows, int columns, nint borrowed)
        : base(backend, type, rows, columns)
    {
        Pointer = borrowed;
    }

    /// <summary>Address of element [0, 0] (of panel 0 when <see cref="Packed"/>).</summary>
    public nint Pointer { get; }

    /// <summary>
    /// True for a weight matrix stored in panels of <see cref="PanelRows"/> rows: panel p holds rows 16p..16p+15
    /// column by column, so element (r, j) is at element offset ((r / 16) · k + j) · 16 + r % 16, and rows past the end
    /// of the last panel are zero. One 64-byte load (32 bytes for F16 and BF16) then holds column j of 16 rows: the matmul
    /// multiplies it by x[j] broadcast, with no horizontal sums, and streams the weights front to back.
    /// </summary>
    public bool Packed { get; init; }

    /// <summary>Panels of a packed weight.</summary>
    public int Panels => (Rows + PanelRows - 1) / PanelRows;

    /// <summary>
    /// A packed F32 weight stored split (the classifier, see <see cref="HostBackend.UploadClassifier"/>): the high 16
    /// bits of every float (sign, exponent and 7 mantissa bits: the float truncated to bfloat16) in one panel array at
    /// <see cref="Pointer"/>, the low 16 bits in a second one <see cref="LowOffset"/> bytes further. Reading only the high
    /// halves gives every logit to within 2^-7 of Σ|w·x| at half the memory traffic; both halves give the exact floats.
    /// </summary>
    public bool Split { get; init; }

    /// <summary>Bytes from the high halves to the low halves of a split weight.</summary>
    public long LowOffset => (long)Panels * PanelRows * Columns * sizeof(ushort);

    /// <summary>Per-row L1 norms Σ_j |w[r, j]| of a split weight (for its rounding bounds).</summary>
    public float[]? RowL1 { get; init; }
    /// <summary>Per-row L2 norms of a split weight.</summary>
    public float[]? RowL2 { get; init; }

    /// <summary>
    /// An 8-bit copy of a split weight for <see cref="HostBackend.ProductArgMax"/>'s first pass (built where the CPU has
    /// AVX-512BW): q[r, j] = round(w[r, j] / s_r), s_r = max_j |w[r, j]| / 127 (<see cref="Int8Scale"/>), in quad
    /// panels: panel p holds rows 16p..16p+15, and each 64 bytes of it hold 4 columns of those 16 rows, row by row
    /// (element (r, j) at byte p · 16 · <see cref="Int8Columns"/> + (j / 4) · 64 + (r % 16) · 4 + j % 4), columns padded
    /// with zeros to <see cref="Int8Columns"/>. A quarter of the F32 bytes. Null when not built.
    /// </summary>
    public NativeBuffer? Int8 { get; init; }
    /// <summary>The columns of <see cref="Int8"/>: <see cref="DeviceTensor.Columns"/> rounded up to a multiple of 4.</summary>
    public int Int8Columns => (Columns + 3) / 4 * 4;
    /// <summary>s_r of <see cref="Int8"/>.</summary>
    public float[]? Int8Scale { get; init; }
    /// <summary>
    /// Per row, a bound per unit of ‖x‖₂ of the 8-bit weight's error and of the float rounding of the exact dot product:
    /// ‖w_r − s_r q_r‖₂ + 4k·2^-24·(‖w_r‖₂ + ‖w_r − s_r q_r‖₂), rounded up.
    /// </summary>
    public float[]? Int8Bound { get; init; }
    /// <summary>The largest ‖s_r q_r‖₂ over the rows, rounded up: the bound per unit of ‖x − x̂‖₂ of the input's rounding.</summary>
    public float Int8NormMax { get; internal set; }

    /// <summary>Element (row, column) of a packed F32 (split or not), F16 or BF16 weight.</summary>
    public float PackedAt(int row, int column)
    {
        long index = ((long)(row / PanelRows) * Columns + column) * PanelRows + row % PanelRows;
        if (Type == DType.F16) return (float)BitConverter.UInt16BitsToHalf(((ushort*)Pointer)[index]);
        if (Type == DType.BF16) return BitConverter.UInt32BitsToSingle((uint)((ushort*)Pointer)[index] << 16);
        if (!Split) return ((float*)Pointer)[index];
        uint bits = (uint)((ushort*)Pointer)[index] << 16 | ((ushort*)(Pointer + (nint)LowOffset))[index];
        return BitConverter.UInt32BitsToSingle(bits);
    }

    public Span<float> Floats => new((void*)Pointer, checked((int)Length));
    public Span<int> Ints => new((void*)Pointer, checked((int)Length));

    public Span<float> FloatRow(int row) => new((void*)(Pointer + (nint)((long)row * Columns * sizeof(float))), Columns);

    public override DeviceTensor Slice(int start, int count)
    {
        if (Packed)
        {
            // Whole panels of an unsplit packed weight are a packed weight themselves (the Medusa heads' stacked
            // ResBlocks, sliced to the heads a step runs); other row ranges are not contiguous.
            CheckSlice(start, count);
            if (Split || start % PanelRows != 0 || (count % PanelRows != 0 && start + count != Rows))
                throw new InvalidOperationException($"a packed host weight {ShapeText} can only be sliced by whole {PanelRows}-row panels, not rows {start}..{start + count - 1}");
            return new HostTensor(Backend, Type, count, Columns, Pointer + (nint)((long)start * Columns * DTypeInfo.SizeOf(Type))) { Packed = true };
        }
        CheckSlice(start, count);
        return new HostTensor(Backend, Type, count, Columns, Pointer + (nint)((long)start * Columns * DTypeInfo.SizeOf(Type)));
    }

    public override void Dispose()
    {
        _owned?.Dispose();
        _owned = null;
        Int8?.Dispose();
    }
}

/// <summary>
/// The KV cache in host memory: float32 elements, or IEEE binary16 bits (<see cref="DType.F16"/>: written rounded to
/// nearest even, read widened exactly).
/// </summary>
internal sealed unsafe class HostKvCache : KvCache
{
    private readonly NativeBuffer _buffer;
    private readonly int _elementBytes;

    public HostKvCache(IComputeBackend backend, KvCacheLayout layout) : base(backend, layout)
    {
        _elementBytes = layout.ElementBytes; // checks the element type
        _buffer = new NativeBuffer(layout.TotalBytes);
        System.Runtime.InteropServices.NativeMemory.Clear((void*)_buffer.Pointer, (nuint)layout.TotalBytes);
    }

    /// <summary>True when the elements are binary16 bits.</summary>
    public bool IsHalf => Layout.ElementType == DType.F16;

    /// <summary>
    /// Set once a NaN has been written to an F16 cache, and never cleared. Until then every element is finite (the
    /// writes saturate infinities to ±65504), which the attention relies on to read the halves faster.
    /// </summary>
    public bool MayHoldNaN { get; set; }

    /// <summary>Floats of keys (part 0) or values (part 1) of one physical slot of an F32 cache.</summary>
    public Span<float> Slot(int layer, int part, long physicalSlot) => new(SlotPointer<float>(layer, part, physicalSlot), Layout.KvDim);

    /// <summary>Binary16 elements of keys (part 0) or values (part 1) of one physical slot of an F16 cache.</summary>
    public Span<Half> HalfSlot(int layer, int part, long physicalSlot) => new(SlotPointer<Half>(layer, part, physicalSlot), Layout.KvDim);

    /// <summary>The bytes of keys (part 0) or values (part 1) of one physical slot, whatever the element type.</summary>
    public Span<byte> SlotBytes(int layer, int part, long physicalSlot) => new(SlotAddress(layer, part, physicalSlot), Layout.KvDim * _elementBytes);

    /// <summary>
    /// Address of the keys (part 0) or values (part 1) of one physical slot as elements of <typeparamref name="T"/>, which
    /// must have the layout's element size (float for F32; ushort or Half for F16).
    /// </summary>
    public T* SlotPointer<T>(int layer, int part, long physicalSlot) where T : unmanaged
    {
        if (sizeof(T) != _elementBytes)
            throw new InvalidOperationException($"a KV cache of {Layout.ElementType} elements cannot be read as {typeof(T).Name}");
        return (T*)SlotAddress(layer, part, physicalSlot);
    }

    private void* SlotAddress(int layer, int part, long physicalSlot) =>
        (byte*)_buffer.Pointer + (Layout.PartOffset(layer, part) + physicalSlot * Layout.KvDim) * _elementBytes;

    public override void ReadSlot(int layer, int part, int physicalSlot, Span<float> destination)
    {
        if ((uint)layer >= (uint)Layout.Layers || (uint)part > 1 || physicalSlot < 0 || physicalSlot >= Layout.SlotCount || destination.Length != Layout.KvDim)
            throw new ArgumentException($"ReadSlot: layer {layer}, part {part}, slot {physicalSlot}, {destination.Length} floats: outside the cache of " +
                $"{Layout.Layers} layers, {Layout.SlotCount} slots of {Layout.KvDim}");
        if (!IsHalf)
        {
            Slot(layer, part, physicalSlot).CopyTo(destination);
            return;
        }
        fixed (float* target = destination) HostMatMul.WidenHalves(SlotPointer<ushort>(layer, part, physicalSlot), target, Layout.KvDim);
    }

    public override void Dispose() => _buffer.Dispose();
}
