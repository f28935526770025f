using System.Text.Json;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Models;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Transformer;
using Xunit;

namespace IlgpuMedusa.Tests.Models;

/// <summary>Runs a reference model directory on a backend and compares its logits with the reference file beside it.</summary>
internal static class ReferenceModels
{
    /// <summary>tests/IlgpuMedusa.Tests/Models/Reference (fails the test when it is missing).</summary>
    public static string Directory
    {
        get
        {
            var dir = Path.Combine(TestModels.RepositoryRoot, "tests", "IlgpuMedusa.Tests", "Models", "Reference");
            if (!System.IO.Directory.Exists(dir))
                Assert.Fail($"the reference files are missing from '{dir}'; they are in the repository (regenerate with {dir}/generate.py and tests/tools/llama-cpp-reference/make.mjs).");
            return dir;
        }
    }

    /// <summary>
    /// Loads Reference/<paramref name="model"/>, runs the tokens of Reference/<paramref name="model"/>-logits.json as one
    /// prefill on <paramref name="backend"/>, and returns the model's config, the largest |Δlogit| and the largest |logit|.
    /// </summary>
    /// <param name="backend">Where the model runs.</param>
    /// <param name="model">The model's folder under Reference.</param>
    /// <param name="logitsFile">The reference logits (default: the folder's name + "-logits.json").</param>
    /// <param name="inspect">Looks at the checkpoint and the loaded model before the forward.</param>
    public static (ModelConfig Config, float Max, float Scale) Compare(IComputeBackend backend, string model, string? logitsFile = null, Action<ICheckpoint, LlamaModel>? inspect = null)
    {
        var dir = Path.Combine(Directory, model);
        using var reference = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Directory, logitsFile ?? model + "-logits.json")));
        var tokens = reference.RootElement.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var expected = reference.RootElement.GetProperty("logits").EnumerateArray()
            .Select(row => row.EnumerateArray().Select(e => e.GetSingle()).ToArray()).ToArray();
        using var checkpoint = ModelDirectory.OpenCheckpoint(dir);
        var c = checkpoint.Config;
        using var llama = LlamaModel.Load(checkpoint, backend);
        inspect?.Invoke(checkpoint, llama);
        using var pool = KvBlockPool.FromBudget(backend, c.Layers, c.KvHeads, c.HeadDim, 16, 2L * c.Layers * c.KvDim * sizeof(float) * 32);
        using var workspace = new ForwardWorkspace(backend, c, tokens.Length, tokens.Length);
        using var sequence = pool.CreateSequence(tokens.Length);
        var hidden = llama.Forward(workspace, workspace.Prepare(tokens, Enumerable.Range(0, tokens.Length).ToArray()), sequence, 0);
        var actual = new float[tokens.Length * c.VocabSize];
        backend.Download(llama.Logits(workspace, hidden), actual);
        float max = 0, scale = 0;
        for (int t = 0; t < tokens.Length; t++)
            for (int v = 0; v < c.VocabSize; v++)
            {
                max = Math.Max(max, Math.Abs(actual[t * c.VocabSize + v] - expected[t][v]));
                scale = Math.Max(scale, Math.Abs(expected[t][v]));
            }
        return (c, max, scale);
    }
}
