namespace IlgpuMedusa.Generation;

/// <summary>One alternative of a <see cref="TokenLogprob"/>: a token and its natural-log probability.</summary>
/// <param name="TokenId">The token.</param>
/// <param name="Logprob">ln p(token | the tokens before it).</param>
public readonly record struct TopLogprob(int TokenId, float Logprob);

/// <summary>
/// The log-probability the model gave a token, and its most likely alternatives at that position. Probabilities are
/// those of the base model's distribution, softmax of the logits at temperature 1 before top-p (what vLLM calls raw
/// logprobs), whatever the request's sampling: with greedy decoding the chosen token is always the first alternative.
/// </summary>
/// <param name="TokenId">The token.</param>
/// <param name="Logprob">ln p(token | the tokens before it), in (−∞, 0].</param>
/// <param name="Top">The most likely tokens at this position, most likely first (ties: lower id first).</param>
public sealed record TokenLogprob(int TokenId, float Logprob, IReadOnlyList<TopLogprob> Top);

/// <summary>Log-probabilities from a row of logits, on the host in double precision.</summary>
internal static class LogprobMath
{
    /// <summary>
    /// ln softmax(<paramref name="logits"/>)[<paramref name="token"/>] and the <paramref name="top"/> largest entries.
    /// A row holding NaN gives NaN logprobs (the model is broken; nothing here hides it).
    /// </summary>
    public static TokenLogprob Of(ReadOnlySpan<float> logits, int token, int top)
    {
        if ((uint)token >= (uint)logits.Length)
            throw new ArgumentOutOfRangeException(nameof(token), token, $"token outside the row of {logits.Length} logits");
        double logSumExp = LogSumExp(logits);
        var best = Largest(logits, Math.Min(top, logits.Length));
        var alternatives = new TopLogprob[best.Length];
        for (int i = 0; i < best.Length; i++) alternatives[i] = new TopLogprob(best[i], (float)(logits[best[i]] - logSumExp));
        return new TokenLogprob(token, (float)(logits[token] - logSumExp), alternatives);
    }

    /// <summary>ln Σ exp(x), shifted by the maximum so that no term overflows.</summary>
    public static double LogSumExp(ReadOnlySpan<float> x)
    {
        float max = System.Numerics.Tensors.TensorPrimitives.Max(x);
        if (float.IsNaN(max)) return double.NaN;
        if (float.IsInfinity(max)) return max;
        double sum = 0;
        foreach (float value in x) sum += Math.Exp((double)value - max);
        return max + Math.Log(sum);
    }

    /// <summary>Indices of the <paramref name="k"/> largest values, largest first, lower index first among equals.</summary>
    public static int[] Largest(ReadOnlySpan<float> x, int k)
    {
        if (k <= 0) return [];
        var best = new int[k];
        int count = 0;
        for (int i = 0; i < x.Length; i++)
        {
            float value = x[i];
            if (count == k && !(value > x[best[k - 1]])) continue; // a later equal value never displaces an earlier one
            int at = count < k ? count++ : k - 1;
            while (at > 0 && value > x[best[at - 1]])
            {
                best[at] = best[at - 1];
                at--;
            }
            best[at] = i;
        }
        return best;
    }
}
