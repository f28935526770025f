using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Medusa;
using IlgpuMedusa.Models;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Tests.Medusa;

/// <summary>
/// Medusa heads with context attention on the host, on a tiny random model (4 query heads over 2 kv heads): each
/// head's top-k equals a double-precision reference that attends to the last layer's cache rows read back from the
/// sequence, grouped (several heads) and one head at a time; bad use and bad files are refused with clear errors.
/// </summary>
public sealed class ContextAttentionHeadsTests : IDisposable
{
    private readonly string _directory = TinyRandomModel.Write(seed: 9);

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

    [Theory]
    [InlineData(3)]
    [InlineData(1)]
    public void PredictAttendsToTheCommittedPositionsOfTheLastLayer(int headCount)
    {
        using var checkpoint = HuggingFaceCheckpoint.Open(_directory);
        var c = checkpoint.Config;
        int d = c.Dim, dh = c.HeadDim, kvDim = c.KvDim;
        var classifier = checkpoint.GetTensor(LlamaTensorNames.Classifier, c.VocabSize, c.Dim).ToFloatArray();
        var embedding = checkpoint.GetTensor(LlamaTensorNames.Embedding, c.VocabSize, c.Dim).ToFloatArray();
        var weights = MedusaHeadWeights.CreateRandom(c, headCount, layers: 1, seed: 4, scale: 0.3f, nextToken: true, context: true);
        var path = Path.Combine(_directory, "context-heads.safetensors");
        MedusaHeadsCheckpoint.Write(path, weights, ModelSignature.Of(checkpoint));

        using var backend = new HostBackend(2);
        using var model = LlamaModel.Load(checkpoint, backend, DType.F32);
        using var file = MedusaHeadsCheckpoint.Open(path);
        Assert.True(file.HasContextAttention);
        Assert.Equal(c.Heads * dh, file.ContextWidth);
        using var heads = MedusaHeads.Load(file, model, checkpoint, DType.F32);
        Assert.True(heads.HasContextAttention);
        // Grouped where the host groups matrices (512-bit vectors): then several heads share one launch.
        Assert.Equal(headCount > 1 && backend.CanGroupMatMul(c.Dim), heads.Grouped);

        // A sequence of 23 tokens in the cache; the heads run at t = 22 and, with committed = 12, at t = 11 (later keys
        // are in the cache too and must stay invisible).
        using var pool = KvBlockPool.FromBudget(backend, c.Layers, c.KvHeads, dh, 16, 4L * 16 * 2 * c.Layers * kvDim * sizeof(float));
        using var sequence = pool.CreateSequence(48);
        using var workspace = new ForwardWorkspace(backend, c, 23, 1);
        var random = new Random(8);
        var tokens = new[] { c.BosTokenId }.Concat(Enumerable.Range(0, 22).Select(_ => random.Next(3, c.VocabSize))).ToArray();
        var hiddenRows = new float[tokens.Length * d];
        backend.Download(model.Forward(workspace, workspace.Prepare(tokens, Enumerable.Range(0, tokens.Length).ToArray()), sequence, 0), hiddenRows);
        var keys = new float[tokens.Length * kvDim];
        var values = new float[tokens.Length * kvDim];
        for (int p = 0; p < tokens.Length; p++)
        {
            sequence.Cache.ReadSlot(c.Layers - 1, 0, sequence.PhysicalSlot(p), keys.AsSpan(p * kvDim, kvDim));
            sequence.Cache.ReadSlot(c.Layers - 1, 1, sequence.PhysicalSlot(p), values.AsSpan(p * kvDim, kvDim));
        }
        using var hidden = backend.Allocate(DType.F32, 1, d);
        foreach (int committed in new[] { 23, 12 })
        {
            int t = committed - 1, next = tokens[Math.Min(committed, tokens.Length - 1)];
            var h = hiddenRows.AsSpan(t * d, d).ToArray();
            backend.Upload(hidden, h);
            var predicted = heads.Predict(hidden, headCount, next, sequence, committed).ToArray();
            for (int head = 0; head < headCount; head++)
            {
                var expected = Reference(weights, head, h, embedding, next, keys, values, committed, classifier, c);
                Assert.Equal(expected, predicted.AsSpan(head * MedusaHeads.TopK, MedusaHeads.TopK).ToArray());
            }
        }
        var missing = Assert.Throws<InvalidOperationException>(() => heads.Predict(hidden, headCount, 5));
        Assert.Contains("pass its KV sequence", missing.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => heads.Predict(hidden, headCount, 5, sequence, 0));
    }

    /// <summary>
    /// The top 10 token ids of one head, in doubles: z = h + P e(next); q = rope(W_q z) at position committed; per query
    /// head i (kv head i / 2) softmax over the first committed keys; z += W_o o; one ResBlock; logits over the vocabulary.
    /// </summary>
    private static int[] Reference(MedusaHeadWeights w, int head, float[] h, float[] embedding, int next, float[] keys, float[] values, int committed,
        float[] classifier, ModelConfig c)
    {
        int d = c.Dim, dh = c.HeadDim, a = c.Heads * dh, kvDim = c.KvDim, group = c.Heads / c.KvHeads;
        var z = new double[d];
        for (int o = 0; o < d; o++)
        {
            z[o] = h[o];
            for (int i = 0; i < d; i++) z[o] += w.NextToken![head][o * d + i] * embedding[next * d + i];
        }
        var q = new double[a];
        for (int o = 0; o < a; o++)
            for (int i = 0; i < d; i++) q[o] += w.ContextQuery![head][o * d + i] * z[i];
        for (int qh = 0; qh < c.Heads; qh++)
            for (int j = 0; j < dh / 2; j++)
            {
                double angle = committed * Math.Pow(c.RopeTheta, -2.0 * j / dh);
                double x = q[qh * dh + j], y = q[qh * dh + j + dh / 2];
                q[qh * dh + j] = x * Math.Cos(angle) - y * Math.Sin(angle);
                q[qh * dh + j + dh / 2] = x * Math.Sin(angle) + y * Math.Cos(angle);
            }
        var attended = new double[a];
        for (int qh = 0; qh < c.Heads; qh++)
        {
            int kv = qh / group * dh;
            var s = new double[committed];
            for (int j = 0; j < committed; j++)
                for (int i = 0; i < dh; i++) s[j] += q[qh * dh + i] * keys[j * kvDim + kv + i] / Math.Sqrt(dh);
            double max = s.Max(), sum = s.Sum(x => Math.Exp(x - max));
            for (int j = 0; j < committed; j++)
                for (int i = 0; i < dh; i++) attended[qh * dh + i] += Math.Exp(s[j] - max) / sum * values[j * kvDim + kv + i];
        }
        for (int o = 0; o < d; o++)
            for (int i = 0; i < a; i++) z[o] += w.ContextOutput![head][o * a + i] * attended[i];
        var after = new double[d];
        for (int o = 0; o < d; o++)
        {
            double pre = w.Bias[head][0][o];
            for (int i = 0; i < d; i++) pre += w.Linear[head][0][o * d + i] * z[i];
            after[o] = z[o] + pre / (1 + Math.Exp(-pre));
        }
        return [.. Enumerable.Range(0, c.VocabSize)
            .Select(v => (Token: v, Logit: Enumerable.Range(0, d).Sum(i => classifier[v * d + i] * after[i])))
            .OrderByDescending(x => x.Logit).Take(MedusaHeads.TopK).Select(x => x.Token)];
    }

    [Fact]
    public void FilesWithHalfAContextAttentionOrTheWrongWidthAreRefused()
    {
        using var checkpoint = HuggingFaceCheckpoint.Open(_directory);
        var c = checkpoint.Config;
        var weights = MedusaHeadWeights.CreateRandom(c, 2, layers: 1, seed: 4, scale: 0.3f, nextToken: true, context: true);
        // The query matrices of a model with half the heads: [A/2, D] and [D, A/2].
        int half = c.Heads * c.HeadDim / 2;
        var narrow = new MedusaHeadWeights(c.Dim, weights.Linear, weights.Bias, null, c.VocabSize, null, weights.NextToken,
            [.. weights.ContextQuery!.Select(q => q[..(half * c.Dim)])], [.. weights.ContextOutput!.Select(o => o[..(half * c.Dim)])]);
        var path = Path.Combine(_directory, "narrow.safetensors");
        MedusaHeadsCheckpoint.Write(path, narrow, ModelSignature.Of(checkpoint));
        using var backend = new HostBackend(1);
        using var model = LlamaModel.Load(checkpoint, backend, DType.F32);
        using (var file = MedusaHeadsCheckpoint.Open(path))
        {
            var e = Assert.Throws<InvalidDataException>(() => MedusaHeads.Load(file, model, checkpoint));
            Assert.Contains("0.context.query.weight", e.Message);
            Assert.Contains($"{c.Heads} heads of {c.HeadDim}", e.Message);
        }
        // Context attention without a next-token input: refused when the file is opened.
        var tensors = new List<TensorData>();
        var plain = MedusaHeadWeights.CreateRandom(c, 1, layers: 1, seed: 4, scale: 0.3f);
        var query = new float[c.Heads * c.HeadDim * c.Dim];
        var handles = new[] { plain.Linear[0][0], plain.Bias[0][0], query }.Select(x => System.Runtime.InteropServices.GCHandle.Alloc(x, System.Runtime.InteropServices.GCHandleType.Pinned)).ToArray();
        try
        {
            tensors.Add(new TensorData("0.0.linear.weight", DType.F32, [c.Dim, c.Dim], handles[0].AddrOfPinnedObject()));
            tensors.Add(new TensorData("0.0.linear.bias", DType.F32, [c.Dim], handles[1].AddrOfPinnedObject()));
            tensors.Add(new TensorData("0.context.query.weight", DType.F32, [c.Heads * c.HeadDim, c.Dim], handles[2].AddrOfPinnedObject()));
            var bad = Path.Combine(_directory, "no-next-token.safetensors");
            SafetensorsWriter.Write(bad, tensors, DType.F32, new Dictionary<string, string> { ["format"] = MedusaHeadsCheckpoint.CompactFormat, ["shared_lm_head"] = "true" });
            var e = Assert.Throws<InvalidDataException>(() => MedusaHeadsCheckpoint.Open(bad));
            Assert.Contains("context attention is only for heads with a next-token input", e.Message);
        }
        finally
        {
            foreach (var handle in handles) handle.Free();
        }
    }
}
