using System.Runtime.InteropServices;
using System.Text.Json;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Models;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Transformer;
using Xunit.Abstractions;

namespace IlgpuMedusa.Tests.Models;

/// <summary>
/// Our readers and forward pass against files written by the reference libraries (safetensors, transformers):
/// see Reference/README.md for how they were made. Golden values here come from those libraries, not from us.
/// </summary>
public sealed class ReferenceFilesTests(ITestOutputHelper output)
{
    private static string ReferenceDirectory => ReferenceModels.Directory;

    [Fact]
    public void File_written_by_safetensors_reads_with_its_bits()
    {
        using var file = SafetensorsFile.Open(Path.Combine(ReferenceDirectory, "reference.safetensors"));
        using var bits = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(ReferenceDirectory, "reference-bits.json")));
        Assert.Equal("pt", file.Metadata["format"]);
        Assert.Equal("written by safetensors", file.Metadata["note"]);
        Assert.Equal(4, file.Tensors.Count);
        Assert.Equal(bits.RootElement.GetProperty("a.f32").EnumerateArray().Select(e => e.GetInt32()),
            MemoryMarshal.Cast<byte, int>(file.Tensors["a.f32"].Bytes).ToArray());
        foreach (var (name, type) in new[] { ("b.f16", DType.F16), ("c.bf16", DType.BF16) })
        {
            Assert.Equal(type, file.Tensors[name].Type);
            Assert.Equal(bits.RootElement.GetProperty(name).EnumerateArray().Select(e => (short)e.GetInt32()),
                MemoryMarshal.Cast<byte, short>(file.Tensors[name].Bytes).ToArray());
        }
        Assert.Equal([2, 2], file.Tensors["b.f16"].Shape);
        Assert.Equal([0, 3], file.Tensors["d.empty"].Shape);
        // The values torch wrote, decoded by us: 3e-5 is an f16 subnormal (503 · 2^-24), 65504 is f16's largest finite.
        Assert.Equal([1f, -2.5f, 503 * MathF.Pow(2, -24), 65504f], file.Tensors["b.f16"].ToFloatArray());
    }

    [Theory]
    [InlineData("tiny", "tiny-logits.json", DType.F32, 6)]
    [InlineData("tiny-bf16", "tiny-bf16-logits.json", DType.BF16, 1)]
    public void Transformers_saved_llama_gives_transformers_logits(string model, string logitsFile, DType type, int files)
    {
        using var backend = new HostBackend();
        var (c, max, scale) = ReferenceModels.Compare(backend, model, logitsFile, (checkpoint, llama) =>
        {
            Assert.Equal(files, Assert.IsType<HuggingFaceCheckpoint>(checkpoint).Files.Count);
            Assert.Equal(type, llama.WeightType);
        });
        Assert.Equal((64, 160, 2, 4, 2, 16, 256, 128), (c.Dim, c.HiddenDim, c.Layers, c.Heads, c.KvHeads, c.HeadDim, c.VocabSize, c.MaxSequenceLength));
        Assert.Equal((10000f, 1e-6f, false), (c.RopeTheta, c.RmsNormEps, c.TiedEmbeddings));
        Assert.Equal([2], c.EndTokenIds);
        output.WriteLine($"{model}: max |Δlogit| vs transformers = {max} (max |logit| {scale})");
        // Both sides compute in float32 from the same weights; only summation order differs (about 1e-6 relative).
        Assert.True(max <= 1e-4f, $"{model}: logits differ from transformers' by {max}");
    }

    /// <summary>
    /// Qwen2 (q/k/v biases, an unused sliding window) and Qwen3 (per-head q/k norms, head_dim 32 on hidden 64, tied
    /// embeddings) against llama.cpp's logits on the same files (tests/tools/llama-cpp-reference/make.mjs; its GGUF path
    /// reproduces transformers' tiny-logits.json to 3.3e-6). Leaving the biases or the norms out moves logits by 3.1 and
    /// 2.7, interleaved RoPE by about 2: the 1e-4 bound separates them.
    /// </summary>
    [Theory]
    [InlineData("tiny-qwen2", ModelArchitecture.Qwen2)]
    [InlineData("tiny-qwen3", ModelArchitecture.Qwen3)]
    public void Qwen_models_give_llama_cpps_logits(string model, ModelArchitecture architecture)
    {
        using var backend = new HostBackend();
        var (config, max, scale) = ReferenceModels.Compare(backend, model);
        Assert.Equal(architecture, config.Architecture);
        Assert.Equal((64, 160, 2, 4, 2, 256, 128), (config.Dim, config.HiddenDim, config.Layers, config.Heads, config.KvHeads, config.VocabSize, config.MaxSequenceLength));
        Assert.Equal(architecture == ModelArchitecture.Qwen3 ? (32, true) : (16, false), (config.HeadDim, config.TiedEmbeddings));
        Assert.Equal(1000000f, config.RopeTheta);
        output.WriteLine($"{model}: max |Δlogit| vs llama.cpp = {max} (max |logit| {scale})");
        Assert.True(max <= 1e-4f, $"{model}: logits differ from llama.cpp's by {max}");
    }
}
