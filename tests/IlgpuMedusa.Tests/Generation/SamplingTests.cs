using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;

namespace IlgpuMedusa.Tests.Generation;

/// <summary>Sampling: seeded and reproducible, top-p cutting to the nucleus, bad parameters named.</summary>
public class SamplingTests
{
    [Fact]
    public void SameSeedSameTokens_OtherSeedOtherTokens()
    {
        var sampler = (ulong seed) => new Sampler(Sampling.Temperature(1.0f, 0.95f), seed);
        float[] logits = Enumerable.Range(0, 50).Select(i => MathF.Sin(i) * 2).ToArray();
        int[] Draw(ulong seed)
        {
            var s = sampler(seed);
            return Enumerable.Range(0, 200).Select(_ => s.Sample(logits)).ToArray();
        }
        Assert.Equal(Draw(7), Draw(7));
        Assert.NotEqual(Draw(7), Draw(8));
    }

    [Fact]
    public void TinyTopP_KeepsOnlyTheMostLikelyToken()
    {
        float[] logits = [0.1f, 2.5f, 2.4f, -1f, 0f];
        var sampler = new Sampler(Sampling.Temperature(1.5f, 0.01f), 3);
        for (int i = 0; i < 100; i++) Assert.Equal(1, sampler.Sample(logits));
    }

    [Fact]
    public void LowTemperaturesWithLargeLogitsPickTheLikelyToken()
    {
        // Logits / 0.1 reach 1,000: e^1000 overflows a float. softmax(x / 0.1) puts 1 − e^-100 on token 0.
        float[] logits = [100f, 90f, 0f, -5f];
        foreach (float topP in new[] { 1f, 0.9f })
        {
            var sampler = new Sampler(Sampling.Temperature(0.1f, topP), 11);
            for (int i = 0; i < 50; i++) Assert.Equal(0, sampler.Sample(logits));
        }
        var p = new float[4];
        Sampler.Probabilities(logits, 0.1f, p);
        Assert.Equal(1f, p[0], 6);
        Assert.Equal(0f, p[3]);
        Assert.Throws<InvalidOperationException>(() => Sampler.Probabilities([1f, float.NaN], 1f, new float[2]));
    }

    [Fact]
    public void ATinyTemperatureIsGreedy_NotASpreadOverEveryPositiveLogit()
    {
        // Logits / 1e-39 are ±∞ in float32: dividing before subtracting the maximum spread the mass over all positive
        // logits (tokens 0, 1 and 3 here). The limit of softmax(x / t) as t → 0 is all the mass on the largest logit.
        float[] logits = [3f, 2.5f, -1f, 0.5f, 3.25f];
        foreach (float t in new[] { 1e-39f, 1e-44f, 1e-30f })
        {
            var p = new float[5];
            Sampler.Probabilities(logits, t, p);
            Assert.Equal([0f, 0f, 0f, 0f, 1f], p);
            var sampler = new Sampler(Sampling.Temperature(t), 3);
            for (int i = 0; i < 20; i++) Assert.Equal(4, sampler.Sample(logits));
        }
        var ties = new float[3];
        Sampler.Probabilities([1f, 1f, 0f], 1e-40f, ties); // equal maxima share the mass
        Assert.Equal([0.5f, 0.5f, 0f], ties);
    }

    [Fact]
    public void TopPBelowOneOverTheVocabularyStillDraws()
    {
        // A flat distribution over 4 tokens: a nucleus of mass 1e-6 is the most likely token (the lowest id on ties).
        var sampler = new Sampler(Sampling.Temperature(1f, 1e-6f), 5);
        for (int i = 0; i < 20; i++) Assert.Equal(0, sampler.Sample([0f, 0f, 0f, 0f]));
        // Mass 0.5 of four equal tokens: 0.25, then 0.5 reaches it, so the nucleus is the smallest prefix that does, tokens 0-1.
        var half = new Sampler(Sampling.Temperature(1f, 0.5f), 6);
        var seen = new HashSet<int>();
        for (int i = 0; i < 400; i++) seen.Add(half.Sample([1f, 1f, 1f, 1f]));
        Assert.Equal([0, 1], seen.Order());
    }

    [Fact]
    public void FrequenciesFollowTheSoftmax()
    {
        // softmax(ln 0.6, ln 0.3, ln 0.1) = (0.6, 0.3, 0.1) at temperature 1; 20,000 draws: each within 0.02.
        float[] logits = [MathF.Log(0.6f), MathF.Log(0.3f), MathF.Log(0.1f)];
        var sampler = new Sampler(Sampling.Temperature(1f), 1234);
        var counts = new int[3];
        for (int i = 0; i < 20_000; i++) counts[sampler.Sample(logits)]++;
        Assert.InRange(counts[0] / 20_000.0, 0.58, 0.62);
        Assert.InRange(counts[1] / 20_000.0, 0.28, 0.32);
        Assert.InRange(counts[2] / 20_000.0, 0.08, 0.12);
    }

    [Fact]
    public void TopK_DrawsOnlyAmongTheKBest_InTheirSoftmaxProportions()
    {
        // Logits 0, ln 6, ln 4, 0: k = 2 keeps ids 1 and 2, renormalised to 6/10 and 4/10.
        float[] logits = [0f, MathF.Log(6f), MathF.Log(4f), 0f];
        var sampler = new Sampler(Sampling.Temperature(1f, 1f, topK: 2), 99);
        var counts = new int[4];
        for (int i = 0; i < 20_000; i++) counts[sampler.Sample(logits)]++;
        Assert.Equal(0, counts[0] + counts[3]);
        Assert.InRange(counts[1] / 20_000.0, 0.58, 0.62);
        // Top-p then applies to what top-k kept: 0.5 keeps id 1 alone (0.6 reaches it).
        var both = new Sampler(Sampling.Temperature(1f, 0.5f, topK: 2), 7);
        for (int i = 0; i < 200; i++) Assert.Equal(1, both.Sample(logits));
        // k = 1 is greedy; ties at the boundary keep the lower id; k beyond the vocabulary keeps every token.
        var one = new Sampler(Sampling.Temperature(2f, 1f, topK: 1), 3);
        for (int i = 0; i < 200; i++) Assert.Equal(1, one.Sample(logits));
        var tied = new Sampler(Sampling.Temperature(1f, 1f, topK: 2), 5);
        var seen = new HashSet<int>();
        for (int i = 0; i < 400; i++) seen.Add(tied.Sample([1f, 1f, 1f, 1f]));
        Assert.Equal([0, 1], seen.Order());
        var all = new Sampler(Sampling.Temperature(1f, 1f, topK: 50), 5);
        seen.Clear();
        for (int i = 0; i < 400; i++) seen.Add(all.Sample([1f, 1f, 1f, 1f]));
        Assert.Equal([0, 1, 2, 3], seen.Order());
    }

    [Fact]
    public void TopK_KeepsExactlyTheKLargest_LowestIdsAmongEquals_ForAnyK()
    {
        // Against a plain sort: many ties (values rounded to tenths), k from 1 to the whole vocabulary but one.
        var random = new Random(17);
        var logits = new float[32000];
        for (int i = 0; i < logits.Length; i++) logits[i] = MathF.Round((float)(random.NextDouble() * 8 - 4), 1);
        var p = new float[logits.Length];
        foreach (int k in new[] { 1, 2, 7, 40, 1000, 16000, 31999 })
        {
            var expected = Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).ThenBy(i => i).Take(k).Order().ToArray();
            Sampler.TopKProbabilities(logits, 0.7f, k, p);
            var kept = Enumerable.Range(0, p.Length).Where(i => p[i] > 0).ToArray();
            Assert.Equal(expected, kept);
            Assert.Equal(1.0, p.Sum(x => (double)x), 4);
            var sorted = logits.OrderByDescending(x => x).ToArray();
            Assert.Equal(sorted[k - 1], Sampler.KthLargest(logits, k));
        }
        // Already sorted and all-equal inputs (the quickselect's bad cases) still select correctly.
        var ascending = Enumerable.Range(0, 5000).Select(i => (float)i).ToArray();
        Assert.Equal(4999f - 99, Sampler.KthLargest(ascending, 100));
        Assert.Equal(3f, Sampler.KthLargest(Enumerable.Repeat(3f, 4000).ToArray(), 2500));
    }

    [Fact]
    public void SeededGenerationIsReproducible()
    {
        using var engine = InferenceEngine.Load(new EngineOptions { ModelPath = TestModels.Stories15MDirectory, Device = new DeviceOptions { Kind = DeviceKind.Host }, Heads = "none" });
        List<int> Run(ulong seed)
        {
            var options = new GenerationOptions { MaxTokens = 40, Sampling = Sampling.Temperature(0.9f, 0.9f), Seed = seed };
            return engine.Generate(engine.EncodePrompt("Once upon a time", options), options, new GenerationStats()).SelectMany(p => p.TokenIds).ToList();
        }
        Assert.Equal(Run(5), Run(5));
        Assert.NotEqual(Run(5), Run(6));
    }

    [Theory]
    [InlineData(-0.5f, 1f, "temperature")]
    [InlineData(0.8f, 0f, "top-p")]
    [InlineData(0.8f, 1.5f, "top-p")]
    public void BadParametersAreNamed(float temperature, float topP, string name)
    {
        var e = Assert.ThrowsAny<ArgumentException>(() => Sampling.From(temperature, topP));
        Assert.Contains(name, e.Message, StringComparison.Ordinal);
        Assert.Contains("top-k", Assert.ThrowsAny<ArgumentException>(() => Sampling.From(0.8f, 1f, -1)).Message, StringComparison.Ordinal);
    }
}
