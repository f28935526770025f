using System.Numerics.Tensors;

namespace IlgpuMedusa.Generation;

/// <summary>How the next token is chosen from the logits. A closed set: <see cref="Greedy"/> or <see cref="Temperature"/>.</summary>
public abstract record Sampling
{
    private Sampling()
    {
    }

    /// <summary>Always the most likely token (ties: lowest id). Deterministic.</summary>
    public static Sampling Greedy { get; } = new GreedySampling();

    /// <summary>
    /// Softmax at <paramref name="temperature"/>, optionally over the <paramref name="topK"/> most likely tokens only (0: all),
    /// then cut to the top-p nucleus of that, then a seeded draw.
    /// </summary>
    public static Sampling Temperature(float temperature, float topP = 1f, int topK = 0) => new TemperatureSampling(temperature, topP, topK);

    /// <summary>Greedy decoding.</summary>
    public sealed record GreedySampling : Sampling;

    /// <summary>Temperature (and top-p) sampling.</summary>
    public sealed record TemperatureSampling : Sampling
    {
        /// <summary>Creates the sampling; throws <see cref="ArgumentOutOfRangeException"/> naming the bad value.</summary>
        public TemperatureSampling(float temperature, float topP, int topK = 0)
        {
            if (!(temperature > 0) || float.IsInfinity(temperature))
                throw new ArgumentOutOfRangeException(nameof(temperature), temperature, "temperature must be a positive number (use greedy sampling for temperature 0).");
            if (!(topP > 0 && topP <= 1))
                throw new ArgumentOutOfRangeException(nameof(topP), topP, "top-p must be in (0, 1].");
            if (topK < 0)
                throw new ArgumentOutOfRangeException(nameof(topK), topK, "top-k must be 0 (every token) or a positive number of tokens.");
            TemperatureValue = temperature;
            TopP = topP;
            TopK = topK;
        }

        /// <summary>Softmax temperature.</summary>
        public float TemperatureValue { get; }
        /// <summary>Nucleus mass in (0, 1]; 1 keeps the whole distribution.</summary>
        public float TopP { get; }
        /// <summary>Draws only among this many most likely tokens (ties: lower id first); 0 keeps every token.</summary>
        public int TopK { get; }
    }

    /// <summary>Builds a sampling from CLI-style numbers: temperature 0 is greedy (top-p and top-k then change nothing).</summary>
    public static Sampling From(float temperature, float topP, int topK = 0)
    {
        if (!(topP > 0 && topP <= 1)) throw new ArgumentOutOfRangeException(nameof(topP), topP, "top-p must be in (0, 1].");
        if (temperature < 0 || float.IsNaN(temperature)) throw new ArgumentOutOfRangeException(nameof(temperature), temperature, "temperature must be >= 0.");
        if (topK < 0) throw new ArgumentOutOfRangeException(nameof(topK), topK, "top-k must be 0 (every token) or a positive number of tokens.");
        return temperature == 0 ? Greedy : Temperature(temperature, topP, topK);
    }
}

/// <summary>
/// Picks tokens from host logits under a <see cref="Sampling"/>, with its own seeded generator (xorshift64*), so a seed
/// gives the same tokens on every machine and .NET version.
/// </summary>
public sealed class Sampler
{
    private readonly Sampling _sampling;
    private ulong _state;
    private float[] _probabilities = [];
    private int[] _order = [];

    /// <summary>Creates a sampler; <paramref name="seed"/> fixes the random stream.</summary>
    public Sampler(Sampling sampling, ulong seed)
    {
        _sampling = sampling;
        _state = seed == 0 ? 0x9E3779B97F4A7C15UL : seed;
    }

    /// <summary>True when the choice is the argmax (no randomness).</summary>
    public bool IsGreedy => _sampling is Sampling.GreedySampling;

    /// <summary>The softmax temperature (1 for greedy sampling).</summary>
    public float Temperature => _sampling is Sampling.TemperatureSampling t ? t.TemperatureValue : 1f;

    /// <summary>A uniform number in [0, 1).</summary>
    public float NextUniform()
    {
        _state ^= _state >> 12;
        _state ^= _state << 25;
        _state ^= _state >> 27;
        return ((_state * 0x2545F4914F6CDD1DUL) >> 40) / 16777216f;
    }

    /// <summary>Chooses a token from one row of logits.</summary>
    public int Sample(ReadOnlySpan<float> logits)
    {
        switch (_sampling)
        {
            case Sampling.GreedySampling:
                return TensorPrimitives.IndexOfMax(logits);
            case Sampling.TemperatureSampling t:
                if (_probabilities.Length < logits.Length)
                {
                    _probabilities = new float[logits.Length];
                    _order = new int[logits.Length];
                }
                var p = _probabilities.AsSpan(0, logits.Length);
                if (t.TopK > 0 && t.TopK < logits.Length) TopKProbabilities(logits, t.TemperatureValue, t.TopK, p);
                else Probabilities(logits, t.TemperatureValue, p);
                return t.TopP < 1f ? SampleTopP(p, t.TopP) : SampleFull(p);
            default:
                throw new InvalidOperationException($"unknown sampling {_sampling}");
        }
    }

    /// <summary>
    /// softmax(logits / temperature) into <paramref name="p"/>, computed as e^((x − max) / t) / Σ e^((x − max) / t): the
    /// largest term is e^0 and no term overflows however small the temperature. (Dividing first overflowed: logits / 1e-39
    /// are ±∞, and the mass went to every positive logit alike; a plain softmax of logits / 0.1 overflows past logit 8.8.)
    /// A tiny temperature thus tends to greedy choice, ties shared.
    /// </summary>
    /// <exception cref="InvalidOperationException">The logits hold NaN or are all −∞ (a broken forward).</exception>
    public static void Probabilities(ReadOnlySpan<float> logits, float temperature, Span<float> p)
    {
        float max = TensorPrimitives.Max(logits);
        if (!float.IsFinite(max) && !float.IsPositiveInfinity(max))
            throw new InvalidOperationException($"sampling: the logits are not numbers (their largest value is {max}); the forward pass produced NaN or -inf everywhere.");
        if (float.IsPositiveInfinity(max))
        {
            // Infinite logits: all the mass on them, shared equally.
            int count = 0;
            foreach (float v in logits) if (float.IsPositiveInfinity(v)) count++;
            for (int i = 0; i < p.Length; i++) p[i] = float.IsPositiveInfinity(logits[i]) ? 1f / count : 0f;
            return;
        }
        TensorPrimitives.Subtract(logits, max, p); // ≤ 0 (−∞ stays −∞)
        TensorPrimitives.Divide(p, temperature, p);
        TensorPrimitives.Exp(p, p);
        float sum = TensorPrimitives.Sum(p); // ≥ 1: the largest term is e^0
        TensorPrimitives.Divide(p, sum, p);
    }

    /// <summary>
    /// <see cref="Probabilities"/> over the <paramref name="k"/> largest logits only (ties: lower id first); every other
    /// token gets 0.
    /// </summary>
    public static void TopKProbabilities(ReadOnlySpan<float> logits, float temperature, int k, Span<float> p)
    {
        float max = TensorPrimitives.Max(logits);
        if (!float.IsFinite(max) || k >= logits.Length)
        {
            // Infinite or NaN logits: the full softmax says what that means (and throws for a broken forward).
            Probabilities(logits, temperature, p);
            return;
        }
        // The k-th largest value in linear time; every larger value is kept, and as many equal to it as fit, lowest ids first.
        float threshold = KthLargest(logits, k);
        int ties = k;
        foreach (float x in logits) if (x > threshold) ties--;
        float sum = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            float x = logits[i];
            bool keep = x > threshold || (x == threshold && ties-- > 0);
            sum += p[i] = keep ? MathF.Exp((x - max) / temperature) : 0f;
        }
        TensorPrimitives.Divide(p, sum, p);
    }

    /// <summary>
    /// The <paramref name="k"/>-th largest of <paramref name="values"/> (no NaN), by quickselect on a copy: linear time
    /// in expectation, with a sort of what is left when the partitions stop shrinking (so never quadratic).
    /// </summary>
    internal static float KthLargest(ReadOnlySpan<float> values, int k)
    {
        var rented = System.Buffers.ArrayPool<float>.Shared.Rent(values.Length);
        try
        {
            var a = rented.AsSpan(0, values.Length);
            values.CopyTo(a);
            int target = k - 1, lo = 0, hi = a.Length - 1, budget = 2 * (int)Math.Log2(a.Length) + 8;
            while (lo < hi)
            {
                if (budget-- == 0)
                {
                    a[lo..(hi + 1)].Sort((x, y) => y.CompareTo(x));
                    break;
                }
                // Median of three as the pivot; descending three-way partition: [lo, lt) > pivot, [lt, gt] == pivot, (gt, hi] < pivot.
                int mid = lo + (hi - lo) / 2;
                float pivot = Median(a[lo], a[mid], a[hi]);
                int lt = lo, gt = hi, i = lo;
                while (i <= gt)
                {
                    float x = a[i];
                    if (x > pivot)
                    {
                        a[i] = a[lt];
                        a[lt] = x;
                        lt++;
                        i++;
                    }
                    else if (x < pivot)
                    {
                        a[i] = a[gt];
                        a[gt] = x;
                        gt--;
                    }
                    else i++;
                }
                if (target < lt) hi = lt - 1;
                else if (target > gt) lo = gt + 1;
                else return pivot;
            }
            return a[target];
        }
        finally
        {
            System.Buffers.ArrayPool<float>.Shared.Return(rented);
        }
    }

    private static float Median(float a, float b, float c) => Math.Max(Math.Min(a, b), Math.Min(Math.Max(a, b), c));

    private int SampleFull(ReadOnlySpan<float> p)
    {
        float r = NextUniform(), cumulative = 0;
        for (int i = 0; i < p.Length; i++)
        {
            cumulative += p[i];
            if (r < cumulative) return i;
        }
        // Rounding: the last token that can be drawn (never one of probability 0, such as a token a constraint ruled out).
        for (int i = p.Length - 1; i > 0; i--)
            if (p[i] > 0) return i;
        return 0;
    }

    /// <summary>Top-p: sort by probability, keep the smallest prefix whose mass reaches p, draw within it.</summary>
    private int SampleTopP(ReadOnlySpan<float> p, float topP)
    {
        // A token of probability q is in the nucleus only if the tokens ranked before it hold at most topP, i.e. it and
        // the tokens after it (each at most q) hold at least 1 − topP: q·n ≥ 1 − topP. Tokens below that bound (with a
        // margin for rounding) are left out before the sort, which keeps it short; the most likely token always stays.
        float cutoff = (1f - topP) / p.Length * 0.99f;
        int n = 0;
        for (int i = 0; i < p.Length; i++) if (p[i] >= cutoff) _order[n++] = i;
        if (n == 0) return TensorPrimitives.IndexOfMax(p);
        var order = _order.AsSpan(0, n);
        var probabilities = _probabilities;
        order.Sort((a, b) => probabilities[b].CompareTo(probabilities[a]) is var c && c != 0 ? c : a.CompareTo(b));
        float mass = 0;
        int last = n - 1;
        for (int i = 0; i < n; i++)
        {
            mass += p[order[i]];
            if (mass >= topP)
            {
                last = i;
                break;
            }
        }
        float r = NextUniform() * mass, cumulative = 0;
        for (int i = 0; i <= last; i++)
        {
            cumulative += p[order[i]];
            if (r < cumulative) return order[i];
        }
        return order[last];
    }
}
