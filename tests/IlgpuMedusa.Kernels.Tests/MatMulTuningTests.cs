namespace IlgpuMedusa.Kernels.Tests;

/// <summary>The tensor-core switches' parsing and the wave rule of the K splits (figures worked by hand).</summary>
public sealed class MatMulTuningTests
{
    /// <summary>Depth 1 to 4; unset is 4; anything else names the variable and the accepted values.</summary>
    [Fact]
    public void Prefetch_depth_parses_one_to_four()
    {
        Assert.Equal(4, MatMulTuning.ParseTensorPrefetch(null));
        Assert.Equal(4, MatMulTuning.ParseTensorPrefetch(" "));
        for (int d = 1; d <= 4; d++) Assert.Equal(d, MatMulTuning.ParseTensorPrefetch(d.ToString(System.Globalization.CultureInfo.InvariantCulture)));
        foreach (var bad in new[] { "0", "5", "two" })
        {
            var e = Assert.Throws<ArgumentException>(() => MatMulTuning.ParseTensorPrefetch(bad));
            Assert.Contains(MatMulTuning.TensorPrefetchVariable, e.Message, StringComparison.Ordinal);
            Assert.Contains("1, 2, 3 or 4", e.Message, StringComparison.Ordinal);
        }
    }

    /// <summary>auto (16384 rows), 1 (every plain or normed GEMV one row per warp) or 2 (never).</summary>
    [Fact]
    public void Gemv_rows_parse_auto_one_or_two()
    {
        Assert.Equal(16384, MatMulTuning.ParseWideRows(null));
        Assert.Equal(16384, MatMulTuning.ParseWideRows("AUTO"));
        Assert.Equal(int.MaxValue, MatMulTuning.ParseWideRows("1"));
        Assert.Equal(0, MatMulTuning.ParseWideRows("2"));
        var e = Assert.Throws<ArgumentException>(() => MatMulTuning.ParseWideRows("3"));
        Assert.Contains(MatMulTuning.WideRowsVariable, e.Message, StringComparison.Ordinal);
    }

    /// <summary>waves (the default) or fixed.</summary>
    [Fact]
    public void Split_rule_parses_waves_or_fixed()
    {
        Assert.True(MatMulTuning.ParseTensorSplits(null));
        Assert.True(MatMulTuning.ParseTensorSplits("Waves"));
        Assert.False(MatMulTuning.ParseTensorSplits("fixed"));
        var e = Assert.Throws<ArgumentException>(() => MatMulTuning.ParseTensorSplits("many"));
        Assert.Contains(MatMulTuning.TensorSplitsVariable, e.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// A 4096-row matrix at T = 64 has 64 groups of the staged kernel (64 rows each); with 3 resident groups on each of
    /// 132 multiprocessors (396 slots) it is split 6 ways: 384 groups, one wave. The old target of 4 per multiprocessor
    /// (528) asked for 9 splits: 576 groups, 1.45 waves. A launch that fills the device is not split.
    /// </summary>
    [Theory]
    [InlineData(64, 396, 6)]
    [InlineData(128, 396, 3)]
    [InlineData(200, 396, 1)]
    [InlineData(396, 396, 1)]
    [InlineData(1000, 396, 1)]
    [InlineData(1, 528, 528)]
    [InlineData(0, 396, 1)]
    public void Wave_splits_fill_one_wave(int groups, int slots, int splits)
    {
        Assert.Equal(splits, MatMulLauncher.WaveSplits(groups, slots));
        if (groups > 0) Assert.True((long)groups * splits <= Math.Max(slots, groups));
    }
}

/// <summary>The attention kernel switches: defaults, accepted values, the retired variable's message.</summary>
public sealed class AttentionChoiceTests
{
    /// <summary>Unset: warp for decoding, tiles for trees; the other values pass; anything else names the variable.</summary>
    [Fact]
    public void Choices_parse_with_their_defaults()
    {
        Assert.Equal("warp", AttentionLauncher.ParseDecodeChoice(null));
        Assert.Equal("per-token", AttentionLauncher.ParseDecodeChoice(" Per-Token "));
        Assert.Equal("blocks", AttentionLauncher.ParseDecodeChoice("blocks"));
        Assert.Equal("tiles", AttentionLauncher.ParseTreeChoice(""));
        Assert.Equal("blocks", AttentionLauncher.ParseTreeChoice("blocks"));
        Assert.Equal("per-token", AttentionLauncher.ParseTreeChoice("per-token"));
        var e = Assert.Throws<ArgumentException>(() => AttentionLauncher.ParseDecodeChoice("tiles"));
        Assert.Contains(AttentionLauncher.DecodeKernelVariable, e.Message, StringComparison.Ordinal);
        e = Assert.Throws<ArgumentException>(() => AttentionLauncher.ParseTreeChoice("warp"));
        Assert.Contains(AttentionLauncher.TreeKernelVariable, e.Message, StringComparison.Ordinal);
    }

    /// <summary>ILGPU_MEDUSA_ATTENTION set: an error naming both successors; unset or blank: nothing.</summary>
    [Fact]
    public void Retired_variable_names_its_successors()
    {
        AttentionLauncher.CheckRetiredVariable(null);
        AttentionLauncher.CheckRetiredVariable(" ");
        var e = Assert.Throws<ArgumentException>(() => AttentionLauncher.CheckRetiredVariable("tiles"));
        Assert.Contains(AttentionLauncher.DecodeKernelVariable, e.Message, StringComparison.Ordinal);
        Assert.Contains(AttentionLauncher.TreeKernelVariable, e.Message, StringComparison.Ordinal);
    }
}
