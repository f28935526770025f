using IlgpuMedusa.Models;

namespace IlgpuMedusa.Tests.Models;

/// <summary>The q/k row permutation between llama2.c's interleaved pairs and Hugging Face's rotate-half halves.</summary>
public sealed class RotaryLayoutTests
{
    [Fact]
    public void Interleaved_to_rotate_half_on_two_heads_of_four()
    {
        // 2 heads x Dh 4, one byte per row so a row is its own label. Interleaved rows of a head pair up (0,1), (2,3)
        // for RoPE frequencies j = 0, 1. Rotate-half puts the first element of every pair first, then every second:
        // head 0: [r0, r2 | r1, r3], head 1: [r4, r6 | r5, r7]. Worked out by hand from HF's permute():
        // w.view(H, Dh/2, 2, D).transpose(1, 2) takes row (j, h) to (h, j), i.e. old 2j + h -> new h·Dh/2 + j.
        byte[] interleaved = [0, 1, 2, 3, 4, 5, 6, 7];
        byte[] expected = [0, 2, 1, 3, 4, 6, 5, 7];
        var rotateHalf = new byte[8];
        RotaryLayout.InterleavedToRotateHalf(interleaved, rotateHalf, heads: 2, headDim: 4, rowBytes: 1);
        Assert.Equal(expected, rotateHalf);

        var back = new byte[8];
        RotaryLayout.RotateHalfToInterleaved(rotateHalf, back, heads: 2, headDim: 4, rowBytes: 1);
        Assert.Equal(interleaved, back);
    }

    [Fact]
    public void Rows_move_whole_with_head_dim_eight()
    {
        // 1 head x Dh 8, rows of 2 bytes: old row 2j + h goes to h·4 + j, so the new order is old rows 0,2,4,6,1,3,5,7.
        var interleaved = new byte[16];
        for (int row = 0; row < 8; row++)
        {
            interleaved[2 * row] = (byte)(10 * row);
            interleaved[2 * row + 1] = (byte)(10 * row + 1);
        }
        var rotateHalf = new byte[16];
        RotaryLayout.InterleavedToRotateHalf(interleaved, rotateHalf, heads: 1, headDim: 8, rowBytes: 2);
        Assert.Equal(new byte[] { 0, 1, 20, 21, 40, 41, 60, 61, 10, 11, 30, 31, 50, 51, 70, 71 }, rotateHalf);
    }

    [Fact]
    public void Wrong_sizes_are_rejected()
    {
        Assert.Throws<ArgumentException>(() => RotaryLayout.InterleavedToRotateHalf(new byte[8], new byte[8], heads: 2, headDim: 4, rowBytes: 2));
    }
}
