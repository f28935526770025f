namespace IlgpuMedusa.Tokenization;

/// <summary>Placeholder: being written. Builds a SentencePiece ModelProto (tokenizer.model bytes) from llama2.c's tokenizer.bin.</summary>
public static class SentencePieceModelBuilder
{
    /// <summary>The tokenizer.model bytes equivalent to a llama2.c tokenizer.bin.</summary>
    public static byte[] FromLlama2cTokenizer(string tokenizerBinPath, int vocabularySize) =>
        throw new NotSupportedException($"{tokenizerBinPath}: not implemented yet");
}
