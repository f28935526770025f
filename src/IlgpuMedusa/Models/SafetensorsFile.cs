using System.Buffers.Binary;
using System.Text.Json;

namespace IlgpuMedusa.Models;

/// <summary>
/// A memory-mapped safetensors file: 8 bytes of little-endian header length N, N bytes of UTF-8 JSON
/// <c>{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {string: string}}</c>, then the data
/// region, to which the offsets are relative. Every number in the header is checked against the file before use:
/// offsets inside the data region, byte counts equal to shape × element size, no two tensors overlapping
/// (gaps are allowed). Only F32, F16 and BF16 tensors are accepted (and I32 where the caller asks for it: token-id
/// tables such as a Medusa heads file's vocabulary shortlist). Tensors are <see cref="TensorData"/> views of the
/// mapping, valid until the file is disposed.
/// </summary>
public sealed class SafetensorsFile : IDisposable
{
    /// <summary>Largest header accepted (the reference implementation's limit is 100 MB as well).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    /// <summary>The key of the free-form string metadata in the header.</summary>
    public const string MetadataKey = "__metadata__";

    private readonly MappedFile _file;
    private readonly Dictionary<string, TensorData> _tensors;

    private SafetensorsFile(MappedFile file, long dataOffset, Dictionary<string, TensorData> tensors, IReadOnlyDictionary<string, string> metadata)
    {
        _file = file;
        DataOffset = dataOffset;
        _tensors = tensors;
        Metadata = metadata;
    }

    /// <summary>Path of the file (for messages).</summary>
    public string Path => _file.Path;

    /// <summary>File offset of the data region (8 + header length).</summary>
    public long DataOffset { get; }

    /// <summary>The header's <c>__metadata__</c> map (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Tensors by name.</summary>
    public IReadOnlyDictionary<string, TensorData> Tensors => _tensors;

    /// <summary>Looks a tensor up by the name written in the file.</summary>
    public bool TryGetTensor(string name, out TensorData tensor) => _tensors.TryGetValue(name, out tensor);

    /// <summary>
    /// Maps and validates <paramref name="path"/>. Throws <see cref="FileNotFoundException"/> when it does not exist and
    /// <see cref="InvalidDataException"/> naming the file (and the tensor or field) when its content is malformed.
    /// <paramref name="allowI32"/> also accepts I32 tensors (model checkpoints never hold them; the caller checks which may).
    /// </summary>
    public static SafetensorsFile Open(string path, bool allowI32 = false)
    {
        var file = new MappedFile(path);
        try
        {
            return Parse(file, allowI32);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    private static SafetensorsFile Parse(MappedFile file, bool allowI32)
    {
        if (file.Length < 8)
            throw Invalid(file, $"truncated safetensors file: {file.Length} bytes, the header length alone needs 8");
        ulong declared = BinaryPrimitives.ReadUInt64LittleEndian(file.Slice(0, 8));
        ulong available = (ulong)(file.Length - 8);
        if (declared > available)
            throw Invalid(file, $"header length {declared} is longer than the {available} bytes that follow it: the file is truncated or not safetensors");
        if (declared > MaxHeaderBytes)
            throw Invalid(file, $"header length {declared} exceeds the limit of {MaxHeaderBytes} bytes");
        if (declared < 2)
            throw Invalid(file, $"header length {declared} is too short for a JSON object");
        int headerLength = (int)declared;
        long dataOffset = 8 + headerLength;
        long dataLength = file.Length - dataOffset;

        // The header is copied (it is small); the data never is.
        var header = file.Slice(8, headerLength).ToArray();
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(header);
        }
        catch (JsonException e)
        {
            throw Invalid(file, $"header is not valid JSON: {e.Message}");
        }
        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
                throw Invalid(file, $"header must be a JSON object, found {document.RootElement.ValueKind}");
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var entries = new List<Entry>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var property in document.RootElement.EnumerateObject())
            {
                if (!seen.Add(property.Name))
                    throw Invalid(file, $"the header lists '{property.Name}' twice");
                if (property.Name == MetadataKey)
                    ReadMetadata(file, property.Value, metadata);
                else
                    entries.Add(ReadEntry(file, property.Name, property.Value, dataLength, allowI32));
            }
            CheckNoOverlap(file, entries);
            var tensors = new Dictionary<string, TensorData>(entries.Count, StringComparer.Ordinal);
            foreach (var e in entries)
                tensors.Add(e.Name, new TensorData(e.Name, e.Type, e.Shape, file.Pointer + (nint)(dataOffset + e.Begin)));
            return new SafetensorsFile(file, dataOffset, tensors, metadata);
        }
    }

    private readonly record struct Entry(string Name, DType Type, int[] Shape, long Begin, long End);

    private static void ReadMetadata(MappedFile file, JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind == JsonValueKind.Null) return;
        if (value.ValueKind != JsonValueKind.Object)
            throw Invalid(file, $"'{MetadataKey}' must be an object of strings, found {value.ValueKind}");
        foreach (var item in value.EnumerateObject())
        {
            if (item.Value.ValueKind != JsonValueKind.String)
                throw Invalid(file, $"'{MetadataKey}' entry '{item.Name}' must be a string, found {item.Value.ValueKind}");
            if (!metadata.TryAdd(item.Name, item.Value.GetString()!))
                throw Invalid(file, $"'{MetadataKey}' lists '{item.Name}' twice");
        }
    }

    private static Entry ReadEntry(MappedFile file, string name, JsonElement value, long dataLength, bool allowI32)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw Invalid(file, $"tensor '{name}': expected an object with dtype, shape and data_offsets, found {value.ValueKind}");
        var dtype = Required(file, name, value, "dtype");
        var type = allowI32 && dtype.ValueKind == JsonValueKind.String && dtype.GetString() == "I32" ? DType.I32 : ParseDType(file, name, dtype);
        var shape = ReadShape(file, name, Required(file, name, value, "shape"));
        var (begin, end) = ReadOffsets(file, name, Required(file, name, value, "data_offsets"));
        if (begin > end)
            throw Invalid(file, $"tensor '{name}': data_offsets [{begin}, {end}] begin after they end");
        if (end > dataLength)
            throw Invalid(file, $"tensor '{name}': data_offsets [{begin}, {end}] go past the end of the data region ({dataLength} bytes): the file is truncated or corrupt");
        long expected;
        try
        {
            expected = DTypeInfo.SizeOf(type);
            foreach (int d in shape) expected = checked(expected * d);
        }
        catch (OverflowException)
        {
            throw Invalid(file, $"tensor '{name}': shape [{string.Join(", ", shape)}] is too large");
        }
        if (end - begin != expected)
            throw Invalid(file,
                $"tensor '{name}': {type} shape [{string.Join(", ", shape)}] needs {expected} bytes but data_offsets [{begin}, {end}] hold {end - begin}");
        return new Entry(name, type, shape, begin, end);
    }

    private static JsonElement Required(MappedFile file, string name, JsonElement value, string field) =>
        value.TryGetProperty(field, out var element)
            ? element
            : throw Invalid(file, $"tensor '{name}': missing field '{field}'");

    /// <summary>Names of safetensors dtypes that exist but that this runtime does not compute with.</summary>
    private static readonly HashSet<string> KnownUnsupported = new(StringComparer.Ordinal)
    {
        "BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F64",
        "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64",
    };

    private static DType ParseDType(MappedFile file, string name, JsonElement value)
    {
        if (value.ValueKind != JsonValueKind.String)
            throw Invalid(file, $"tensor '{name}': dtype must be a string, found {value.ValueKind}");
        string text = value.GetString()!;
        return TryParseDType(text, out var type)
            ? type
            : throw Invalid(file, KnownUnsupported.Contains(text)
                ? $"tensor '{name}' has unsupported dtype '{text}'; this runtime reads F32, F16 and BF16 (convert the model first)"
                : $"tensor '{name}' has unknown dtype '{text}'; this runtime reads F32, F16 and BF16");
    }

    /// <summary>Parses a safetensors dtype name (F32, F16, BF16) into a <see cref="DType"/>.</summary>
    public static bool TryParseDType(string text, out DType type)
    {
        (bool ok, type) = text switch
        {
            "F32" => (true, DType.F32),
            "F16" => (true, DType.F16),
            "BF16" => (true, DType.BF16),
            _ => (false, default),
        };
        return ok;
    }

    /// <summary>The safetensors name of a <see cref="DType"/> (I32 for token-id tables).</summary>
    public static string DTypeName(DType type) => type switch
    {
        DType.F32 => "F32",
        DType.F16 => "F16",
        DType.BF16 => "BF16",
        DType.I32 => "I32",
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "safetensors files here hold F32, F16, BF16 or I32 only"),
    };

    private static int[] ReadShape(MappedFile file, string name, JsonElement value)
    {
        if (value.ValueKind != JsonValueKind.Array)
            throw Invalid(file, $"tensor '{name}': shape must be an array of non-negative integers, found {value.ValueKind}");
        var shape = new int[value.GetArrayLength()];
        int i = 0;
        foreach (var d in value.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt32(out shape[i]) || shape[i] < 0)
                throw Invalid(file, $"tensor '{name}': shape entry {i} is {d.GetRawText()}, expected an integer in [0, {int.MaxValue}]");
            i++;
        }
        return shape;
    }

    private static (long Begin, long End) ReadOffsets(MappedFile file, string name, JsonElement value)
    {
        if (value.ValueKind != JsonValueKind.Array || value.GetArrayLength() != 2)
            throw Invalid(file, $"tensor '{name}': data_offsets must be [begin, end], found {value.GetRawText()}");
        long Get(int index)
        {
            var element = value[index];
            return element.ValueKind == JsonValueKind.Number && element.TryGetInt64(out long x) && x >= 0
                ? x
                : throw Invalid(file, $"tensor '{name}': data_offsets[{index}] is {element.GetRawText()}, expected a non-negative integer");
        }
        return (Get(0), Get(1));
    }

    private static void CheckNoOverlap(MappedFile file, List<Entry> entries)
    {
        // Empty tensors occupy no bytes and cannot overlap anything.
        var sorted = entries.Where(e => e.End > e.Begin).OrderBy(e => e.Begin).ToList();
        for (int i = 1; i < sorted.Count; i++)
        {
            var previous = sorted[i - 1];
            var current = sorted[i];
            if (current.Begin < previous.End)
                throw Invalid(file,
                    $"tensors '{previous.Name}' (data_offsets [{previous.Begin}, {previous.End}]) and '{current.Name}' " +
                    $"(data_offsets [{current.Begin}, {current.End}]) overlap");
        }
    }

    private static InvalidDataException Invalid(MappedFile file, string what) => new($"{file.Path}: {what}.");

    /// <summary>Unmaps the file; tensors obtained from it become invalid.</summary>
    public void Dispose() => _file.Dispose();
}
