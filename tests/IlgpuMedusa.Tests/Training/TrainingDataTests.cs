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
