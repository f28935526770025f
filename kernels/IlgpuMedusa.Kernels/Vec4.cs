namespace IlgpuMedusa.Kernels;

/// <summary>Four floats held in registers: accumulators of a kernel's micro-tile (kernels cannot index register arrays).</summary>
internal readonly struct Vec4
{
    public Vec4(float x, float y, float z, float w)
    {
        X = x;
        Y = y;
        Z = z;
        W = w;
    }

    public readonly float X;
    public readonly float Y;
    public readonly float Z;
    public readonly float W;

    /// <summary>this + v · s, component-wise.</summary>
    public Vec4 MulAdd(Vec4 v, float s) => new(X + v.X * s, Y + v.Y * s, Z + v.Z * s, W + v.W * s);

    /// <summary>this + v ⊙ v, component-wise.</summary>
    public Vec4 AddSquares(Vec4 v) => new(X + v.X * v.X, Y + v.Y * v.Y, Z + v.Z * v.Z, W + v.W * v.W);

    /// <summary>this · s, component-wise.</summary>
    public Vec4 Scale(float s) => new(X * s, Y * s, Z * s, W * s);

    /// <summary>Component i (0..3).</summary>
    public float Get(int i) => i == 0 ? X : i == 1 ? Y : i == 2 ? Z : W;
}
