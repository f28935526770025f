using ILGPU;

namespace IlgpuMedusa.Kernels;

/// <summary>How a weight matrix is stored on the device.</summary>
public enum WeightStorage
{
    /// <summary>float32, row stride = columns.</summary>
    F32,
    /// <summary>IEEE binary16 bits; rows padded to an even number of elements so that pairs can be read as one 32-bit word.</summary>
    F16,
    /// <summary>bfloat16 bits; rows padded to an even number of elements.</summary>
    BF16,
}

/// <summary>
/// A weight matrix [Rows, Columns] on the device: its raw bytes and row stride in elements (≥ Columns; even for 16-bit
/// storage, the padding element being zero).
/// </summary>
public readonly struct WeightView
{
    /// <summary>Creates the view; checks the stride rules.</summary>
    public WeightView(WeightStorage storage, ArrayView<byte> raw, int rows, int columns, int rowStride)
    {
        if (rows < 0 || columns < 0 || rowStride < columns)
            throw new ArgumentException($"weight view [{rows}, {columns}] with row stride {rowStride}: stride must be ≥ columns");
        if (storage != WeightStorage.F32 && rowStride % 2 != 0)
            throw new ArgumentException($"16-bit weight view [{rows}, {columns}] needs an even row stride, got {rowStride}");
        long elementSize = storage == WeightStorage.F32 ? 4 : 2;
        if (raw.Length < (long)rows * rowStride * elementSize)
            throw new ArgumentException($"weight view [{rows}, {columns}] (stride {rowStride}) needs {(long)rows * rowStride * elementSize} bytes, the buffer has {raw.Length}");
        Storage = storage;
        Raw = raw;
        Rows = rows;
        Columns = columns;
        RowStride = rowStride;
    }

    /// <summary>Storage type.</summary>
    public WeightStorage Storage { get; }
    /// <summary>The bytes.</summary>
    public ArrayView<byte> Raw { get; }
    /// <summary>Rows (N).</summary>
    public int Rows { get; }
    /// <summary>Columns (K).</summary>
    public int Columns { get; }
    /// <summary>Elements from one row to the next.</summary>
    public int RowStride { get; }

    /// <summary>The elements as float32 (F32 storage).</summary>
    public ArrayView<float> Floats => Raw.Cast<float>();
    /// <summary>The elements as raw 16-bit values (F16/BF16 storage).</summary>
    public ArrayView<ushort> Halves => Raw.Cast<ushort>();
    /// <summary>Pairs of 16-bit values as 32-bit words (F16/BF16 storage).</summary>
    public ArrayView<uint> Pairs => Raw.Cast<uint>();
    /// <summary>Packs (see <see cref="IPackFormat{TPack}"/>) from one row to the next.</summary>
    public int PackStride => Storage == WeightStorage.F32 ? RowStride : RowStride / 2;

    /// <summary>Shape for messages.</summary>
    public override string ToString() => $"{Storage}[{Rows}, {Columns}] (stride {RowStride})";
}
