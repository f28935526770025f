using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Medusa;
using IlgpuMedusa.Medusa.Training;
using IlgpuMedusa.Models;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Tests.Medusa;

/// <summary>
/// Medusa heads with a vocabulary shortlist on the host, on a tiny random model: the candidates are the right token ids,
/// trained shortlist heads are accepted, and greedy Medusa stays identical to greedy decoding.
/// </summary>
public sealed class ShortlistHeadsTests : IDisposable
{
    private readonly string _directory = TinyRandomModel.Write();

    public void Dispose()
    {
        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
            // a leftover temp folder is harmless
        }
    }

    /// <summary>Every 3rd token from 4: 31 tokens, so head top-k (10) is a strict subset and most ids are outside.</summary>
    private static int[] EveryThird() => Enumerable.Range(0, 31).Select(i => 4 + 3 * i).ToArray();

    [Theory]
    [InlineData(true, false, false)]
    [InlineData(false, false, false)]
    [InlineData(true, true, false)]
    [InlineData(true, true, true)]
    [InlineData(false, false, true)]
    public void PredictReturnsTheTopTokensOfTheShortlistAsTokenIds(bool sharedLmHead, bool nextToken, bool f16)
    {
        using var checkpoint = HuggingFaceCheckpoint.Open(_directory);
        var c = checkpoint.Config;
        var classifier = checkpoint.GetTensor(LlamaTensorNames.Classifier, c.VocabSize, c.Dim).ToFloatArray();
        var embedding = checkpoint.GetTensor(LlamaTensorNames.Embedding, c.VocabSize, c.Dim).ToFloatArray(); // untied: differs from the classifier
        var shortlist = EveryThird();
        var weights = MedusaHeadWeights.CreateRandom(c, heads: 3, layers: 1, seed: 11, scale: 0.3f, baseClassifier: sharedLmHead ? null : classifier, shortlist: shortlist,
            nextToken: nextToken);
        var random = new Random(2);
        foreach (var head in weights.Bias)
            foreach (var bias in head)
                for (int i = 0; i < bias.Length; i++) bias[i] = (float)(random.NextDouble() - 0.5);
        if (weights.LmHeads is { } own)
            foreach (var lm in own)
                for (int i = 0; i < lm.Length; i++) lm[i] += (float)(random.NextDouble() - 0.5); // own rows differ from the base ones
        if (f16)
        {
            // Heads stored as F16 (as trained heads are); the expected values use the same halves.
            static void Round(float[] values)
            {
                for (int i = 0; i < values.Length; i++) values[i] = (float)(Half)values[i];
            }
            foreach (var head in weights.Linear) foreach (var w in head) Round(w);
            foreach (var head in weights.Bias) foreach (var w in head) Round(w);
            if (weights.NextToken is { } projections) foreach (var w in projections) Round(w);
            if (weights.LmHeads is { } lm) foreach (var w in lm) Round(w);
        }
        var path = Path.Combine(_directory, "heads.safetensors");
        MedusaHeadsCheckpoint.Write(path, weights, ModelSignature.Of(checkpoint), storeAs: f16 ? DType.F16 : DType.F32);

        using var backend = new HostBackend(2);
        using var model = LlamaModel.Load(checkpoint, backend, DType.F32);
        using var file = MedusaHeadsCheckpoint.Open(path);
        Assert.Equal(shortlist, file.Shortlist);
        Assert.Equal(nextToken, file.HasNextTokenInput);
        using (var narrow = MedusaHeads.Load(file, model, checkpoint))
            // The host's default for an F32 model: BF16 where 512-bit vectors run (proposals only), else the model's type.
            Assert.Equal(System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated ? DType.BF16 : DType.F32, narrow.MatrixType);
        // F32 matrices: the same values as the file's, so the proposals can be checked against double precision.
        using var heads = MedusaHeads.Load(file, model, checkpoint, DType.F32);
        Assert.Equal(shortlist, heads.Shortlist);
        Assert.Equal(nextToken, heads.HasNextTokenInput);
        Assert.Equal(DType.F32, heads.MatrixType); // an F16 file's values widened to F32
        var h = Enumerable.Range(0, c.Dim).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        using var hidden = backend.Allocate(DType.F32, 1, c.Dim);
        backend.Upload(hidden, h);
        var predicted = heads.Predict(hidden).ToArray();
        Assert.Equal(predicted.Take(2 * MedusaHeads.TopK), heads.Predict(hidden, 2).ToArray()); // a shallow tree's heads only
        Assert.Throws<ArgumentOutOfRangeException>(() => heads.Predict(hidden, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => heads.Predict(hidden, 4));

        int d = c.Dim;
        // The next token: the argmax over the shortlisted rows of the base classifier at h.
        int nextId = shortlist.MaxBy(token => Enumerable.Range(0, d).Sum(i => (double)classifier[token * d + i] * h[i]));
        void Check(int[] predicted, int nextId)
        {
            for (int head = 0; head < 3; head++)
            {
                // z₀ = h (+ P e(next)); z = z₀ + SiLU(W z₀ + b); logits over the shortlist = U z with U the base rows (shared) or the head's own
                var z0 = h.Select(x => (double)x).ToArray();
                if (nextToken)
                    for (int o = 0; o < d; o++)
                        for (int i = 0; i < d; i++) z0[o] += weights.NextToken![head][o * d + i] * embedding[nextId * d + i];
                var z = new double[d];
                for (int o = 0; o < d; o++)
                {
                    double a = weights.Bias[head][0][o];
                    for (int i = 0; i < d; i++) a += weights.Linear[head][0][o * d + i] * z0[i];
                    z[o] = z0[o] + a / (1 + Math.Exp(-a));
                }
                var logits = shortlist.Select((token, column) =>
                {
                    double sum = 0;
                    for (int i = 0; i < d; i++) sum += (weights.LmHeads?[head][column * d + i] ?? classifier[token * d + i]) * z[i];
                    return (Token: token, Logit: sum);
                }).OrderByDescending(x => x.Logit).ToArray();
                var expected = logits.Take(MedusaHeads.TopK).Select(x => x.Token).ToArray();
                var actual = predicted.AsSpan(head * MedusaHeads.TopK, MedusaHeads.TopK).ToArray();
                Assert.All(actual, token => Assert.Contains(token, shortlist));
                Assert.Equal(expected, actual);
            }
        }
        Check(predicted, nextId);
        // The next token given (the decoder passes its pending token): that token's embedding, in the shortlist or not.
        Check(heads.Predict(hidden, 3, nextToken: nextId).ToArray(), nextId);
        int other = shortlist.First(t => t != nextId);
        Check(heads.Predict(hidden, 3, nextToken: other).ToArray(), other);
        int outside = 5; // EveryThird() holds 4, 7, 10, ...
        Assert.DoesNotContain(outside, shortlist);
        Check(heads.Predict(hidden, 3, nextToken: outside).ToArray(), outside);
        Assert.Throws<ArgumentOutOfRangeException>(() => heads.Predict(hidden, 3, nextToken: c.VocabSize));
        Assert.Throws<ArgumentOutOfRangeException>(() => heads.Predict(hidden, 3, nextToken: -2));
    }

    [Fact]
    public void SharedShortlistHeadsNeedTheModelsOwnCheckpoint()
    {
        using var checkpoint = HuggingFaceCheckpoint.Open(_directory);
        var path = Path.Combine(_directory, "heads.safetensors");
        MedusaHeadsCheckpoint.Write(path, MedusaHeadWeights.CreateRandom(checkpoint.Config, 2, 1, seed: 1, shortlist: EveryThird()), ModelSignature.Of(checkpoint));
        using var backend = new HostBackend(1);
        using var model = LlamaModel.Load(checkpoint, backend, DType.F32);
        using var file = MedusaHeadsCheckpoint.Open(path);
        var missing = Assert.Throws<ArgumentException>(() => MedusaHeads.Load(file, model));
        Assert.Contains(path, missing.Message);
        Assert.Contains("pass the model's checkpoint", missing.Message);

        var otherDirectory = TinyRandomModel.Write(seed: 6);
        try
        {
            using var other = HuggingFaceCheckpoint.Open(otherDirectory);
            var wrong = Assert.Throws<ArgumentException>(() => MedusaHeads.Load(file, model, other));
            Assert.Contains("is not the checkpoint the model was loaded from", wrong.Message);
        }
        finally
        {
            Directory.Delete(otherDirectory, recursive: true);
        }
    }

    [Theory]
    [InlineData(false, false, false)]
    [InlineData(true, false, false)]
    [InlineData(true, true, false)]
    [InlineData(true, false, true)]
    public void TrainedShortlistHeadsAreAcceptedAndGreedyMedusaEqualsGreedyDecoding(bool nextToken, bool context, bool previousToken)
    {
        using var checkpoint = HuggingFaceCheckpoint.Open(_directory);
        var c = checkpoint.Config;
        using var backend = new HostBackend(2);
        using var model = LlamaModel.Load(checkpoint, backend, DType.F32);

        // Greedy-path training text: the greedy continuations of 48 random prompts.
        var random = new Random(3);
        int[][] Prompts(int count) => Enumerable.Range(0, count)
            .Select(_ => new[] { c.BosTokenId }.Concat(Enumerable.Range(0, 4).Select(_ => random.Next(3, c.VocabSize))).ToArray()).ToArray();
        var training = SelfDistillation.ContinueGreedily(model, Prompts(48), maxNewTokens: 100, streams: 16, lastLayerKv: context);
        Assert.All(training, s => Assert.All(s.Greedy!.Skip(5), Assert.True)); // everything after the prompt is the argmax
        var heldOut = SelfDistillation.ContinueGreedily(model, Prompts(8), maxNewTokens: 100, streams: 8, lastLayerKv: context);
        var corpus = TrainingCorpus.Build(training, heads: 4, c.Dim, "tiny greedy text");
        var heldOutCorpus = TrainingCorpus.Build(heldOut, heads: 4, c.Dim, "tiny held-out text");
        var classifier = checkpoint.GetTensor(LlamaTensorNames.Classifier, c.VocabSize, c.Dim).ToFloatArray();
        var shortlist = HeadTrainer.ChooseShortlist(corpus.TargetFrequencies(c.VocabSize), 48)!;
        Assert.Equal(48, shortlist.Length);
        var embedding = checkpoint.GetTensor(LlamaTensorNames.Embedding, c.VocabSize, c.Dim).ToFloatArray();
        var options = new HeadTrainingOptions
        {
            Heads = 4, Steps = 300, BatchSize = 64, LearningRate = 0.01f, Threads = 2, NextTokenInput = nextToken, ContextAttention = context, PreviousTokenInput = previousToken,
        };
        var trained = HeadTrainer.Train(corpus, heldOutCorpus, classifier, c, options, shortlist, embedding);
        Assert.True(trained.After[0].Loss < trained.Before[0].Loss - 0.5, $"head 0's held-out loss {trained.Before[0].Loss:0.00} -> {trained.After[0].Loss:0.00}");
        Assert.Equal(shortlist, trained.Weights.Shortlist);
        // A chain of the heads' best guesses gains head 0's hits at least, and at most every head's.
        double first = trained.After[0].Top1Accuracy, all = trained.After.Sum(s => (double)s.Top1 / trained.After[0].Count);
        Assert.InRange(trained.ChainTokensPerStep - 1, first - 1e-9, all + 1e-9);
        Assert.True(trained.ChainTokensPerStep > 1 + first, $"chain {trained.ChainTokensPerStep:0.000}: head 1 never extended head 0's hits (top-1 {first:P1})");

        if (nextToken && !context && !previousToken)
        {
            // Two heads trained from a corpus that holds targets for four: the same as from a corpus of two.
            var two = options with { Heads = 2, Steps = 50 };
            var fromFour = HeadTrainer.Train(corpus, heldOutCorpus, classifier, c, two, shortlist, embedding);
            var fromTwo = HeadTrainer.Train(TrainingCorpus.Build(training, heads: 2, c.Dim, "tiny greedy text"), TrainingCorpus.Build(heldOut, heads: 2, c.Dim, "tiny held-out text"),
                classifier, c, two, shortlist, embedding);
            Assert.Equal(2, fromFour.After.Count);
            for (int h = 0; h < 2; h++) Assert.Equal(fromTwo.After[h].Loss, fromFour.After[h].Loss, 6);
            Assert.Equal(fromTwo.ChainTokensPerStep, fromFour.ChainTokensPerStep, 9);
        }
        if (previousToken)
        {
            // Head 1 knows the token its target follows, and does better than without that input.
            var plain = HeadTrainer.Train(corpus, heldOutCorpus, classifier, c, options with { PreviousTokenInput = false }, shortlist, embedding);
            Assert.Equal(plain.After[0].Loss, trained.After[0].Loss, 4); // head 0 is the same head
            Assert.True(trained.After[1].Loss < plain.After[1].Loss - 0.1, $"head 1's held-out loss: {plain.After[1].Loss:0.000} without, {trained.After[1].Loss:0.000} with the previous token");
            Assert.True(trained.ChainTokensPerStep > plain.ChainTokensPerStep, $"chain {plain.ChainTokensPerStep:0.000} without, {trained.ChainTokensPerStep:0.000} with");
        }

        var path = Path.Combine(_directory, "trained.safetensors");
        MedusaHeadsCheckpoint.Write(path, trained.Weights, model.Signature, storeAs: DType.F16);
        using var file = MedusaHeadsCheckpoint.Open(path);
        using var heads = MedusaHeads.Load(file, model, checkpoint);
        Assert.Equal(nextToken, heads.HasNextTokenInput);
        Assert.Equal(context, heads.HasContextAttention);
        Assert.Equal(previousToken, heads.HasPreviousTokenInput);
        if (previousToken)
        {
            // Head i's guesses at run time assume head i − 1's first guess: the trainer's own forward, given that token,
            // ranks each head's first run-time guess first (float32 on both sides).
            var exact = Path.Combine(_directory, "trained-f32.safetensors");
            MedusaHeadsCheckpoint.Write(exact, trained.Weights, model.Signature, storeAs: DType.F32);
            using var exactFile = MedusaHeadsCheckpoint.Open(exact);
            using var exactHeads = MedusaHeads.Load(exactFile, model, checkpoint, DType.F32);
            var reference = new TrainableHeads(trained.Weights, classifier, threads: 2, embedding);
            using var row = backend.Allocate(DType.F32, 1, c.Dim);
            int checkedGuesses = 0;
            for (int p = 0; p < heldOutCorpus.Positions; p += heldOutCorpus.Positions / 8)
            {
                var h = heldOutCorpus.Hidden.AsSpan(p * c.Dim, c.Dim).ToArray();
                int x = heldOutCorpus.Next[p];
                backend.Upload(row, h);
                var top = exactHeads.Predict(row, 4, x).ToArray();
                for (int i = 1; i < 4; i++)
                {
                    reference.Evaluate(i, h, [x], [top[i * MedusaHeads.TopK]], null, [top[(i - 1) * MedusaHeads.TopK]]);
                    Assert.Equal(0, reference.LastRanks[0]);
                    checkedGuesses++;
                }
            }
            Assert.True(checkedGuesses >= 24);
        }
        using var pool = KvBlockPool.FromBudget(backend, c.Layers, c.KvHeads, c.HeadDim, 16, 2L * 160 * 2 * c.Layers * c.KvDim * sizeof(float));
        using var workspace = new ForwardWorkspace(backend, c, 64, 64);
        double accepted = 0;
        foreach (var treeName in new[] { "chain-3", "tree-8", "mc_sim_7b_63", "dynamic-6", "dynamic-8-25" })
        {
            using var compiled = CompiledTrees.Resolve(backend, treeName, heads.HeadCount);
            foreach (var prompt in Prompts(4))
            {
                const int Count = 60;
                List<int> plain = [];
                using (var sequence = pool.CreateSequence(c.MaxSequenceLength))
                {
                    var runner = new SingleSequenceRunner(model, workspace, new AutoregressiveDecoder(model, sequence, new Sampler(Sampling.Greedy, 1), prompt));
                    while (plain.Count < Count) runner.Advance(plain);
                }
                var stats = new MedusaStats(heads.HeadCount);
                List<int> medusa = [];
                using (var sequence = pool.CreateSequence(c.MaxSequenceLength))
                {
                    var decoder = new MedusaDecoder(model, sequence, new Sampler(Sampling.Greedy, 1), prompt, null, heads, compiled.Tree, compiled.Mask, Acceptance.Greedy, stats);
                    var runner = new SingleSequenceRunner(model, workspace, decoder);
                    while (medusa.Count < Count) runner.Advance(medusa);
                    decoder.Release();
                }
                Assert.Equal(plain.Take(Count), medusa.Take(Count));
                accepted = Math.Max(accepted, stats.MeanAccepted);
            }
        }
        Assert.Equal(pool.BlockCount, pool.FreeBlocks);
        // Only heads whose shortlist columns map back to the right token ids get anything accepted.
        Assert.True(accepted > 1.5, $"best mean accepted tokens per step {accepted:0.00}");
    }
}
