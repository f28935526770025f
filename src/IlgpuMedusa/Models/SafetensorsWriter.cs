using System.Buffers;
using System.Buffers.Binary;
using System.Text.Json;

namespace IlgpuMedusa.Models;

/// <summary>Name, element type and shape of one tensor to be written by <see cref="SafetensorsWriter"/>.</summary>
/// <param name="Name">Tensor name in the file.</param>
/// <param name="Type">Element type stored in the file (F32, F16 or BF16).</param>
/// <param name="Shape">Dimensions, outermost first.</param>
public sealed record SafetensorsTensorInfo(string Name, DType Type, int[] Shape)
{
    /// <summary>Bytes of the tensor's data.</summary>
    public long ByteLength
    {
        get
        {
            long n = DTypeInfo.SizeOf(Type);
            foreach (int d in Shape) n = checked(n * d);
            return n;
        }
    }
}

/// <summary>
/// Streams a safetensors file: the header is written from the tensor list given up front, then each tensor's data in
/// that order, so nothing larger than one conversion chunk is held in memory. Everything goes to a temporary file in
/// the target's directory, renamed onto the target by <see cref="Commit"/>; disposing without committing deletes it,
/// so a failure never leaves a partial file under the real name.
/// </summary>
public sealed class SafetensorsWriter : IDisposable
{
    /// <summary>Elements converted per chunk by <see cref="WriteTensor(TensorData)"/>.</summary>
    private const int ChunkElements = 1 << 16;

    private readonly IReadOnlyList<SafetensorsTensorInfo> _tensors;
    private readonly string _temporaryPath;
    private FileStream? _stream;
    private int _next;
    private bool _committed;

    /// <summary>
    /// Creates the temporary file and writes the header for <paramref name="tensors"/> (laid out back to back in the
    /// order given) and <paramref name="metadata"/> (the header's <c>__metadata__</c>).
    /// </summary>
    public SafetensorsWriter(string path, IReadOnlyList<SafetensorsTensorInfo> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tensors);
        Path = path;
        _tensors = tensors;
        var header = BuildHeader(tensors, metadata);
        var directory = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!;
        _temporaryPath = System.IO.Path.Combine(directory, $".{System.IO.Path.GetFileName(path)}.{Guid.NewGuid():N}.tmp");
        _stream = new FileStream(_temporaryPath, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
        try
        {
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
            _stream.Write(length);
            _stream.Write(header);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The file that <see cref="Commit"/> creates or replaces.</summary>
    public string Path { get; }

    /// <summary>The next tensor to write, or null when all have been written.</summary>
    public SafetensorsTensorInfo? NextTensor => _next < _tensors.Count ? _tensors[_next] : null;

    /// <summary>
    /// The JSON header: tensors at consecutive offsets in the order given, padded with spaces to a multiple of 8 bytes
    /// so the data region starts aligned (as the reference writer does).
    /// </summary>
    private static byte[] BuildHeader(IReadOnlyList<SafetensorsTensorInfo> tensors, IReadOnlyDictionary<string, string>? metadata)
    {
        var buffer = new ArrayBufferWriter<byte>();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject(SafetensorsFile.MetadataKey);
                foreach (var (key, value) in metadata) json.WriteString(key, value);
                json.WriteEndObject();
            }
            var names = new HashSet<string>(StringComparer.Ordinal) { SafetensorsFile.MetadataKey };
            long offset = 0;
            foreach (var t in tensors)
            {
                if (!names.Add(t.Name))
                    throw new ArgumentException($"tensor name '{t.Name}' is used twice (or is reserved)", nameof(tensors));
                if (t.Shape.Any(d => d < 0))
                    throw new ArgumentException($"tensor '{t.Name}' has a negative dimension in [{string.Join(", ", t.Shape)}]", nameof(tensors));
                json.WriteStartObject(t.Name);
                json.WriteString("dtype", SafetensorsFile.DTypeName(t.Type));
                json.WriteStartArray("shape");
                foreach (int d in t.Shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                offset = checked(offset + t.ByteLength);
                json.WriteNumberValue(offset);
                json.WriteEndArray();
                json.WriteEndObject();
            }
            json.WriteEndObject();
        }
        int padded = (buffer.WrittenCount + 7) / 8 * 8;
        var header = new byte[padded];
        buffer.WrittenSpan.CopyTo(header);
        header.AsSpan(buffer.WrittenCount).Fill((byte)' ');
        return header;
    }

    /// <summary>Writes the raw bytes of the next tensor (already in its declared type).</summary>
    public void WriteTensor(string name, ReadOnlySpan<byte> data)
    {
        var info = Expect(name);
        if (data.Length != info.ByteLength)
            throw new ArgumentException($"tensor '{name}': {info.Type} [{string.Join(", ", info.Shape)}] takes {info.ByteLength} bytes, got {data.Length}", nameof(data));
        _stream!.Write(data);
        _next++;
    }

    /// <summary>
    /// Writes <paramref name="source"/> as the next tensor, converting its elements to the declared type chunk by chunk
    /// (values are preserved exactly when the declared type is the source's; otherwise rounded to nearest even).
    /// </summary>
    public void WriteTensor(TensorData source)
    {
        var info = Expect(source.Name);
        if (!source.Shape.AsSpan().SequenceEqual(info.Shape))
            throw new ArgumentException($"tensor '{source.Name}' has shape {source.ShapeText}, declared [{string.Join(", ", info.Shape)}]", nameof(source));
        if (source.Type == info.Type)
        {
            WriteChunks(source, DTypeInfo.SizeOf(source.Type), (from, to) => from.CopyTo(to));
        }
        else
        {
            var floats = ArrayPool<float>.Shared.Rent(ChunkElements);
            try
            {
                WriteChunks(source, DTypeInfo.SizeOf(info.Type), (from, to) =>
                {
                    int count = from.Length / DTypeInfo.SizeOf(source.Type);
                    HalfConversions.ToSingle(source.Type, from, floats.AsSpan(0, count));
                    HalfConversions.FromSingle(info.Type, floats.AsSpan(0, count), to);
                });
            }
            finally
            {
                ArrayPool<float>.Shared.Return(floats);
            }
        }
        _next++;
    }

    private delegate void ChunkConverter(ReadOnlySpan<byte> from, Span<byte> to);

    private unsafe void WriteChunks(TensorData source, int targetElementSize, ChunkConverter convert)
    {
        int sourceElementSize = DTypeInfo.SizeOf(source.Type);
        var output = ArrayPool<byte>.Shared.Rent(ChunkElements * targetElementSize);
        try
        {
            long total = source.ElementCount;
            for (long start = 0; start < total; start += ChunkElements)
            {
                int count = (int)Math.Min(ChunkElements, total - start);
                var from = new ReadOnlySpan<byte>((byte*)source.Pointer + start * sourceElementSize, count * sourceElementSize);
                var to = output.AsSpan(0, count * targetElementSize);
                convert(from, to);
                _stream!.Write(to);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(output);
        }
    }

    private SafetensorsTensorInfo Expect(string name)
    {
        ObjectDisposedException.ThrowIf(_stream is null, this);
        if (_next >= _tensors.Count)
            throw new InvalidOperationException($"{Path}: all {_tensors.Count} declared tensors are written; '{name}' was not declared");
        var info = _tensors[_next];
        if (info.Name != name)
            throw new InvalidOperationException($"{Path}: expected tensor '{info.Name}' next (tensors are written in the declared order), got '{name}'");
        return info;
    }

    /// <summary>Flushes to disk and renames the temporary file onto <see cref="Path"/>. Every declared tensor must have been written.</summary>
    public void Commit()
    {
        ObjectDisposedException.ThrowIf(_stream is null, this);
        if (_next != _tensors.Count)
            throw new InvalidOperationException($"{Path}: {_tensors.Count - _next} declared tensors were not written, starting with '{_tensors[_next].Name}'");
        _stream.Flush(flushToDisk: true);
        _stream.Dispose();
        _stream = null;
        File.Move(_temporaryPath, Path, overwrite: true);
        _committed = true;
    }

    /// <summary>Closes the file; without <see cref="Commit"/>, deletes the temporary file.</summary>
    public void Dispose()
    {
        _stream?.Dispose();
        _stream = null;
        if (!_committed && File.Exists(_temporaryPath)) File.Delete(_temporaryPath);
    }

    /// <summary>Writes a whole file from tensors in memory (small files, tests): the header in the given order, then the data.</summary>
    public static void Write(string path, IReadOnlyList<TensorData> tensors, DType? storeAs = null, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var infos = tensors.Select(t => new SafetensorsTensorInfo(t.Name, storeAs ?? t.Type, t.Shape)).ToArray();
        using var writer = new SafetensorsWriter(path, infos, metadata);
        foreach (var t in tensors) writer.WriteTensor(t);
        writer.Commit();
    }
}
