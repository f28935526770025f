using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace IlgpuMedusa.Compute.Host;

/// <summary>
/// The inner loop of the host matmul: dot products of four weight rows with one input row at once, so each input
/// vector load feeds four fused multiply-adds. Uses the widest vector the CPU accelerates (512 or 256 bits).
/// </summary>
internal static unsafe class HostMatMul
{
    /// <summary>
    /// out[t·n + row + i] (+)= Σ_k x[t·k + j] · w[(row + i)·k + j] for i &lt; rows (≤ 4) and t &lt; tokens.
    /// </summary>
    public static void RowBlock(float* w, int rows, int k, float* x, int tokens, float* output, int n, int row, bool accumulate)
    {
        for (int t = 0; t < tokens; t++)
        {
            float* xt = x + (long)t * k;
            float* target = output + (long)t * n + row;
            if (rows == 4)
            {
                Dot4(w, w + k, w + 2 * k, w + 3 * k, xt, k, out float d0, out float d1, out float d2, out float d3);
                if (accumulate)
                {
                    target[0] += d0;
                    target[1] += d1;
                    target[2] += d2;
                    target[3] += d3;
                }
                else
                {
                    target[0] = d0;
                    target[1] = d1;
                    target[2] = d2;
                    target[3] = d3;
                }
            }
            else
            {
                for (int i = 0; i < rows; i++)
                {
                    float d = Dot(w + (long)i * k, xt, k);
                    target[i] = accumulate ? target[i] + d : d;
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4(float* w0, float* w1, float* w2, float* w3, float* x, int k, out float d0, out float d1, out float d2, out float d3)
    {
        int j = 0;
        if (Vector512.IsHardwareAccelerated && k >= 16)
        {
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; j <= k - 16; j += 16)
            {
                var xv = Vector512.Load(x + j);
                a0 = Vector512.FusedMultiplyAdd(Vector512.Load(w0 + j), xv, a0);
                a1 = Vector512.FusedMultiplyAdd(Vector512.Load(w1 + j), xv, a1);
                a2 = Vector512.FusedMultiplyAdd(Vector512.Load(w2 + j), xv, a2);
                a3 = Vector512.FusedMultiplyAdd(Vector512.Load(w3 + j), xv, a3);
            }
            d0 = Vector512.Sum(a0);
            d1 = Vector512.Sum(a1);
            d2 = Vector512.Sum(a2);
            d3 = Vector512.Sum(a3);
        }
        else if (Vector256.IsHardwareAccelerated && k >= 8)
        {
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; j <= k - 8; j += 8)
            {
                var xv = Vector256.Load(x + j);
                a0 = Vector256.FusedMultiplyAdd(Vector256.Load(w0 + j), xv, a0);
                a1 = Vector256.FusedMultiplyAdd(Vector256.Load(w1 + j), xv, a1);
                a2 = Vector256.FusedMultiplyAdd(Vector256.Load(w2 + j), xv, a2);
                a3 = Vector256.FusedMultiplyAdd(Vector256.Load(w3 + j), xv, a3);
            }
            d0 = Vector256.Sum(a0);
            d1 = Vector256.Sum(a1);
            d2 = Vector256.Sum(a2);
            d3 = Vector256.Sum(a3);
        }
        else
        {
            d0 = d1 = d2 = d3 = 0;
        }
        for (; j < k; j++)
        {
            float xv = x[j];
            d0 += w0[j] * xv;
            d1 += w1[j] * xv;
            d2 += w2[j] * xv;
            d3 += w3[j] * xv;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot(float* w, float* x, int k) =>
        System.Numerics.Tensors.TensorPrimitives.Dot(new ReadOnlySpan<float>(w, k), new ReadOnlySpan<float>(x, k));
}
