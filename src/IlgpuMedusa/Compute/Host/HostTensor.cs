using IlgpuMedusa.Models;

namespace IlgpuMedusa.Compute.Host;

/// <summary>A tensor in host memory: owned aligned native memory, or borrowed (a memory-mapped checkpoint window, a view).</summary>
internal sealed unsafe class HostTensor : DeviceTensor
{
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

    /// <summary>Address of element [0, 0].</summary>
    public nint Pointer { get; }

    public Span<float> Floats => new((void*)Pointer, checked((int)Length));
    public Span<int> Ints => new((void*)Pointer, checked((int)Length));

    public Span<float> FloatRow(int row) => new((void*)(Pointer + (nint)((long)row * Columns * sizeof(float))), Columns);

    public override DeviceTensor Slice(int start, int count)
    {
        CheckSlice(start, count);
        return new HostTensor(Backend, Type, count, Columns, Pointer + (nint)((long)start * Columns * DTypeInfo.SizeOf(Type)));
    }

    public override void Dispose()
    {
        _owned?.Dispose();
        _owned = null;
    }
}

/// <summary>The KV cache in host memory.</summary>
internal sealed unsafe class HostKvCache : KvCache
{
    private readonly NativeBuffer _buffer;

    public HostKvCache(IComputeBackend backend, KvCacheLayout layout) : base(backend, layout)
    {
        _buffer = new NativeBuffer(layout.TotalBytes);
        System.Runtime.InteropServices.NativeMemory.Clear((void*)_buffer.Pointer, (nuint)layout.TotalBytes);
    }

    /// <summary>Floats of keys (part 0) or values (part 1) of one physical slot.</summary>
    public Span<float> Slot(int layer, int part, long physicalSlot)
    {
        long offset = Layout.PartOffset(layer, part) + physicalSlot * Layout.KvDim;
        return new Span<float>((float*)_buffer.Pointer + offset, Layout.KvDim);
    }

    public override void ReadSlot(int layer, int part, int physicalSlot, Span<float> destination) =>
        Slot(layer, part, physicalSlot).CopyTo(destination);

    public override void Dispose() => _buffer.Dispose();
}
