using IlgpuMedusa.Models;

namespace IlgpuMedusa.Compute;

/// <summary>
/// Shape of the paged KV cache: for each of L layers, keys and values of <see cref="BlockCount"/> blocks of
/// B = <see cref="BlockSize"/> token slots, each slot Hkv · Dh elements of <see cref="ElementType"/> (float32, or IEEE
/// binary16 bits: half the memory; every op computes in float32 and rounds a key or value to nearest even once, when it
/// is written, saturating at ±65504). Storage order is [L][K|V][block][slot][Hkv·Dh]. A sequence's logical position p lives at physical slot
/// blockTable[p / B] · B + p mod B.
/// </summary>
/// <param name="Layers">L.</param>
/// <param name="KvHeads">Hkv.</param>
/// <param name="HeadDim">Dh.</param>
/// <param name="BlockSize">B, token slots per block.</param>
/// <param name="BlockCount">Number of physical blocks.</param>
/// <param name="ElementType">How a key or value element is stored: <see cref="DType.F32"/> or <see cref="DType.F16"/>.</param>
public sealed record KvCacheLayout(int Layers, int KvHeads, int HeadDim, int BlockSize, int BlockCount, DType ElementType = DType.F32)
{
    /// <summary>How a key or value element is stored; anything but F32 or F16 is refused when the layout is made.</summary>
    public DType ElementType { get => _elementType; init => _elementType = CheckElementType(value, "KV cache layout"); }

    private readonly DType _elementType = CheckElementType(ElementType, "KV cache layout");

    /// <summary>Element types a KV cache can hold.</summary>
    public static IReadOnlyList<DType> SupportedTypes { get; } = [DType.F32, DType.F16];

    /// <summary>Throws <see cref="ArgumentException"/> naming <paramref name="what"/> when <paramref name="type"/> cannot be a KV element.</summary>
    public static DType CheckElementType(DType type, string what) => type is DType.F32 or DType.F16
        ? type
        : throw new ArgumentException($"{what}: the KV cache holds f32 or f16 elements, not {type.ToString().ToLowerInvariant()}");

    /// <summary>Bytes per element: 4 (F32) or 2 (F16).</summary>
    public int ElementBytes => CheckElementType(ElementType, "KV cache layout") == DType.F32 ? sizeof(float) : sizeof(ushort);
    /// <summary>Elements per token slot: Hkv · Dh.</summary>
    public int KvDim => KvHeads * HeadDim;
    /// <summary>Total physical token slots.</summary>
    public long SlotCount => (long)BlockSize * BlockCount;
    /// <summary>Elements of one layer's keys (or values).</summary>
    public long ElementsPerLayerPart => SlotCount * KvDim;
    /// <summary>Total elements of the cache.</summary>
    public long TotalElements => 2L * Layers * ElementsPerLayerPart;
    /// <summary>Total bytes of the cache.</summary>
    public long TotalBytes => TotalElements * ElementBytes;
    /// <summary>Bytes one block takes over all layers, keys and values.</summary>
    public long BytesPerBlock => 2L * Layers * BlockSize * KvDim * ElementBytes;

    /// <summary>Bytes one token takes over all layers, keys and values, with elements of <paramref name="type"/>.</summary>
    public static long BytesPerToken(int layers, int kvDim, DType type) =>
        2L * layers * kvDim * (CheckElementType(type, "KV cache") == DType.F32 ? sizeof(float) : sizeof(ushort));

    /// <summary>Element offset of the keys (part 0) or values (part 1) of a layer.</summary>
    public long PartOffset(int layer, int part) => (2L * layer + part) * ElementsPerLayerPart;
}

/// <summary>A KV cache allocated on a backend with a <see cref="KvCacheLayout"/>.</summary>
public abstract class KvCache : IDisposable
{
    /// <summary>Creates the handle.</summary>
    protected KvCache(IComputeBackend backend, KvCacheLayout layout)
    {
        Backend = backend;
        Layout = layout;
    }

    /// <summary>The owning backend.</summary>
    public IComputeBackend Backend { get; }
    /// <summary>The shape.</summary>
    public KvCacheLayout Layout { get; }

    /// <summary>
    /// Copies one layer's keys (part 0) or values (part 1) of a physical slot to the host as float32 (F16 elements widened,
    /// exactly; tests, debugging).
    /// </summary>
    public abstract void ReadSlot(int layer, int part, int physicalSlot, Span<float> destination);

    /// <summary>Releases the storage.</summary>
    public abstract void Dispose();
}
