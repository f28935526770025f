using IlgpuMedusa.Medusa.Training;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Tests.Training;

/// <summary>
/// The hand-written head gradients against central finite differences of an independent double-precision loss, on a
/// small random model (D 10, V 23, 7 positions, 2 heads), with the shared lm_head and with each head's own.
/// </summary>
public class HeadGradientTests
{
    private const int D = 10, V = 23, M = 7, Heads = 2;

    /// <summary>
    /// The head loss written out directly in doubles: z ← h; per block z ← z + SiLU(W z + b); logits = U z;
    /// mean over positions with a target of logsumexp(logits) − logits[y].
    /// </summary>
    private static double ReferenceLoss(double[][] w, double[][] b, double[] u, double[] hidden, int[] targets)
    {
        double total = 0;
        int count = 0;
        for (int r = 0; r < M; r++)
        {
            if (targets[r] < 0) continue;
            var z = hidden.AsSpan(r * D, D).ToArray();
            for (int l = 0; l < w.Length; l++)
            {
                var next = new double[D];
                for (int o = 0; o < D; o++)
                {
                    double a = b[l][o];
                    for (int i = 0; i < D; i++) a += w[l][o * D + i] * z[i];
                    next[o] = z[o] + a / (1 + Math.Exp(-a));
                }
                z = next;
            }
            var logits = new double[V];
            for (int v = 0; v < V; v++)
                for (int i = 0; i < D; i++) logits[v] += u[v * D + i] * z[i];
            double max = logits.Max(), sum = logits.Sum(x => Math.Exp(x - max));
            total += max + Math.Log(sum) - logits[targets[r]];
            count++;
        }
        return total / count;
    }

    public static TheoryData<bool, int> Cases() => new() { { true, 1 }, { true, 2 }, { false, 2 }, { false, 0 } };

    [Theory]
    [MemberData(nameof(Cases))]
    public void GradientsMatchFiniteDifferences(bool sharedLmHead, int layers)
    {
        var random = new Random(layers * 10 + (sharedLmHead ? 1 : 0));
        float Normal(double scale) => (float)(scale * Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble()));
        var config = new ModelConfig { Dim = D, HiddenDim = 2 * D, Layers = 1, Heads = 2, KvHeads = 2, VocabSize = V, MaxSequenceLength = 16 };
        var classifier = Enumerable.Range(0, V * D).Select(_ => Normal(0.5)).ToArray();
        var weights = MedusaHeadWeights.CreateRandom(config, Heads, layers, seed: 3, scale: 0.3f, baseClassifier: sharedLmHead ? null : classifier);
        // Non-zero biases and own lm_heads that differ from the base one, so every term is exercised.
        foreach (var head in weights.Bias)
            foreach (var bias in head)
                for (int i = 0; i < D; i++) bias[i] = Normal(0.2);
        if (weights.LmHeads is { } own)
            foreach (var lm in own)
                for (int i = 0; i < lm.Length; i++) lm[i] += Normal(0.1);
        var hidden = Enumerable.Range(0, M * D).Select(_ => Normal(1)).ToArray();
        int[][] targets = [[3, 0, -1, 22, 7, 7, 11], [5, -1, 9, 1, 0, 18, -1]];
        var heads = new TrainableHeads(weights, classifier, threads: 2);

        for (int h = 0; h < Heads; h++)
        {
            var score = heads.Backward(h, hidden, targets[h]);
            var w = weights.Linear[h].Select(x => x.Select(v => (double)v).ToArray()).ToArray();
            var b = weights.Bias[h].Select(x => x.Select(v => (double)v).ToArray()).ToArray();
            var u = (weights.LmHeads?[h] ?? classifier).Select(v => (double)v).ToArray();
            var x = hidden.Select(v => (double)v).ToArray();
            double Loss() => ReferenceLoss(w, b, u, x, targets[h]);

            Assert.Equal(targets[h].Count(t => t >= 0), score.Count);
            Assert.True(Math.Abs(score.Loss - Loss()) < 1e-4, $"head {h}: loss {score.Loss} vs reference {Loss()}");

            void Check(double[] parameters, float[] analytic, string name)
            {
                const double Epsilon = 1e-5;
                for (int i = 0; i < parameters.Length; i++)
                {
                    double keep = parameters[i];
                    parameters[i] = keep + Epsilon;
                    double up = Loss();
                    parameters[i] = keep - Epsilon;
                    double down = Loss();
                    parameters[i] = keep;
                    double numeric = (up - down) / (2 * Epsilon);
                    Assert.True(Math.Abs(analytic[i] - numeric) <= 2e-5 + 1e-3 * Math.Abs(numeric),
                        $"head {h} {name}[{i}]: analytic {analytic[i]:G6}, finite difference {numeric:G6}");
                }
            }
            for (int l = 0; l < layers; l++)
            {
                Check(w[l], heads.LinearGradient[h][l], $"W{l}");
                Check(b[l], heads.BiasGradient[h][l], $"b{l}");
            }
            if (!sharedLmHead) Check(u, heads.LmHeadGradient![h], "lm_head");
            else Assert.Null(heads.LmHeadGradient);
        }
    }

    [Fact]
    public void PositionsWithoutTargetsContributeNothing()
    {
        var config = new ModelConfig { Dim = D, HiddenDim = 2 * D, Layers = 1, Heads = 2, KvHeads = 2, VocabSize = V, MaxSequenceLength = 16 };
        var random = new Random(5);
        var classifier = Enumerable.Range(0, V * D).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
        var hidden = Enumerable.Range(0, M * D).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
        var weights = MedusaHeadWeights.CreateRandom(config, 1, 1, seed: 9, scale: 0.3f);
        var heads = new TrainableHeads(weights, classifier, threads: 1);
        int[] targets = [4, -1, -1, 2, -1, 8, -1];
        heads.Backward(0, hidden, targets);
        var full = heads.LinearGradient[0][0].ToArray();
        // Same positions, the target-less ones replaced by other hidden states: same gradient.
        var other = (float[])hidden.Clone();
        for (int r = 0; r < M; r++)
            if (targets[r] < 0)
                for (int i = 0; i < D; i++) other[r * D + i] = 3f;
        heads.Backward(0, other, targets);
        Assert.Equal(full, heads.LinearGradient[0][0]);
    }
}
