using IlgpuMedusa.Models;

namespace IlgpuMedusa.Compute;

/// <summary>
/// Extent checks shared by every backend: each op validates its arguments here and throws
/// <see cref="ArgumentException"/> with the shapes before any work is queued.
/// </summary>
internal static class Shapes
{
    private static void Require(bool ok, string op, Func<string> message)
    {
        if (!ok) throw new ArgumentException($"{op}: {message()}");
    }

    private static void Float(string op, string name, DeviceTensor t) =>
        Require(t.Type == DType.F32, op, () => $"{name} must be F32, got {t.ShapeText}");

    private static void Int(string op, string name, DeviceTensor t) =>
        Require(t.Type == DType.I32, op, () => $"{name} must be I32, got {t.ShapeText}");

    private static void Weight(string op, string name, DeviceTensor t) =>
        Require(t.Type is DType.F32 or DType.F16 or DType.BF16, op, () => $"{name} must be F32, F16 or BF16, got {t.ShapeText}");

    public static void Embedding(DeviceTensor output, DeviceTensor tokens, DeviceTensor table)
    {
        Float(nameof(Embedding), "output", output);
        Int(nameof(Embedding), "tokens", tokens);
        Weight(nameof(Embedding), "table", table);
        Require(tokens.Rows == output.Rows && tokens.Columns == 1 && table.Columns == output.Columns, nameof(Embedding),
            () => $"output {output.ShapeText}, tokens {tokens.ShapeText}, table {table.ShapeText}: expected output [T, D], tokens [T, 1], table [V, D]");
    }

    public static void RmsNorm(DeviceTensor output, DeviceTensor input, DeviceTensor weight)
    {
        Float(nameof(RmsNorm), "output", output);
        Float(nameof(RmsNorm), "input", input);
        Weight(nameof(RmsNorm), "weight", weight);
        Require(output.Rows == input.Rows && output.Columns == input.Columns && weight.Rows == 1 && weight.Columns == input.Columns,
            nameof(RmsNorm), () => $"output {output.ShapeText}, input {input.ShapeText}, weight {weight.ShapeText}: expected [T, D], [T, D], [1, D]");
    }

    public static void MatMul(DeviceTensor output, DeviceTensor input, DeviceTensor weight)
    {
        Float(nameof(MatMul), "output", output);
        Float(nameof(MatMul), "input", input);
        Weight(nameof(MatMul), "weight", weight);
        Require(output.Rows == input.Rows && input.Columns == weight.Columns && output.Columns == weight.Rows, nameof(MatMul),
            () => $"output {output.ShapeText} = input {input.ShapeText} · weight {weight.ShapeText}ᵀ: expected [T, N] = [T, K] · [N, K]ᵀ");
    }

    public static void HeadRmsNorm(DeviceTensor qkv, int queryHeads, int kvHeads, int headDim, DeviceTensor queryWeight, DeviceTensor keyWeight)
    {
        Float(nameof(HeadRmsNorm), "qkv", qkv);
        Float(nameof(HeadRmsNorm), "queryWeight", queryWeight);
        Float(nameof(HeadRmsNorm), "keyWeight", keyWeight);
        Require(headDim > 0 && queryHeads >= 0 && kvHeads >= 0 && (long)(queryHeads + kvHeads) * headDim <= qkv.Columns
                && queryWeight.Rows == 1 && queryWeight.Columns == headDim && keyWeight.Rows == 1 && keyWeight.Columns == headDim,
            nameof(HeadRmsNorm), () => $"qkv {qkv.ShapeText}, {queryHeads} + {kvHeads} heads of {headDim}, weights {queryWeight.ShapeText} and {keyWeight.ShapeText}: expected qkv [T, ≥ (H + Hkv)·Dh] and F32 weights [1, Dh]");
    }

    public static void Rope(DeviceTensor x, DeviceTensor positions, int heads, int headDim)
    {
        Float(nameof(Rope), "x", x);
        Int(nameof(Rope), "positions", positions);
        Require(headDim > 0 && headDim % 2 == 0 && heads >= 0 && (long)heads * headDim <= x.Columns && positions.Rows == x.Rows && positions.Columns == 1,
            nameof(Rope), () => $"x {x.ShapeText}, positions {positions.ShapeText}, {heads} heads of {headDim}: expected x [T, ≥ heads·Dh], positions [T, 1], even Dh");
    }

    public static void KvWrite(KvCacheLayout layout, int layer, DeviceTensor qkv, int queryHeads, DeviceTensor blockTable, int startPosition)
    {
        Float(nameof(KvWrite), "qkv", qkv);
        Int(nameof(KvWrite), "blockTable", blockTable);
        Require((uint)layer < (uint)layout.Layers, nameof(KvWrite), () => $"layer {layer} outside [0, {layout.Layers})");
        Require(qkv.Columns >= (queryHeads + 2 * layout.KvHeads) * layout.HeadDim, nameof(KvWrite),
            () => $"qkv {qkv.ShapeText} is narrower than (H={queryHeads} + 2·Hkv={layout.KvHeads})·Dh={layout.HeadDim}");
        Positions(nameof(KvWrite), layout, blockTable, startPosition, qkv.Rows);
    }

    private static void Positions(string op, KvCacheLayout layout, DeviceTensor blockTable, int start, int count)
    {
        Require(blockTable.Rows == 1, op, () => $"blockTable must be [1, n], got {blockTable.ShapeText}");
        Require(start >= 0 && (long)start + count <= (long)blockTable.Columns * layout.BlockSize, op,
            () => $"positions [{start}, {start + count}) exceed the block table's {blockTable.Columns} blocks of {layout.BlockSize}");
    }

    public static void Attention(DeviceTensor output, DeviceTensor qkv, KvCacheLayout layout, DeviceTensor blockTable, int committed, DeviceTensor? mask)
    {
        Float(nameof(Attention), "output", output);
        Float(nameof(Attention), "qkv", qkv);
        int heads = output.Columns / layout.HeadDim;
        Require(output.Rows == qkv.Rows && output.Columns % layout.HeadDim == 0 && heads % layout.KvHeads == 0, nameof(Attention),
            () => $"output {output.ShapeText} must be [T, H·Dh] with Dh={layout.HeadDim} and H a multiple of Hkv={layout.KvHeads}, T={qkv.Rows}");
        Require(qkv.Columns >= heads * layout.HeadDim, nameof(Attention),
            () => $"qkv {qkv.ShapeText} is narrower than the H·Dh = {heads * layout.HeadDim} query columns");
        Require(committed >= 0, nameof(Attention), () => $"committed length {committed} is negative");
        Positions(nameof(Attention), layout, blockTable, 0, committed + qkv.Rows);
        if (mask is not null)
        {
            Int(nameof(Attention), "mask", mask);
            Require(mask.Rows == qkv.Rows && mask.Columns == qkv.Rows, nameof(Attention), () => $"mask {mask.ShapeText} must be [T, T] with T={qkv.Rows}");
        }
    }

    public static void SwiGlu(DeviceTensor output, DeviceTensor gateUp)
    {
        Float(nameof(SwiGlu), "output", output);
        Float(nameof(SwiGlu), "gateUp", gateUp);
        Require(output.Rows == gateUp.Rows && gateUp.Columns == 2 * output.Columns, nameof(SwiGlu),
            () => $"output {output.ShapeText}, gateUp {gateUp.ShapeText}: expected [T, F] and [T, 2F]");
    }

    public static void SameShape(string op, DeviceTensor output, DeviceTensor a, DeviceTensor b)
    {
        Float(op, "output", output);
        Float(op, "a", a);
        Float(op, "b", b);
        Require(output.Rows == a.Rows && a.Rows == b.Rows && output.Columns == a.Columns && a.Columns == b.Columns, op,
            () => $"shapes differ: {output.ShapeText}, {a.ShapeText}, {b.ShapeText}");
    }

    public static void SiluResidual(DeviceTensor output, DeviceTensor input, DeviceTensor linear, DeviceTensor bias)
    {
        SameShape(nameof(SiluResidual), output, input, linear);
        Weight(nameof(SiluResidual), "bias", bias);
        Require((bias.Rows == 1 || bias.Rows == output.Rows) && bias.Columns == output.Columns, nameof(SiluResidual),
            () => $"bias {bias.ShapeText} must be [1, {output.Columns}] or [{output.Rows}, {output.Columns}]");
    }

    /// <summary>Add: output and a of one shape; b of that shape or one row of it (added to every row).</summary>
    public static void Add(DeviceTensor output, DeviceTensor a, DeviceTensor b)
    {
        Float(nameof(Add), "output", output);
        Float(nameof(Add), "a", a);
        Float(nameof(Add), "b", b);
        Require(output.Rows == a.Rows && output.Columns == a.Columns && b.Columns == a.Columns && (b.Rows == a.Rows || b.Rows == 1), nameof(Add),
            () => $"output {output.ShapeText}, a {a.ShapeText}, b {b.ShapeText}: expected [R, C], [R, C] and [R, C] or [1, C]");
    }

    /// <summary>Grouped matmul: output [G, N], input [G or 1, K], weight [G·N, K].</summary>
    public static void GroupedMatMul(DeviceTensor output, DeviceTensor input, DeviceTensor weight)
    {
        Float(nameof(GroupedMatMul), "output", output);
        Float(nameof(GroupedMatMul), "input", input);
        Weight(nameof(GroupedMatMul), "weight", weight);
        Require(output.Rows > 0 && (input.Rows == output.Rows || input.Rows == 1) && input.Columns == weight.Columns
                && (long)output.Rows * output.Columns == weight.Rows, nameof(GroupedMatMul),
            () => $"output {output.ShapeText}, input {input.ShapeText}, weight {weight.ShapeText}: expected [G, N], [G or 1, K], [G·N, K]");
    }

    public static void ArgMax(DeviceTensor output, DeviceTensor logits)
    {
        Int(nameof(ArgMax), "output", output);
        Float(nameof(ArgMax), "logits", logits);
        Require(output.Rows == logits.Rows && output.Columns == 1 && logits.Columns > 0, nameof(ArgMax),
            () => $"output {output.ShapeText}, logits {logits.ShapeText}: expected [T, 1] and [T, V]");
    }

    public static void TopK(DeviceTensor indices, DeviceTensor values, DeviceTensor logits)
    {
        Int(nameof(TopK), "indices", indices);
        Float(nameof(TopK), "values", values);
        Float(nameof(TopK), "logits", logits);
        Require(indices.Rows == logits.Rows && values.Rows == logits.Rows && indices.Columns == values.Columns
            && indices.Columns > 0 && indices.Columns <= logits.Columns, nameof(TopK),
            () => $"indices {indices.ShapeText}, values {values.ShapeText}, logits {logits.ShapeText}: expected [T, k], [T, k], [T, V] with 0 < k ≤ V");
    }

    public static void SoftmaxStats(DeviceTensor output, DeviceTensor logits)
    {
        Float(nameof(SoftmaxStats), "output", output);
        Float(nameof(SoftmaxStats), "logits", logits);
        Require(output.Rows == logits.Rows && output.Columns == 3 && logits.Columns > 0, nameof(SoftmaxStats),
            () => $"output {output.ShapeText}, logits {logits.ShapeText}: expected [T, 3] and [T, V]");
    }

    public static void GatherInts(DeviceTensor output, DeviceTensor source, ReadOnlySpan<int> indices, DeviceTensor? map)
    {
        Int(nameof(GatherInts), "output", output);
        Int(nameof(GatherInts), "source", source);
        if (map is not null) Int(nameof(GatherInts), "map", map);
        long length = (long)source.Rows * source.Columns;
        int count = indices.Length;
        Require((long)output.Rows * output.Columns == count && count <= IComputeBackend.MaxGatherInts, nameof(GatherInts),
            () => $"output {output.ShapeText} for {count} indices: expected as many elements, at most {IComputeBackend.MaxGatherInts}");
        foreach (int index in indices)
            if (index < 0 || index >= length) // a plain check: a message lambda here would allocate on every decode step
                throw new ArgumentException($"{nameof(GatherInts)}: index {index} outside source {source.ShapeText}");
    }

    public static void KvCompact(KvCacheLayout layout, DeviceTensor blockTable, DeviceTensor sources, int destinationStart)
    {
        Int(nameof(KvCompact), "sources", sources);
        Int(nameof(KvCompact), "blockTable", blockTable);
        Require(sources.Columns == 1, nameof(KvCompact), () => $"sources must be [n, 1], got {sources.ShapeText}");
        Positions(nameof(KvCompact), layout, blockTable, destinationStart, sources.Rows);
    }
}
