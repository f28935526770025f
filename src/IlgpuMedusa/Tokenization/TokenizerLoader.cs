namespace IlgpuMedusa.Tokenization;

/// <summary>Placeholder: being written.</summary>
public static class TokenizerLoader
{
    /// <summary>Loads the tokenizer of a model directory.</summary>
    public static ITextTokenizer Load(string directory) =>
        throw new NotSupportedException($"{directory}: tokenizer not implemented yet");
}
