using IlgpuMedusa.Models;

namespace IlgpuMedusa.Compute;

/// <summary>
/// A 2-D tensor [Rows, Columns] that lives on a backend (host memory or an accelerator). Vectors are [1, n];
/// per-token integer inputs (token ids, positions) are [T, 1] so that row views work for them too.
/// A tensor belongs to the backend that made it; ops check this.
/// </summary>
public abstract class DeviceTensor : IDisposable
{
    /// <summary>Creates the handle.</summary>
    protected DeviceTensor(IComputeBackend backend, DType type, int rows, int columns)
    {
        if (rows < 0 || columns < 0) throw new ArgumentOutOfRangeException(nameof(rows), $"negative tensor shape [{rows}, {columns}]");
        Backend = backend;
        Type = type;
        Rows = rows;
        Columns = columns;
    }

    /// <summary>The backend that owns the storage.</summary>
    public IComputeBackend Backend { get; }
    /// <summary>Element type.</summary>
    public DType Type { get; }
    /// <summary>Number of rows.</summary>
    public int Rows { get; }
    /// <summary>Number of columns (elements per row).</summary>
    public int Columns { get; }
    /// <summary>Number of elements.</summary>
    public long Length => (long)Rows * Columns;
    /// <summary>Size in bytes.</summary>
    public long ByteLength => Length * DTypeInfo.SizeOf(Type);
    /// <summary>Shape as text for messages, e.g. F32[4, 288].</summary>
    public string ShapeText => $"{Type}[{Rows}, {Columns}]";

    /// <summary>A view of rows [start, start + count) sharing this tensor's storage.</summary>
    public abstract DeviceTensor Slice(int start, int count);

    /// <summary>Releases the storage (views release nothing).</summary>
    public abstract void Dispose();

    /// <summary>Checks the row range of a view.</summary>
    protected void CheckSlice(int start, int count)
    {
        if (start < 0 || count < 0 || (long)start + count > Rows)
            throw new ArgumentOutOfRangeException(nameof(start), $"rows [{start}, {(long)start + count}) outside tensor {ShapeText}");
    }
}
