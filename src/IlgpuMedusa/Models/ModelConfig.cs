namespace IlgpuMedusa.Models;

/// <summary>
/// The transformer block variants this runtime runs. All share the Llama block (RMSNorm, RoPE, grouped-query
/// attention, SwiGLU); the others add to its attention.
/// </summary>
public enum ModelArchitecture
{
    /// <summary>Llama (and Mistral): no projection biases.</summary>
    Llama,
    /// <summary>Qwen2 (Qwen2, Qwen2.5): biases on the q, k and v projections (none on the output projection).</summary>
    Qwen2,
    /// <summary>Qwen3: a per-head RMSNorm of the queries and keys (q_norm, k_norm) before RoPE; no biases.</summary>
    Qwen3,
}

/// <summary>
/// The runtime description of a Llama-family transformer, independent of the checkpoint format it came from.
/// Shape glossary: D = <see cref="Dim"/>, F = <see cref="HiddenDim"/>, L = <see cref="Layers"/>,
/// H = <see cref="Heads"/>, Hkv = <see cref="KvHeads"/>, Dh = <see cref="HeadDim"/>, V = <see cref="VocabSize"/>.
/// </summary>
public sealed record ModelConfig
{
    /// <summary>Model width D.</summary>
    public required int Dim { get; init; }
    /// <summary>Feed-forward width F.</summary>
    public required int HiddenDim { get; init; }
    /// <summary>Number of transformer blocks L.</summary>
    public required int Layers { get; init; }
    /// <summary>The block variant (default Llama).</summary>
    public ModelArchitecture Architecture { get; init; } = ModelArchitecture.Llama;
    /// <summary>Query heads H.</summary>
    public required int Heads { get; init; }
    /// <summary>Key/value heads Hkv (grouped-query attention when smaller than H).</summary>
    public required int KvHeads { get; init; }
    /// <summary>Vocabulary size V.</summary>
    public required int VocabSize { get; init; }
    /// <summary>Longest sequence (prompt + generated) the model supports.</summary>
    public required int MaxSequenceLength { get; init; }
    /// <summary>RoPE base θ.</summary>
    public float RopeTheta { get; init; } = 10000f;
    /// <summary>RoPE scaling (config.json's <c>rope_scaling</c>), or null for plain RoPE.</summary>
    public RopeScaling? RopeScaling { get; init; }
    /// <summary>θ and the scaling together, as the backends take them.</summary>
    public RopeParameters Rope => new(RopeTheta, RopeScaling);
    /// <summary>RMSNorm epsilon.</summary>
    public float RmsNormEps { get; init; } = 1e-5f;
    /// <summary>True when the output classifier shares the token-embedding matrix.</summary>
    public bool TiedEmbeddings { get; init; }
    /// <summary>Beginning-of-sequence token id.</summary>
    public int BosTokenId { get; init; } = 1;
    /// <summary>Token ids that end generation.</summary>
    public IReadOnlyList<int> EndTokenIds { get; init; } = [2];
    /// <summary>Where the configuration came from (for messages).</summary>
    public string Source { get; init; } = "";

    /// <summary>
    /// Head dimension Dh: D / H unless the checkpoint says otherwise (config.json's <c>head_dim</c>; Qwen3-0.6B has
    /// D 1024, H 16 and Dh 128, so its queries are H·Dh = 2048 wide).
    /// </summary>
    public int HeadDim
    {
        get => _headDim ?? (Heads > 0 ? Dim / Heads : 0);
        init => _headDim = value;
    }
    private readonly int? _headDim;
    /// <summary>True when <see cref="HeadDim"/> was given rather than derived from D / H.</summary>
    public bool HasExplicitHeadDim => _headDim is not null;
    /// <summary>Width of all query heads (and of the attention output): H Dh.</summary>
    public int QueryDim => Heads * HeadDim;
    /// <summary>True when the q, k and v projections have biases (<see cref="ModelArchitecture.Qwen2"/>).</summary>
    public bool HasQkvBias => Architecture == ModelArchitecture.Qwen2;
    /// <summary>True when queries and keys get a per-head RMSNorm before RoPE (<see cref="ModelArchitecture.Qwen3"/>).</summary>
    public bool HasQkNorm => Architecture == ModelArchitecture.Qwen3;
    /// <summary>Width of the fused Q|K|V projection output: (H + 2 Hkv) Dh.</summary>
    public int QkvDim => (Heads + 2 * KvHeads) * HeadDim;
    /// <summary>Width of one token's keys (or values): Hkv Dh.</summary>
    public int KvDim => KvHeads * HeadDim;

    /// <summary>Largest head dimension accepted (the attention kernels keep a head's query in registers).</summary>
    public const int MaxHeadDim = 256;

    /// <summary>Throws <see cref="InvalidDataException"/> when the numbers cannot describe a working model.</summary>
    public ModelConfig Validate()
    {
        void Require(bool ok, string what)
        {
            if (!ok) throw new InvalidDataException($"{Source}: invalid model configuration: {what}.");
        }
        Require(Dim > 0, $"dim must be positive, got {Dim}");
        Require(HiddenDim > 0, $"hidden_dim must be positive, got {HiddenDim}");
        Require(Layers > 0, $"n_layers must be positive, got {Layers}");
        if (_headDim is int explicitHeadDim)
        {
            Require(Heads > 0, $"n_heads must be positive, got {Heads}");
            Require(explicitHeadDim > 0 && explicitHeadDim <= MaxHeadDim, $"head_dim must be in 1..{MaxHeadDim}, got {explicitHeadDim}");
        }
        else Require(Heads > 0 && Dim % Heads == 0, $"n_heads ({Heads}) must be positive and divide dim ({Dim})");
        Require(HeadDim % 2 == 0, $"head dim ({HeadDim}) must be even for RoPE");
        Require(Enum.IsDefined(Architecture), $"unknown architecture {(int)Architecture}");
        Require(KvHeads > 0 && Heads % KvHeads == 0, $"n_kv_heads ({KvHeads}) must be positive and divide n_heads ({Heads})");
        Require(VocabSize > 0, $"vocab_size must be positive, got {VocabSize}");
        Require(MaxSequenceLength > 0, $"max sequence length must be positive, got {MaxSequenceLength}");
        Require(RopeTheta > 0, $"rope_theta must be positive, got {RopeTheta}");
        if (RopeScaling is { } scaling)
        {
            Require(float.IsFinite(scaling.Factor) && scaling.Factor >= 1, $"rope_scaling factor must be at least 1, got {scaling.Factor}");
            if (scaling.Kind == RopeScalingKind.Llama3)
                Require(scaling.LowFrequencyFactor > 0 && scaling.HighFrequencyFactor > scaling.LowFrequencyFactor && scaling.OriginalMaxPositions > 0,
                    $"llama3 rope_scaling needs 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0, got {scaling.LowFrequencyFactor}, {scaling.HighFrequencyFactor}, {scaling.OriginalMaxPositions}");
        }
        Require(RmsNormEps > 0, $"rms_norm_eps must be positive, got {RmsNormEps}");
        Require(BosTokenId >= 0 && BosTokenId < VocabSize, $"bos_token_id {BosTokenId} outside the vocabulary");
        return this;
    }
}
