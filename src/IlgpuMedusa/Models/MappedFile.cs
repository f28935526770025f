using System.IO.MemoryMappedFiles;

namespace IlgpuMedusa.Models;

/// <summary>A read-only memory mapping of a whole file; tensors point into it and are never copied into managed memory.</summary>
internal sealed unsafe class MappedFile : IDisposable
{
    private static readonly List<MappedFile> Live = [];
    private readonly MemoryMappedFile? _file;
    private readonly MemoryMappedViewAccessor? _view;
    private byte* _pointer;

    public MappedFile(string path)
    {
        Path = path;
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: file not found.", path);
        // The length of what the path finally points to (FileInfo on a symbolic link gives the link's own size).
        using (var probe = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read)) Length = probe.Length;
        if (Length == 0) return; // an empty file cannot be mapped; readers report it as truncated
        _file = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        _view = _file.CreateViewAccessor(0, Length, MemoryMappedFileAccess.Read);
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref _pointer);
        _pointer += _view.PointerOffset;
        lock (Live) Live.Add(this);
    }

    /// <summary>
    /// Says that <paramref name="tensor"/> has been copied out and will not be read again: when it lies in a live
    /// mapping, its pages are dropped from this process (they stay in the OS file cache and would fault back in if read
    /// again), so loading a model does not hold the file and its copy in memory at once. Anything else is left alone.
    /// </summary>
    public static void ReleasePages(TensorData tensor)
    {
        if (!OperatingSystem.IsLinux() || tensor.ByteLength <= 0) return;
        lock (Live)
        {
            foreach (var file in Live)
            {
                long start = tensor.Pointer - file.Pointer;
                if (file._pointer == null || start < 0 || start + tensor.ByteLength > file.Length) continue;
                long page = Environment.SystemPageSize;
                long first = ((long)file._pointer + start) / page * page;
                long end = ((long)file._pointer + start + tensor.ByteLength + page - 1) / page * page;
                _ = Madvise((nint)first, (nuint)(end - first), MadviseDontNeed); // a hint: failure only keeps the pages
                return;
            }
        }
    }

    private const int MadviseDontNeed = 4; // MADV_DONTNEED: a read-only file mapping re-reads the file on the next access

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "madvise")]
    private static extern int Madvise(nint address, nuint length, int advice);

    public string Path { get; }
    public long Length { get; }
    public nint Pointer => (nint)_pointer;

    /// <summary>Bytes [offset, offset + count) of the file; the caller has checked the range.</summary>
    public ReadOnlySpan<byte> Slice(long offset, int count)
    {
        if (offset < 0 || count < 0 || offset + count > Length)
            throw new InvalidDataException($"{Path}: read of {count} bytes at offset {offset} is outside the file ({Length} bytes).");
        return new ReadOnlySpan<byte>(_pointer + offset, count);
    }

    public void Dispose()
    {
        lock (Live) Live.Remove(this);
        if (_view is not null && _pointer != null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _pointer = null;
        }
        _view?.Dispose();
        _file?.Dispose();
    }
}
