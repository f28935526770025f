using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Models;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Tokenization;
using IlgpuMedusa.Transformer;
using Xunit.Abstractions;

namespace IlgpuMedusa.Tests.Models;

/// <summary>
/// The key proof that both loaders agree on one convention: stories15M read from llama2.c's interleaved layout and
/// the same model converted to a Hugging Face directory give the same logits. The f32 file is compared exactly
/// (to float noise); the f16 and bf16 files within their rounding.
/// </summary>
public sealed class LayoutEquivalenceTests(ITestOutputHelper output)
{
    /// <summary>How many times u·S a 16-bit conversion may move a logit (derivation at its use).</summary>
    private const double AmplificationAllowed = 4;

    /// <summary>"Once upon a time, there" with BOS (FACTS.md gives the ids of the reference encoding).</summary>
    private static readonly int[] Prompt = [1, 9038, 2501, 263, 931, 29892, 727];

    /// <summary>Logits F32[T, V] of a prefill of <see cref="Prompt"/> on the host backend, one row per position.</summary>
    private static float[][] PrefillLogits(string modelDirectory, out ModelConfig config)
    {
        using var checkpoint = ModelDirectory.OpenCheckpoint(modelDirectory);
        config = checkpoint.Config;
        return PrefillLogits(checkpoint);
    }

    private static float[][] PrefillLogits(ICheckpoint checkpoint)
    {
        var c = checkpoint.Config;
        using var backend = new HostBackend();
        using var model = LlamaModel.Load(checkpoint, backend);
        using var pool = KvBlockPool.FromBudget(backend, c.Layers, c.KvHeads, c.HeadDim, blockSize: 16,
            budgetBytes: 2L * c.Layers * c.KvDim * sizeof(float) * 64);
        using var workspace = new ForwardWorkspace(backend, c, Prompt.Length, Prompt.Length);
        using var sequence = pool.CreateSequence(Prompt.Length);
        var positions = Enumerable.Range(0, Prompt.Length).ToArray();
        var inputs = workspace.Prepare(Prompt, positions);
        var hidden = model.Forward(workspace, inputs, sequence, committed: 0);
        var rows = new float[Prompt.Length][];
        for (int t = 0; t < Prompt.Length; t++)
        {
            var logits = model.Logits(workspace, hidden.Slice(t, 1));
            rows[t] = new float[c.VocabSize];
            backend.Download(logits, rows[t]);
        }
        return rows;
    }

    private static float MaxAbsDifference(float[][] a, float[][] b)
    {
        float max = 0;
        for (int t = 0; t < a.Length; t++)
            for (int v = 0; v < a[t].Length; v++) max = Math.Max(max, Math.Abs(a[t][v] - b[t][v]));
        return max;
    }

    private static int ArgMax(float[] row)
    {
        int best = 0;
        for (int i = 1; i < row.Length; i++) if (row[i] > row[best]) best = i;
        return best;
    }

    [Fact]
    public void Llama2c_and_converted_HuggingFace_give_the_same_logits()
    {
        var source = TestModels.Stories15MDirectory;
        var reference = PrefillLogits(source, out var sourceConfig);
        float logitScale = reference.SelectMany(r => r).Max(Math.Abs);
        output.WriteLine($"max |logit| = {logitScale}");

        // f32: the same numbers in another layout; only summation order could differ, and it does not here.
        var f32 = TestModels.TempDirectory("convert-f32");
        using var deleteF32 = new DeleteOnDispose(f32);
        ModelConverter.Convert(source, f32, DType.F32, progress: null, force: true);
        Assert.True(File.Exists(Path.Combine(f32, "tokenizer.model")));
        var f32Logits = PrefillLogits(f32, out var f32Config);
        Assert.Equal(sourceConfig with { Source = "" }, f32Config with { Source = "", EndTokenIds = sourceConfig.EndTokenIds });
        Assert.Equal(sourceConfig.EndTokenIds, f32Config.EndTokenIds);
        float f32Difference = MaxAbsDifference(reference, f32Logits);
        output.WriteLine($"f32: max |Δlogit| = {f32Difference}");
        Assert.True(f32Difference <= 1e-4f, $"f32 conversion changed logits by {f32Difference}");

        // The tokenizer written beside the weights is the same tokenizer.
        var original = TokenizerLoader.Load(source, sourceConfig.VocabSize);
        var converted = TokenizerLoader.Load(f32, sourceConfig.VocabSize);
        Assert.Equal(original.Encode("Once upon a time, there", addBos: true), converted.Encode("Once upon a time, there", addBos: true));
        Assert.Equal(Prompt, converted.Encode("Once upon a time, there", addBos: true));

        long f32Bytes = new FileInfo(Path.Combine(f32, "model.safetensors")).Length;
        foreach (var (dtype, unitRoundoff) in new[] { (DType.F16, Math.Pow(2, -11)), (DType.BF16, Math.Pow(2, -8)) })
        {
            var dir = TestModels.TempDirectory("convert-" + dtype);
            using var deleteDir = new DeleteOnDispose(dir);
            ModelConverter.Convert(source, dir, dtype, progress: null, force: true);
            var logits = PrefillLogits(dir, out _);
            float difference = MaxAbsDifference(reference, logits);
            // Tolerance. Each weight is rounded once, with relative error at most u (2^-11 for f16, 2^-8 for bf16);
            // activations and accumulation stay f32. To first order a logit then moves by a·u·S, where S is the logit
            // scale (max |logit| of the reference, about 25 here) and a is how much the network amplifies relative weight
            // noise. The errors are independent roundings, so they partly cancel inside each dot product, while the
            // residual stream, six layers and the final norm amplify them somewhat. Measured on this model and prompt:
            // a ≈ 1.3 for f16 (max |Δ| 0.016) and a ≈ 1.7 for bf16 (max |Δ| 0.17). We allow a = 4 (f16 0.05, bf16 0.40
            // at S = 25): a 2.4-3.2x margin over what was seen, still far below what a layout mistake does (the control
            // test below: interleaved q/k rows move logits by several units).
            float tolerance = (float)(AmplificationAllowed * unitRoundoff * logitScale);
            output.WriteLine($"{dtype}: max |Δlogit| = {difference} (tolerance {tolerance}, u·scale = {unitRoundoff * logitScale})");
            Assert.True(difference <= tolerance, $"{dtype} conversion changed logits by {difference}, more than {tolerance}");
            if (dtype == DType.F16)
            {
                for (int t = 0; t < Prompt.Length; t++)
                    Assert.Equal(ArgMax(reference[t]), ArgMax(logits[t]));
            }
            long bytes = new FileInfo(Path.Combine(dir, "model.safetensors")).Length;
            double ratio = (double)bytes / f32Bytes;
            output.WriteLine($"{dtype}: {bytes} bytes, {ratio:0.0000} of f32");
            Assert.InRange(ratio, 0.49, 0.51);
        }
    }

    [Fact]
    public void Control_the_comparison_detects_q_k_rows_in_the_wrong_order()
    {
        // If a loader forgot to re-order llama2.c's interleaved q/k rows, RoPE would rotate the wrong pairs. Feed the
        // model exactly that mistake and check the logits move far beyond the tolerances used above.
        var source = TestModels.Stories15MDirectory;
        using var checkpoint = ModelDirectory.OpenCheckpoint(source);
        var reference = PrefillLogits(checkpoint);
        using var wrong = new InterleavedQkCheckpoint(checkpoint);
        var logits = PrefillLogits(wrong);
        float difference = MaxAbsDifference(reference, logits);
        float logitScale = reference.SelectMany(r => r).Max(Math.Abs);
        float largestTolerance = (float)(AmplificationAllowed * Math.Pow(2, -8) * logitScale);
        output.WriteLine($"q/k rows interleaved: max |Δlogit| = {difference} (bf16 tolerance {largestTolerance})");
        Assert.True(difference > 5 * largestTolerance, $"a wrong q/k layout moved logits by only {difference}");
    }

    /// <summary>A checkpoint whose q/k rows are put back into llama2.c's interleaved order: the mistake the test must catch.</summary>
    private sealed class InterleavedQkCheckpoint : ICheckpoint
    {
        private readonly ICheckpoint _inner;
        private readonly Dictionary<string, (PinnedTensor Pin, TensorData Tensor)> _permuted = [];

        public InterleavedQkCheckpoint(ICheckpoint inner)
        {
            _inner = inner;
            var c = inner.Config;
            for (int layer = 0; layer < c.Layers; layer++)
            {
                foreach (var (name, heads) in new[] { (LlamaTensorNames.Query(layer), c.Heads), (LlamaTensorNames.Key(layer), c.KvHeads) })
                {
                    var t = inner.GetTensor(name, heads * c.HeadDim, c.Dim);
                    var bytes = new byte[t.ByteLength];
                    RotaryLayout.RotateHalfToInterleaved(t.Bytes, bytes, heads, c.HeadDim, c.Dim * sizeof(float));
                    var pin = new PinnedTensor(name, t.Type, t.Shape, bytes);
                    _permuted.Add(name, (pin, pin.Tensor));
                }
            }
        }

        public ModelConfig Config => _inner.Config;
        public string Location => _inner.Location;
        public IReadOnlyCollection<string> TensorNames => _inner.TensorNames;

        public bool TryGetTensor(string name, out TensorData tensor)
        {
            if (_permuted.TryGetValue(name, out var p))
            {
                tensor = p.Tensor;
                return true;
            }
            return _inner.TryGetTensor(name, out tensor);
        }

        public void Dispose()
        {
            foreach (var (pin, _) in _permuted.Values) pin.Dispose();
        }
    }

    /// <summary>Removes a converted model (tens of MB) when the test ends, pass or fail.</summary>
    private sealed class DeleteOnDispose(string directory) : IDisposable
    {
        public void Dispose()
        {
            if (Directory.Exists(directory)) Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public void Converter_refuses_a_non_empty_output_directory_without_force()
    {
        var output = TestModels.TempDirectory("convert-nonempty");
        File.WriteAllText(Path.Combine(output, "keep.txt"), "mine");
        var e = Assert.Throws<IOException>(() => ModelConverter.Convert(TestModels.Stories15MDirectory, output, DType.F16, null));
        Assert.Contains(output, e.Message);
        Assert.Contains("not empty", e.Message);
        Assert.Equal(["keep.txt"], Directory.GetFileSystemEntries(output).Select(Path.GetFileName));
    }

    [Fact]
    public void Converter_refuses_to_write_into_its_source()
    {
        var e = Assert.Throws<ArgumentException>(() => ModelConverter.Convert(TestModels.Stories15MDirectory, TestModels.Stories15MDirectory, DType.F16, null, force: true));
        Assert.Contains("is the source directory", e.Message);
    }
}
