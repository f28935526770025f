using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Models;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Medusa.Training;

/// <summary>Progress of <see cref="HeadTrainer.Run"/>.</summary>
/// <param name="Stage">What is happening.</param>
/// <param name="Fraction">0..1 within the stage.</param>
/// <param name="TokensPerSecond">Positions (training) or tokens (data) per second, when known.</param>
/// <param name="HeadLosses">Recent mean cross-entropy of each head (training only).</param>
/// <param name="Remaining">Estimated time left in the stage.</param>
public sealed record HeadTrainingProgress(string Stage, double Fraction, double? TokensPerSecond = null, IReadOnlyList<double>? HeadLosses = null, TimeSpan? Remaining = null);

/// <summary>What a training run did and how good the heads are.</summary>
public sealed record HeadTrainingReport
{
    /// <summary>The heads file written.</summary>
    public required string OutputPath { get; init; }
    /// <summary>Where the text came from.</summary>
    public required string Data { get; init; }
    /// <summary>Training tokens (sequences' tokens in all).</summary>
    public required long TrainingTokens { get; init; }
    /// <summary>Training positions (hidden states with a target for head 0).</summary>
    public required int TrainingPositions { get; init; }
    /// <summary>Held-out positions (greedy-path text the model generated from other seeds, never trained on).</summary>
    public required int HeldOutPositions { get; init; }
    /// <summary>Tokens the heads score (the shortlist's length), or null for the whole vocabulary.</summary>
    public int? ShortlistSize { get; init; }
    /// <summary>Share of the training targets (all heads) inside the shortlist; 1 without one.</summary>
    public double ShortlistCoverage { get; init; } = 1;
    /// <summary>Distinct tokens among the training targets.</summary>
    public int DistinctTargets { get; init; }
    /// <summary>Optimizer steps.</summary>
    public required int Steps { get; init; }
    /// <summary>Passes over the training positions.</summary>
    public required double Epochs { get; init; }
    /// <summary>Seconds spent making the data (generation or prefill, held-out text included).</summary>
    public required double DataSeconds { get; init; }
    /// <summary>Seconds spent in the optimizer loop.</summary>
    public required double TrainingSeconds { get; init; }
    /// <summary>Held-out score of each head before training (a zero-initialised head is the base lm_head, so it predicts t + 1).</summary>
    public required IReadOnlyList<HeadScore> Before { get; init; }
    /// <summary>Held-out score of each head after training.</summary>
    public required IReadOnlyList<HeadScore> After { get; init; }
    /// <summary>Held-out tokens per step of a chain of every head's best guess: 1 + the mean number of leading heads that were right.</summary>
    public double ChainTokensPerStep { get; init; }
}

/// <summary>Heads fresh from <see cref="HeadTrainer.Train"/>.</summary>
/// <param name="Weights">The parameters.</param>
/// <param name="Steps">Optimizer steps.</param>
/// <param name="Epochs">Passes over the training positions.</param>
/// <param name="Seconds">Seconds in the optimizer loop.</param>
/// <param name="Before">Held-out score of each head before training.</param>
/// <param name="After">Held-out score of each head after training.</param>
public sealed record TrainedHeads(MedusaHeadWeights Weights, int Steps, double Epochs, double Seconds, IReadOnlyList<HeadScore> Before, IReadOnlyList<HeadScore> After)
{
    /// <summary>Held-out tokens per step of a chain of every head's best guess (1 + the leading heads that were right), after training.</summary>
    public double ChainTokensPerStep { get; init; }
}

/// <summary>
/// Trains Medusa heads for a model on the host: makes the data (self-distillation or a text file) and held-out text,
/// computes the hidden states once, runs AdamW over shuffled batches, scores the heads on the held-out text and writes the
/// heads with the facts of the run in the file's metadata.
/// </summary>
public static class HeadTrainer
{
    /// <summary>
    /// Runs the whole training. Fails fast, before any long work, when the output file cannot be written, the data file is
    /// missing or empty, or the model directory is missing.
    /// </summary>
    /// <param name="modelDirectory">The base model.</param>
    /// <param name="outputPath">The heads file to write.</param>
    /// <param name="options">Training options.</param>
    /// <param name="storeAs">Element type of the written tensors.</param>
    /// <param name="command">The command line, recorded in the file.</param>
    /// <param name="progress">Progress reports.</param>
    /// <param name="cancellationToken">Checked every step.</param>
    public static HeadTrainingReport Run(string modelDirectory, string outputPath, HeadTrainingOptions options, DType storeAs = DType.F16, string? command = null,
        IProgress<HeadTrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        options.Validate();
        CheckWritable(outputPath);
        if (options.DataFile is { } dataFile) TextFileData.CheckReadable(dataFile);
        CheckNotAnInput(outputPath, modelDirectory, options.DataFile);
        int threads = options.Threads ?? Environment.ProcessorCount;
        using var checkpoint = ModelDirectory.OpenCheckpoint(modelDirectory);
        var tokenizer = ModelDirectory.OpenTokenizer(modelDirectory);
        using var backend = new HostBackend(threads);
        using var model = LlamaModel.Load(checkpoint, backend, DType.F32);
        var c = model.Config;

        var classifier = checkpoint.GetTensor(c.TiedEmbeddings ? LlamaTensorNames.Embedding : LlamaTensorNames.Classifier, c.VocabSize, c.Dim).ToFloatArray();
        // A training text file is read first: one too short for the heads fails before minutes of held-out generation.
        IReadOnlyList<int[]>? fileChunks = null;
        if (options.DataFile is { } textFile)
        {
            fileChunks = TextFileData.Chunks(textFile, tokenizer, c.MaxSequenceLength, options.Tokens, documentStart: c.BosTokenId);
            if (!fileChunks.Any(chunk => chunk.Length > options.Heads + 1))
                throw TrainingCorpus.TooLittleText(textFile, options.Heads, fileChunks.Select(chunk => chunk.Length).ToList());
        }
        var clock = Stopwatch.StartNew();
        // Held-out text is always greedy-path text (what greedy Medusa decoding asks of the heads), from another seed:
        // other openings, other sampled prefixes, other explored tokens.
        IReadOnlyList<HiddenSequence>? heldOutSequences = SelfDistillation.Generate(model, tokenizer, options.HeldOutTokens, options.HeldOutPolicy, options.Streams, options.Seed + 7919,
            Stage(progress, "generating held-out text", options.HeldOutTokens, clock), classifier, threads, cancellationToken);
        var heldOut = TrainingCorpus.Build(heldOutSequences, options.Heads, c.Dim, "held-out text");
        heldOutSequences = null;

        IReadOnlyList<HiddenSequence>? sequences;
        string data;
        var dataClock = Stopwatch.StartNew();
        if (options.DataFile is { } file)
        {
            var chunks = fileChunks!;
            sequences = TextFileData.Prefill(model, chunks, Stage(progress, $"reading {Path.GetFileName(file)}", chunks.Sum(x => x.Length), dataClock), options.ContextAttention,
                cancellationToken);
            data = $"file {Path.GetFileName(file)}";
        }
        else
        {
            int tokens = options.Tokens ?? HeadTrainingOptions.DefaultGeneratedTokens;
            sequences = SelfDistillation.Generate(model, tokenizer, tokens, options.Policy, options.Streams, options.Seed,
                Stage(progress, "generating training text", tokens, dataClock), classifier, threads, cancellationToken);
            data = options.Distill == DistillationText.Sampled
                ? string.Create(CultureInfo.InvariantCulture, $"self-distillation, temperature {options.Temperature}")
                : string.Create(CultureInfo.InvariantCulture, $"self-distillation, greedy path ({options.MinPrefixTokens}-{options.PrefixTokens} sampled opening tokens, explore {options.Explore})");
        }
        var corpus = TrainingCorpus.Build(sequences, options.Heads, c.Dim, options.DataFile ?? "generated text", keepSequenceRows: options.SoftLabels > 0);
        data += $", {corpus.Sequences} sequences";
        sequences = null;
        double dataSeconds = clock.Elapsed.TotalSeconds;

        var embedding = options.UsesNextToken && !c.TiedEmbeddings ? checkpoint.GetTensor(LlamaTensorNames.Embedding, c.VocabSize, c.Dim).ToFloatArray() : null;
        var frequencies = corpus.TargetFrequencies(c.VocabSize);
        var shortlist = ChooseShortlist(frequencies, options.ShortlistSize);
        double coverage = Coverage(frequencies, shortlist);
        var trained = Train(corpus, heldOut, classifier, c, options, shortlist, embedding, progress, cancellationToken);
        var report = new HeadTrainingReport
        {
            OutputPath = outputPath,
            Data = data,
            TrainingTokens = corpus.Tokens,
            TrainingPositions = corpus.Positions,
            HeldOutPositions = heldOut.Positions,
            ShortlistSize = shortlist?.Length,
            ShortlistCoverage = coverage,
            DistinctTargets = frequencies.Count(f => f > 0),
            Steps = trained.Steps,
            Epochs = trained.Epochs,
            DataSeconds = dataSeconds,
            TrainingSeconds = trained.Seconds,
            Before = trained.Before,
            After = trained.After,
            ChainTokensPerStep = trained.ChainTokensPerStep,
        };
        MedusaHeadsCheckpoint.Write(outputPath, trained.Weights, model.Signature, Metadata(report, options, command), storeAs);
        return report;
    }

    /// <summary>
    /// Trains heads on a prepared corpus: initialises them (zero ResBlocks unless <see cref="HeadTrainingOptions.InitScale"/>;
    /// own lm_heads copied from <paramref name="classifier"/>), scores them on <paramref name="heldOut"/>, runs AdamW, scores again.
    /// </summary>
    /// <param name="corpus">Training positions.</param>
    /// <param name="heldOut">Held-out positions.</param>
    /// <param name="classifier">The base model's lm_head [V, D], row-major.</param>
    /// <param name="config">The base model's configuration.</param>
    /// <param name="options">Training options (data options are not used here).</param>
    /// <param name="shortlist">The tokens the heads score (sorted ids; see <see cref="ChooseShortlist"/>), or null for all.</param>
    /// <param name="embedding">The base input embedding [V, D] for next-token inputs (null: the classifier, as in tied models).</param>
    /// <param name="progress">Progress reports.</param>
    /// <param name="cancellationToken">Checked every step.</param>
    public static TrainedHeads Train(TrainingCorpus corpus, TrainingCorpus heldOut, float[] classifier, ModelConfig config, HeadTrainingOptions options,
        int[]? shortlist, float[]? embedding = null, IProgress<HeadTrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        options.Validate();
        if (corpus.HeadCount < options.Heads || heldOut.HeadCount < options.Heads)
            throw new ArgumentException($"the corpora have targets for {Math.Min(corpus.HeadCount, heldOut.HeadCount)} heads, but {options.Heads} are to be trained.");
        int threads = options.Threads ?? Environment.ProcessorCount;
        if (options.SoftLabels > 0 && corpus.Teachers is null)
            throw new ArgumentException("soft labels need a corpus built with keepSequenceRows (every sequence's hidden states)");
        if (options.ContextAttention && (corpus.Context is null || heldOut.Context is null))
            throw new ArgumentException("heads with context attention train on text that carries the last layer's cached keys and values (DistillationPolicy.LastLayerKv)");
        var weights = MedusaHeadWeights.CreateRandom(config, options.Heads, options.Layers, options.Seed, options.InitScale, options.SharedLmHead ? null : classifier, shortlist,
            options.UsesNextToken, options.ContextAttention, options.PreviousTokenInput);
        var heads = new TrainableHeads(weights, classifier, threads, options.UsesNextToken ? embedding ?? classifier : null, options.ContextAttention ? ContextShape.Of(config) : null);
        var before = Evaluate(heads, heldOut, options.BatchSize, progress, "scoring the initial heads", out _, cancellationToken);
        var clock = Stopwatch.StartNew();
        var (steps, epochs) = Optimize(heads, corpus, options, threads, progress, cancellationToken);
        double seconds = clock.Elapsed.TotalSeconds;
        var after = Evaluate(heads, heldOut, options.BatchSize, progress, "scoring the trained heads", out double chain, cancellationToken);
        return new TrainedHeads(weights, steps, epochs, seconds, before, after) { ChainTokensPerStep = chain };
    }

    /// <summary>
    /// The shortlist for <paramref name="size"/> tokens: the most frequent training targets (ties and never-seen tokens:
    /// lower id first), sorted by id; null (the whole vocabulary) for size 0 or a size that covers the vocabulary.
    /// </summary>
    /// <param name="frequencies">[token] = how often it is a training target (<see cref="TrainingCorpus.TargetFrequencies"/>).</param>
    /// <param name="size">Tokens to keep; 0 for all.</param>
    public static int[]? ChooseShortlist(long[] frequencies, int size) =>
        size <= 0 || size >= frequencies.Length ? null : VocabularyShortlist.MostFrequent(frequencies, size);

    private static double Coverage(long[] frequencies, int[]? shortlist)
    {
        if (shortlist is null) return 1;
        long all = frequencies.Sum(), inside = shortlist.Sum(id => frequencies[id]);
        return all == 0 ? 1 : (double)inside / all;
    }

    /// <summary>Throws <see cref="IOException"/> naming the file when it cannot be created (tried with a probe file next to it).</summary>
    public static void CheckWritable(string outputPath)
    {
        if (string.IsNullOrWhiteSpace(outputPath)) throw new ArgumentException("--out must name the heads file to write.");
        if (Directory.Exists(outputPath)) throw new IOException($"--out: '{outputPath}' is a directory; name the heads file to write (e.g. {Path.Combine(outputPath, MedusaHeadsCheckpoint.ReleasedFileName)}).");
        var full = Path.GetFullPath(outputPath);
        var probe = full + ".probe-" + Guid.NewGuid().ToString("N")[..8];
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
            using (File.Create(probe, 1, FileOptions.DeleteOnClose))
            {
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException)
        {
            throw new IOException($"--out: cannot write the heads file '{outputPath}': {e.Message}", e);
        }
    }

    /// <summary>
    /// Refuses an output path that is one of the inputs (links followed): the training text, or a file of the model
    /// directory the model is loaded from (its checkpoint, tokenizer, config). The heads' own file in the model directory,
    /// medusa_lm_head.safetensors, may be replaced: that is where <c>--heads auto</c> finds them.
    /// </summary>
    internal static void CheckNotAnInput(string outputPath, string modelDirectory, string? dataFile)
    {
        if (dataFile is not null && PathIdentity.Same(outputPath, dataFile))
            throw new ArgumentException($"--out: '{outputPath}' is the training text (--data); name another file for the heads.");
        if (!File.Exists(outputPath) || !Directory.Exists(modelDirectory)) return;
        string name = Path.GetFileName(PathIdentity.RealPath(outputPath));
        bool inModel = PathIdentity.Same(Path.GetDirectoryName(PathIdentity.RealPath(outputPath))!, modelDirectory);
        if (inModel && !name.Equals(MedusaHeadsCheckpoint.ReleasedFileName, StringComparison.Ordinal))
            throw new ArgumentException($"--out: '{outputPath}' is a file of the model directory '{modelDirectory}' (the model reads it); name another file for the heads, e.g. {Path.Combine(modelDirectory, MedusaHeadsCheckpoint.ReleasedFileName)}.");
    }

    private static Progress? Stage(IProgress<HeadTrainingProgress>? progress, string stage, long units, Stopwatch clock)
    {
        if (progress is null) return null;
        clock.Restart();
        return new Progress(value =>
        {
            double seconds = clock.Elapsed.TotalSeconds;
            double? rate = seconds > 0.5 ? value * units / seconds : null;
            TimeSpan? left = value > 0.01 ? TimeSpan.FromSeconds(seconds * (1 - value) / value) : null;
            progress.Report(new HeadTrainingProgress(stage, value, rate, null, left));
        });
    }

    private sealed class Progress(Action<double> report) : IProgress<double>
    {
        public void Report(double value) => report(value);
    }

    /// <summary>The optimizer loop; returns the steps taken and the epochs they covered.</summary>
    private static (int Steps, double Epochs) Optimize(TrainableHeads heads, TrainingCorpus corpus, HeadTrainingOptions options, int threads,
        IProgress<HeadTrainingProgress>? progress, CancellationToken cancellationToken)
    {
        var w = heads.Weights;
        int k = w.HeadCount, d = w.HiddenSize, batch = Math.Min(options.BatchSize, corpus.Positions);
        int perEpoch = (corpus.Positions + batch - 1) / batch;
        long planned = options.Steps ?? (long)(options.Epochs ?? HeadTrainingOptions.DefaultEpochs) * perEpoch;
        if (planned > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(options), planned, $"--epochs: {options.Epochs} epochs of {perEpoch} steps are {planned} optimizer steps, more than {int.MaxValue}; use fewer epochs or --steps.");
        int total = (int)planned;
        var tensors = new List<(float[], float[], bool)>();
        for (int h = 0; h < k; h++)
        {
            for (int l = 0; l < w.LayerCount; l++)
            {
                tensors.Add((w.Linear[h][l], heads.LinearGradient[h][l], true));
                tensors.Add((w.Bias[h][l], heads.BiasGradient[h][l], false));
            }
            if (w.LmHeads is { } lm) tensors.Add((lm[h], heads.LmHeadGradient![h], true));
            if (w.NextToken is { } next) tensors.Add((next[h], heads.NextTokenGradient![h], true));
            if (w.PreviousToken is { } previous && h > 0) tensors.Add((previous[h], heads.PreviousTokenGradient![h], true));
            if (w.ContextQuery is { } query)
            {
                tensors.Add((query[h], heads.ContextQueryGradient![h], true));
                tensors.Add((w.ContextOutput![h], heads.ContextOutputGradient![h], true));
            }
        }
        var optimizer = new AdamW(tensors, options.WeightDecay, threads);
        var random = new Random(options.Seed);
        var order = Enumerable.Range(0, corpus.Positions).ToArray();
        var hidden = new float[batch * d];
        var teacher = options.SoftLabels > 0 ? new float[batch * d] : [];
        var nextTokens = new int[batch];
        var targets = new int[k][];
        for (int h = 0; h < k; h++) targets[h] = new int[batch];
        var recent = new double[k];
        var clock = Stopwatch.StartNew();
        double lastReport = -1;
        long positions = 0;
        int cursor = corpus.Positions;
        for (int step = 0; step < total; step++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (cursor >= corpus.Positions)
            {
                random.Shuffle(order);
                cursor = 0;
            }
            int m = Math.Min(batch, corpus.Positions - cursor);
            for (int r = 0; r < m; r++)
            {
                int p = order[cursor + r];
                corpus.Hidden.AsSpan(p * d, d).CopyTo(hidden.AsSpan(r * d, d));
                nextTokens[r] = corpus.Next[p];
                for (int h = 0; h < k; h++) targets[h][r] = corpus.Targets[p * corpus.HeadCount + h]; // the corpus may hold targets for more heads
            }
            var context = w.ContextQuery is null ? null : corpus.Context!.Rows(order.AsSpan(cursor, m));
            cursor += m;
            for (int h = 0; h < k; h++)
            {
                if (options.SoftLabels > 0) corpus.Teachers!.Teacher(order.AsSpan(cursor - m, m), h, targets[h].AsSpan(0, m), teacher, d);
                var score = heads.Backward(h, hidden.AsSpan(0, m * d), nextTokens.AsSpan(0, m), targets[h].AsSpan(0, m), context,
                    teacher.AsSpan(0, options.SoftLabels > 0 ? m * d : 0), options.SoftLabels, h > 0 && w.PreviousToken is not null ? targets[h - 1].AsSpan(0, m) : default);
                if (score.Count > 0) recent[h] = step == 0 ? score.Loss : 0.95 * recent[h] + 0.05 * score.Loss;
            }
            optimizer.Step(AdamW.Schedule(step, total, options.LearningRate));
            if (w.LmHeads is not null) heads.LmHeadsChanged();
            positions += m;
            double seconds = clock.Elapsed.TotalSeconds;
            if (progress is not null && (seconds - lastReport >= 0.5 || step == total - 1))
            {
                lastReport = seconds;
                progress.Report(new HeadTrainingProgress("training", (step + 1.0) / total, positions / seconds, [.. recent],
                    TimeSpan.FromSeconds(seconds / (step + 1) * (total - step - 1))));
            }
        }
        return (total, (double)positions / corpus.Positions);
    }

    /// <summary>
    /// Scores every head on the held-out positions; <paramref name="chainTokensPerStep"/> is 1 + the mean number of leading
    /// heads whose best token was the target (the tokens per step of a chain of every head's top-1 guess). Heads with a
    /// previous-token input are given the true token before each target, which is their input whenever the chain is right so far.
    /// </summary>
    internal static HeadScore[] Evaluate(TrainableHeads heads, TrainingCorpus corpus, int batch, IProgress<HeadTrainingProgress>? progress, string stage,
        out double chainTokensPerStep, CancellationToken cancellationToken)
    {
        int k = heads.Weights.HeadCount, stride = corpus.HeadCount, d = corpus.Dim; // the corpus may hold targets for more heads
        var scores = new HeadScore[k];
        var targets = new int[batch];
        var previous = new int[batch];
        var chain = new int[corpus.Positions]; // leading heads whose best token is the target
        var clock = Stopwatch.StartNew();
        for (int start = 0; start < corpus.Positions; start += batch)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int m = Math.Min(batch, corpus.Positions - start);
            var hidden = corpus.Hidden.AsSpan(start * d, m * d);
            var context = heads.Weights.ContextQuery is null ? null : corpus.Context!.Rows([.. Enumerable.Range(start, m)]);
            for (int h = 0; h < k; h++)
            {
                for (int r = 0; r < m; r++) targets[r] = corpus.Targets[(start + r) * stride + h];
                scores[h].Add(heads.Evaluate(h, hidden, corpus.Next.AsSpan(start, m), targets.AsSpan(0, m), context,
                    h > 0 && heads.Weights.PreviousToken is not null ? previous.AsSpan(0, m) : default));
                var ranks = heads.LastRanks;
                for (int r = 0; r < m; r++)
                    if (chain[start + r] == h && ranks[r] == 0) chain[start + r] = h + 1;
                targets.AsSpan(0, m).CopyTo(previous);
            }
            double done = (double)(start + m) / corpus.Positions;
            progress?.Report(new HeadTrainingProgress(stage, done, (start + m) / clock.Elapsed.TotalSeconds, null,
                TimeSpan.FromSeconds(clock.Elapsed.TotalSeconds * (1 - done) / done)));
        }
        chainTokensPerStep = corpus.Positions == 0 ? 0 : 1 + chain.Average();
        return scores;
    }

    private static Dictionary<string, string> Metadata(HeadTrainingReport report, HeadTrainingOptions options, string? command)
    {
        static string Number(double value) => value.ToString("0.####", CultureInfo.InvariantCulture);
        var meta = new Dictionary<string, string>
        {
            ["trained_by"] = "ilgpu-medusa train-heads",
            ["training_command"] = command ?? "",
            ["training_data"] = report.Data,
            ["training_tokens"] = report.TrainingTokens.ToString(CultureInfo.InvariantCulture),
            ["training_positions"] = report.TrainingPositions.ToString(CultureInfo.InvariantCulture),
            ["training_steps"] = report.Steps.ToString(CultureInfo.InvariantCulture),
            ["training_epochs"] = Number(report.Epochs),
            ["training_batch"] = options.BatchSize.ToString(CultureInfo.InvariantCulture),
            ["training_learning_rate"] = Number(options.LearningRate),
            ["training_soft_labels"] = Number(options.SoftLabels),
            ["training_seed"] = options.Seed.ToString(CultureInfo.InvariantCulture),
            ["training_seconds"] = Number(report.TrainingSeconds),
            ["data_seconds"] = Number(report.DataSeconds),
            ["heldout_positions"] = report.HeldOutPositions.ToString(CultureInfo.InvariantCulture),
            ["heldout_text"] = "greedy path, seed " + (options.Seed + 7919).ToString(CultureInfo.InvariantCulture),
            ["shortlist_training_coverage"] = Number(report.ShortlistCoverage),
            ["training_distinct_targets"] = report.DistinctTargets.ToString(CultureInfo.InvariantCulture),
            ["heldout_top1"] = JsonSerializer.Serialize(report.After.Select(s => Math.Round(s.Top1Accuracy, 4))),
            ["heldout_top5"] = JsonSerializer.Serialize(report.After.Select(s => Math.Round(s.Top5Accuracy, 4))),
            ["heldout_loss"] = JsonSerializer.Serialize(report.After.Select(s => Math.Round(s.Loss, 4))),
            ["heldout_chain_tokens_per_step"] = Number(report.ChainTokensPerStep),
            ["heldout_outside_shortlist"] = JsonSerializer.Serialize(report.After.Select(s => s.Count == 0 ? 0 : Math.Round((double)s.Outside / s.Count, 4))),
        };
        return meta;
    }
}
