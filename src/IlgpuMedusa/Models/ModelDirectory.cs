using IlgpuMedusa.Tokenization;

namespace IlgpuMedusa.Models;

/// <summary>
/// Opens a model directory in either layout: Hugging Face (config.json + safetensors + tokenizer.model or tokenizer.json) or
/// llama2.c (one <c>.bin</c> checkpoint + tokenizer.bin).
/// </summary>
public static class ModelDirectory
{
    /// <summary>Opens the checkpoint in <paramref name="directory"/> (memory-mapped).</summary>
    public static ICheckpoint OpenCheckpoint(string directory)
    {
        RequireDirectory(directory);
        if (File.Exists(Path.Combine(directory, "config.json")))
            return HuggingFaceCheckpoint.Open(directory);
        var bins = Directory.GetFiles(directory, "*.bin")
            .Where(f => !Path.GetFileName(f).Equals("tokenizer.bin", StringComparison.OrdinalIgnoreCase))
            .Order(StringComparer.Ordinal)
            .ToArray();
        return bins.Length switch
        {
            1 => Llama2cCheckpoint.Open(bins[0]),
            0 => throw new FileNotFoundException(
                $"{directory}: no model found: expected config.json with model.safetensors (Hugging Face layout) or one llama2.c .bin checkpoint with tokenizer.bin."),
            _ => throw new InvalidDataException(
                $"{directory}: several llama2.c checkpoints ({string.Join(", ", bins.Select(Path.GetFileName))}); keep one per directory."),
        };
    }

    /// <summary>Opens the tokenizer of the model in <paramref name="directory"/>.</summary>
    public static ITextTokenizer OpenTokenizer(string directory)
    {
        RequireDirectory(directory);
        return TokenizerLoader.Load(directory);
    }

    /// <summary>
    /// Opens the tokenizer of the model in <paramref name="directory"/>, whose vocabulary has <paramref name="vocabularySize"/>
    /// ids (see <see cref="TokenizerLoader.Load(string, int)"/>).
    /// </summary>
    public static ITextTokenizer OpenTokenizer(string directory, int vocabularySize)
    {
        RequireDirectory(directory);
        return TokenizerLoader.Load(directory, vocabularySize);
    }

    private static void RequireDirectory(string directory)
    {
        if (!Directory.Exists(directory))
            throw new DirectoryNotFoundException(
                $"model directory '{directory}' does not exist. For the demo model run: ilgpu-medusa fetch-demo --dir {directory}");
    }
}
