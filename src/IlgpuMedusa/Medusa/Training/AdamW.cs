namespace IlgpuMedusa.Medusa.Training;

/// <summary>
/// AdamW (Loshchilov and Hutter): per parameter m ← β₁m + (1 − β₁)g, v ← β₂v + (1 − β₂)g²,
/// θ ← θ − lr · (m̂ / (√v̂ + ε) + λθ) with bias-corrected m̂ = m / (1 − β₁ᵗ), v̂ = v / (1 − β₂ᵗ) and the decoupled decay λ
/// applied only to the tensors marked for it.
/// </summary>
internal sealed class AdamW
{
    private readonly (float[] Parameter, float[] Gradient, float[] M, float[] V, bool Decay)[] _tensors;
    private readonly float _beta1, _beta2, _epsilon, _weightDecay;
    private readonly int _threads;
    private int _step;

    public AdamW(IEnumerable<(float[] Parameter, float[] Gradient, bool Decay)> tensors, float weightDecay, int threads,
        float beta1 = 0.9f, float beta2 = 0.999f, float epsilon = 1e-8f)
    {
        _tensors = tensors.Select(t =>
        {
            if (t.Parameter.Length != t.Gradient.Length) throw new ArgumentException("parameter and gradient lengths differ");
            return (t.Parameter, t.Gradient, new float[t.Parameter.Length], new float[t.Parameter.Length], t.Decay);
        }).ToArray();
        _weightDecay = weightDecay;
        _threads = Math.Max(1, threads);
        _beta1 = beta1;
        _beta2 = beta2;
        _epsilon = epsilon;
    }

    /// <summary>Steps taken.</summary>
    public int Steps => _step;

    /// <summary>One update with learning rate <paramref name="learningRate"/>.</summary>
    public void Step(float learningRate)
    {
        _step++;
        float correction1 = 1f - MathF.Pow(_beta1, _step), correction2 = 1f - MathF.Pow(_beta2, _step);
        const int Chunk = 1 << 16;
        var work = new List<(int Tensor, int Start, int End)>();
        for (int t = 0; t < _tensors.Length; t++)
            for (int s = 0; s < _tensors[t].Parameter.Length; s += Chunk) work.Add((t, s, Math.Min(_tensors[t].Parameter.Length, s + Chunk)));
        void Update(int index)
        {
            var (t, start, end) = work[index];
            var (p, g, m, v, decay) = _tensors[t];
            float b1 = _beta1, b2 = _beta2, eps = _epsilon, lambda = decay ? _weightDecay : 0f;
            for (int i = start; i < end; i++)
            {
                float gi = g[i];
                float mi = m[i] = b1 * m[i] + (1 - b1) * gi;
                float vi = v[i] = b2 * v[i] + (1 - b2) * gi * gi;
                p[i] -= learningRate * (mi / correction1 / (MathF.Sqrt(vi / correction2) + eps) + lambda * p[i]);
            }
        }
        if (work.Count == 1 || _threads == 1) for (int i = 0; i < work.Count; i++) Update(i);
        else Parallel.For(0, work.Count, new ParallelOptions { MaxDegreeOfParallelism = _threads }, Update);
    }

    /// <summary>
    /// The learning rate at step <paramref name="step"/> (0-based) of <paramref name="total"/>: linear warm-up over the first
    /// 5% (at least one step), then a cosine from <paramref name="peak"/> down to a tenth of it.
    /// </summary>
    public static float Schedule(int step, int total, float peak)
    {
        int warmup = Math.Max(1, total / 20);
        if (step < warmup) return peak * (step + 1) / warmup;
        double progress = total <= warmup ? 1 : (double)(step - warmup) / Math.Max(1, total - warmup - 1);
        return (float)(peak * (0.1 + 0.9 * 0.5 * (1 + Math.Cos(Math.PI * Math.Min(1, progress)))));
    }
}
