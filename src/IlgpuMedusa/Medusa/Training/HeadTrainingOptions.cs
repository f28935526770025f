namespace IlgpuMedusa.Medusa.Training;

/// <summary>
/// How Medusa heads are trained (<c>ilgpu-medusa train-heads</c>). Defaults live here and nowhere else.
/// The backbone is frozen; head i learns to predict the token at t + 2 + i from the base model's final hidden state at t.
/// </summary>
public sealed record HeadTrainingOptions
{
    /// <summary>Number of heads (Medusa's K).</summary>
    public int Heads { get; init; } = 4;

    /// <summary>ResBlocks per head.</summary>
    public int Layers { get; init; } = 2;

    /// <summary>
    /// True: the heads use the base model's frozen lm_head and only the ResBlocks train (compact format). False: each head
    /// has its own lm_head, initialised from the base one and trained too (Medusa's released format; much larger).
    /// </summary>
    public bool SharedLmHead { get; init; } = true;

    /// <summary>
    /// True: each head also takes the input embedding of the base model's next token (the pending token it guesses after),
    /// z₀ = h + P·e(x̂); needs a shared lm_head. False: plain Medusa heads, z₀ = h. Null: true for heads sharing the base
    /// lm_head, false for heads with their own (Medusa's released layout).
    /// </summary>
    public bool? NextTokenInput { get; init; }

    /// <summary>Whether the heads take the next-token input (<see cref="NextTokenInput"/> resolved).</summary>
    public bool UsesNextToken => NextTokenInput ?? SharedLmHead;

    /// <summary>
    /// True: each head attends to the keys and values the base model's last layer cached for the context before its
    /// ResBlocks (see <see cref="Models.MedusaHeadWeights.ContextQuery"/>); needs the next-token input.
    /// </summary>
    public bool ContextAttention { get; init; }

    /// <summary>
    /// Hydra-style: head i ≥ 1 also takes the input embedding of the token just before its target (at run time the
    /// previous head's best guess); needs the next-token input, and excludes context attention.
    /// </summary>
    public bool PreviousTokenInput { get; init; }

    /// <summary>
    /// α of soft labels: each head's loss becomes (1 − α)·cross-entropy to its target + α·cross-entropy to the base
    /// model's own distribution at the position before that target (over the scored tokens). 0: targets only. Heads
    /// sharing the base lm_head only.
    /// </summary>
    public float SoftLabels { get; init; }

    /// <summary>Peak learning rate of AdamW (after a linear warm-up, decayed on a cosine to a tenth).</summary>
    public float LearningRate { get; init; } = 5e-3f;

    /// <summary>AdamW's decoupled weight decay (applied to matrices, not biases).</summary>
    public float WeightDecay { get; init; }

    /// <summary>Positions per optimizer step (every head sees the same positions).</summary>
    public int BatchSize { get; init; } = 256;

    /// <summary>Passes over the training positions; used when <see cref="Steps"/> is null (null too: <see cref="DefaultEpochs"/>).</summary>
    public int? Epochs { get; init; }

    /// <summary>Optimizer steps; when set it wins over <see cref="Epochs"/>.</summary>
    public int? Steps { get; init; }

    /// <summary>Seed of the data generation, the initialisation and the batch order.</summary>
    public int Seed { get; init; } = 1;

    /// <summary>Training text: null for self-distillation (the base model writes it), or a UTF-8 text file.</summary>
    public string? DataFile { get; init; }

    /// <summary>Training tokens: generated (self-distillation) or at most this many read from the data file (null: all).</summary>
    public int? Tokens { get; init; }

    /// <summary>Held-out tokens the model generates for the accuracy report (greedy-path text from other seeds, never trained on).</summary>
    public int HeldOutTokens { get; init; } = 8192;

    /// <summary>What the model writes for self-distillation: greedy-path text (default) or temperature-sampled text.</summary>
    public DistillationText Distill { get; init; } = DistillationText.Greedy;

    /// <summary>Sampling temperature of <see cref="DistillationText.Sampled"/> self-distillation.</summary>
    public float Temperature { get; init; } = 0.8f;

    /// <summary>Greedy-path text: most tokens sampled (temperature 1) after a sequence's opening before it goes greedy.</summary>
    public int PrefixTokens { get; init; } = new DistillationPolicy().PrefixTokens;

    /// <summary>Greedy-path text: fewest tokens sampled after a sequence's opening.</summary>
    public int MinPrefixTokens { get; init; } = new DistillationPolicy().MinPrefixTokens;

    /// <summary>Greedy-path text: chance that a later token is sampled (temperature 1) instead of the argmax.</summary>
    public float Explore { get; init; } = new DistillationPolicy().Explore;

    /// <summary>
    /// Tokens the heads score: the N most frequent training targets (0: the whole vocabulary). Null: <see cref="DefaultShortlist"/>
    /// for heads sharing the base lm_head, the whole vocabulary for heads with their own (Medusa's released layout).
    /// </summary>
    public int? Shortlist { get; init; }

    /// <summary>Sequences generated side by side (one batched forward per step).</summary>
    public int Streams { get; init; } = 64;

    /// <summary>Host threads (null: all cores).</summary>
    public int? Threads { get; init; }

    /// <summary>Initial scale of the ResBlock weights: 0 (Medusa's zero initialisation) or the standard deviation of a normal draw.</summary>
    public float InitScale { get; init; }

    /// <summary>Self-distillation tokens when <see cref="Tokens"/> is null.</summary>
    public const int DefaultGeneratedTokens = 600_000;

    /// <summary>Shortlist size when <see cref="Shortlist"/> is null and the heads share the base lm_head.</summary>
    public const int DefaultShortlist = 2048;

    /// <summary>The shortlist size in effect: 0 for the whole vocabulary.</summary>
    public int ShortlistSize => Shortlist ?? (SharedLmHead ? DefaultShortlist : 0);

    /// <summary>The data policy of self-distillation for these options.</summary>
    public DistillationPolicy Policy => Distill == DistillationText.Sampled
        ? DistillationPolicy.Sampled(Temperature) with { LastLayerKv = ContextAttention }
        : new DistillationPolicy { PrefixTokens = PrefixTokens, MinPrefixTokens = MinPrefixTokens, Explore = Explore, LastLayerKv = ContextAttention };

    /// <summary>The policy of the held-out text: always greedy-path (what greedy Medusa decoding asks of the heads).</summary>
    public DistillationPolicy HeldOutPolicy => new() { PrefixTokens = PrefixTokens, MinPrefixTokens = MinPrefixTokens, Explore = Explore, LastLayerKv = ContextAttention };

    /// <summary>Epochs when neither <see cref="Epochs"/> nor <see cref="Steps"/> is set.</summary>
    public const int DefaultEpochs = 6;

    /// <summary>Most epochs accepted (checked before any text is generated; the step count is checked again once the data is known).</summary>
    public const int MaxEpochs = 100_000;

    /// <summary>Throws <see cref="ArgumentException"/> naming the bad option.</summary>
    public HeadTrainingOptions Validate()
    {
        if (Heads is < 1 or > 16) throw new ArgumentOutOfRangeException(nameof(Heads), Heads, "--heads must be between 1 and 16.");
        if (Layers is < 0 or > 8) throw new ArgumentOutOfRangeException(nameof(Layers), Layers, "--layers must be between 0 and 8.");
        if (NextTokenInput == true && !SharedLmHead) throw new ArgumentException("--next-token needs --shared-lm-head true (the next token comes from the base lm_head).");
        if (PreviousTokenInput && !UsesNextToken) throw new ArgumentException("--previous-token needs the next-token input (--next-token true, --shared-lm-head true).");
        if (PreviousTokenInput && Heads < 2) throw new ArgumentException("--previous-token needs at least two heads (head 0 has no previous head).");
        if (PreviousTokenInput && ContextAttention) throw new ArgumentException("--previous-token and --context-attention cannot be combined (the decoder runs either, not both).");
        if (ContextAttention && !UsesNextToken)
            throw new ArgumentException("--context-attention needs the next-token input (--next-token true, with --shared-lm-head true): the heads' query sits at the next token's position.");
        if (!(SoftLabels is >= 0 and <= 1)) throw new ArgumentOutOfRangeException(nameof(SoftLabels), SoftLabels, "--soft-labels must be between 0 and 1.");
        if (SoftLabels > 0 && !SharedLmHead) throw new ArgumentException("--soft-labels needs --shared-lm-head true (the base model's distribution comes from the shared lm_head).");
        if (Layers == 0 && SharedLmHead)
            throw new ArgumentException("--layers 0 with a shared lm_head leaves nothing to train; use at least one ResBlock or --shared-lm-head false.");
        if (!(LearningRate > 0) || float.IsInfinity(LearningRate)) throw new ArgumentOutOfRangeException(nameof(LearningRate), LearningRate, "--learning-rate must be positive.");
        if (!(WeightDecay >= 0) || float.IsInfinity(WeightDecay)) throw new ArgumentOutOfRangeException(nameof(WeightDecay), WeightDecay, "--weight-decay must be >= 0.");
        if (BatchSize is < 1 or > 8192) throw new ArgumentOutOfRangeException(nameof(BatchSize), BatchSize, "--batch must be between 1 and 8192.");
        if (Epochs is < 1 or > MaxEpochs) throw new ArgumentOutOfRangeException(nameof(Epochs), Epochs, $"--epochs must be between 1 and {MaxEpochs}.");
        if (Steps is < 1) throw new ArgumentOutOfRangeException(nameof(Steps), Steps, "--steps must be positive.");
        if (Tokens is < 1) throw new ArgumentOutOfRangeException(nameof(Tokens), Tokens, "--tokens must be positive.");
        if (HeldOutTokens < 1) throw new ArgumentOutOfRangeException(nameof(HeldOutTokens), HeldOutTokens, "--eval-tokens must be positive.");
        if (!(Temperature > 0) || float.IsInfinity(Temperature)) throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "--temperature must be positive.");
        if (!Enum.IsDefined(Distill)) throw new ArgumentOutOfRangeException(nameof(Distill), Distill, "--distill must be greedy or sampled.");
        if (PrefixTokens is < 0 or > 64) throw new ArgumentOutOfRangeException(nameof(PrefixTokens), PrefixTokens, "--prefix-tokens must be between 0 and 64.");
        if (MinPrefixTokens < 0 || MinPrefixTokens > PrefixTokens)
            throw new ArgumentOutOfRangeException(nameof(MinPrefixTokens), MinPrefixTokens, "--prefix-min must be between 0 and --prefix-tokens.");
        if (!(Explore is >= 0 and < 1)) throw new ArgumentOutOfRangeException(nameof(Explore), Explore, "--explore must be in [0, 1).");
        if (Shortlist is < 0) throw new ArgumentOutOfRangeException(nameof(Shortlist), Shortlist, "--shortlist must be 0 (the whole vocabulary) or a number of tokens.");
        if (Shortlist is > 0 and < MedusaHeads.TopK)
            throw new ArgumentOutOfRangeException(nameof(Shortlist), Shortlist, $"--shortlist must be 0 or at least {MedusaHeads.TopK}, the candidates each head proposes.");
        if (Streams is < 1 or > 1024) throw new ArgumentOutOfRangeException(nameof(Streams), Streams, "--streams must be between 1 and 1024.");
        if (Threads is < 1) throw new ArgumentOutOfRangeException(nameof(Threads), Threads, "--threads must be positive.");
        if (!(InitScale >= 0) || float.IsInfinity(InitScale)) throw new ArgumentOutOfRangeException(nameof(InitScale), InitScale, "--init-scale must be >= 0.");
        if (DataFile is not null && string.IsNullOrWhiteSpace(DataFile)) throw new ArgumentException("--data must be 'self' or a text file.");
        return this;
    }
}
