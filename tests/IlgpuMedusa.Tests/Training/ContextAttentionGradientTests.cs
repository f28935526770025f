using IlgpuMedusa.Medusa.Training;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Tests.Training;

/// <summary>
/// Heads with context attention: the hand-written gradients of W_q, W_o, the next-token projection P and the ResBlocks
/// against central finite differences of an independent double-precision loss. Small random model: D 12, two query heads
/// sharing one kv head (Dh 6), 6 positions whose rows see 1 to 9 cached positions of three sequences.
/// </summary>
public class ContextAttentionGradientTests
{
    private const int D = 12, V = 19, M = 6, QueryHeads = 2, KvHeads = 1, Dh = D / QueryHeads, KvDim = KvHeads * Dh;
    private const float Theta = 10000f;
    private static readonly int[] SequenceLengths = [9, 5, 3];

    /// <summary>
    /// The loss written out in doubles: z = h + P e(next); q = rope(W_q z) at position n (the row's visible count); per
    /// query head h, kv head h / 2: softmax over j &lt; n of q·k_j / √Dh, o = Σ p v; z += W_o o; ResBlocks; logits; mean
    /// cross-entropy over rows with a target.
    /// </summary>
    private static double ReferenceLoss(double[] wq, double[] wo, double[] p, double[][] w, double[][] b, double[] u, double[] hidden, double[] embedding,
        int[] next, int[] targets, double[][] keys, double[][] values, int[] visible)
    {
        double total = 0;
        int count = 0;
        for (int r = 0; r < M; r++)
        {
            if (targets[r] < 0) continue;
            var z = new double[D];
            for (int o = 0; o < D; o++)
            {
                z[o] = hidden[r * D + o];
                for (int i = 0; i < D; i++) z[o] += p[o * D + i] * embedding[next[r] * D + i];
            }
            var q = new double[D];
            for (int o = 0; o < D; o++)
                for (int i = 0; i < D; i++) q[o] += wq[o * D + i] * z[i];
            int n = visible[r];
            for (int h = 0; h < QueryHeads; h++)
                for (int j = 0; j < Dh / 2; j++)
                {
                    double angle = n * Math.Pow(Theta, -2.0 * j / Dh);
                    double x = q[h * Dh + j], y = q[h * Dh + j + Dh / 2];
                    q[h * Dh + j] = x * Math.Cos(angle) - y * Math.Sin(angle);
                    q[h * Dh + j + Dh / 2] = x * Math.Sin(angle) + y * Math.Cos(angle);
                }
            var attended = new double[D];
            for (int h = 0; h < QueryHeads; h++)
            {
                int kv = h / (QueryHeads / KvHeads) * Dh;
                var s = new double[n];
                for (int j = 0; j < n; j++)
                    for (int i = 0; i < Dh; i++) s[j] += q[h * Dh + i] * keys[r][j * KvDim + kv + i] / Math.Sqrt(Dh);
                double max = s.Max(), sum = s.Sum(x => Math.Exp(x - max));
                for (int j = 0; j < n; j++)
                    for (int i = 0; i < Dh; i++) attended[h * Dh + i] += Math.Exp(s[j] - max) / sum * values[r][j * KvDim + kv + i];
            }
            for (int o = 0; o < D; o++)
                for (int i = 0; i < D; i++) z[o] += wo[o * D + i] * attended[i];
            for (int l = 0; l < w.Length; l++)
            {
                var after = new double[D];
                for (int o = 0; o < D; o++)
                {
                    double a = b[l][o];
                    for (int i = 0; i < D; i++) a += w[l][o * D + i] * z[i];
                    after[o] = z[o] + a / (1 + Math.Exp(-a));
                }
                z = after;
            }
            var logits = new double[V];
            for (int v = 0; v < V; v++)
                for (int i = 0; i < D; i++) logits[v] += u[v * D + i] * z[i];
            double top = logits.Max(), total2 = logits.Sum(x => Math.Exp(x - top));
            total += top + Math.Log(total2) - logits[targets[r]];
            count++;
        }
        return total / count;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(0)]
    public void GradientsMatchFiniteDifferences(int layers)
    {
        var random = new Random(17 + layers);
        float Normal(double scale) => (float)(scale * Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble()));
        var config = new ModelConfig { Dim = D, HiddenDim = 2 * D, Layers = 1, Heads = QueryHeads, KvHeads = KvHeads, VocabSize = V, MaxSequenceLength = 16, RopeTheta = Theta };
        var classifier = Enumerable.Range(0, V * D).Select(_ => Normal(0.5)).ToArray();
        var weights = MedusaHeadWeights.CreateRandom(config, 2, Math.Max(layers, 1), seed: 5, scale: 0.3f, nextToken: true, context: true);
        if (layers == 0) weights = new MedusaHeadWeights(D, [[], []], [[], []], null, V, null, weights.NextToken, weights.ContextQuery, weights.ContextOutput);
        foreach (var head in weights.Bias)
            foreach (var bias in head)
                for (int i = 0; i < D; i++) bias[i] = Normal(0.2);
        var embedding = Enumerable.Range(0, V * D).Select(_ => Normal(0.7)).ToArray();
        var hidden = Enumerable.Range(0, M * D).Select(_ => Normal(1)).ToArray();
        int[] next = [4, 0, 18, 13, 4, 9];
        int[][] targets = [[3, 0, -1, 15, 7, 4], [5, 11, 9, 1, -1, 2]];
        // Three sequences of 9, 5 and 3 cached positions; each row sees a prefix of one of them.
        float[][] sequenceKeys = [.. SequenceLengths.Select(n => Enumerable.Range(0, n * KvDim).Select(_ => Normal(1.5)).ToArray())];
        float[][] sequenceValues = [.. SequenceLengths.Select(n => Enumerable.Range(0, n * KvDim).Select(_ => Normal(1)).ToArray())];
        int[] sequenceOf = [0, 1, 0, 2, 0, 1];
        int[] visible = [9, 5, 1, 3, 4, 2];
        var rows = new HeadContextRows([.. sequenceOf.Select(s => sequenceKeys[s])], [.. sequenceOf.Select(s => sequenceValues[s])], visible);
        var heads = new TrainableHeads(weights, classifier, threads: 2, embedding, ContextShape.Of(config));

        for (int h = 0; h < 2; h++)
        {
            var score = heads.Backward(h, hidden, next, targets[h], rows);
            double[] Doubles(float[] x) => [.. x.Select(v => (double)v)];
            var wq = Doubles(weights.ContextQuery![h]);
            var wo = Doubles(weights.ContextOutput![h]);
            var p = Doubles(weights.NextToken![h]);
            var w = weights.Linear[h].Select(Doubles).ToArray();
            var b = weights.Bias[h].Select(Doubles).ToArray();
            var keys = rows.Keys.Select(Doubles).ToArray();
            var values = rows.Values.Select(Doubles).ToArray();
            double Loss() => ReferenceLoss(wq, wo, p, w, b, Doubles(classifier), Doubles(hidden), Doubles(embedding), next, targets[h], keys, values, visible);

            Assert.True(Math.Abs(score.Loss - Loss()) < 1e-4, $"head {h}: loss {score.Loss} vs reference {Loss()}");
            void Check(double[] parameters, float[] analytic, string name) =>
                HeadGradientTests.CheckGradient(parameters, analytic, Loss, $"head {h} {name}", absolute: 3e-5, relative: 2e-3);
            Check(wq, heads.ContextQueryGradient![h], "W_q");
            Check(wo, heads.ContextOutputGradient![h], "W_o");
            Check(p, heads.NextTokenGradient![h], "P");
            for (int l = 0; l < w.Length; l++) Check(w[l], heads.LinearGradient[h][l], $"W{l}");
        }
    }

    [Fact]
    public void RopeInverseUndoesRope()
    {
        var row = Enumerable.Range(0, D).Select(i => (float)Math.Sin(i + 1)).ToArray();
        var copy = (float[])row.Clone();
        TrainableHeads.Rope(copy, 37, QueryHeads, Dh, Theta, inverse: false);
        Assert.NotEqual(row, copy);
        TrainableHeads.Rope(copy, 37, QueryHeads, Dh, Theta, inverse: true);
        for (int i = 0; i < D; i++) Assert.Equal(row[i], copy[i], 5);
    }
}
