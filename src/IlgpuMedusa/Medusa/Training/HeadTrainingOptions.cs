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
    public int Layers { get; init; } = 1;

    /// <summary>
    /// True: the heads use the base model's frozen lm_head and only the ResBlocks train (compact format). False: each head
    /// has its own lm_head, initialised from the base one and trained too (Medusa's released format; much larger).
    /// </summary>
    public bool SharedLmHead { get; init; } = true;

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

    /// <summary>Held-out tokens the model generates for the accuracy report (never trained on).</summary>
    public int HeldOutTokens { get; init; } = 4096;

    /// <summary>Sampling temperature of self-distillation.</summary>
    public float Temperature { get; init; } = 0.8f;

    /// <summary>Sequences generated side by side (one batched forward per step).</summary>
    public int Streams { get; init; } = 64;

    /// <summary>Host threads (null: all cores).</summary>
    public int? Threads { get; init; }

    /// <summary>Initial scale of the ResBlock weights: 0 (Medusa's zero initialisation) or the standard deviation of a normal draw.</summary>
    public float InitScale { get; init; }

    /// <summary>Self-distillation tokens when <see cref="Tokens"/> is null.</summary>
    public const int DefaultGeneratedTokens = 200_000;

    /// <summary>Epochs when neither <see cref="Epochs"/> nor <see cref="Steps"/> is set.</summary>
    public const int DefaultEpochs = 1;

    /// <summary>Throws <see cref="ArgumentException"/> naming the bad option.</summary>
    public HeadTrainingOptions Validate()
    {
        if (Heads is < 1 or > 16) throw new ArgumentOutOfRangeException(nameof(Heads), Heads, "--heads must be between 1 and 16.");
        if (Layers is < 0 or > 8) throw new ArgumentOutOfRangeException(nameof(Layers), Layers, "--layers must be between 0 and 8.");
        if (Layers == 0 && SharedLmHead)
            throw new ArgumentException("--layers 0 with a shared lm_head leaves nothing to train; use at least one ResBlock or --shared-lm-head false.");
        if (!(LearningRate > 0) || float.IsInfinity(LearningRate)) throw new ArgumentOutOfRangeException(nameof(LearningRate), LearningRate, "--learning-rate must be positive.");
        if (!(WeightDecay >= 0) || float.IsInfinity(WeightDecay)) throw new ArgumentOutOfRangeException(nameof(WeightDecay), WeightDecay, "--weight-decay must be >= 0.");
        if (BatchSize is < 1 or > 8192) throw new ArgumentOutOfRangeException(nameof(BatchSize), BatchSize, "--batch must be between 1 and 8192.");
        if (Epochs is < 1) throw new ArgumentOutOfRangeException(nameof(Epochs), Epochs, "--epochs must be positive.");
        if (Steps is < 1) throw new ArgumentOutOfRangeException(nameof(Steps), Steps, "--steps must be positive.");
        if (Tokens is < 1) throw new ArgumentOutOfRangeException(nameof(Tokens), Tokens, "--tokens must be positive.");
        if (HeldOutTokens < 1) throw new ArgumentOutOfRangeException(nameof(HeldOutTokens), HeldOutTokens, "--eval-tokens must be positive.");
        if (!(Temperature > 0) || float.IsInfinity(Temperature)) throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "--temperature must be positive.");
        if (Streams is < 1 or > 1024) throw new ArgumentOutOfRangeException(nameof(Streams), Streams, "--streams must be between 1 and 1024.");
        if (Threads is < 1) throw new ArgumentOutOfRangeException(nameof(Threads), Threads, "--threads must be positive.");
        if (!(InitScale >= 0) || float.IsInfinity(InitScale)) throw new ArgumentOutOfRangeException(nameof(InitScale), InitScale, "--init-scale must be >= 0.");
        if (DataFile is not null && string.IsNullOrWhiteSpace(DataFile)) throw new ArgumentException("--data must be 'self' or a text file.");
        return this;
    }
}
