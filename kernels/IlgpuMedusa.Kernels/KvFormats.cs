using ILGPU;

namespace IlgpuMedusa.Kernels;

/// <summary>How the KV cache stores a key or value element.</summary>
public enum KvElement
{
    /// <summary>float32.</summary>
    F32,
    /// <summary>IEEE binary16 bits (half the memory); written saturated to ±65,504 and rounded to nearest even, read widened exactly.</summary>
    F16,
}

/// <summary>
/// Reads and writes one KV-cache element. The attention and KV-write kernels are generic over a struct implementing
/// this, so each storage type compiles to its own kernel; every kernel computes in float32.
/// </summary>
/// <typeparam name="TElement"><see cref="float"/>, or the raw bits as <see cref="ushort"/>.</typeparam>
public interface IKvFormat<TElement> : IElementFormat<TElement>
    where TElement : unmanaged
{
    /// <summary>The stored form of <paramref name="value"/>.</summary>
    TElement Encode(float value);
}

/// <summary>float32 keys and values.</summary>
public readonly struct KvF32 : IKvFormat<float>
{
    /// <inheritdoc />
    public float Decode(float raw) => raw;

    /// <inheritdoc />
    public float Encode(float value) => value;
}

/// <summary>
/// What a binary16 KV element stores: the value saturated to the largest finite half, ±65,504 (infinities included;
/// NaN stays NaN), then rounded to nearest even. Saturating, not overflowing to ±∞: the attention kernels let keys that
/// take no part read some valid row with weight 0, and 0 · ∞ would turn another sequence's output into NaN; a float32
/// cache only ever holds what the forward computed.
/// </summary>
public static class HalfKv
{
    /// <summary>The largest finite binary16 value.</summary>
    public const float Max = 65504f;

    /// <summary><paramref name="value"/> clamped to [−65,504, 65,504]; NaN unchanged.</summary>
    public static float Saturate(float value) => value > Max ? Max : value < -Max ? -Max : value;

    /// <summary>The stored bits: <see cref="Saturate"/>, then <see cref="HalfBits.FromSingle"/>.</summary>
    public static ushort Encode(float value) => (ushort)HalfBits.FromSingle(Saturate(value));
}

/// <summary>
/// binary16 keys and values, decoded and encoded bit by bit (<see cref="HalfBits"/>, <see cref="HalfKv"/>): runs on every
/// device, OpenCL without cl_khr_fp16 included, and stores what the host stores (every input but NaN payloads: a NaN
/// stays a NaN of the same sign).
/// </summary>
public readonly struct KvF16 : IKvFormat<ushort>
{
    /// <inheritdoc />
    public float Decode(ushort raw) => HalfBits.ToSingle(raw);

    /// <inheritdoc />
    public ushort Encode(float value) => HalfKv.Encode(value);
}

/// <summary>
/// binary16 keys and values decoded with ILGPU's Half conversion (one cvt instruction on CUDA, where the attention
/// kernels read every element of the cache); encoded bit by bit as <see cref="KvF16"/>, so what is stored is the same on
/// every device. CUDA-only (and the CPU emulator, for tests), like <see cref="F16NativeFormat"/>.
/// </summary>
public readonly struct KvF16Native : IKvFormat<ushort>
{
    /// <inheritdoc />
    public float Decode(ushort raw) => Interop.IntAsFloat(raw);

    /// <inheritdoc />
    public ushort Encode(float value) => HalfKv.Encode(value);
}

/// <summary>
/// One layer's key and value planes of the KV cache as the kernels take them: the raw bytes and the element type
/// (the launchers cast them to float or 16-bit views and pick the kernel instance).
/// </summary>
public readonly struct KvPlanes
{
    /// <summary>Creates the view; both planes must have the same length, a whole number of elements.</summary>
    public KvPlanes(KvElement element, ArrayView<byte> keys, ArrayView<byte> values)
    {
        int size = ElementBytes(element);
        if (keys.Length != values.Length || keys.Length % size != 0)
            throw new ArgumentException($"KV planes of {keys.Length} and {values.Length} bytes: expected equal lengths, a multiple of {size} ({element} elements)");
        Element = element;
        Keys = keys;
        Values = values;
    }

    /// <summary>The element type.</summary>
    public KvElement Element { get; }
    /// <summary>The layer's keys [slots, Hkv·Dh].</summary>
    public ArrayView<byte> Keys { get; }
    /// <summary>The layer's values [slots, Hkv·Dh].</summary>
    public ArrayView<byte> Values { get; }
    /// <summary>Elements per plane.</summary>
    public long Length => Keys.Length / ElementBytes(Element);

    /// <summary>Bytes of one element: 4 or 2.</summary>
    public static int ElementBytes(KvElement element) => element switch
    {
        KvElement.F32 => sizeof(float),
        KvElement.F16 => sizeof(ushort),
        _ => throw new ArgumentOutOfRangeException(nameof(element), element, "unknown KV element type"),
    };
}

/// <summary>
/// Logical KV positions to physical slots through a block table, inside the cache: the kernels read block ids from device
/// memory, where no launcher can check them, so an entry outside [0, blocks) (a bad table passed through the public
/// backend API; the scheduler never builds one) must not make a kernel read or write outside its planes.
/// </summary>
public static class KvSlots
{
    /// <summary>
    /// blockTable[p / B] · B + p mod B, or −1 when p is negative or past the table (compaction sources are device data
    /// too) or the slot lies outside the <paramref name="slotCount"/> slots of a plane (writes skip such a slot; reads
    /// take slot 0 instead: undefined values, but never outside the cache).
    /// </summary>
    public static long Slot(ArrayView<int> blockTable, int position, int blockSize, long slotCount)
    {
        int entry = position / blockSize;
        if (position < 0 || entry >= blockTable.Length) return -1;
        long slot = (long)blockTable[entry] * blockSize + position % blockSize;
        return slot >= 0 && slot < slotCount ? slot : -1;
    }
}
