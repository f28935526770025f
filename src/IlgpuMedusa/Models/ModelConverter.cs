using System.Text.Json;
using IlgpuMedusa.Tokenization;
using N = IlgpuMedusa.Models.LlamaTensorNames;

namespace IlgpuMedusa.Models;

/// <summary>
/// Converts a model directory in any readable layout (llama2.c or Hugging Face) into a Hugging Face directory:
/// <c>config.json</c> (LlamaForCausalLM, or Qwen2/Qwen3ForCausalLM for those blocks), <c>model.safetensors</c> with every tensor in one float type, and
/// <c>tokenizer.model</c> (a byte-level model's <c>tokenizer.json</c> instead; <c>tokenizer_config.json</c> is copied
/// when there is one). Tensors keep their canonical names and q/k rows stay in the rotate-half order the readers
/// produce, which is Hugging Face's own order. The weights are streamed tensor by tensor from the memory-mapped
/// source; each output file is written under a temporary name and renamed when complete, config.json last, so a
/// failed conversion never leaves a directory that looks like a finished model.
/// </summary>
public static class ModelConverter
{
    /// <summary>The file name of the SentencePiece model written beside the weights.</summary>
    public const string TokenizerFileName = TokenizerLoader.SentencePieceFileName;

    /// <summary>
    /// Converts <paramref name="sourceDirectory"/> into <paramref name="outputDirectory"/>, storing every tensor as
    /// <paramref name="dtype"/>. Refuses a non-empty output directory unless <paramref name="force"/> is set (then the
    /// output files are replaced and anything else there is left alone). <paramref name="progress"/> receives
    /// the fraction of weight bytes written.
    /// </summary>
    public static void Convert(string sourceDirectory, string outputDirectory, DType dtype, IProgress<double>? progress = null, bool force = false)
    {
        ArgumentNullException.ThrowIfNull(sourceDirectory);
        ArgumentNullException.ThrowIfNull(outputDirectory);
        if (dtype is not (DType.F32 or DType.F16 or DType.BF16))
            throw new ArgumentException($"convert: dtype must be f32, f16 or bf16, got {dtype}.", nameof(dtype));
        if (SamePath(sourceDirectory, outputDirectory))
            throw new ArgumentException($"convert: the output directory '{outputDirectory}' is the source directory; choose another.", nameof(outputDirectory));
        if (Directory.Exists(outputDirectory) && Directory.EnumerateFileSystemEntries(outputDirectory).Any() && !force)
            throw new IOException($"convert: the output directory '{outputDirectory}' is not empty; choose an empty one or force overwriting.");

        using var checkpoint = ModelDirectory.OpenCheckpoint(sourceDirectory);
        var tensors = CanonicalTensors(checkpoint);
        // The tokenizer is converted first: it is cheap, and if it fails nothing has been written.
        // tokenizer.model is copied as is; llama2.c's tokenizer.bin becomes the equivalent SentencePiece model; a
        // byte-level tokenizer.json is copied as is. Each is loaded once, so that a broken one fails here instead of in
        // every later use of the output.
        string json = Path.Combine(sourceDirectory, TokenizerLoader.HuggingFaceJsonFileName);
        bool byteLevel = !File.Exists(Path.Combine(sourceDirectory, TokenizerFileName)) && File.Exists(json);
        byte[]? tokenizerModel = null;
        if (byteLevel)
        {
            Tokenization.ByteLevelBpeTokenizer.Load(json, checkpoint.Config.VocabSize);
        }
        else
        {
            tokenizerModel = TokenizerLoader.GetSentencePieceModelBytes(sourceDirectory, checkpoint.Config.VocabSize);
            Tokenization.LlamaTextTokenizer.FromSentencePieceModel(tokenizerModel, Path.Combine(sourceDirectory, TokenizerFileName));
        }

        Directory.CreateDirectory(outputDirectory);
        if (tokenizerModel is not null)
            WriteAtomically(Path.Combine(outputDirectory, TokenizerFileName), stream => stream.Write(tokenizerModel));
        // tokenizer.json, and tokenizer_config.json (BOS/EOS and the chat template the template detection reads), as they are.
        foreach (var name in byteLevel ? new[] { TokenizerLoader.HuggingFaceJsonFileName, "tokenizer_config.json" } : ["tokenizer_config.json"])
        {
            string source = Path.Combine(sourceDirectory, name);
            if (File.Exists(source)) WriteAtomically(Path.Combine(outputDirectory, name), stream => { using var input = File.OpenRead(source); input.CopyTo(stream); });
        }
        WriteWeights(Path.Combine(outputDirectory, HuggingFaceCheckpoint.SingleFileName), tensors, dtype, progress);
        WriteAtomically(Path.Combine(outputDirectory, HuggingFaceConfig.FileName), stream => WriteConfig(stream, checkpoint.Config, dtype));
        progress?.Report(1.0);
    }

    /// <summary>
    /// The tensors a Llama model needs, in the order Hugging Face writes them, with their shapes checked. The classifier
    /// is left out when tied to the embedding (Hugging Face then omits lm_head.weight too).
    /// </summary>
    private static List<TensorData> CanonicalTensors(ICheckpoint checkpoint)
    {
        var c = checkpoint.Config;
        int d = c.Dim, f = c.HiddenDim, q = c.QueryDim, kv = c.KvDim;
        var list = new List<TensorData> { checkpoint.GetTensor(N.Embedding, c.VocabSize, d) };
        for (int i = 0; i < c.Layers; i++)
        {
            list.Add(checkpoint.GetTensor(N.AttentionNorm(i), d));
            list.Add(checkpoint.GetTensor(N.Query(i), q, d));
            list.Add(checkpoint.GetTensor(N.Key(i), kv, d));
            list.Add(checkpoint.GetTensor(N.Value(i), kv, d));
            if (c.HasQkvBias)
            {
                list.Add(checkpoint.GetTensor(N.QueryBias(i), q));
                list.Add(checkpoint.GetTensor(N.KeyBias(i), kv));
                list.Add(checkpoint.GetTensor(N.ValueBias(i), kv));
            }
            if (c.HasQkNorm)
            {
                list.Add(checkpoint.GetTensor(N.QueryNorm(i), c.HeadDim));
                list.Add(checkpoint.GetTensor(N.KeyNorm(i), c.HeadDim));
            }
            list.Add(checkpoint.GetTensor(N.Output(i), d, q));
            list.Add(checkpoint.GetTensor(N.FfnNorm(i), d));
            list.Add(checkpoint.GetTensor(N.Gate(i), f, d));
            list.Add(checkpoint.GetTensor(N.Up(i), f, d));
            list.Add(checkpoint.GetTensor(N.Down(i), d, f));
        }
        list.Add(checkpoint.GetTensor(N.FinalNorm, d));
        if (!c.TiedEmbeddings) list.Add(checkpoint.GetTensor(N.Classifier, c.VocabSize, d));
        return list;
    }

    private static void WriteWeights(string path, List<TensorData> tensors, DType dtype, IProgress<double>? progress)
    {
        var infos = tensors.Select(t => new SafetensorsTensorInfo(t.Name, dtype, t.Shape)).ToArray();
        double total = infos.Sum(i => (double)i.ByteLength);
        double written = 0;
        // transformers refuses safetensors files whose metadata lacks format = pt.
        using var writer = new SafetensorsWriter(path, infos, new Dictionary<string, string> { ["format"] = "pt" });
        for (int i = 0; i < tensors.Count; i++)
        {
            writer.WriteTensor(tensors[i]);
            written += infos[i].ByteLength;
            progress?.Report(0.99 * written / Math.Max(total, 1));
        }
        writer.Commit();
    }

    /// <summary>The Hugging Face name of a float dtype as config.json's torch_dtype spells it.</summary>
    public static string TorchDTypeName(DType dtype) => dtype switch
    {
        DType.F32 => "float32",
        DType.F16 => "float16",
        DType.BF16 => "bfloat16",
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a float dtype"),
    };

    /// <summary>Writes config.json for <paramref name="config"/> in the form <see cref="HuggingFaceConfig"/> reads back (and transformers loads).</summary>
    public static void WriteConfig(Stream stream, ModelConfig config, DType dtype)
    {
        using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        json.WriteStartObject();
        var (architecture, modelType) = HuggingFaceConfig.NamesOf(config.Architecture);
        json.WriteStartArray("architectures");
        json.WriteStringValue(architecture);
        json.WriteEndArray();
        json.WriteString("model_type", modelType);
        json.WriteNumber("hidden_size", config.Dim);
        json.WriteNumber("intermediate_size", config.HiddenDim);
        json.WriteNumber("num_hidden_layers", config.Layers);
        json.WriteNumber("num_attention_heads", config.Heads);
        json.WriteNumber("num_key_value_heads", config.KvHeads);
        json.WriteNumber("head_dim", config.HeadDim);
        json.WriteNumber("vocab_size", config.VocabSize);
        json.WriteNumber("max_position_embeddings", config.MaxSequenceLength);
        // Written as float32's shortest round-trip text (1E-05, not 9.99999974737875E-06), so it reads back exactly.
        json.WriteNumber("rope_theta", config.RopeTheta);
        if (config.RopeScaling is { } scaling)
        {
            json.WriteStartObject("rope_scaling");
            json.WriteString("rope_type", scaling.Kind == RopeScalingKind.Llama3 ? "llama3" : "linear");
            json.WriteNumber("factor", scaling.Factor);
            if (scaling.Kind == RopeScalingKind.Llama3)
            {
                json.WriteNumber("low_freq_factor", scaling.LowFrequencyFactor);
                json.WriteNumber("high_freq_factor", scaling.HighFrequencyFactor);
                json.WriteNumber("original_max_position_embeddings", scaling.OriginalMaxPositions);
            }
            json.WriteEndObject();
        }
        json.WriteNumber("rms_norm_eps", config.RmsNormEps);
        json.WriteString("hidden_act", "silu");
        // Qwen2's q/k/v biases are part of its block (its configs carry no attention_bias); elsewhere there are none.
        if (config.Architecture != ModelArchitecture.Qwen2) json.WriteBoolean("attention_bias", false);
        if (config.Architecture == ModelArchitecture.Llama) json.WriteBoolean("mlp_bias", false);
        else json.WriteBoolean("use_sliding_window", false);
        json.WriteBoolean("tie_word_embeddings", config.TiedEmbeddings);
        json.WriteNumber("bos_token_id", config.BosTokenId);
        json.WriteStartArray("eos_token_id");
        foreach (int id in config.EndTokenIds) json.WriteNumberValue(id);
        json.WriteEndArray();
        json.WriteString("torch_dtype", TorchDTypeName(dtype));
        json.WriteEndObject();
    }

    /// <summary>Writes a file under a temporary name in the same directory and renames it onto <paramref name="path"/> once complete.</summary>
    private static void WriteAtomically(string path, Action<Stream> write)
    {
        var temporary = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, $".{Path.GetFileName(path)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporary, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(temporary)) File.Delete(temporary);
        }
    }

    private static bool SamePath(string a, string b) => PathIdentity.Same(a, b);
}
