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
    public void UnknownDevice()
    {
        var result = CliRunner.Run("generate", "--model", TestModels.Stories15MDirectory, "--prompt", "Hi", "--device", "tpu");
        AssertCleanFailure(result, "--device", "tpu", "host");
    }
}
