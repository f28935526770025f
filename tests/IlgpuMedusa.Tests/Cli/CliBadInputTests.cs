namespace IlgpuMedusa.Tests.Cli;

/// <summary>Bad input to the command: a clear one-line error naming what is wrong, a non-zero exit, no crash.</summary>
public class CliBadInputTests
{
    private static void AssertCleanFailure(CliRunner.Result result, params string[] mustMention)
    {
        Assert.NotEqual(0, result.ExitCode);
        var lastLine = result.StandardError.TrimEnd().Split('\n')[^1];
        Assert.StartsWith("error: ", lastLine, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled exception", result.StandardError, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", result.StandardError, StringComparison.Ordinal); // no stack trace
        foreach (var text in mustMention) Assert.Contains(text, result.StandardError, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public void MissingModelDirectory()
    {
        var missing = Path.Combine(TestModels.TempDirectory("missing"), "no-such-model");
        var result = CliRunner.Run("generate", "--model", missing, "--prompt", "Hi");
        AssertCleanFailure(result, missing, "does not exist");
    }

    [Fact]
    public void TruncatedCheckpoint()
    {
        var dir = TestModels.TempDirectory("truncated");
        var source = Path.Combine(TestModels.Stories15MDirectory, "stories15M.bin");
        using (var input = File.OpenRead(source))
        using (var output = File.Create(Path.Combine(dir, "stories15M.bin")))
        {
            var buffer = new byte[1_000_000];
            int read = input.Read(buffer);
            output.Write(buffer, 0, read);
        }
        File.Copy(Path.Combine(TestModels.Stories15MDirectory, "tokenizer.bin"), Path.Combine(dir, "tokenizer.bin"));
        var result = CliRunner.Run("generate", "--model", dir, "--prompt", "Hi", "--device", "host");
        AssertCleanFailure(result, "stories15M.bin", "truncated");
    }

    [Fact]
    public void PromptLongerThanTheContext()
    {
        var prompt = string.Concat(Enumerable.Repeat("Once upon a time there was a cat. ", 40)); // about 360 tokens > 256
        var result = CliRunner.Run("generate", "--model", TestModels.Stories15MDirectory, "--prompt", prompt, "--device", "host");
        AssertCleanFailure(result, "prompt", "context is 256");
    }

    [Theory]
    [InlineData("0")]
    [InlineData("-5")]
    public void MaxTokensNotPositive(string value)
    {
        var result = CliRunner.Run("generate", "--model", TestModels.Stories15MDirectory, "--prompt", "Hi", "--max-tokens", value, "--device", "host");
        AssertCleanFailure(result, "--max-tokens");
    }

    [Fact]
    public void TopPOutOfRange()
    {
        var result = CliRunner.Run("generate", "--model", TestModels.Stories15MDirectory, "--prompt", "Hi", "--temperature", "0.8", "--top-p", "1.5");
        AssertCleanFailure(result, "top-p");
    }

    [Fact]
    public void UnknownResponseFormat()
    {
        var result = CliRunner.Run("generate", "--model", TestModels.Stories15MDirectory, "--prompt", "Hi", "--response-format", "yaml", "--device", "host");
        AssertCleanFailure(result, "--response-format", "yaml", "json");
    }

    [Fact]
    public void JsonSchemaMistakes_AreNamed()
    {
        string dir = Directory.CreateTempSubdirectory("ilgpu-medusa-schema-").FullName;
        try
        {
            string[] common = ["generate", "--model", TestModels.Stories15MDirectory, "--prompt", "Hi", "--device", "host"];
            AssertCleanFailure(CliRunner.Run([.. common, "--response-format", "json_schema"]), "--response-format json_schema needs --json-schema");
            AssertCleanFailure(CliRunner.Run([.. common, "--json-schema", Path.Combine(dir, "missing.json")]), "--json-schema", "missing.json");
            string bad = Path.Combine(dir, "bad.json");
            File.WriteAllText(bad, """{"type": "object", "properties": {"when": {"type": "string", "pattern": "^2"}}}""");
            AssertCleanFailure(CliRunner.Run([.. common, "--json-schema", bad]), "bad.json", "$.properties.when", "pattern");
            AssertCleanFailure(CliRunner.Run([.. common, "--json-schema", bad, "--response-format", "json"]), "--json-schema", "json_schema");
            string big = Path.Combine(dir, "big.json");
            File.WriteAllText(big, new string(' ', IlgpuMedusa.Generation.GenerationOptions.MaxJsonSchemaBytes + 1));
            AssertCleanFailure(CliRunner.Run([.. common, "--json-schema", big]), "big.json", "bytes");
            // A device says its length is 0: the read stops one byte past the limit all the same.
            AssertCleanFailure(CliRunner.Run([.. common, "--json-schema", "/dev/zero"]), "/dev/zero", "bytes");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void UnknownDevice()
    {
        var result = CliRunner.Run("generate", "--model", TestModels.Stories15MDirectory, "--prompt", "Hi", "--device", "tpu");
        AssertCleanFailure(result, "--device", "tpu", "host");
    }

    [Theory]
    [InlineData("generate", "bf16")]
    [InlineData("generate", "garbage")]
    [InlineData("profile", "bf16")]
    public void KvDtypeOtherThanF32OrF16_IsAUsageError(string command, string value)
    {
        var arguments = command == "generate"
            ? new[] { "generate", "--model", TestModels.Stories15MDirectory, "--prompt", "Hi", "--device", "host", "--kv-dtype", value }
            : ["profile", "--model", TestModels.Stories15MDirectory, "--device", "host", "--kv-dtype", value];
        var result = CliRunner.Run(arguments);
        Assert.Equal(2, result.ExitCode); // a usage error, like a malformed number
        Assert.Contains($"error: --kv-dtype: '{value}' is not a KV cache element type; expected f32 or f16.", result.StandardError, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", result.StandardError, StringComparison.Ordinal);
    }

    /// <summary>A copy of the demo model whose llama2.c header has these seven fields (the weights stay as they are).</summary>
    private static string ModelWithHeader(string name, params int[] header)
    {
        var dir = TestModels.TempDirectory(name);
        var bytes = File.ReadAllBytes(Path.Combine(TestModels.Stories15MDirectory, "stories15M.bin"));
        for (int i = 0; i < header.Length; i++) BitConverter.TryWriteBytes(bytes.AsSpan(4 * i, 4), header[i]);
        File.WriteAllBytes(Path.Combine(dir, "stories15M.bin"), bytes);
        File.Copy(Path.Combine(TestModels.Stories15MDirectory, "tokenizer.bin"), Path.Combine(dir, "tokenizer.bin"));
        return dir;
    }

    [Fact]
    public void Llama2cVocabularyOfIntMinValue()
    {
        var dir = ModelWithHeader("vocab-min", 288, 768, 6, 6, 6, int.MinValue, 256);
        AssertCleanFailure(CliRunner.Run("generate", "--model", dir, "--prompt", "Hi", "--device", "host"), "vocab_size", "-2147483648");
    }

    [Fact]
    public void Llama2cHeaderWhoseSizesWrapAroundToTheFileLength()
    {
        // 4 · (the floats these fields imply) wraps a 64-bit integer around to exactly 16,412 bytes: the size check must
        // not accept it (the loader then read far past the file).
        var dir = TestModels.TempDirectory("wrapped-header");
        var bytes = new byte[16_412];
        int[] header = [4096, 2000001216, 187649, 2048, 2048, 2147482558, 1];
        for (int i = 0; i < header.Length; i++) BitConverter.TryWriteBytes(bytes.AsSpan(4 * i, 4), header[i]);
        File.WriteAllBytes(Path.Combine(dir, "model.bin"), bytes);
        File.Copy(Path.Combine(TestModels.Stories15MDirectory, "tokenizer.bin"), Path.Combine(dir, "tokenizer.bin"));
        AssertCleanFailure(CliRunner.Run("generate", "--model", dir, "--prompt", "Hi", "--device", "host"), "model.bin", "16412 bytes");
    }

    [Theory]
    [InlineData("empty")]
    [InlineData("pieces only")]
    public void BrokenTokenizerModel(string kind)
    {
        // A Hugging Face layout of the demo model, its tokenizer.model replaced: empty, or a ModelProto with pieces and
        // no trainer or normalizer section (field 1, one piece "a").
        var dir = TestModels.TempDirectory("bad-tokenizer-model");
        Assert.Equal(0, CliRunner.Run("convert", "--model", TestModels.Stories15MDirectory, "--out", dir, "--force").ExitCode);
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), kind == "empty" ? [] : [0x0A, 0x08, 0x0A, 0x01, (byte)'a', 0x15, 0, 0, 0x80, 0xBF]);
        AssertCleanFailure(CliRunner.Run("tokenize", "--model", dir, "--text", "Hi"), "tokenizer.model");
        // convert checks the tokenizer before it writes anything
        var output = Path.Combine(TestModels.TempDirectory("bad-tokenizer-out"), "out");
        AssertCleanFailure(CliRunner.Run("convert", "--model", dir, "--out", output), "tokenizer.model");
        Assert.False(Directory.Exists(output) && Directory.EnumerateFileSystemEntries(output).Any());
    }

    [Theory]
    [InlineData("0")]
    [InlineData("100000")]
    public void ThreadsOutOfRange(string value)
    {
        var result = CliRunner.Run("generate", "--model", TestModels.Stories15MDirectory, "--prompt", "Hi", "--device", "host", "--threads", value);
        AssertCleanFailure(result, "--threads");
    }

    [Fact]
    public void KvBudgetLargerThanMemory()
    {
        // 2^31 MiB (2 PiB): no machine can hold it; the allocation's failure names the option instead of aborting.
        var result = CliRunner.Run("generate", "--model", TestModels.Stories15MDirectory, "--prompt", "Hi", "--device", "host", "--kv-budget-mb", int.MaxValue.ToString(System.Globalization.CultureInfo.InvariantCulture));
        AssertCleanFailure(result, "--kv-budget-mb");
    }

    [Fact]
    public void ConvertOntoItsOwnSourceThroughASymbolicLink()
    {
        var root = TestModels.TempDirectory("convert-link");
        var source = Path.Combine(root, "hf");
        Assert.Equal(0, CliRunner.Run("convert", "--model", TestModels.Stories15MDirectory, "--out", source, "--dtype", "f16").ExitCode);
        var before = File.ReadAllBytes(Path.Combine(source, "model.safetensors"));
        var link = Path.Combine(root, "hf-link");
        Directory.CreateSymbolicLink(link, source);
        AssertCleanFailure(CliRunner.Run("convert", "--model", source, "--out", link, "--force"), "source directory");
        Assert.Equal(before, File.ReadAllBytes(Path.Combine(source, "model.safetensors")));
    }

    [Fact]
    public void TreeDeeperThanTheHeadsFailsBeforeAnyOutput()
    {
        var tree = Path.Combine(TestModels.TempDirectory("deep-tree"), "deep.json");
        File.WriteAllText(tree, "[[0], [0, 0], [0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0, 0]]");
        var result = CliRunner.Run("generate", "--model", TestModels.Stories15MDirectory, "--prompt", "Hi", "--device", "host", "--tree", tree);
        AssertCleanFailure(result, "deep.json", "depth 5");
        Assert.Equal("", result.StandardOutput);
    }

    [Fact]
    public void BenchAndProfileNeedADecodeStep()
    {
        // One token is the prefill's: no decode step would be timed (bench printed 26,000 tok/s, profile Infinity).
        AssertCleanFailure(CliRunner.Run("bench", "--model", TestModels.Stories15MDirectory, "--device", "host", "--max-tokens", "1"), "--max-tokens", "at least 2");
        AssertCleanFailure(CliRunner.Run("profile", "--model", TestModels.Stories15MDirectory, "--device", "host", "--prompt-tokens", "16", "--decode-tokens", "1"), "--decode-tokens", "at least 2");
    }

    [Fact]
    public void PrefixCacheBenchOptionsThatCannotGoTogether_AreNamed()
    {
        string[] bench = ["bench", "--model", TestModels.Stories15MDirectory, "--device", "host", "--max-tokens", "8"];
        AssertCleanFailure(CliRunner.Run([.. bench, "--prefix-tokens", "40"]), "--prefix-tokens", "--prefix-cache");
        AssertCleanFailure(CliRunner.Run([.. bench, "--prefix-cache", "--no-prefix-cache"]), "--prefix-cache", "--no-prefix-cache");
        AssertCleanFailure(CliRunner.Run([.. bench, "--prefix-cache", "--concurrency", "2"]), "--prefix-cache", "--concurrency");
        AssertCleanFailure(CliRunner.Run([.. bench, "--prefix-cache", "--prefix-tokens", "250"]), "--prefix-tokens", "context of 256");
    }

    [Fact]
    public void ProfileOptionsSummingPastAnIntAreNamed()
    {
        var result = CliRunner.Run("profile", "--model", TestModels.Stories15MDirectory, "--device", "host", "--prompt-tokens", "16", "--tree-sizes", "2147483647");
        AssertCleanFailure(result, "--decode-tokens", "largest tree (2147483647)", "exceeds the model's context");
    }

    [Fact]
    public void ConcurrencyBenchWithAPromptLongerThanTheContext()
    {
        var prompts = Path.Combine(TestModels.TempDirectory("long-prompts"), "prompts.txt");
        File.WriteAllText(prompts, "Once upon a time\n" + string.Join(' ', Enumerable.Repeat("and then the little dog ran", 80)) + "\n");
        var result = CliRunner.Run("bench", "--model", TestModels.Stories15MDirectory, "--device", "host", "--max-tokens", "8", "--concurrency", "2", "--prompts", prompts);
        AssertCleanFailure(result, "the prompt is", "context is 256");
    }
}
