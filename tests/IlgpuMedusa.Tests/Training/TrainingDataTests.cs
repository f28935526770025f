using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Medusa.Training;
using IlgpuMedusa.Models;
using IlgpuMedusa.Tokenization;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Tests.Training;

/// <summary>The demo model on the host backend, loaded once for the data tests.</summary>
public sealed class HostStoriesFixture : IDisposable
{
    public HostStoriesFixture()
    {
        Checkpoint = ModelDirectory.OpenCheckpoint(TestModels.Stories15MDirectory);
        Tokenizer = ModelDirectory.OpenTokenizer(TestModels.Stories15MDirectory);
        Backend = new HostBackend(2);
        Model = LlamaModel.Load(Checkpoint, Backend, DType.F32);
    }

    public ICheckpoint Checkpoint { get; }
    public ITextTokenizer Tokenizer { get; }
    public HostBackend Backend { get; }
    public LlamaModel Model { get; }

    public void Dispose()
    {
        Model.Dispose();
        Backend.Dispose();
        Checkpoint.Dispose();
    }
}

/// <summary>Training positions and their targets; self-distillation and text-file data.</summary>
public class TrainingDataTests(HostStoriesFixture fixture) : IClassFixture<HostStoriesFixture>
{
    [Fact]
    public void CorpusTargetsAreTheTokensTwoAndMoreAhead()
    {
        const int D = 2;
        // tokens 10..15, hidden row t = [t, −t]
        var sequence = new HiddenSequence([10, 11, 12, 13, 14, 15], [0, 0, 1, -1, 2, -2, 3, -3, 4, -4]);
        var corpus = TrainingCorpus.Build([sequence, new HiddenSequence([20, 21, 22], [0, 0, 5, -5, 6, -6])], heads: 3, D, "test");
        // Sequence 1: positions 0..3 (t + 2 < 6); sequence 2: position 0 only (its hidden states beyond count nothing).
        Assert.Equal(5, corpus.Positions);
        Assert.Equal(2, corpus.Sequences);
        Assert.Equal(9, corpus.Tokens);
        Assert.Equal([12, 13, 14, 13, 14, 15, 14, 15, -1, 15, -1, -1, 22, -1, -1], corpus.Targets);
        Assert.Equal([0f, 0, 1, -1, 2, -2, 3, -3, 0, 0], corpus.Hidden);
        Assert.Equal(5, corpus.TargetCount(0));
        Assert.Equal(3, corpus.TargetCount(1));
        Assert.Equal(2, corpus.TargetCount(2));
    }

    [Fact]
    public void GreedyPathCorpusKeepsOnlyTargetsWhosePathIsGreedy()
    {
        const int D = 1;
        // tokens 10..17; x_3 and x_7 were sampled (not the argmax)
        bool[] greedy = [false, true, true, false, true, true, true, false];
        var sequence = new HiddenSequence([10, 11, 12, 13, 14, 15, 16, 17], [0, 1, 2, 3, 4, 5, 6], greedy);
        var corpus = TrainingCorpus.Build([sequence], heads: 3, D, "test");
        // Position t keeps head i's target x_{t+2+i} only when x_{t+1} .. x_{t+2+i} are all greedy. Positions without a
        // head-0 target are dropped: t = 1 and t = 2 (x_3 sampled) and t = 5 (x_7 sampled).
        Assert.Equal([0f, 3, 4], corpus.Hidden);
        Assert.Equal(
            [12, -1, -1,    // t = 0: x_2, then x_3 is sampled
             15, 16, -1,    // t = 3: x_5, x_6, then x_7 is sampled
             16, -1, -1],   // t = 4: x_6
            corpus.Targets);
        Assert.Equal(3, corpus.Positions);
        Assert.Equal(1, corpus.TargetCount(1));
    }

    [Fact]
    public void ShortlistTakesTheMostFrequentTargetsSortedById()
    {
        long[] frequencies = [0, 5, 9, 0, 5, 1, 7, 0];
        Assert.Equal([1, 2, 6], HeadTrainer.ChooseShortlist(frequencies, 3)!);
        Assert.Equal([1, 2, 4, 6], HeadTrainer.ChooseShortlist(frequencies, 4)!); // 1 and 4 tie: both fit
        Assert.Equal([0, 1, 2, 4, 5, 6], HeadTrainer.ChooseShortlist(frequencies, 6)!); // unseen tokens fill up, lowest id first
        Assert.Null(HeadTrainer.ChooseShortlist(frequencies, 0));
        Assert.Null(HeadTrainer.ChooseShortlist(frequencies, 8)); // the whole vocabulary
    }

    [Fact]
    public void TooShortTextNamesTheSourceAndTheNeededLength()
    {
        var e = Assert.Throws<InvalidDataException>(() => TrainingCorpus.Build([new HiddenSequence([1, 5, 6, 7], new float[8])], heads: 4, 2, "tiny.txt"));
        Assert.Contains("tiny.txt", e.Message);
        Assert.Contains("more than 5 tokens", e.Message);
    }

    [Fact]
    public void SelfDistillationKeepsTheHiddenStatesAPrefillWouldGive()
    {
        var sequences = SelfDistillation.Generate(fixture.Model, fixture.Tokenizer, tokens: 600, temperature: 0.8f, streams: 4, seed: 5);
        Assert.InRange(sequences.Sum(s => s.Tokens.Length), 590, 600);
        Assert.All(sequences, s => Assert.Equal(fixture.Tokenizer.BosId, s.Tokens[0]));
        int d = fixture.Model.Config.Dim;
        var prefilled = TextFileData.Prefill(fixture.Model, sequences.Select(s => s.Tokens).ToArray());
        for (int i = 0; i < sequences.Count; i++)
        {
            var decoded = sequences[i].Hidden;
            Assert.True(decoded.Length >= (sequences[i].Tokens.Length - 1) * d, "every token but the last was fed");
            for (int j = 0; j < decoded.Length; j++)
                Assert.True(Math.Abs(decoded[j] - prefilled[i].Hidden[j]) < 2e-3f * (1 + Math.Abs(decoded[j])),
                    $"sequence {i} position {j / d} element {j % d}: batched decoding {decoded[j]} vs prefill {prefilled[i].Hidden[j]}");
        }
        // Same seed, same text.
        var again = SelfDistillation.Generate(fixture.Model, fixture.Tokenizer, tokens: 600, temperature: 0.8f, streams: 4, seed: 5);
        Assert.Equal(sequences.Select(s => s.Tokens), again.Select(s => s.Tokens));
    }

    [Fact]
    public void GreedyPathTextMarksEachTokenThatIsTheModelsArgmax()
    {
        var policy = new DistillationPolicy { PrefixTokens = 3, Explore = 0.1f };
        var sequences = SelfDistillation.Generate(fixture.Model, fixture.Tokenizer, tokens: 600, policy, streams: 4, seed: 9);
        Assert.InRange(sequences.Sum(s => s.Tokens.Length), 560, 600);
        var c = fixture.Model.Config;
        var classifier = fixture.Checkpoint.GetTensor(LlamaTensorNames.Embedding, c.VocabSize, c.Dim).ToFloatArray(); // tied in stories15M
        int greedyTokens = 0, sampledTokens = 0;
        foreach (var s in sequences)
        {
            Assert.NotNull(s.Greedy);
            Assert.Equal(s.Tokens.Length, s.Greedy!.Length);
            for (int j = 1; j < s.Tokens.Length && j - 1 < s.Hidden.Length / c.Dim; j++)
            {
                // logits of x_j = E · h_{j−1}; the flag says whether x_j is their argmax (within rounding of the batched forward)
                var h = s.Hidden.AsSpan((j - 1) * c.Dim, c.Dim);
                float best = float.NegativeInfinity, mine = 0;
                for (int v = 0; v < c.VocabSize; v++)
                {
                    float logit = System.Numerics.Tensors.TensorPrimitives.Dot(classifier.AsSpan(v * c.Dim, c.Dim), h);
                    if (v == s.Tokens[j]) mine = logit;
                    else best = Math.Max(best, logit);
                }
                if (s.Greedy[j]) Assert.True(mine >= best - 1e-3f, $"token {j} is marked greedy but another token scores {best} > {mine}");
                else Assert.True(best >= mine - 1e-3f, $"token {j} is marked sampled but it is the clear argmax ({mine} > {best})");
                if (s.Greedy[j]) greedyTokens++;
                else sampledTokens++;
            }
        }
        // Openings, up to 3 sampled tokens each and 10% exploration: most tokens are greedy, but not all.
        Assert.True(greedyTokens > 3 * sampledTokens, $"{greedyTokens} greedy vs {sampledTokens} other tokens");
        Assert.True(sampledTokens > 0);
        var again = SelfDistillation.Generate(fixture.Model, fixture.Tokenizer, tokens: 600, policy, streams: 4, seed: 9);
        Assert.Equal(sequences.Select(s => s.Tokens), again.Select(s => s.Tokens));
        Assert.Equal(sequences.Select(s => s.Greedy), again.Select(s => s.Greedy));
    }

    [Fact]
    public void TextFileIsCutIntoContextChunksStartingWithBos()
    {
        var dir = TestModels.TempDirectory("text-data");
        var path = Path.Combine(dir, "data.txt");
        var story = string.Join(' ', Enumerable.Repeat("The little cat sat on the warm mat and looked at the birds.", 40));
        File.WriteAllText(path, story + "\n\nA short one.\n");
        var chunks = TextFileData.Chunks(path, fixture.Tokenizer, context: 256, maxTokens: null);
        Assert.True(chunks.Count >= 3);
        Assert.All(chunks, c => Assert.Equal(fixture.Tokenizer.BosId, c[0]));
        Assert.All(chunks, c => Assert.True(c.Length <= 256));
        Assert.Equal("A short one.", fixture.Tokenizer.Decode(chunks[^1]));
        var capped = TextFileData.Chunks(path, fixture.Tokenizer, context: 256, maxTokens: 300);
        Assert.Equal(300, capped.Sum(c => c.Length));
    }

    /// <summary>
    /// A tokenizer that puts no BOS first (Qwen's) starts each chunk with the config's document start token instead of
    /// its BOS stand-in (its EOS); one with BOS keeps BOS whatever the config says.
    /// </summary>
    [Fact]
    public void ChunksOfATokenizerWithoutBosStartWithTheDocumentStartToken()
    {
        var spec = IlgpuMedusa.Tests.Tokenization.TokenizerJsonTests.Spec();
        spec["post_processor"] = null;
        var noBos = ByteLevelBpeTokenizer.Load(IlgpuMedusa.Tests.Tokenization.TokenizerJsonTests.Write(spec));
        Assert.False(noBos.AddsBos);
        var path = Path.Combine(TestModels.TempDirectory("text-data"), "data.txt");
        File.WriteAllText(path, "hello world\n\nhello again");
        var chunks = TextFileData.Chunks(path, noBos, context: 64, maxTokens: null, documentStart: 7);
        Assert.Equal(2, chunks.Count);
        Assert.All(chunks, c => Assert.Equal(7, c[0]));
        Assert.Equal("hello world", noBos.Decode(chunks[0].Skip(1).ToArray()));
        Assert.All(TextFileData.Chunks(path, noBos, context: 64, maxTokens: null), c => Assert.Equal(noBos.BosId, c[0]));
        Assert.All(TextFileData.Chunks(path, fixture.Tokenizer, context: 64, maxTokens: null, documentStart: 7), c => Assert.Equal(fixture.Tokenizer.BosId, c[0]));
    }

    [Fact]
    public void EmptyOrMissingTextFileIsRefusedByName()
    {
        var dir = TestModels.TempDirectory("text-data");
        var empty = Path.Combine(dir, "empty.txt");
        File.WriteAllText(empty, " \n\n ");
        var e = Assert.Throws<InvalidDataException>(() => TextFileData.CheckReadable(empty));
        Assert.Contains(empty, e.Message);
        Assert.Contains("empty", e.Message);
        var missing = Path.Combine(dir, "missing.txt");
        var f = Assert.Throws<FileNotFoundException>(() => TextFileData.CheckReadable(missing));
        Assert.Contains(missing, f.Message);
    }
}
