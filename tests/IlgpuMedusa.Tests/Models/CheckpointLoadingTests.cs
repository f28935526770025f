using System.Text.Json.Nodes;
using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Models;
using IlgpuMedusa.Transformer;
using N = IlgpuMedusa.Models.LlamaTensorNames;

namespace IlgpuMedusa.Tests.Models;

/// <summary>Opening model directories: the Hugging Face layout (single and sharded) and every bad-input path.</summary>
public sealed class CheckpointLoadingTests
{
    [Fact]
    public void Missing_model_directory_is_DirectoryNotFound_naming_it()
    {
        var dir = Path.Combine(Path.GetTempPath(), "ilgpu-medusa-tests", "no-such-model-" + Guid.NewGuid().ToString("N"));
        var e = Assert.Throws<DirectoryNotFoundException>(() => ModelDirectory.OpenCheckpoint(dir));
        Assert.Contains(dir, e.Message);
    }

    [Fact]
    public void Directory_without_a_model_is_FileNotFound_saying_what_was_expected()
    {
        var dir = TestModels.TempDirectory("empty-model");
        var e = Assert.Throws<FileNotFoundException>(() => ModelDirectory.OpenCheckpoint(dir));
        Assert.Contains(dir, e.Message);
        Assert.Contains("config.json", e.Message);
    }

    [Fact]
    public void Truncated_llama2c_checkpoint_is_rejected_naming_the_file()
    {
        var dir = TestModels.TempDirectory("llama2c-truncated");
        var path = Path.Combine(dir, "stories15M.bin");
        using (var source = File.OpenRead(Path.Combine(TestModels.Stories15MDirectory, "stories15M.bin")))
        using (var target = File.Create(path))
        {
            var buffer = new byte[1_000_000];
            int read = source.ReadAtLeast(buffer, buffer.Length);
            target.Write(buffer, 0, read);
        }
        var e = Assert.Throws<InvalidDataException>(() => ModelDirectory.OpenCheckpoint(dir));
        Assert.Contains(path, e.Message);
        Assert.Contains("1000000 bytes", e.Message);
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void Llama2c_checkpoint_shorter_than_its_header_is_rejected()
    {
        var dir = TestModels.TempDirectory("llama2c-header");
        var path = Path.Combine(dir, "model.bin");
        File.WriteAllBytes(path, new byte[10]);
        var e = Assert.Throws<InvalidDataException>(() => ModelDirectory.OpenCheckpoint(dir));
        Assert.Contains(path, e.Message);
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void HuggingFace_directory_loads_and_runs()
    {
        var dir = TinyCheckpoints.WriteHuggingFaceDirectory(TestModels.TempDirectory("hf-ok"));
        using var checkpoint = ModelDirectory.OpenCheckpoint(dir);
        Assert.IsType<HuggingFaceCheckpoint>(checkpoint);
        Assert.Equal(TinyCheckpoints.Config with { Source = checkpoint.Config.Source }, checkpoint.Config with { EndTokenIds = TinyCheckpoints.Config.EndTokenIds });
        Assert.Equal([2], checkpoint.Config.EndTokenIds);
        Assert.Equal(TinyCheckpoints.TensorShapes(TinyCheckpoints.Config).Count, checkpoint.TensorNames.Count);
        using var backend = new HostBackend(1);
        using var model = LlamaModel.Load(checkpoint, backend);
        Assert.Equal(DType.F32, model.WeightType);
    }

    [Fact]
    public void Missing_tensor_is_reported_by_LlamaModel_naming_it()
    {
        var missing = N.Up(0);
        var dir = TinyCheckpoints.WriteHuggingFaceDirectory(TestModels.TempDirectory("hf-missing"), omit: missing);
        using var checkpoint = ModelDirectory.OpenCheckpoint(dir);
        using var backend = new HostBackend(1);
        var e = Assert.Throws<InvalidDataException>(() => LlamaModel.Load(checkpoint, backend));
        Assert.Contains(dir, e.Message);
        Assert.Contains($"missing tensor '{missing}'", e.Message);
    }

    [Fact]
    public void Untied_model_without_classifier_is_reported_naming_lm_head()
    {
        var dir = TinyCheckpoints.WriteHuggingFaceDirectory(TestModels.TempDirectory("hf-untied"));
        EditConfig(dir, config => config["tie_word_embeddings"] = false);
        using var checkpoint = ModelDirectory.OpenCheckpoint(dir);
        using var backend = new HostBackend(1);
        var e = Assert.Throws<InvalidDataException>(() => LlamaModel.Load(checkpoint, backend));
        Assert.Contains($"missing tensor '{N.Classifier}'", e.Message);
    }

    [Fact]
    public void Tensor_of_the_wrong_shape_is_reported_naming_it_and_both_shapes()
    {
        var dir = TinyCheckpoints.WriteHuggingFaceDirectory(TestModels.TempDirectory("hf-shape"), reshape: (N.Key(0), [8, 8]));
        using var checkpoint = ModelDirectory.OpenCheckpoint(dir);
        using var backend = new HostBackend(1);
        var e = Assert.Throws<InvalidDataException>(() => LlamaModel.Load(checkpoint, backend));
        Assert.Contains($"tensor '{N.Key(0)}' has shape [8, 8], expected [4, 8]", e.Message);
    }

    [Fact]
    public void Config_missing_a_required_field_is_rejected_naming_the_field()
    {
        var dir = TinyCheckpoints.WriteHuggingFaceDirectory(TestModels.TempDirectory("hf-config"));
        EditConfig(dir, config => config.Remove("hidden_size"));
        var e = Assert.Throws<InvalidDataException>(() => ModelDirectory.OpenCheckpoint(dir));
        Assert.Contains(Path.Combine(dir, "config.json"), e.Message);
        Assert.Contains("config.json: missing required field 'hidden_size'", e.Message);
    }

    [Fact]
    public void Unsupported_dtype_is_rejected_when_the_checkpoint_opens()
    {
        var dir = TinyCheckpoints.WriteHuggingFaceDirectory(TestModels.TempDirectory("hf-dtype"));
        var weights = Path.Combine(dir, "model.safetensors");
        TinyCheckpoints.WriteRaw(weights, """{"model.embed_tokens.weight": {"dtype": "I64", "shape": [16, 8], "data_offsets": [0, 1024]}}""", new byte[1024]);
        var e = Assert.Throws<InvalidDataException>(() => ModelDirectory.OpenCheckpoint(dir));
        Assert.Contains(weights, e.Message);
        Assert.Contains("'model.embed_tokens.weight' has unsupported dtype 'I64'", e.Message);
    }

    [Fact]
    public void Config_without_weights_is_FileNotFound_naming_the_expected_files()
    {
        var dir = TinyCheckpoints.WriteHuggingFaceDirectory(TestModels.TempDirectory("hf-noweights"));
        File.Delete(Path.Combine(dir, "model.safetensors"));
        var e = Assert.Throws<FileNotFoundException>(() => ModelDirectory.OpenCheckpoint(dir));
        Assert.Contains("model.safetensors", e.Message);
        Assert.Contains("model.safetensors.index.json", e.Message);
    }

    [Fact]
    public void Sharded_checkpoint_opens_each_shard_once_and_matches_the_single_file()
    {
        var single = TinyCheckpoints.WriteHuggingFaceDirectory(TestModels.TempDirectory("hf-single"));
        var sharded = ShardCopy(single, TestModels.TempDirectory("hf-sharded"));
        using var a = (HuggingFaceCheckpoint)ModelDirectory.OpenCheckpoint(single);
        using var b = (HuggingFaceCheckpoint)ModelDirectory.OpenCheckpoint(sharded);
        Assert.Equal(2, b.Files.Count);
        Assert.Equal(a.TensorNames.Order(), b.TensorNames.Order());
        foreach (var name in a.TensorNames)
        {
            Assert.True(a.TryGetTensor(name, out var x));
            Assert.True(b.TryGetTensor(name, out var y));
            Assert.Equal(x.Shape, y.Shape);
            Assert.True(x.Bytes.SequenceEqual(y.Bytes), name);
        }
    }

    [Fact]
    public void Tensor_listed_in_the_index_but_missing_from_its_shard_is_rejected_naming_both()
    {
        var single = TinyCheckpoints.WriteHuggingFaceDirectory(TestModels.TempDirectory("hf-single"));
        var sharded = ShardCopy(single, TestModels.TempDirectory("hf-sharded-bad"));
        var indexPath = Path.Combine(sharded, "model.safetensors.index.json");
        var index = JsonNode.Parse(File.ReadAllText(indexPath))!;
        index["weight_map"]!["model.extra.weight"] = "model-00002-of-00002.safetensors";
        File.WriteAllText(indexPath, index.ToJsonString());
        var e = Assert.Throws<InvalidDataException>(() => ModelDirectory.OpenCheckpoint(sharded));
        Assert.Contains(indexPath, e.Message);
        Assert.Contains("'model.extra.weight'", e.Message);
        Assert.Contains("'model-00002-of-00002.safetensors'", e.Message);
    }

    [Fact]
    public void Index_pointing_outside_the_directory_is_rejected()
    {
        var single = TinyCheckpoints.WriteHuggingFaceDirectory(TestModels.TempDirectory("hf-single"));
        var sharded = ShardCopy(single, TestModels.TempDirectory("hf-sharded-escape"));
        var indexPath = Path.Combine(sharded, "model.safetensors.index.json");
        var index = JsonNode.Parse(File.ReadAllText(indexPath))!;
        index["weight_map"]![N.Embedding] = "../model.safetensors";
        File.WriteAllText(indexPath, index.ToJsonString());
        var e = Assert.Throws<InvalidDataException>(() => ModelDirectory.OpenCheckpoint(sharded));
        Assert.Contains(N.Embedding, e.Message);
        Assert.Contains("file name of a shard", e.Message);
    }

    /// <summary>Copies a single-file directory into two shards plus an index, splitting the tensors in half.</summary>
    private static string ShardCopy(string singleDirectory, string target)
    {
        File.Copy(Path.Combine(singleDirectory, "config.json"), Path.Combine(target, "config.json"));
        using var source = SafetensorsFile.Open(Path.Combine(singleDirectory, "model.safetensors"));
        var tensors = source.Tensors.Values.ToList();
        int half = tensors.Count / 2;
        var weightMap = new JsonObject();
        for (int s = 0; s < 2; s++)
        {
            var name = $"model-0000{s + 1}-of-00002.safetensors";
            var part = s == 0 ? tensors[..half] : tensors[half..];
            SafetensorsWriter.Write(Path.Combine(target, name), part);
            foreach (var t in part) weightMap[t.Name] = name;
        }
        var index = new JsonObject { ["metadata"] = new JsonObject(), ["weight_map"] = weightMap };
        File.WriteAllText(Path.Combine(target, "model.safetensors.index.json"), index.ToJsonString());
        return target;
    }

    private static void EditConfig(string directory, Action<JsonObject> edit)
    {
        var path = Path.Combine(directory, "config.json");
        var config = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        edit(config);
        File.WriteAllText(path, config.ToJsonString());
    }
}
