using IlgpuMedusa.Medusa.Training;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Tests.Training;

/// <summary>
/// The hand-written head gradients against central finite differences of an independent double-precision loss, on a
/// small random model (D 10, V 23, 7 positions, 2 heads), with the shared lm_head and with each head's own, over the whole
/// vocabulary and over a shortlist of 11 tokens (targets outside it left out of the loss), with and without a next-token input.
/// </summary>
public class HeadGradientTests
{
    private const int D = 10, V = 23, M = 7, Heads = 2;

    private static readonly int[] Shortlist = [0, 2, 3, 5, 7, 9, 11, 13, 17, 19, 22];

    /// <summary>
    /// The head loss written out directly in doubles: z ← h; per block z ← z + SiLU(W z + b); logits = U z over the
    /// rows of U (the shortlisted tokens when <paramref name="shortlist"/> is given: U's row i is token shortlist[i]);
    /// mean over positions with a target the rows score of logsumexp(logits) − logits[y].
    /// </summary>
    private static double ReferenceLoss(double[][] w, double[][] b, double[] u, double[] hidden, int[] targets, int[]? shortlist,
        double[]? p = null, double[]? embedding = null, int[]? next = null, double[]? previousProjection = null, int[]? previous = null)
    {
        double total = 0;
        int count = 0;
        int rows = u.Length / D;
        for (int r = 0; r < M; r++)
        {
            int y = shortlist is null ? targets[r] : Array.IndexOf(shortlist, targets[r]);
            if (targets[r] < 0 || y < 0) continue;
            var z = hidden.AsSpan(r * D, D).ToArray();
            if (p is not null)
                for (int o = 0; o < D; o++)
                    for (int i = 0; i < D; i++) z[o] += p[o * D + i] * embedding![next![r] * D + i]; // z₀ = h + P e(x_{t+1})
            if (previousProjection is not null && previous![r] >= 0)
                for (int o = 0; o < D; o++)
                    for (int i = 0; i < D; i++) z[o] += previousProjection[o * D + i] * embedding![previous[r] * D + i]; // + R e(x_{t+1+i})
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
            var logits = new double[rows];
            for (int v = 0; v < rows; v++)
                for (int i = 0; i < D; i++) logits[v] += u[v * D + i] * z[i];
            double max = logits.Max(), sum = logits.Sum(x => Math.Exp(x - max));
            total += max + Math.Log(sum) - logits[y];
            count++;
        }
        return total / count;
    }

    /// <summary>
    /// Compares <paramref name="analytic"/> with central finite differences of <paramref name="loss"/> in each entry of
    /// <paramref name="parameters"/> (changed in place and restored), within <paramref name="absolute"/> + <paramref name="relative"/>·|numeric|.
    /// </summary>
    internal static void CheckGradient(double[] parameters, float[] analytic, Func<double> loss, string name, double absolute = 2e-5, double relative = 1e-3)
    {
        const double Epsilon = 1e-5;
        for (int i = 0; i < parameters.Length; i++)
        {
            double keep = parameters[i];
            parameters[i] = keep + Epsilon;
            double up = loss();
            parameters[i] = keep - Epsilon;
            double down = loss();
            parameters[i] = keep;
            double numeric = (up - down) / (2 * Epsilon);
            Assert.True(Math.Abs(analytic[i] - numeric) <= absolute + relative * Math.Abs(numeric), $"{name}[{i}]: analytic {analytic[i]:G6}, finite difference {numeric:G6}");
        }
    }

    public static TheoryData<bool, int, bool, bool> Cases() => new()
    {
        { true, 1, false, false }, { true, 2, false, false }, { false, 2, false, false }, { false, 0, false, false },
        { true, 1, true, false }, { true, 2, true, false }, { false, 1, true, false },
        { true, 1, false, true }, { true, 2, true, true }, { true, 0, true, true },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void GradientsMatchFiniteDifferences(bool sharedLmHead, int layers, bool shortlist, bool nextToken)
    {
        var random = new Random(layers * 10 + (sharedLmHead ? 1 : 0) + (shortlist ? 100 : 0) + (nextToken ? 1000 : 0));
        float Normal(double scale) => (float)(scale * Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble()));
        var config = new ModelConfig { Dim = D, HiddenDim = 2 * D, Layers = 1, Heads = 2, KvHeads = 2, VocabSize = V, MaxSequenceLength = 16 };
        var classifier = Enumerable.Range(0, V * D).Select(_ => Normal(0.5)).ToArray();
        var list = shortlist ? Shortlist : null;
        var weights = MedusaHeadWeights.CreateRandom(config, Heads, layers, seed: 3, scale: 0.3f, baseClassifier: sharedLmHead ? null : classifier, shortlist: list,
            nextToken: nextToken);
        var embedding = Enumerable.Range(0, V * D).Select(_ => Normal(0.7)).ToArray(); // not the classifier, so a mix-up shows
        int[] next = [4, 0, 22, 13, 4, 9, 17];
        // Non-zero biases and own lm_heads that differ from the base one, so every term is exercised.
        foreach (var head in weights.Bias)
            foreach (var bias in head)
                for (int i = 0; i < D; i++) bias[i] = Normal(0.2);
        if (weights.LmHeads is { } own)
            foreach (var lm in own)
                for (int i = 0; i < lm.Length; i++) lm[i] += Normal(0.1);
        var hidden = Enumerable.Range(0, M * D).Select(_ => Normal(1)).ToArray();
        // 1, 4 and 18 are outside the shortlist
        int[][] targets = [[3, 0, -1, 22, 7, 4, 11], [5, -1, 9, 1, 0, 18, -1]];
        var heads = new TrainableHeads(weights, classifier, threads: 2, nextToken ? embedding : null);

        for (int h = 0; h < Heads; h++)
        {
            var score = heads.Backward(h, hidden, nextToken ? next : default, targets[h]);
            var w = weights.Linear[h].Select(x => x.Select(v => (double)v).ToArray()).ToArray();
            var b = weights.Bias[h].Select(x => x.Select(v => (double)v).ToArray()).ToArray();
            var u = (weights.LmHeads?[h] ?? (list is null ? classifier : list.SelectMany(t => classifier.AsSpan(t * D, D).ToArray()).ToArray())).Select(v => (double)v).ToArray();
            var x = hidden.Select(v => (double)v).ToArray();
            var p = weights.NextToken?[h].Select(v => (double)v).ToArray();
            var e = embedding.Select(v => (double)v).ToArray();
            double Loss() => ReferenceLoss(w, b, u, x, targets[h], list, p, e, next);

            Assert.Equal(targets[h].Count(t => t >= 0 && (list is null || list.Contains(t))), score.Count);
            Assert.True(Math.Abs(score.Loss - Loss()) < 1e-4, $"head {h}: loss {score.Loss} vs reference {Loss()}");

            void Check(double[] parameters, float[] analytic, string name) => CheckGradient(parameters, analytic, Loss, $"head {h} {name}");
            for (int l = 0; l < layers; l++)
            {
                Check(w[l], heads.LinearGradient[h][l], $"W{l}");
                Check(b[l], heads.BiasGradient[h][l], $"b{l}");
            }
            if (!sharedLmHead) Check(u, heads.LmHeadGradient![h], "lm_head");
            else Assert.Null(heads.LmHeadGradient);
            if (nextToken) Check(p!, heads.NextTokenGradient![h], "P");
            else Assert.Null(heads.NextTokenGradient);
        }
    }

    /// <summary>
    /// Soft labels: loss = (1 − α)·CE(target) + α·CE(softmax(U t)) with t the teacher hidden state of the row, written out
    /// in doubles and differentiated numerically; the reported loss stays the hard cross-entropy.
    /// </summary>
    [Theory]
    [InlineData(0.5f)]
    [InlineData(1f)]
    public void SoftLabelGradientsMatchFiniteDifferences(float alpha)
    {
        var random = new Random(41);
        float Normal(double scale) => (float)(scale * Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble()));
        var config = new ModelConfig { Dim = D, HiddenDim = 2 * D, Layers = 1, Heads = 2, KvHeads = 2, VocabSize = V, MaxSequenceLength = 16 };
        var classifier = Enumerable.Range(0, V * D).Select(_ => Normal(0.5)).ToArray();
        var weights = MedusaHeadWeights.CreateRandom(config, 1, 1, seed: 3, scale: 0.3f, shortlist: Shortlist);
        for (int i = 0; i < D; i++) weights.Bias[0][0][i] = Normal(0.2);
        var hidden = Enumerable.Range(0, M * D).Select(_ => Normal(1)).ToArray();
        var teacher = Enumerable.Range(0, M * D).Select(_ => Normal(1)).ToArray();
        int[] targets = [3, 0, -1, 22, 7, 4, 11]; // 4 is outside the shortlist: no target, like −1
        var heads = new TrainableHeads(weights, classifier, threads: 2);
        var score = heads.Backward(0, hidden, default, targets, null, teacher, alpha);
        var u = Shortlist.SelectMany(t => classifier.AsSpan(t * D, D).ToArray()).Select(v => (double)v).ToArray();
        var w = weights.Linear[0][0].Select(v => (double)v).ToArray();
        var b = weights.Bias[0][0].Select(v => (double)v).ToArray();
        double Loss(bool soft)
        {
            double total = 0;
            int count = 0;
            for (int r = 0; r < M; r++)
            {
                int y = targets[r] < 0 ? -1 : Array.IndexOf(Shortlist, targets[r]);
                if (y < 0) continue;
                var z = new double[D];
                for (int o = 0; o < D; o++)
                {
                    double a = b[o];
                    for (int i = 0; i < D; i++) a += w[o * D + i] * hidden[r * D + i];
                    z[o] = hidden[r * D + o] + a / (1 + Math.Exp(-a));
                }
                var logits = new double[Shortlist.Length];
                var teacherLogits = new double[Shortlist.Length];
                for (int v = 0; v < Shortlist.Length; v++)
                    for (int i = 0; i < D; i++)
                    {
                        logits[v] += u[v * D + i] * z[i];
                        teacherLogits[v] += u[v * D + i] * teacher[r * D + i];
                    }
                double max = logits.Max(), logSum = max + Math.Log(logits.Sum(x => Math.Exp(x - max)));
                double tMax = teacherLogits.Max(), tSum = teacherLogits.Sum(x => Math.Exp(x - tMax));
                double hard = logSum - logits[y];
                double softLoss = 0;
                for (int v = 0; v < Shortlist.Length; v++) softLoss += Math.Exp(teacherLogits[v] - tMax) / tSum * (logSum - logits[v]);
                total += soft ? (1 - alpha) * hard + alpha * softLoss : hard;
                count++;
            }
            return total / count;
        }
        Assert.True(Math.Abs(score.Loss - Loss(soft: false)) < 1e-4, $"reported loss {score.Loss} vs hard cross-entropy {Loss(false)}");
        const double Epsilon = 1e-5;
        for (int i = 0; i < w.Length; i++)
        {
            double keep = w[i];
            w[i] = keep + Epsilon;
            double up = Loss(soft: true);
            w[i] = keep - Epsilon;
            double down = Loss(soft: true);
            w[i] = keep;
            double numeric = (up - down) / (2 * Epsilon);
            Assert.True(Math.Abs(heads.LinearGradient[0][0][i] - numeric) <= 2e-5 + 1e-3 * Math.Abs(numeric),
                $"W[{i}]: analytic {heads.LinearGradient[0][0][i]:G6}, finite difference {numeric:G6}");
        }
    }

    /// <summary>
    /// The experimental previous-token input (head i ≥ 1 adds R e(y_{i−1}), y_{i−1} the token before its target): ∂R, ∂P,
    /// ∂W and ∂b of head 1 against finite differences of the double-precision loss; head 0 ignores R entirely.
    /// </summary>
    [Fact]
    public void PreviousTokenGradientsMatchFiniteDifferences()
    {
        var random = new Random(77);
        float Normal(double scale) => (float)(scale * Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble()));
        var config = new ModelConfig { Dim = D, HiddenDim = 2 * D, Layers = 1, Heads = 2, KvHeads = 2, VocabSize = V, MaxSequenceLength = 16 };
        var classifier = Enumerable.Range(0, V * D).Select(_ => Normal(0.5)).ToArray();
        var weights = MedusaHeadWeights.CreateRandom(config, Heads, 1, seed: 5, scale: 0.3f, shortlist: Shortlist, nextToken: true, previousToken: true);
        for (int i = 0; i < D; i++) weights.Bias[1][0][i] = Normal(0.2);
        var embedding = Enumerable.Range(0, V * D).Select(_ => Normal(0.7)).ToArray();
        var hidden = Enumerable.Range(0, M * D).Select(_ => Normal(1)).ToArray();
        int[] next = [4, 0, 22, 13, 4, 9, 17];
        int[] previous = [3, 0, -1, 22, 7, 5, 11]; // head 0's targets: the token before head 1's
        int[] targets = [5, 2, -1, 9, 0, 18, 13];  // 18 is outside the shortlist
        var heads = new TrainableHeads(weights, classifier, threads: 2, embedding);

        // Head 0 takes no previous token: the same loss whatever is passed, and its R gets no gradient.
        var plain = heads.Evaluate(0, hidden, next, previous);
        var given = heads.Evaluate(0, hidden, next, previous, null, [1, 2, 3, 4, 5, 6, 7]);
        Assert.Equal(plain.Loss, given.Loss);
        Assert.Throws<ArgumentException>(() => heads.Backward(1, hidden, next, targets)); // head 1 needs them

        var score = heads.Backward(1, hidden, next, targets, null, default, 0, previous);
        var w = new[] { weights.Linear[1][0].Select(v => (double)v).ToArray() };
        var b = new[] { weights.Bias[1][0].Select(v => (double)v).ToArray() };
        var u = Shortlist.SelectMany(t => classifier.AsSpan(t * D, D).ToArray()).Select(v => (double)v).ToArray();
        var x = hidden.Select(v => (double)v).ToArray();
        var p = weights.NextToken![1].Select(v => (double)v).ToArray();
        var r = weights.PreviousToken![1].Select(v => (double)v).ToArray();
        var e = embedding.Select(v => (double)v).ToArray();
        double Loss() => ReferenceLoss(w, b, u, x, targets, Shortlist, p, e, next, r, previous);
        Assert.True(Math.Abs(score.Loss - Loss()) < 1e-4, $"loss {score.Loss} vs reference {Loss()}");
        void Check(double[] parameters, float[] analytic, string name) => CheckGradient(parameters, analytic, Loss, name);
        Check(r, heads.PreviousTokenGradient![1], "R");
        Check(p, heads.NextTokenGradient![1], "P");
        Check(w[0], heads.LinearGradient[1][0], "W0");
        Check(b[0], heads.BiasGradient[1][0], "b0");
        heads.Backward(0, hidden, next, previous, null, default, 0, targets); // head 0: whatever tokens are passed, R is not used
        Assert.All(heads.PreviousTokenGradient[0], g => Assert.Equal(0f, g));
        Assert.Contains(heads.NextTokenGradient[0], g => g != 0f);
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

    [Fact]
    public void EvaluationCountsTargetsOutsideTheShortlistAsMisses()
    {
        var config = new ModelConfig { Dim = D, HiddenDim = 2 * D, Layers = 1, Heads = 2, KvHeads = 2, VocabSize = V, MaxSequenceLength = 16 };
        var random = new Random(8);
        var classifier = Enumerable.Range(0, V * D).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
        var hidden = Enumerable.Range(0, M * D).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
        var heads = new TrainableHeads(MedusaHeadWeights.CreateRandom(config, 1, 1, seed: 4, scale: 0.3f, shortlist: Shortlist), classifier, threads: 1);
        int[] targets = [1, 4, 6, 8, 2, -1, 3]; // 1, 4, 6 and 8 are outside the shortlist; 2 and 3 inside
        var score = heads.Evaluate(0, hidden, targets);
        Assert.Equal(6, score.Count);
        Assert.Equal(4, score.Outside);
        Assert.True(score.Top1 <= 2 && score.Top5 <= 2);
        Assert.True(score.Top5Accuracy <= 2.0 / 6 + 1e-12, "the outside targets count in the denominator");
        var training = heads.Backward(0, hidden, targets);
        Assert.Equal(2, training.Count); // training leaves the outside targets out
        Assert.Equal(0, training.Outside);
        Assert.Equal(score.Loss, training.Loss, 5);
    }
}
