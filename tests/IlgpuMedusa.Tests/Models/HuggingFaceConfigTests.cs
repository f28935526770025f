using System.Text;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Tests.Models;

/// <summary>config.json (and generation_config.json) to <see cref="ModelConfig"/>.</summary>
public sealed class HuggingFaceConfigTests
{
    private const string Path = "/models/x/config.json";

    /// <summary>The fields of TinyLlama-1.1B-Chat's config.json (a real LlamaForCausalLM with grouped-query attention).</summary>
    private const string TinyLlama = """
        {
          "architectures": ["LlamaForCausalLM"],
          "bos_token_id": 1,
          "eos_token_id": 2,
          "hidden_act": "silu",
          "hidden_size": 2048,
          "initializer_range": 0.02,
          "intermediate_size": 5632,
          "max_position_embeddings": 2048,
          "model_type": "llama",
          "num_attention_heads": 32,
          "num_hidden_layers": 22,
          "num_key_value_heads": 4,
          "pretraining_tp": 1,
          "rms_norm_eps": 1e-05,
          "rope_scaling": null,
          "rope_theta": 10000.0,
          "tie_word_embeddings": false,
          "torch_dtype": "bfloat16",
          "transformers_version": "4.35.0",
          "use_cache": true,
          "vocab_size": 32000
        }
        """;

    private static ModelConfig Parse(string json) => HuggingFaceConfig.Parse(Path, Encoding.UTF8.GetBytes(json));

    private static string Without(string json, string field) =>
        string.Join('\n', json.Split('\n').Where(line => !line.TrimStart().StartsWith($"\"{field}\"", StringComparison.Ordinal)));

    [Fact]
    public void Real_llama_config_is_read_field_by_field()
    {
        var c = Parse(TinyLlama);
        Assert.Equal(2048, c.Dim);
        Assert.Equal(5632, c.HiddenDim);
        Assert.Equal(22, c.Layers);
        Assert.Equal(32, c.Heads);
        Assert.Equal(4, c.KvHeads);
        Assert.Equal(64, c.HeadDim);
        Assert.Equal(32000, c.VocabSize);
        Assert.Equal(2048, c.MaxSequenceLength);
        Assert.Equal(10000f, c.RopeTheta);
        Assert.Equal(1e-5f, c.RmsNormEps);
        Assert.False(c.TiedEmbeddings);
        Assert.Equal(1, c.BosTokenId);
        Assert.Equal([2], c.EndTokenIds);
        Assert.Equal(Path, c.Source);
    }

    [Fact]
    public void Absent_optional_fields_take_the_format_defaults()
    {
        var json = TinyLlama;
        foreach (var f in new[] { "num_key_value_heads", "rope_theta", "rms_norm_eps", "tie_word_embeddings", "bos_token_id", "eos_token_id" })
            json = Without(json, f);
        var c = Parse(json);
        Assert.Equal(32, c.KvHeads);
        Assert.Equal(10000f, c.RopeTheta);
        Assert.Equal(1e-6f, c.RmsNormEps);
        Assert.False(c.TiedEmbeddings);
        Assert.Equal(1, c.BosTokenId);
        Assert.Equal([2], c.EndTokenIds);
    }

    [Fact]
    public void Eos_may_be_a_list()
    {
        var c = Parse(TinyLlama.Replace("\"eos_token_id\": 2", "\"eos_token_id\": [2, 32000]").Replace("\"vocab_size\": 32000", "\"vocab_size\": 32002"));
        Assert.Equal([2, 32000], c.EndTokenIds);
    }

    [Fact]
    public void Rope_theta_inside_rope_parameters_is_read()
    {
        var c = Parse(Without(TinyLlama, "rope_theta").Replace("\"rope_scaling\": null", "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 500000.0}"));
        Assert.Equal(500000f, c.RopeTheta);
    }

    [Fact]
    public void Mistral_sliding_window_caps_the_context()
    {
        var c = Parse(TinyLlama.Replace("LlamaForCausalLM", "MistralForCausalLM").Replace("\"use_cache\": true", "\"sliding_window\": 1024"));
        Assert.Equal(1024, c.MaxSequenceLength);
    }

    [Theory]
    [InlineData("hidden_size")]
    [InlineData("intermediate_size")]
    [InlineData("num_hidden_layers")]
    [InlineData("num_attention_heads")]
    [InlineData("vocab_size")]
    [InlineData("max_position_embeddings")]
    public void Missing_required_field_is_named(string field)
    {
        var e = Assert.Throws<InvalidDataException>(() => Parse(Without(TinyLlama, field)));
        Assert.Equal($"{Path}: missing required field '{field}'.", e.Message);
    }

    [Fact]
    public void Field_of_the_wrong_type_is_named()
    {
        var e = Assert.Throws<InvalidDataException>(() => Parse(TinyLlama.Replace("\"hidden_size\": 2048", "\"hidden_size\": \"2048\"")));
        Assert.Contains("config.json: field 'hidden_size' must be an integer, found \"2048\"", e.Message);
    }

    [Fact]
    public void Other_architectures_are_rejected_by_name()
    {
        var e = Assert.Throws<InvalidDataException>(() => Parse(TinyLlama.Replace("LlamaForCausalLM", "GPT2LMHeadModel")));
        Assert.Contains("config.json", e.Message);
        Assert.Contains("GPT2LMHeadModel", e.Message);
        Assert.Contains("LlamaForCausalLM", e.Message);
    }

    [Fact]
    public void Head_dim_other_than_hidden_over_heads_is_kept()
    {
        var c = Parse(TinyLlama.Replace("\"use_cache\": true", "\"head_dim\": 128"));
        Assert.Equal((128, true, 32 * 128, (32 + 2 * 4) * 128), (c.HeadDim, c.HasExplicitHeadDim, c.QueryDim, c.QkvDim));
        var same = Parse(TinyLlama.Replace("\"use_cache\": true", "\"head_dim\": 64"));
        Assert.Equal((64, false), (same.HeadDim, same.HasExplicitHeadDim));
        foreach (var bad in new[] { "0", "-64", "65", "512" })
        {
            var e = Assert.Throws<InvalidDataException>(() => Parse(TinyLlama.Replace("\"use_cache\": true", $"\"head_dim\": {bad}")));
            Assert.Contains("config.json", e.Message);
            Assert.Contains("head_dim", e.Message);
        }
    }

    /// <summary>The fields of Qwen2.5-0.5B-Instruct's config.json.</summary>
    private const string Qwen25 = """
        {
          "architectures": ["Qwen2ForCausalLM"],
          "attention_dropout": 0.0,
          "bos_token_id": 151643,
          "eos_token_id": 151645,
          "hidden_act": "silu",
          "hidden_size": 896,
          "initializer_range": 0.02,
          "intermediate_size": 4864,
          "max_position_embeddings": 32768,
          "max_window_layers": 21,
          "model_type": "qwen2",
          "num_attention_heads": 14,
          "num_hidden_layers": 24,
          "num_key_value_heads": 2,
          "rms_norm_eps": 1e-06,
          "rope_theta": 1000000.0,
          "sliding_window": 32768,
          "tie_word_embeddings": true,
          "torch_dtype": "bfloat16",
          "transformers_version": "4.43.1",
          "use_cache": true,
          "use_sliding_window": false,
          "vocab_size": 151936
        }
        """;

    /// <summary>The fields of Qwen3-0.6B's config.json (head_dim 128 although hidden_size / heads is 64).</summary>
    private const string Qwen3 = """
        {
          "architectures": ["Qwen3ForCausalLM"],
          "attention_bias": false,
          "attention_dropout": 0.0,
          "bos_token_id": 151643,
          "eos_token_id": 151645,
          "head_dim": 128,
          "hidden_act": "silu",
          "hidden_size": 1024,
          "initializer_range": 0.02,
          "intermediate_size": 3072,
          "max_position_embeddings": 40960,
          "max_window_layers": 28,
          "model_type": "qwen3",
          "num_attention_heads": 16,
          "num_hidden_layers": 28,
          "num_key_value_heads": 8,
          "rms_norm_eps": 1e-06,
          "rope_scaling": null,
          "rope_theta": 1000000,
          "sliding_window": null,
          "tie_word_embeddings": true,
          "torch_dtype": "bfloat16",
          "transformers_version": "4.51.0",
          "use_cache": true,
          "use_sliding_window": false,
          "vocab_size": 151936
        }
        """;

    [Fact]
    public void Qwen2_config_is_read_with_its_biases_and_without_its_unused_window()
    {
        var c = Parse(Qwen25);
        Assert.Equal((ModelArchitecture.Qwen2, true, false), (c.Architecture, c.HasQkvBias, c.HasQkNorm));
        Assert.Equal((896, 4864, 24, 14, 2, 64, 151936), (c.Dim, c.HiddenDim, c.Layers, c.Heads, c.KvHeads, c.HeadDim, c.VocabSize));
        Assert.Equal((1000000f, 1e-6f, true, 151643), (c.RopeTheta, c.RmsNormEps, c.TiedEmbeddings, c.BosTokenId));
        Assert.Equal([151645], c.EndTokenIds);
        // use_sliding_window false: the sliding_window Qwen configs carry is not applied...
        Assert.Equal(32768, Parse(Qwen25.Replace("\"sliding_window\": 32768", "\"sliding_window\": 4096")).MaxSequenceLength);
        // ...but with it true, the context is capped there as for Mistral.
        Assert.Equal(4096, Parse(Qwen25.Replace("\"sliding_window\": 32768", "\"sliding_window\": 4096")
            .Replace("\"use_sliding_window\": false", "\"use_sliding_window\": true")).MaxSequenceLength);
        // Without use_sliding_window, Qwen's default (false) applies; Mistral's window always does.
        Assert.Equal(32768, Parse(Without(Qwen25, "use_sliding_window").Replace("\"sliding_window\": 32768", "\"sliding_window\": 4096")).MaxSequenceLength);
        // The model type alone names the architecture in configs without 'architectures'.
        Assert.Equal(ModelArchitecture.Qwen2, Parse(Without(Qwen25, "architectures")).Architecture);
    }

    [Fact]
    public void Qwen3_config_is_read_with_its_head_norms_and_head_dim()
    {
        var c = Parse(Qwen3);
        Assert.Equal((ModelArchitecture.Qwen3, false, true), (c.Architecture, c.HasQkvBias, c.HasQkNorm));
        Assert.Equal((1024, 16, 8, 128, 2048, 4096, 40960), (c.Dim, c.Heads, c.KvHeads, c.HeadDim, c.QueryDim, c.QkvDim, c.MaxSequenceLength));
        Assert.Equal(ModelArchitecture.Llama, Parse(TinyLlama).Architecture);
        // Qwen3Config's head_dim is 128 when the file leaves it out (not hidden_size / heads = 64).
        Assert.Equal(128, Parse(Without(Qwen3, "head_dim")).HeadDim);
        Assert.Equal(ModelArchitecture.Llama, Parse(TinyLlama.Replace("LlamaForCausalLM", "MistralForCausalLM")).Architecture);
    }

    [Fact]
    public void Biases_beyond_qwen2s_are_refused_naming_the_field()
    {
        foreach (var json in new[] { Qwen3.Replace("\"attention_bias\": false", "\"attention_bias\": true"), TinyLlama.Replace("\"use_cache\": true", "\"attention_bias\": true") })
        {
            var e = Assert.Throws<InvalidDataException>(() => Parse(json));
            Assert.Contains("config.json", e.Message);
            Assert.Contains("attention_bias", e.Message);
        }
        // Two block variants in one list is not one model.
        var mixed = Assert.Throws<InvalidDataException>(() => Parse(Qwen3.Replace("[\"Qwen3ForCausalLM\"]", "[\"Qwen3ForCausalLM\", \"Qwen2ForCausalLM\"]")));
        Assert.Contains("architectures", mixed.Message);
    }

    [Theory]
    [InlineData(ModelArchitecture.Qwen2)]
    [InlineData(ModelArchitecture.Qwen3)]
    public void Written_qwen_config_reads_back_identically(ModelArchitecture architecture)
    {
        var config = Parse(architecture == ModelArchitecture.Qwen2 ? Qwen25 : Qwen3);
        using var stream = new MemoryStream();
        ModelConverter.WriteConfig(stream, config, DType.F16);
        var back = HuggingFaceConfig.Parse(Path, stream.ToArray());
        Assert.Equal(config with { EndTokenIds = back.EndTokenIds }, back);
        Assert.Equal(config.EndTokenIds, back.EndTokenIds);
        Assert.Equal((config.Architecture, config.HeadDim, config.HasExplicitHeadDim), (back.Architecture, back.HeadDim, back.HasExplicitHeadDim));
    }

    private const string Llama32Scaling =
        "\"rope_scaling\": {\"factor\": 32.0, \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0, \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}";

    [Fact]
    public void Llama3_rope_scaling_is_read_and_scales_the_frequencies()
    {
        var c = Parse(TinyLlama.Replace("\"rope_scaling\": null", Llama32Scaling));
        Assert.Equal(new RopeScaling(RopeScalingKind.Llama3, 32f, 1f, 4f, 8192), c.RopeScaling);
        // Worked by hand for θ = 500000, Dh = 64: frequency_j = 500000^(-j/32), wavelength 2π / frequency_j. Wavelengths under
        // 8192 / 4 = 2048 (j <= 14) are kept, over 8192 / 1 (j >= 18) divided by 32; j = 16: frequency 1/707.107 = 0.00141421,
        // wavelength 4442.88, smooth = (8192 / 4442.88 - 1) / 3 = 0.281289, scaled = 0.00141421 (0.718711 / 32 + 0.281289) = 0.000429566.
        var f = new RopeParameters(500000f, c.RopeScaling).Frequencies(64);
        var plain = new RopeParameters(500000f).Frequencies(64);
        Assert.Equal(1f, f[0]);
        Assert.Equal(plain[14], f[14]);
        Assert.Equal(plain[18] / 32, f[18], 1e-12f);
        Assert.Equal(3.0167e-6f / 32, f[31], 1e-9f);
        Assert.Equal(0.000429566, f[16], 1e-8);
        Assert.True(f[15] > plain[15] / 32 && f[15] < plain[15] && f[17] > plain[17] / 32 && f[17] < plain[17], "j = 15..17 are blended");

        // config.json as the converter writes it reads back the same scaling.
        using var stream = new MemoryStream();
        ModelConverter.WriteConfig(stream, c, DType.F16);
        Assert.Equal(c.RopeScaling, HuggingFaceConfig.Parse(Path, stream.ToArray()).RopeScaling);
    }

    [Fact]
    public void A_scaling_built_in_code_is_validated_too()
    {
        var c = Parse(TinyLlama);
        var e = Assert.ThrowsAny<Exception>(() => (c with { RopeScaling = new RopeScaling(RopeScalingKind.Linear, 0f) }).Validate());
        Assert.Contains("rope_scaling factor must be at least 1", e.Message);
        e = Assert.ThrowsAny<Exception>(() => (c with { RopeScaling = new RopeScaling(RopeScalingKind.Llama3, 8f, 4f, 1f, 8192) }).Validate());
        Assert.Contains("low_freq_factor < high_freq_factor", e.Message);
    }

    [Fact]
    public void Linear_rope_scaling_divides_every_frequency()
    {
        var c = Parse(TinyLlama.Replace("\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}"));
        var f = c.Rope.Frequencies(c.HeadDim);
        var plain = new RopeParameters(c.RopeTheta).Frequencies(c.HeadDim);
        for (int j = 0; j < f.Length; j++) Assert.Equal(plain[j] / 2, f[j]);
    }

    [Theory]
    [InlineData("{\"rope_type\": \"yarn\", \"factor\": 4.0, \"original_max_position_embeddings\": 32768}", "not supported")]
    [InlineData("{\"type\": \"dynamic\", \"factor\": 2.0}", "not supported")]
    [InlineData("{\"rope_type\": \"llama3\", \"factor\": 8.0}", "'rope_scaling.low_freq_factor' is missing")]
    [InlineData("{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0}", "'rope_scaling.original_max_position_embeddings' must be a positive integer")]
    [InlineData("{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 4.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}", "must be above low_freq_factor")]
    [InlineData("{\"rope_type\": \"linear\", \"factor\": 0.5}", "'rope_scaling.factor' is 0.5; it must be at least 1")]
    public void Rope_scalings_it_cannot_follow_are_refused_naming_the_field(string scaling, string message)
    {
        var e = Assert.Throws<InvalidDataException>(() => Parse(TinyLlama.Replace("\"rope_scaling\": null", "\"rope_scaling\": " + scaling)));
        Assert.Contains("rope_scaling", e.Message);
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void Eos_outside_the_vocabulary_is_rejected()
    {
        var e = Assert.Throws<InvalidDataException>(() => Parse(TinyLlama.Replace("\"eos_token_id\": 2", "\"eos_token_id\": [2, 32000]")));
        Assert.Contains("'eos_token_id' holds 32000", e.Message);
    }

    [Fact]
    public void Generation_config_eos_overrides_config_eos()
    {
        var dir = TestModels.TempDirectory("hf-genconfig");
        File.WriteAllText(System.IO.Path.Combine(dir, "config.json"), TinyLlama);
        File.WriteAllText(System.IO.Path.Combine(dir, "generation_config.json"), """{"bos_token_id": 1, "eos_token_id": [2, 7], "max_length": 2048}""");
        var c = HuggingFaceConfig.Load(dir);
        Assert.Equal([2, 7], c.EndTokenIds);
    }

    [Fact]
    public void Written_config_reads_back_identically()
    {
        var config = Parse(TinyLlama) with { TiedEmbeddings = true, EndTokenIds = [1, 2], RopeTheta = 500000f, RmsNormEps = 1e-5f };
        using var stream = new MemoryStream();
        ModelConverter.WriteConfig(stream, config, DType.BF16);
        var text = Encoding.UTF8.GetString(stream.ToArray());
        Assert.Contains("\"torch_dtype\": \"bfloat16\"", text);
        var back = HuggingFaceConfig.Parse(Path, stream.ToArray());
        Assert.Equal(config with { EndTokenIds = back.EndTokenIds }, back);
        Assert.Equal([1, 2], back.EndTokenIds);
    }
}
