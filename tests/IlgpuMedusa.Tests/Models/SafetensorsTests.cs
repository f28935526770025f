using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Tests.Models;

/// <summary>The safetensors reader and writer: exact round trips and every malformed-header check.</summary>
public sealed class SafetensorsTests
{
    [Fact]
    public void RoundTrip_keeps_every_bit_of_F32_F16_BF16()
    {
        var dir = TestModels.TempDirectory("st-roundtrip");
        var path = Path.Combine(dir, "t.safetensors");
        // Expected bits worked out by hand from the IEEE layouts:
        // F32 1.0 = 0x3F800000, -2.5 = 0xC0200000; F16 1.0 = 0x3C00, -2.0 = 0xC000, 0.5 = 0x3800, 65504 (max) = 0x7BFF;
        // BF16 1.0 = 0x3F80, -2.0 = 0xC000, 0.5 = 0x3F00, 3.140625 = 0x4049 (sign 0, exponent 128, mantissa 0x49).
        uint[] f32 = [0x3F800000, 0xC0200000];
        ushort[] f16 = [0x3C00, 0xC000, 0x3800, 0x7BFF];
        ushort[] bf16 = [0x3F80, 0xC000, 0x3F00, 0x4049];
        var infos = new SafetensorsTensorInfo[]
        {
            new("a.f32", DType.F32, [2]),
            new("b.f16", DType.F16, [2, 2]),
            new("c.bf16", DType.BF16, [1, 4]),
            new("d.empty", DType.F32, [0, 3]),
        };
        using (var writer = new SafetensorsWriter(path, infos, new Dictionary<string, string> { ["format"] = "pt" }))
        {
            writer.WriteTensor("a.f32", MemoryMarshal.AsBytes(f32.AsSpan()));
            writer.WriteTensor("b.f16", MemoryMarshal.AsBytes(f16.AsSpan()));
            writer.WriteTensor("c.bf16", MemoryMarshal.AsBytes(bf16.AsSpan()));
            writer.WriteTensor("d.empty", []);
            writer.Commit();
        }

        // The layout on disk: header length, a space-padded header whose length is a multiple of 8, data back to back.
        var bytes = File.ReadAllBytes(path);
        long headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0, headerLength % 8);
        Assert.Equal(8 + headerLength + 8 + 8 + 8, bytes.Length);
        using (var header = JsonDocument.Parse(bytes.AsMemory(8, (int)headerLength)))
        {
            Assert.Equal("[0,8]", header.RootElement.GetProperty("a.f32").GetProperty("data_offsets").GetRawText());
            Assert.Equal("[8,16]", header.RootElement.GetProperty("b.f16").GetProperty("data_offsets").GetRawText());
            Assert.Equal("[16,24]", header.RootElement.GetProperty("c.bf16").GetProperty("data_offsets").GetRawText());
            Assert.Equal("\"BF16\"", header.RootElement.GetProperty("c.bf16").GetProperty("dtype").GetRawText());
        }

        using var file = SafetensorsFile.Open(path);
        Assert.Equal("pt", file.Metadata["format"]);
        Assert.Equal(8 + headerLength, file.DataOffset);
        Assert.Equal(4, file.Tensors.Count);
        var a = file.Tensors["a.f32"];
        Assert.Equal(DType.F32, a.Type);
        Assert.Equal([2], a.Shape);
        Assert.Equal(f32, MemoryMarshal.Cast<byte, uint>(a.Bytes).ToArray());
        Assert.Equal([1f, -2.5f], a.AsFloats().ToArray());
        var b = file.Tensors["b.f16"];
        Assert.Equal(DType.F16, b.Type);
        Assert.Equal([2, 2], b.Shape);
        Assert.Equal(f16, MemoryMarshal.Cast<byte, ushort>(b.Bytes).ToArray());
        Assert.Equal([1f, -2f, 0.5f, 65504f], b.ToFloatArray());
        var c = file.Tensors["c.bf16"];
        Assert.Equal(DType.BF16, c.Type);
        Assert.Equal(bf16, MemoryMarshal.Cast<byte, ushort>(c.Bytes).ToArray());
        Assert.Equal([1f, -2f, 0.5f, 3.140625f], c.ToFloatArray());
        Assert.Equal(0, file.Tensors["d.empty"].ElementCount);
    }

    [Fact]
    public void Writer_converts_F32_to_F16_and_BF16_with_hand_computed_bits()
    {
        var dir = TestModels.TempDirectory("st-convert");
        var path = Path.Combine(dir, "t.safetensors");
        // 1.0 -> F16 0x3C00, BF16 0x3F80. 1/3 = 0x3EAAAAAB: F16 0x3555 (mantissa 0x155, rest 0.0101.. rounds down);
        // BF16 keeps the top 16 bits 0x3EAA, the dropped 0xAAAB > 0x8000 rounds up to 0x3EAB.
        // -65536 = 0xC7800000: above F16's max 65504, so it rounds to -infinity 0xFC00; BF16 0xC780 exactly.
        float[] values = [1f, 1f / 3f, -65536f];
        using var source = new PinnedTensor("x", DType.F32, [3], values);
        using (var writer = new SafetensorsWriter(path, [new("x", DType.BF16, [3])]))
        {
            writer.WriteTensor(source.Tensor);
            writer.Commit();
        }
        using (var writer = new SafetensorsWriter(Path.Combine(dir, "h.safetensors"), [new("x", DType.F16, [3])]))
        {
            writer.WriteTensor(source.Tensor);
            writer.Commit();
        }
        using var bf = SafetensorsFile.Open(path);
        Assert.Equal(new ushort[] { 0x3F80, 0x3EAB, 0xC780 }, MemoryMarshal.Cast<byte, ushort>(bf.Tensors["x"].Bytes).ToArray());
        using var f16 = SafetensorsFile.Open(Path.Combine(dir, "h.safetensors"));
        Assert.Equal(new ushort[] { 0x3C00, 0x3555, 0xFC00 }, MemoryMarshal.Cast<byte, ushort>(f16.Tensors["x"].Bytes).ToArray());
    }

    [Fact]
    public void Writer_without_commit_leaves_no_file()
    {
        var dir = TestModels.TempDirectory("st-abort");
        var path = Path.Combine(dir, "t.safetensors");
        using (var writer = new SafetensorsWriter(path, [new("a", DType.F32, [4])]))
        {
            Assert.Throws<ArgumentException>(() => writer.WriteTensor("a", new byte[3]));
            Assert.Throws<InvalidOperationException>(() => writer.WriteTensor("b", new byte[16]));
            Assert.Throws<InvalidOperationException>(writer.Commit);
        }
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir));
    }

    [Fact]
    public void Header_length_longer_than_the_file_is_rejected()
    {
        var path = Path.Combine(TestModels.TempDirectory("st-header"), "bad.safetensors");
        TinyCheckpoints.WriteRaw(path, "{}", [], declaredHeaderLength: 1_000);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("header length 1000", e.Message);
        Assert.Contains("longer than the 2 bytes", e.Message);
    }

    [Fact]
    public void Header_length_near_ulong_max_is_rejected_without_overflow()
    {
        var path = Path.Combine(TestModels.TempDirectory("st-header"), "bad.safetensors");
        TinyCheckpoints.WriteRaw(path, "{}", [], declaredHeaderLength: ulong.MaxValue - 3);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("header length", e.Message);
    }

    [Fact]
    public void File_shorter_than_the_length_prefix_is_rejected()
    {
        var path = Path.Combine(TestModels.TempDirectory("st-short"), "bad.safetensors");
        File.WriteAllBytes(path, [1, 2, 3]);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void Header_that_is_not_json_is_rejected()
    {
        var path = Path.Combine(TestModels.TempDirectory("st-json"), "bad.safetensors");
        TinyCheckpoints.WriteRaw(path, "{\"a\": [", new byte[8]);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("not valid JSON", e.Message);
    }

    [Fact]
    public void Overlapping_data_offsets_are_rejected()
    {
        var path = Path.Combine(TestModels.TempDirectory("st-overlap"), "bad.safetensors");
        TinyCheckpoints.WriteRaw(path,
            """{"first": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "second": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}""",
            new byte[16]);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("'first'", e.Message);
        Assert.Contains("'second'", e.Message);
        Assert.Contains("overlap", e.Message);
    }

    [Fact]
    public void Gaps_between_tensors_are_allowed()
    {
        var path = Path.Combine(TestModels.TempDirectory("st-gap"), "ok.safetensors");
        TinyCheckpoints.WriteRaw(path,
            """{"b": {"dtype": "F16", "shape": [2], "data_offsets": [12, 16]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}""",
            [0, 0, 0x80, 0x3F, 9, 9, 9, 9, 9, 9, 9, 9, 0x00, 0x3C, 0x00, 0xC0]);
        using var file = SafetensorsFile.Open(path);
        Assert.Equal([1f], file.Tensors["a"].ToFloatArray());
        Assert.Equal([1f, -2f], file.Tensors["b"].ToFloatArray());
    }

    [Fact]
    public void Data_offsets_past_the_end_of_the_file_are_rejected()
    {
        var path = Path.Combine(TestModels.TempDirectory("st-outside"), "bad.safetensors");
        TinyCheckpoints.WriteRaw(path, """{"weight": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}""", new byte[16]);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("'weight'", e.Message);
        Assert.Contains("past the end of the data region (16 bytes)", e.Message);
    }

    [Fact]
    public void Huge_data_offsets_are_rejected_without_overflow()
    {
        var path = Path.Combine(TestModels.TempDirectory("st-huge"), "bad.safetensors");
        TinyCheckpoints.WriteRaw(path,
            """{"weight": {"dtype": "F32", "shape": [2], "data_offsets": [9223372036854775800, 9223372036854775807]}}""", new byte[8]);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));
        Assert.Contains("'weight'", e.Message);
        Assert.Contains("past the end", e.Message);
    }

    [Fact]
    public void Byte_count_that_disagrees_with_the_shape_is_rejected()
    {
        var path = Path.Combine(TestModels.TempDirectory("st-size"), "bad.safetensors");
        TinyCheckpoints.WriteRaw(path, """{"weight": {"dtype": "BF16", "shape": [3, 2], "data_offsets": [0, 8]}}""", new byte[16]);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("'weight'", e.Message);
        Assert.Contains("needs 12 bytes", e.Message);
    }

    [Fact]
    public void Shape_whose_product_overflows_is_rejected()
    {
        var path = Path.Combine(TestModels.TempDirectory("st-shape"), "bad.safetensors");
        TinyCheckpoints.WriteRaw(path,
            """{"weight": {"dtype": "F32", "shape": [2147483647, 2147483647, 2147483647], "data_offsets": [0, 0]}}""", []);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));
        Assert.Contains("'weight'", e.Message);
        Assert.Contains("too large", e.Message);
    }

    [Fact]
    public void Negative_shape_is_rejected()
    {
        var path = Path.Combine(TestModels.TempDirectory("st-neg"), "bad.safetensors");
        TinyCheckpoints.WriteRaw(path, """{"weight": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}}""", new byte[16]);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));
        Assert.Contains("'weight'", e.Message);
        Assert.Contains("shape entry 0 is -1", e.Message);
    }

    [Theory]
    [InlineData("F8_E4M3", "unsupported dtype 'F8_E4M3'")]
    [InlineData("I64", "unsupported dtype 'I64'")]
    [InlineData("Q4_K", "unknown dtype 'Q4_K'")]
    public void Unsupported_or_unknown_dtype_is_rejected_naming_tensor_and_dtype(string dtype, string expected)
    {
        var path = Path.Combine(TestModels.TempDirectory("st-dtype"), "bad.safetensors");
        TinyCheckpoints.WriteRaw(path, $$$"""{"model.layers.0.mlp.up_proj.weight": {"dtype": "{{{dtype}}}", "shape": [8], "data_offsets": [0, 8]}}""", new byte[8]);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("'model.layers.0.mlp.up_proj.weight'", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Missing_file_is_FileNotFound_naming_it()
    {
        var path = Path.Combine(TestModels.TempDirectory("st-missing"), "absent.safetensors");
        var e = Assert.Throws<FileNotFoundException>(() => SafetensorsFile.Open(path));
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void Duplicate_tensor_names_are_rejected()
    {
        var path = Path.Combine(TestModels.TempDirectory("st-dup"), "bad.safetensors");
        TinyCheckpoints.WriteRaw(path,
            """{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}""", new byte[8]);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));
        Assert.Contains("'w' twice", e.Message);
    }

    [Fact]
    public void Metadata_must_hold_strings()
    {
        var path = Path.Combine(TestModels.TempDirectory("st-meta"), "bad.safetensors");
        TinyCheckpoints.WriteRaw(path, """{"__metadata__": {"format": 3}}""", []);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));
        Assert.Contains("'format' must be a string", e.Message);
    }

    [Fact]
    public void Header_written_by_hand_reads_like_the_reference_format()
    {
        // A header as the reference Python writer lays it out (metadata first, spaces padding to 8 bytes).
        var header = """{"__metadata__":{"format":"pt"},"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}""";
        header += new string(' ', (8 - Encoding.UTF8.GetByteCount(header) % 8) % 8);
        var path = Path.Combine(TestModels.TempDirectory("st-ref"), "ok.safetensors");
        TinyCheckpoints.WriteRaw(path, header, [0x00, 0x3C, 0x00, 0x38]);
        using var file = SafetensorsFile.Open(path);
        Assert.Equal([1f, 0.5f], file.Tensors["w"].ToFloatArray());
        Assert.Equal("pt", file.Metadata["format"]);
    }
}
