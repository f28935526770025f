using System.Text.Json;

namespace IlgpuMedusa.Models;

/// <summary>
/// Reads a Hugging Face <c>config.json</c> (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM or
/// Qwen3ForCausalLM) and the optional <c>generation_config.json</c> beside it into a <see cref="ModelConfig"/>. The
/// defaults below are those of the file format (transformers' LlamaConfig), used only when a field is absent from the
/// file. Features the runtime does not implement (RoPE scalings other than linear and llama3, biases other than Qwen2's
/// q/k/v ones, other activations) are rejected rather than silently computed wrong.
/// </summary>
public static class HuggingFaceConfig
{
    /// <summary>The file name of the model configuration.</summary>
    public const string FileName = "config.json";
    /// <summary>The file name of the optional generation defaults (its eos_token_id overrides config.json's).</summary>
    public const string GenerationFileName = "generation_config.json";

    /// <summary>Architectures this runtime runs (they share the Llama block).</summary>
    public static IReadOnlyList<string> SupportedArchitectures { get; } = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"];

    /// <summary>The block variant of an <c>architectures</c> name or a <c>model_type</c>, or null when not supported.</summary>
    public static ModelArchitecture? ArchitectureOf(string name) => name switch
    {
        "LlamaForCausalLM" or "MistralForCausalLM" or "llama" or "mistral" => ModelArchitecture.Llama,
        "Qwen2ForCausalLM" or "qwen2" => ModelArchitecture.Qwen2,
        "Qwen3ForCausalLM" or "qwen3" => ModelArchitecture.Qwen3,
        _ => null,
    };

    /// <summary>The <c>architectures</c> name and <c>model_type</c> config.json gives for a block variant.</summary>
    public static (string Architecture, string ModelType) NamesOf(ModelArchitecture architecture) => architecture switch
    {
        ModelArchitecture.Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        ModelArchitecture.Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
        _ => ("LlamaForCausalLM", "llama"),
    };

    /// <summary>rope_theta when absent (LlamaConfig's default).</summary>
    public const float DefaultRopeTheta = 10000f;
    /// <summary>rms_norm_eps when absent (LlamaConfig's default).</summary>
    public const float DefaultRmsNormEps = 1e-6f;
    /// <summary>bos_token_id when absent (LlamaConfig's default).</summary>
    public const int DefaultBosTokenId = 1;
    /// <summary>head_dim of a Qwen3 config that leaves it out (Qwen3Config's default).</summary>
    public const int Qwen3DefaultHeadDim = 128;
    /// <summary>eos_token_id when absent (LlamaConfig's default).</summary>
    public const int DefaultEosTokenId = 2;

    /// <summary>Reads <c>config.json</c> (and <c>generation_config.json</c> when present) from <paramref name="directory"/>.</summary>
    public static ModelConfig Load(string directory)
    {
        var path = Path.Combine(directory, FileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: file not found.", path);
        var config = Parse(path, File.ReadAllBytes(path));
        var generationPath = Path.Combine(directory, GenerationFileName);
        if (File.Exists(generationPath))
        {
            using var generation = ParseDocument(generationPath, File.ReadAllBytes(generationPath));
            var reader = new Fields(generationPath, generation.RootElement);
            if (reader.EosTokenIds() is { } eos) config = config with { EndTokenIds = reader.CheckIds("eos_token_id", eos, config.VocabSize) };
        }
        return config.Validate();
    }

    /// <summary>Parses the bytes of a config.json; <paramref name="path"/> names it in messages.</summary>
    public static ModelConfig Parse(string path, ReadOnlySpan<byte> json)
    {
        using var document = ParseDocument(path, json.ToArray());
        var f = new Fields(path, document.RootElement);
        var architecture = f.RequireArchitecture();
        f.RejectUnsupported(architecture);

        int dim = f.RequiredInt("hidden_size");
        int heads = f.RequiredInt("num_attention_heads");
        int vocab = f.RequiredInt("vocab_size");
        int maxPositions = f.RequiredInt("max_position_embeddings");
        // A sliding window (Mistral; Qwen2/Qwen3 when use_sliding_window is true): inside the window, windowed attention
        // equals full attention, so cap the context there. Qwen configs carry a sliding_window they do not use.
        if (f.UsesSlidingWindow(architecture) && f.OptionalInt("sliding_window") is int window && window > 0 && window < maxPositions) maxPositions = window;

        var config = new ModelConfig
        {
            Architecture = architecture,
            Dim = dim,
            HiddenDim = f.RequiredInt("intermediate_size"),
            Layers = f.RequiredInt("num_hidden_layers"),
            Heads = heads,
            KvHeads = f.OptionalInt("num_key_value_heads") ?? heads,
            VocabSize = vocab,
            MaxSequenceLength = maxPositions,
            RopeTheta = f.RopeTheta() ?? DefaultRopeTheta,
            RopeScaling = f.RopeScaling(),
            RmsNormEps = f.OptionalFloat("rms_norm_eps") ?? DefaultRmsNormEps,
            TiedEmbeddings = f.OptionalBool("tie_word_embeddings") ?? false,
            BosTokenId = f.OptionalInt("bos_token_id") ?? DefaultBosTokenId,
            EndTokenIds = f.CheckIds("eos_token_id", f.EosTokenIds() ?? [DefaultEosTokenId], vocab),
            Source = path,
        };
        // head_dim may differ from hidden_size / heads (Qwen3-0.6B: 1024 / 16 but 128); only an explicit one is kept as such.
        // Qwen3's config class defaults it to 128 rather than deriving it.
        if ((f.OptionalInt("head_dim") ?? (architecture == ModelArchitecture.Qwen3 ? Qwen3DefaultHeadDim : null)) is int headDim && (heads <= 0 || headDim * heads != dim))
        {
            if (headDim <= 0 || headDim > ModelConfig.MaxHeadDim || headDim % 2 != 0)
                throw f.Error($"field 'head_dim' is {headDim}; it must be even and in 2..{ModelConfig.MaxHeadDim}");
            config = config with { HeadDim = headDim };
        }
        return config.Validate();
    }

    private static JsonDocument ParseDocument(string path, byte[] json)
    {
        try
        {
            var document = JsonDocument.Parse(json, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                document.Dispose();
                throw new InvalidDataException($"{path}: expected a JSON object.");
            }
            return document;
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e);
        }
    }

    /// <summary>Typed access to the fields of one JSON object, with messages naming the file and field.</summary>
    private readonly struct Fields(string path, JsonElement root)
    {
        public InvalidDataException Error(string what) => new($"{path}: {what}.");

        private JsonElement? Get(string name) =>
            root.TryGetProperty(name, out var value) && value.ValueKind != JsonValueKind.Null ? value : null;

        public int RequiredInt(string name) =>
            OptionalInt(name) ?? throw Error($"missing required field '{name}'");

        public int? OptionalInt(string name)
        {
            if (Get(name) is not { } value) return null;
            return value.ValueKind == JsonValueKind.Number && value.TryGetInt32(out int x)
                ? x
                : throw Error($"field '{name}' must be an integer, found {value.GetRawText()}");
        }

        public float? OptionalFloat(string name)
        {
            if (Get(name) is not { } value) return null;
            return value.ValueKind == JsonValueKind.Number && value.TryGetSingle(out float x) && float.IsFinite(x)
                ? x
                : throw Error($"field '{name}' must be a number, found {value.GetRawText()}");
        }

        public bool? OptionalBool(string name)
        {
            if (Get(name) is not { } value) return null;
            return value.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Error($"field '{name}' must be true or false, found {value.GetRawText()}"),
            };
        }

        /// <summary>eos_token_id: an integer or a list of integers.</summary>
        public int[]? EosTokenIds()
        {
            const string name = "eos_token_id";
            if (Get(name) is not { } value) return null;
            if (value.ValueKind == JsonValueKind.Number) return [OptionalInt(name)!.Value];
            if (value.ValueKind != JsonValueKind.Array || value.GetArrayLength() == 0)
                throw Error($"field '{name}' must be an integer or a non-empty list of integers, found {value.GetRawText()}");
            var ids = new int[value.GetArrayLength()];
            int i = 0;
            foreach (var item in value.EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt32(out ids[i]))
                    throw Error($"field '{name}' entry {i} must be an integer, found {item.GetRawText()}");
                i++;
            }
            return ids;
        }

        public int[] CheckIds(string name, int[] ids, int vocab)
        {
            foreach (int id in ids)
                if (id < 0 || id >= vocab) throw Error($"field '{name}' holds {id}, outside the vocabulary of {vocab} tokens");
            return ids;
        }

        public ModelArchitecture RequireArchitecture()
        {
            if (Get("architectures") is { } list)
            {
                if (list.ValueKind != JsonValueKind.Array)
                    throw Error($"field 'architectures' must be a list of names, found {list.GetRawText()}");
                var names = list.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : e.GetRawText()).ToArray();
                var kinds = names.Select(ArchitectureOf).Distinct().ToArray();
                if (names.Length == 0 || !names.All(SupportedArchitectures.Contains) || kinds.Length != 1)
                    throw Error($"architectures [{string.Join(", ", names)}] is not supported; supported: {string.Join(", ", SupportedArchitectures)}");
                return kinds[0]!.Value;
            }
            // Old configs may lack 'architectures'; their model_type still says what they are.
            string? modelType = Get("model_type") is { ValueKind: JsonValueKind.String } t ? t.GetString() : null;
            return (modelType is null ? null : ArchitectureOf(modelType))
                ?? throw Error($"missing required field 'architectures' (and model_type '{modelType}' is not llama, mistral, qwen2 or qwen3); supported: {string.Join(", ", SupportedArchitectures)}");
        }

        /// <summary>
        /// Whether attention is windowed: Mistral's sliding_window always is; Qwen2/Qwen3 configs carry one that
        /// applies only with use_sliding_window true (its default there is false), or a layer_types entry "sliding_attention".
        /// </summary>
        public bool UsesSlidingWindow(ModelArchitecture architecture)
        {
            if (Get("layer_types") is { ValueKind: JsonValueKind.Array } types
                && types.EnumerateArray().Any(e => e.ValueKind == JsonValueKind.String && e.GetString() == "sliding_attention"))
                return true;
            return OptionalBool("use_sliding_window") ?? architecture == ModelArchitecture.Llama;
        }

        /// <summary>
        /// rope_theta: top level (transformers 4) or inside rope_parameters (transformers 5 writes
        /// <c>"rope_parameters": {"rope_type": "default", "rope_theta": ...}</c>).
        /// </summary>
        public float? RopeTheta()
        {
            if (OptionalFloat("rope_theta") is float theta) return theta;
            if (Get("rope_parameters") is { ValueKind: JsonValueKind.Object } rope)
                return new Fields(path, rope).OptionalFloat("rope_theta");
            return null;
        }

        /// <summary>The rope_type (or legacy type) of a RoPE parameter object; "default" when it names none.</summary>
        private static string? RopeType(JsonElement rope)
        {
            if (rope.ValueKind != JsonValueKind.Object) return null;
            foreach (var key in new[] { "rope_type", "type" })
            {
                if (rope.TryGetProperty(key, out var value))
                    return value.ValueKind == JsonValueKind.String ? value.GetString() : null;
            }
            return "default";
        }

        /// <summary>
        /// rope_scaling (or transformers 5's rope_parameters): null for plain RoPE; linear and Llama 3.1's llama3 scaling
        /// are followed; scalings whose frequencies depend on the sequence (dynamic, yarn, longrope) are refused.
        /// </summary>
        public RopeScaling? RopeScaling()
        {
            foreach (var name in new[] { "rope_scaling", "rope_parameters" })
            {
                if (Get(name) is not { } rope || rope.ValueKind == JsonValueKind.Null) continue;
                string? type = RopeType(rope);
                if (type == "default") continue;
                var f = new Fields(path, rope);
                float Factor(string key, float least)
                {
                    float value = f.OptionalFloat(key) ?? throw f.Error($"field '{name}.{key}' is missing ({name}: {rope.GetRawText()})");
                    if (!float.IsFinite(value) || value < least) throw f.Error($"field '{name}.{key}' is {value}; it must be at least {least}");
                    return value;
                }
                switch (type)
                {
                    case "linear":
                        return new RopeScaling(RopeScalingKind.Linear, Factor("factor", 1f));
                    case "llama3":
                        var scaling = new RopeScaling(RopeScalingKind.Llama3, Factor("factor", 1f), Factor("low_freq_factor", float.Epsilon),
                            Factor("high_freq_factor", float.Epsilon),
                            f.OptionalInt("original_max_position_embeddings") is int original && original > 0
                                ? original
                                : throw Error($"field '{name}.original_max_position_embeddings' must be a positive integer ({name}: {rope.GetRawText()})"));
                        if (scaling.HighFrequencyFactor <= scaling.LowFrequencyFactor)
                            throw Error($"field '{name}': high_freq_factor {scaling.HighFrequencyFactor} must be above low_freq_factor {scaling.LowFrequencyFactor}");
                        return scaling;
                    default:
                        throw Error($"field '{name}' ({rope.GetRawText()}) is not supported: this runtime implements plain RoPE and the linear and llama3 scalings");
                }
            }
            return null;
        }

        public void RejectUnsupported(ModelArchitecture architecture)
        {
            RopeScaling(); // refuses what it cannot follow
            // Qwen2's q/k/v biases are part of its block (transformers builds them whatever attention_bias says); elsewhere
            // attention_bias adds an output-projection bias too, which the runtime does not implement.
            if (architecture != ModelArchitecture.Qwen2 && OptionalBool("attention_bias") == true)
                throw Error("field 'attention_bias' is true: projection biases are not supported for this architecture (only Qwen2's q/k/v biases are)");
            if (OptionalBool("mlp_bias") == true)
                throw Error("field 'mlp_bias' is true: projection biases are not supported");
            foreach (var name in new[] { "hidden_act", "hidden_activation" })
            {
                if (Get(name) is { } act && (act.ValueKind != JsonValueKind.String || act.GetString() is not ("silu" or "swish")))
                    throw Error($"field '{name}' is {act.GetRawText()}: only silu (SwiGLU) is supported");
            }
        }
    }
}
