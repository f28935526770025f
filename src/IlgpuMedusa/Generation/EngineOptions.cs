using IlgpuMedusa.Compute;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Generation;

/// <summary>How an <see cref="InferenceEngine"/> is built: which model, on which device, with how much KV memory.</summary>
public sealed record EngineOptions
{
    /// <summary>The model directory (Hugging Face or llama2.c layout).</summary>
    public required string ModelPath { get; init; }
    /// <summary>Device selection.</summary>
    public DeviceOptions Device { get; init; } = new();
    /// <summary>Element type of the weight matrices on the device (default: as in the checkpoint).</summary>
    public DType? WeightsType { get; init; }
    /// <summary>
    /// KV cache budget in MiB (default: room for <see cref="DefaultKvSequences"/> full-context sequences, at most
    /// <see cref="DefaultKvBudgetCapBytes"/>: a model with a very long context gets fewer full-length sequences).
    /// </summary>
    public int? KvBudgetMb { get; init; }
    /// <summary>
    /// Element type of the KV cache: <see cref="DType.F32"/> (default) or <see cref="DType.F16"/>, which takes half the
    /// memory, so the same budget holds twice the tokens: each key and value is rounded to binary16 once, when written
    /// (saturating at ±65504), and attention is still computed in float32.
    /// </summary>
    public DType KvCacheType { get; init; } = DType.F32;
    /// <summary>
    /// Medusa heads: null or "auto" = <c>medusa_lm_head.safetensors</c> in the model directory (or the heads shipped for the
    /// demo model) when present; "none" = no heads; otherwise a heads file or directory.
    /// </summary>
    public string? Heads { get; init; }

    /// <summary>
    /// Automatic prefix caching (default on): full KV blocks of known tokens stay in the cache after their sequence ends,
    /// and a sequence that starts with the same tokens (a shared system prompt, the earlier turns of a chat, another
    /// choice of the same prompt, a sequence recomputed after preemption) takes them instead of computing them again.
    /// Cached blocks no sequence holds count as free: they are forgotten, least recently used first, when the pool needs
    /// room. The KV of a cached prefix is what a prefill of it computes, possibly in a differently shaped batch, so on an
    /// accelerator the last bits of later logits may differ from a cold run's.
    /// </summary>
    public bool PrefixCaching { get; init; } = true;

    /// <summary>Token slots per KV block.</summary>
    public int KvBlockSize { get; init; } = 16;
    /// <summary>
    /// Most tokens in one batched forward: prompt chunks (longer prompts are split), decoded tokens and Medusa trees of
    /// every running sequence together. Also the most logits rows one step computes.
    /// </summary>
    public int MaxBatchTokens { get; init; } = 256;

    /// <summary>
    /// Running sequences up to which Medusa requests verify trees; in larger batches they decode one token per step (still
    /// exactly as greedy decoding would) until the batch shrinks. Default: the backend's
    /// (<see cref="IComputeBackend.SpeculationBatchLimit"/>: 2 on the host, no limit on accelerators).
    /// </summary>
    public int? SpeculationBatchLimit { get; init; }

    /// <summary>Full-context sequences the default KV budget holds.</summary>
    public const int DefaultKvSequences = 4;

    /// <summary>Largest default KV budget, 8 GiB (a larger cache needs <see cref="KvBudgetMb"/>).</summary>
    public const long DefaultKvBudgetCapBytes = 8L * 1024 * 1024 * 1024;

    /// <summary>
    /// Reads a KV cache element type, case-insensitively: f32 (float32, fp32) or f16 (float16, fp16). False for anything
    /// else, bf16 included.
    /// </summary>
    public static bool TryParseKvCacheType(string? text, out DType type)
    {
        switch (text?.Trim().ToLowerInvariant())
        {
            case "f32" or "float32" or "fp32":
                type = DType.F32;
                return true;
            case "f16" or "float16" or "fp16":
                type = DType.F16;
                return true;
            default:
                type = DType.F32;
                return false;
        }
    }

    /// <summary>As <see cref="TryParseKvCacheType"/>; throws <see cref="ArgumentException"/> naming <paramref name="optionName"/> on anything else.</summary>
    public static DType ParseKvCacheType(string text, string optionName) => TryParseKvCacheType(text, out var type)
        ? type
        : throw new ArgumentException($"{optionName}: '{text}' is not a KV cache element type; expected f32 or f16.");

    /// <summary>Throws <see cref="ArgumentException"/> naming the bad option.</summary>
    public EngineOptions Validate()
    {
        if (string.IsNullOrWhiteSpace(ModelPath))
            throw new ArgumentException("ModelPath (--model) must name a model directory.", nameof(ModelPath));
        if (KvBudgetMb is <= 0)
            throw new ArgumentOutOfRangeException(nameof(KvBudgetMb), KvBudgetMb, "KvBudgetMb (--kv-budget-mb) must be positive.");
        if (KvCacheType is not (DType.F32 or DType.F16))
            throw new ArgumentException($"KvCacheType (--kv-dtype) must be f32 or f16, got {KvCacheType.ToString().ToLowerInvariant()}.", nameof(KvCacheType));
        if (KvBlockSize <= 0)
            throw new ArgumentOutOfRangeException(nameof(KvBlockSize), KvBlockSize, "KvBlockSize must be positive.");
        if (SpeculationBatchLimit is <= 0)
            throw new ArgumentOutOfRangeException(nameof(SpeculationBatchLimit), SpeculationBatchLimit, "SpeculationBatchLimit must be at least 1 sequence.");
        if (MaxBatchTokens <= 0)
            throw new ArgumentOutOfRangeException(nameof(MaxBatchTokens), MaxBatchTokens, "MaxBatchTokens must be positive.");
        return this;
    }
}
