using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using IlgpuMedusa.Models;
using IlgpuMedusa.Tests.Cli;

namespace IlgpuMedusa.Tests.Training;

/// <summary>The train-heads command end to end on tiny data, and its refusals of bad input.</summary>
public class TrainHeadsCommandTests
{
    [Fact]
    public void TrainsForAFewStepsTheHeldOutLossFallsAndTheFileRecordsTheRun()
    {
        var dir = TestModels.TempDirectory("train-heads");
        var output = Path.Combine(dir, "heads.safetensors");
        var result = CliRunner.Run("train-heads", "--model", TestModels.Stories15MDirectory, "--out", output,
            "--tokens", "1500", "--eval-tokens", "600", "--steps", "25", "--batch", "64", "--learning-rate", "0.005", "--seed", "3");
        Assert.True(result.ExitCode == 0, result.StandardError);
        Assert.Contains("training:", result.StandardError); // progress on stderr

        // "   0  t+2        1.0 % -> 12.0 %   9.0 % -> 30.0 %  12.20 ->  7.10"
        var rows = result.StandardOutput.Split('\n').Where(l => l.TrimStart().Length > 0 && char.IsDigit(l.TrimStart()[0]) && l.Contains("t+", StringComparison.Ordinal)).ToArray();
        Assert.Equal(4, rows.Length);
        foreach (var row in rows)
        {
            var loss = row[(row.LastIndexOf('%') + 1)..].Split("->", StringSplitOptions.TrimEntries);
            double before = double.Parse(loss[0], CultureInfo.InvariantCulture), after = double.Parse(loss[1], CultureInfo.InvariantCulture);
            Assert.True(after < before - 0.5, $"held-out loss did not fall: {row}");
        }

        Assert.Contains("shortlist: the heads score the 2048 most frequent target tokens", result.StandardOutput);
        Assert.Contains("positions of greedy-path text", result.StandardOutput);

        using var heads = MedusaHeadsCheckpoint.Open(output);
        Assert.Equal(4, heads.HeadCount);
        Assert.Equal(2, heads.LayerCount);
        Assert.True(heads.SharedLmHead);
        Assert.True(heads.HasNextTokenInput);
        Assert.Equal(2048, heads.Shortlist!.Length); // the default shortlist, sorted ids (checked on open)
        Assert.Equal(DType.F16, heads.Linear(0, 0).Type);
        Assert.Contains("train-heads", heads.Metadata["training_command"]);
        Assert.StartsWith("self-distillation, greedy path", heads.Metadata["training_data"]);
        Assert.StartsWith("greedy path, seed 7922", heads.Metadata["heldout_text"]);
        Assert.Equal("25", heads.Metadata["training_steps"]);
        Assert.Equal(4, JsonSerializer.Deserialize<double[]>(heads.Metadata["heldout_top1"])!.Length);
        Assert.Equal(4, JsonSerializer.Deserialize<double[]>(heads.Metadata["heldout_top5"])!.Length);
        Assert.True(long.Parse(heads.Metadata["training_tokens"], CultureInfo.InvariantCulture) >= 1400);
        Assert.True(double.Parse(heads.Metadata["training_seconds"], CultureInfo.InvariantCulture) > 0);
        using var checkpoint = ModelDirectory.OpenCheckpoint(TestModels.Stories15MDirectory);
        Assert.True(heads.BaseModel!.Matches(ModelSignature.Of(checkpoint)));
    }

    [Fact]
    public void OwnLmHeadsWriteTheReleasedLayout()
    {
        var dir = TestModels.TempDirectory("train-heads");
        var output = Path.Combine(dir, "released.safetensors");
        var result = CliRunner.Run("train-heads", "--model", TestModels.Stories15MDirectory, "--out", output, "--heads", "2", "--shared-lm-head", "false",
            "--tokens", "600", "--eval-tokens", "300", "--steps", "2", "--batch", "32");
        Assert.True(result.ExitCode == 0, result.StandardError);
        using var heads = MedusaHeadsCheckpoint.Open(output);
        Assert.Equal(2, heads.HeadCount);
        Assert.False(heads.SharedLmHead);
        Assert.Equal([32000, 288], heads.LmHead(1).Shape);
    }

    [Fact]
    public void SampledTextAndOwnLmHeadsOverAShortlist()
    {
        var dir = TestModels.TempDirectory("train-heads");
        var output = Path.Combine(dir, "own-shortlist.safetensors");
        var result = CliRunner.Run("train-heads", "--model", TestModels.Stories15MDirectory, "--out", output, "--heads", "2", "--shared-lm-head", "false",
            "--shortlist", "64", "--distill", "sampled", "--tokens", "600", "--eval-tokens", "300", "--steps", "2", "--batch", "32");
        Assert.True(result.ExitCode == 0, result.StandardError);
        Assert.Contains("data: self-distillation, temperature 0.8", result.StandardOutput);
        using var heads = MedusaHeadsCheckpoint.Open(output);
        Assert.False(heads.SharedLmHead);
        Assert.Equal(64, heads.Shortlist!.Length);
        Assert.Equal([64, 288], heads.LmHead(1).Shape);
    }

    [Theory]
    [InlineData("--shortlist", "5", "--shortlist must be 0 or at least 10")]
    [InlineData("--distill", "beam", "--distill: unknown text 'beam'; expected greedy or sampled.")]
    [InlineData("--explore", "1.5", "--explore must be in [0, 1).")]
    [InlineData("--prefix-tokens", "65", "--prefix-tokens must be between 0 and 64.")]
    [InlineData("--soft-labels", "1.5", "--soft-labels must be between 0 and 1.")]
    [InlineData("--epochs", "1000000000", "--epochs must be between 1 and 100000.")]
    public void BadDataAndShortlistOptionsAreNamed(string option, string value, string message)
    {
        var dir = TestModels.TempDirectory("train-heads");
        var result = CliRunner.Run("train-heads", "--model", TestModels.Stories15MDirectory, "--out", Path.Combine(dir, "h.safetensors"), option, value);
        Assert.Equal(1, result.ExitCode);
        Assert.StartsWith("error: " + message, result.StandardError.Trim());
    }

    [Fact]
    public void ContextAttentionWithoutTheNextTokenInputIsRefused()
    {
        var dir = TestModels.TempDirectory("train-heads");
        var result = CliRunner.Run("train-heads", "--model", TestModels.Stories15MDirectory, "--out", Path.Combine(dir, "h.safetensors"),
            "--context-attention", "true", "--next-token", "false");
        Assert.Equal(1, result.ExitCode);
        Assert.StartsWith("error: --context-attention needs the next-token input", result.StandardError.Trim());
    }

    /// <summary>
    /// Context-attention heads with soft labels: a few steps on the demo model, the file records both, and greedy
    /// generation with them (the heads attend to the sequence's last-layer cache every step) equals generation without heads.
    /// </summary>
    [Fact]
    public void ContextAttentionHeadsWithSoftLabelsTrainAndDecode()
    {
        var dir = TestModels.TempDirectory("train-heads");
        var output = Path.Combine(dir, "context.safetensors");
        var result = CliRunner.Run("train-heads", "--model", TestModels.Stories15MDirectory, "--out", output, "--context-attention", "true",
            "--soft-labels", "0.5", "--tokens", "1500", "--eval-tokens", "600", "--steps", "25", "--batch", "64", "--seed", "3");
        Assert.True(result.ExitCode == 0, result.StandardError);
        using (var heads = MedusaHeadsCheckpoint.Open(output))
        {
            Assert.True(heads.HasContextAttention);
            Assert.Equal([288, 288], heads.ContextQuery(3).Shape);
            Assert.Equal("true", heads.Metadata["context_attention"]);
            Assert.Equal("0.5", heads.Metadata["training_soft_labels"]);
        }
        string[] common = ["generate", "--model", TestModels.Stories15MDirectory, "--device", "host", "--prompt", "Once upon a time", "--max-tokens", "40"];
        var plain = CliRunner.Run([.. common, "--heads", "none"]);
        var medusa = CliRunner.Run([.. common, "--heads", output]);
        Assert.True(plain.ExitCode == 0, plain.StandardError);
        Assert.True(medusa.ExitCode == 0, medusa.StandardError);
        Assert.Equal(plain.StandardOutput, medusa.StandardOutput);
    }

    [Fact]
    public void GrowTreesWritesTreesTheDecoderAccepts()
    {
        var dir = TestModels.TempDirectory("grow-trees");
        DemoModel.InstallShippedHeads(dir);
        var heads = Path.Combine(dir, MedusaHeadsCheckpoint.ReleasedFileName);
        var trees = Path.Combine(dir, "trees");
        var result = CliRunner.Run("train-heads", "grow-trees", "--model", TestModels.Stories15MDirectory, "--heads", heads, "--out", trees,
            "--sizes", "4,7", "--tokens", "3000");
        Assert.True(result.ExitCode == 0, result.StandardError);
        Assert.Contains("mc_sim_7b_63", result.StandardOutput);
        foreach (int n in new[] { 4, 7 })
        {
            var tree = IlgpuMedusa.Medusa.TreeTopology.Resolve(Path.Combine(trees, $"small-{n}.json"), 4);
            Assert.Equal(n, tree.NodeCount);
            Assert.Equal([0], tree.Choices[0]); // head 0's best guess is always the most accepted node
        }
        // expected tokens per step: 1 plus the acceptance of each node, so more than 1 for useful heads
        var line = result.StandardOutput.Split('\n').Single(l => l.StartsWith("small-7 ", StringComparison.Ordinal));
        double expected = double.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[2], CultureInfo.InvariantCulture);
        Assert.InRange(expected, 1.2, 5.0);

        var refused = CliRunner.Run("train-heads", "grow-trees", "--model", TestModels.Stories15MDirectory, "--heads", heads, "--out", trees,
            "--prompts", Path.Combine(TestModels.RepositoryRoot, "prompts", "stories-20.txt"));
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("never on the prompts they are evaluated on", refused.StandardError);
    }

    [Fact]
    public void UnwritableOutputFailsBeforeAnyWork()
    {
        var dir = TestModels.TempDirectory("train-heads");
        var blocker = Path.Combine(dir, "a-file");
        File.WriteAllText(blocker, "");
        var output = Path.Combine(blocker, "heads.safetensors"); // a directory that cannot exist
        var clock = Stopwatch.StartNew();
        var result = CliRunner.Run("train-heads", "--model", TestModels.Stories15MDirectory, "--out", output);
        Assert.Equal(1, result.ExitCode);
        Assert.StartsWith("error: --out: cannot write the heads file", result.StandardError.Trim());
        Assert.Contains(output, result.StandardError);
        Assert.DoesNotContain("generating", result.StandardError);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), "the check must come before the data generation");
    }

    [Fact]
    public void OutputOverTheModelOrTheTrainingTextIsRefused()
    {
        var model = TestModels.TempDirectory("train-heads-model");
        foreach (var file in new[] { "stories15M.bin", "tokenizer.bin" }) File.Copy(Path.Combine(TestModels.Stories15MDirectory, file), Path.Combine(model, file));
        var checkpoint = Path.Combine(model, "stories15M.bin");
        long size = new FileInfo(checkpoint).Length;
        var result = CliRunner.Run("train-heads", "--model", model, "--out", checkpoint, "--steps", "1");
        Assert.Equal(1, result.ExitCode);
        Assert.StartsWith($"error: --out: '{checkpoint}' is a file of the model directory", result.StandardError.Trim());
        Assert.Equal(size, new FileInfo(checkpoint).Length);

        var data = Path.Combine(TestModels.TempDirectory("train-heads"), "story.txt");
        File.WriteAllText(data, "Once upon a time there was a cat.\n");
        var link = data + ".link";
        File.CreateSymbolicLink(link, data);
        result = CliRunner.Run("train-heads", "--model", model, "--out", link, "--data", data, "--steps", "1");
        Assert.Equal(1, result.ExitCode);
        Assert.StartsWith($"error: --out: '{link}' is the training text (--data)", result.StandardError.Trim());
        Assert.Equal("Once upon a time there was a cat.\n", File.ReadAllText(data));
    }

    [Fact]
    public void GrowTreesChecksItsOutputFolderBeforeMeasuring()
    {
        var file = Path.Combine(TestModels.TempDirectory("grow-trees"), "not-a-folder.json");
        File.WriteAllText(file, "[]");
        var clock = Stopwatch.StartNew();
        var result = CliRunner.Run("train-heads", "grow-trees", "--model", TestModels.Stories15MDirectory, "--heads", Path.Combine(TestModels.Stories15MDirectory, "medusa_lm_head.safetensors"), "--out", file, "--sizes", "4");
        Assert.Equal(1, result.ExitCode);
        Assert.StartsWith($"error: --out: '{file}' is a file", result.StandardError.Trim());
        Assert.DoesNotContain("measured on", result.StandardOutput);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), "the check must come before the measurement");
    }

    [Fact]
    public void MissingModelDirectoryIsNamed()
    {
        var dir = TestModels.TempDirectory("train-heads");
        var missing = Path.Combine(dir, "no-model-here");
        var result = CliRunner.Run("train-heads", "--model", missing, "--out", Path.Combine(dir, "heads.safetensors"));
        Assert.Equal(1, result.ExitCode);
        Assert.StartsWith("error: model directory", result.StandardError.Trim());
        Assert.Contains(missing, result.StandardError);
    }

    [Fact]
    public void EmptyOrTooShortDataFileIsNamed()
    {
        var dir = TestModels.TempDirectory("train-heads");
        var empty = Path.Combine(dir, "empty.txt");
        File.WriteAllText(empty, "\n");
        var result = CliRunner.Run("train-heads", "--model", TestModels.Stories15MDirectory, "--out", Path.Combine(dir, "h.safetensors"), "--data", empty);
        Assert.Equal(1, result.ExitCode);
        Assert.Equal($"error: --data: training text file '{empty}' is empty.", result.StandardError.Trim());

        var tiny = Path.Combine(dir, "tiny.txt");
        File.WriteAllText(tiny, "Hi.\n\nOk.");
        result = CliRunner.Run("train-heads", "--model", TestModels.Stories15MDirectory, "--out", Path.Combine(dir, "h.safetensors"), "--data", tiny,
            "--eval-tokens", "300");
        Assert.Equal(1, result.ExitCode);
        Assert.Contains(tiny, result.StandardError);
        Assert.Contains("too little text to train 4 heads", result.StandardError);
        Assert.DoesNotContain("generating held-out text", result.StandardError); // found before the held-out text is made
        Assert.False(File.Exists(Path.Combine(dir, "h.safetensors")));
    }

    [Fact]
    public void TrainsFromATextFile()
    {
        var dir = TestModels.TempDirectory("train-heads");
        var data = Path.Combine(dir, "stories.txt");
        File.WriteAllText(data, string.Join("\n\n", Enumerable.Range(0, 12).Select(i =>
            $"Once upon a time, there was a little dog named Spot number {i}. Spot liked to run in the park with his friend Tim. One day, they found a big red ball.")));
        var output = Path.Combine(dir, "heads.safetensors");
        var result = CliRunner.Run("train-heads", "--model", TestModels.Stories15MDirectory, "--out", output, "--data", data,
            "--eval-tokens", "300", "--epochs", "1", "--batch", "64");
        Assert.True(result.ExitCode == 0, result.StandardError);
        Assert.Contains("data: file stories.txt, 12 sequences", result.StandardOutput);
        using var heads = MedusaHeadsCheckpoint.Open(output);
        Assert.Contains("stories.txt", heads.Metadata["training_data"]);
    }
}
