using ILGPU;
using ILGPU.Runtime;
using IlgpuMedusa.Kernels;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Compute.Ilgpu;

/// <summary>
/// A tensor in accelerator memory: a byte view of a MemoryBuffer1D. Rows of 16-bit tensors are padded to an even number
/// of elements (<see cref="RowStride"/>) so that matmul kernels can read element pairs as aligned 32-bit words; other
/// types are dense. A slice is a sub-view of the same buffer (no copy) and owns nothing.
/// </summary>
internal sealed class IlgpuTensor : DeviceTensor
{
    private MemoryBuffer? _owned;

    public IlgpuTensor(IComputeBackend backend, DType type, int rows, int columns, int rowStride, ArrayView<byte> raw, MemoryBuffer? owned)
        : base(backend, type, rows, columns)
    {
        RowStride = rowStride;
        Raw = raw;
        _owned = owned;
    }

    /// <summary>Elements from one row to the next (Columns, or Columns rounded up to even for F16/BF16).</summary>
    public int RowStride { get; }

    /// <summary>The storage: Rows · RowStride elements.</summary>
    public ArrayView<byte> Raw { get; }

    /// <summary>The elements of an F32 tensor.</summary>
    public ArrayView<float> Floats => Raw.Cast<float>();

    /// <summary>The elements of an I32 tensor.</summary>
    public ArrayView<int> Ints => Raw.Cast<int>();

    /// <summary>The tensor as a kernel weight view (F32, F16 or BF16).</summary>
    public WeightView AsWeight() => new(Type switch
    {
        DType.F32 => WeightStorage.F32,
        DType.F16 => WeightStorage.F16,
        DType.BF16 => WeightStorage.BF16,
        _ => throw new ArgumentException($"tensor {ShapeText} is not a float weight"),
    }, Raw, Rows, Columns, RowStride);

    /// <summary>Row stride for a dtype: even for 16-bit storage.</summary>
    public static int StrideFor(DType type, int columns) => type is DType.F16 or DType.BF16 ? columns + (columns & 1) : columns;

    public override DeviceTensor Slice(int start, int count)
    {
        CheckSlice(start, count);
        long rowBytes = (long)RowStride * DTypeInfo.SizeOf(Type);
        return new IlgpuTensor(Backend, Type, count, Columns, RowStride, Raw.SubView(start * rowBytes, count * rowBytes), owned: null);
    }

    public override void Dispose()
    {
        _owned?.Dispose();
        _owned = null;
    }
}

/// <summary>
/// The paged KV cache in accelerator memory: one buffer laid out as <see cref="KvCacheLayout"/> says, float32 or binary16
/// elements.
/// </summary>
internal sealed class IlgpuKvCache : KvCache
{
    private readonly MemoryBuffer1D<byte, Stride1D.Dense> _buffer;
    private readonly AcceleratorStream _stream;

    public IlgpuKvCache(IComputeBackend backend, KvCacheLayout layout, MemoryBuffer1D<byte, Stride1D.Dense> buffer, AcceleratorStream stream)
        : base(backend, layout)
    {
        _buffer = buffer;
        _stream = stream;
        Element = layout.ElementType == DType.F16 ? KvElement.F16 : KvElement.F32;
    }

    /// <summary>How the kernels read an element.</summary>
    public KvElement Element { get; }

    /// <summary>The whole cache as bytes: 2L planes of slots × KvDim elements.</summary>
    public ArrayView<byte> All => _buffer.View;

    /// <summary>One layer's keys (part 0) or values (part 1) as bytes: [slots, KvDim] elements.</summary>
    public ArrayView<byte> Plane(int layer, int part) =>
        All.SubView(Layout.PartOffset(layer, part) * Layout.ElementBytes, Layout.ElementsPerLayerPart * Layout.ElementBytes);

    /// <summary>One layer's key and value planes for the kernels.</summary>
    public KvPlanes Planes(int layer) => new(Element, Plane(layer, 0), Plane(layer, 1));

    public override void ReadSlot(int layer, int part, int physicalSlot, Span<float> destination)
    {
        if ((uint)layer >= (uint)Layout.Layers || (uint)part > 1 || physicalSlot < 0 || physicalSlot >= Layout.SlotCount || destination.Length != Layout.KvDim)
            throw new ArgumentException($"ReadSlot: layer {layer}, part {part}, slot {physicalSlot}, {destination.Length} floats: outside the cache of " +
                $"{Layout.Layers} layers, {Layout.SlotCount} slots of {Layout.KvDim}");
        var slot = Plane(layer, part).SubView((long)physicalSlot * Layout.KvDim * Layout.ElementBytes, (long)Layout.KvDim * Layout.ElementBytes);
        if (Element == KvElement.F32)
        {
            slot.Cast<float>().CopyToCPU(_stream, destination);
            return;
        }
        var bits = new ushort[Layout.KvDim];
        slot.Cast<ushort>().CopyToCPU(_stream, bits);
        for (int i = 0; i < bits.Length; i++) destination[i] = (float)BitConverter.UInt16BitsToHalf(bits[i]);
    }

    public override void Dispose() => _buffer.Dispose();
}
