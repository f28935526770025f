namespace IlgpuMedusa.Compute;

/// <summary>
/// Shape of the paged KV cache: for each of L layers, keys and values of <see cref="BlockCount"/> blocks of
/// B = <see cref="BlockSize"/> token slots, each slot Hkv · Dh floats. Storage order is [L][K|V][block][slot][Hkv·Dh].
/// A sequence's logical position p lives at physical slot blockTable[p / B] · B + p mod B.
/// </summary>
/// <param name="Layers">L.</param>
/// <param name="KvHeads">Hkv.</param>
/// <param name="HeadDim">Dh.</param>
/// <param name="BlockSize">B, token slots per block.</param>
/// <param name="BlockCount">Number of physical blocks.</param>
public sealed record KvCacheLayout(int Layers, int KvHeads, int HeadDim, int BlockSize, int BlockCount)
{
    /// <summary>Floats per token slot: Hkv · Dh.</summary>
    public int KvDim => KvHeads * HeadDim;
    /// <summary>Total physical token slots.</summary>
    public long SlotCount => (long)BlockSize * BlockCount;
    /// <summary>Floats of one layer's keys (or values).</summary>
    public long FloatsPerLayerPart => SlotCount * KvDim;
    /// <summary>Total floats of the cache.</summary>
    public long TotalFloats => 2L * Layers * FloatsPerLayerPart;
    /// <summary>Total bytes of the cache (float32).</summary>
    public long TotalBytes => TotalFloats * sizeof(float);
    /// <summary>Bytes one block takes over all layers, keys and values.</summary>
    public long BytesPerBlock => 2L * Layers * BlockSize * KvDim * sizeof(float);

    /// <summary>Float offset of the keys (part 0) or values (part 1) of a layer.</summary>
    public long PartOffset(int layer, int part) => (2L * layer + part) * FloatsPerLayerPart;
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

    /// <summary>Copies one layer's keys (part 0) or values (part 1) of a physical slot to the host (tests, debugging).</summary>
    public abstract void ReadSlot(int layer, int part, int physicalSlot, Span<float> destination);

    /// <summary>Releases the storage.</summary>
    public abstract void Dispose();
}
