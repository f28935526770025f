namespace IlgpuMedusa.Models;

/// <summary>
/// An open checkpoint: a model configuration plus named tensors in host memory (memory-mapped where possible).
/// Tensor names are the Hugging Face Llama names (<see cref="LlamaTensorNames"/>) whatever the file format, and
/// q/k projection rows are in the Hugging Face rotate-half order, so the rest of the runtime sees one convention.
/// </summary>
public interface ICheckpoint : IDisposable
{
    /// <summary>The runtime configuration of the model.</summary>
    ModelConfig Config { get; }

    /// <summary>Path of the file or directory (for messages).</summary>
    string Location { get; }

    /// <summary>All tensor names.</summary>
    IReadOnlyCollection<string> TensorNames { get; }

    /// <summary>Looks a tensor up by its canonical name.</summary>
    bool TryGetTensor(string name, out TensorData tensor);
}

/// <summary>Helpers on <see cref="ICheckpoint"/>.</summary>
public static class CheckpointExtensions
{
    /// <summary>Gets a tensor and checks its shape; throws <see cref="InvalidDataException"/> naming the checkpoint and tensor.</summary>
    public static TensorData GetTensor(this ICheckpoint checkpoint, string name, params int[] shape)
    {
        if (!checkpoint.TryGetTensor(name, out var tensor))
            throw new InvalidDataException($"{checkpoint.Location}: missing tensor '{name}'.");
        if (!tensor.Shape.AsSpan().SequenceEqual(shape))
            throw new InvalidDataException(
                $"{checkpoint.Location}: tensor '{name}' has shape {tensor.ShapeText}, expected [{string.Join(", ", shape)}].");
        return tensor;
    }
}

/// <summary>The canonical (Hugging Face Llama) tensor names. Checkpoint-specific names stay in the readers.</summary>
public static class LlamaTensorNames
{
    /// <summary>Token embedding [V, D].</summary>
    public const string Embedding = "model.embed_tokens.weight";
    /// <summary>Final RMSNorm weight [D].</summary>
    public const string FinalNorm = "model.norm.weight";
    /// <summary>Output classifier [V, D] (absent when tied to the embedding).</summary>
    public const string Classifier = "lm_head.weight";

    /// <summary>Attention RMSNorm weight [D].</summary>
    public static string AttentionNorm(int layer) => $"model.layers.{layer}.input_layernorm.weight";
    /// <summary>Query projection [H Dh, D], rows in rotate-half order per head.</summary>
    public static string Query(int layer) => $"model.layers.{layer}.self_attn.q_proj.weight";
    /// <summary>Key projection [Hkv Dh, D], rows in rotate-half order per head.</summary>
    public static string Key(int layer) => $"model.layers.{layer}.self_attn.k_proj.weight";
    /// <summary>Value projection [Hkv Dh, D].</summary>
    public static string Value(int layer) => $"model.layers.{layer}.self_attn.v_proj.weight";
    /// <summary>Query projection bias [H Dh] (Qwen2), in the rows' order.</summary>
    public static string QueryBias(int layer) => $"model.layers.{layer}.self_attn.q_proj.bias";
    /// <summary>Key projection bias [Hkv Dh] (Qwen2), in the rows' order.</summary>
    public static string KeyBias(int layer) => $"model.layers.{layer}.self_attn.k_proj.bias";
    /// <summary>Value projection bias [Hkv Dh] (Qwen2).</summary>
    public static string ValueBias(int layer) => $"model.layers.{layer}.self_attn.v_proj.bias";
    /// <summary>Per-head query RMSNorm weight [Dh] (Qwen3), in rotate-half order.</summary>
    public static string QueryNorm(int layer) => $"model.layers.{layer}.self_attn.q_norm.weight";
    /// <summary>Per-head key RMSNorm weight [Dh] (Qwen3), in rotate-half order.</summary>
    public static string KeyNorm(int layer) => $"model.layers.{layer}.self_attn.k_norm.weight";
    /// <summary>Attention output projection [D, H Dh].</summary>
    public static string Output(int layer) => $"model.layers.{layer}.self_attn.o_proj.weight";
    /// <summary>Feed-forward RMSNorm weight [D].</summary>
    public static string FfnNorm(int layer) => $"model.layers.{layer}.post_attention_layernorm.weight";
    /// <summary>Gate projection (llama2.c w1) [F, D].</summary>
    public static string Gate(int layer) => $"model.layers.{layer}.mlp.gate_proj.weight";
    /// <summary>Up projection (llama2.c w3) [F, D].</summary>
    public static string Up(int layer) => $"model.layers.{layer}.mlp.up_proj.weight";
    /// <summary>Down projection (llama2.c w2) [D, F].</summary>
    public static string Down(int layer) => $"model.layers.{layer}.mlp.down_proj.weight";
}
