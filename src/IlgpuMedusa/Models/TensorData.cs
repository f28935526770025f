using System.Runtime.InteropServices;

namespace IlgpuMedusa.Models;

/// <summary>
/// A read-only tensor in host memory: usually a window into a memory-mapped checkpoint, sometimes a buffer
/// owned by the checkpoint (for example q/k rows re-ordered at load). Valid while its checkpoint is open.
/// </summary>
public readonly unsafe struct TensorData
{
    /// <summary>Creates a view. <paramref name="pointer"/> must stay valid for the owner's lifetime.</summary>
    public TensorData(string name, DType type, int[] shape, nint pointer)
    {
        Name = name;
        Type = type;
        Shape = shape;
        Pointer = pointer;
    }

    /// <summary>Checkpoint name of the tensor (for messages).</summary>
    public string Name { get; }
    /// <summary>Element type.</summary>
    public DType Type { get; }
    /// <summary>Dimensions, outermost first.</summary>
    public int[] Shape { get; }
    /// <summary>Address of the first element.</summary>
    public nint Pointer { get; }

    /// <summary>Number of elements.</summary>
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (var d in Shape) n *= d;
            return n;
        }
    }

    /// <summary>Size in bytes.</summary>
    public long ByteLength => ElementCount * DTypeInfo.SizeOf(Type);

    /// <summary>The raw bytes.</summary>
    public ReadOnlySpan<byte> Bytes => new((void*)Pointer, checked((int)ByteLength));

    /// <summary>The elements as float32 (only for <see cref="DType.F32"/>).</summary>
    public ReadOnlySpan<float> AsFloats()
    {
        if (Type != DType.F32) throw new InvalidOperationException($"tensor '{Name}' is {Type}, not F32");
        return new((void*)Pointer, checked((int)ElementCount));
    }

    /// <summary>Copies the elements out as float32, converting from any float dtype.</summary>
    public float[] ToFloatArray()
    {
        var result = new float[ElementCount];
        HalfConversions.ToSingle(Type, Bytes, result);
        return result;
    }

    /// <summary>Shape as text, e.g. [288, 768].</summary>
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";

    /// <summary>Throws <see cref="InvalidDataException"/> when the shape differs from <paramref name="expected"/>.</summary>
    public TensorData RequireShape(params int[] expected)
    {
        if (!Shape.AsSpan().SequenceEqual(expected))
            throw new InvalidDataException(
                $"tensor '{Name}' has shape {ShapeText}, expected [{string.Join(", ", expected)}].");
        return this;
    }
}

/// <summary>Owned, aligned native memory that lives as long as its owner (used for re-ordered weights).</summary>
internal sealed unsafe class NativeBuffer : IDisposable
{
    public NativeBuffer(long bytes)
    {
        Length = bytes;
        bool huge = bytes >= HugePage && OperatingSystem.IsLinux();
        Pointer = (nint)NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 1), (nuint)(huge ? HugePage : 64));
        if (huge) _ = Madvise(Pointer, (nuint)((bytes + HugePage - 1) / HugePage * HugePage), MadviseHugePage); // a hint: failure is harmless
    }

    /// <summary>Buffers of at least this size are 2 MiB-aligned and offered transparent huge pages (fewer TLB misses when streamed).</summary>
    private const long HugePage = 2 << 20;
    private const int MadviseHugePage = 14; // MADV_HUGEPAGE

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "madvise")]
    private static extern int Madvise(nint address, nuint length, int advice);

    public nint Pointer { get; private set; }
    public long Length { get; }
    public Span<byte> Bytes => new((void*)Pointer, checked((int)Length));

    public void Dispose()
    {
        if (Pointer != 0)
        {
            NativeMemory.AlignedFree((void*)Pointer);
            Pointer = 0;
        }
    }
}
