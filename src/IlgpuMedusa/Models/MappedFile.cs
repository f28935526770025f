using System.IO.MemoryMappedFiles;

namespace IlgpuMedusa.Models;

/// <summary>A read-only memory mapping of a whole file; tensors point into it and are never copied into managed memory.</summary>
internal sealed unsafe class MappedFile : IDisposable
{
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
    }

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
        if (_view is not null && _pointer != null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _pointer = null;
        }
        _view?.Dispose();
        _file?.Dispose();
    }
}
