namespace IlgpuMedusa.Models;

/// <summary>
/// The two row orders of q/k projections. llama2.c (Meta's original) rotates interleaved pairs (2j, 2j+1) of each
/// head; Hugging Face permutes the rows so RoPE rotates halves (j, j + Dh/2). The runtime uses the Hugging Face
/// (rotate-half) order everywhere; llama2.c weights are re-ordered once at load.
/// </summary>
public static class RotaryLayout
{
    /// <summary>
    /// Re-orders rows from interleaved to rotate-half: within each head,
    /// new row h·Dh/2 + j = old row 2j + h (h ∈ {0, 1}, j &lt; Dh/2).
    /// </summary>
    public static void InterleavedToRotateHalf(ReadOnlySpan<byte> source, Span<byte> destination, int heads, int headDim, int rowBytes)
    {
        Permute(source, destination, heads, headDim, rowBytes, toRotateHalf: true);
    }

    /// <summary>The inverse of <see cref="InterleavedToRotateHalf"/>.</summary>
    public static void RotateHalfToInterleaved(ReadOnlySpan<byte> source, Span<byte> destination, int heads, int headDim, int rowBytes)
    {
        Permute(source, destination, heads, headDim, rowBytes, toRotateHalf: false);
    }

    private static void Permute(ReadOnlySpan<byte> source, Span<byte> destination, int heads, int headDim, int rowBytes, bool toRotateHalf)
    {
        if (source.Length != (long)heads * headDim * rowBytes || destination.Length != source.Length)
            throw new ArgumentException($"q/k permutation: expected {heads} heads x {headDim} rows x {rowBytes} bytes.");
        int half = headDim / 2;
        for (int head = 0; head < heads; head++)
        {
            for (int h = 0; h < 2; h++)
            {
                for (int j = 0; j < half; j++)
                {
                    int interleaved = head * headDim + 2 * j + h;
                    int rotateHalf = head * headDim + h * half + j;
                    int from = toRotateHalf ? interleaved : rotateHalf;
                    int to = toRotateHalf ? rotateHalf : interleaved;
                    source.Slice(from * rowBytes, rowBytes).CopyTo(destination.Slice(to * rowBytes, rowBytes));
                }
            }
        }
    }
}
