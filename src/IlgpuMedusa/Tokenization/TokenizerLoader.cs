namespace IlgpuMedusa.Tokenization;

/// <summary>
/// Finds and loads the tokenizer of a model directory: tokenizer.model (SentencePiece) when present, else a Hugging Face
/// tokenizer.json of a byte-level BPE tokenizer (<see cref="ByteLevelBpeTokenizer"/>: GPT-2, Llama 3, Qwen, SmolLM), else
/// llama2.c's tokenizer.bin converted in memory to the same SentencePiece model.
/// </summary>
public static class TokenizerLoader
{
    /// <summary>File name of a SentencePiece model (Hugging Face Llama layout).</summary>
    public const string SentencePieceFileName = "tokenizer.model";

    /// <summary>File name of a llama2.c tokenizer.</summary>
    public const string Llama2cFileName = "tokenizer.bin";

    /// <summary>File name of a Hugging Face tokenizers JSON file (byte-level BPE ones are supported).</summary>
    public const string HuggingFaceJsonFileName = "tokenizer.json";

    /// <summary>Real tokenizer.model files are a few MB; anything far larger is refused before it is read into memory.</summary>
    private const long MaxSentencePieceModelBytes = 64L * 1024 * 1024;

    /// <summary>Loads the tokenizer of <paramref name="directory"/>; for tokenizer.bin the vocabulary size is the file's token count.</summary>
    /// <exception cref="DirectoryNotFoundException">The directory does not exist.</exception>
    /// <exception cref="FileNotFoundException">The directory has none of tokenizer.model, tokenizer.json and tokenizer.bin.</exception>
    /// <exception cref="InvalidDataException">The tokenizer file is truncated or corrupt.</exception>
    /// <exception cref="NotSupportedException">tokenizer.json describes a tokenizer other than byte-level BPE.</exception>
    public static ITextTokenizer Load(string directory) => Load(directory, vocabularySize: null);

    /// <summary>Loads the tokenizer of <paramref name="directory"/> for a model whose vocabulary has <paramref name="vocabularySize"/> ids.</summary>
    /// <param name="directory">The model directory.</param>
    /// <param name="vocabularySize">
    /// The model's vocabulary size: a tokenizer.bin must hold exactly this many tokens; a tokenizer.model must not hold more
    /// (Hugging Face models may pad their embedding past the tokenizer); a tokenizer.json's ids must fit it, and the
    /// tokenizer then covers all of it (ids it leaves out decode to nothing).
    /// </param>
    /// <exception cref="DirectoryNotFoundException">The directory does not exist.</exception>
    /// <exception cref="FileNotFoundException">The directory has none of tokenizer.model, tokenizer.json and tokenizer.bin.</exception>
    /// <exception cref="InvalidDataException">The tokenizer file is truncated, corrupt, or does not fit the vocabulary size.</exception>
    /// <exception cref="NotSupportedException">tokenizer.json describes a tokenizer other than byte-level BPE.</exception>
    public static ITextTokenizer Load(string directory, int vocabularySize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(vocabularySize);
        return Load(directory, (int?)vocabularySize);
    }

    /// <summary>
    /// The SentencePiece ModelProto bytes for <paramref name="directory"/>: tokenizer.model's contents, or the model built from
    /// tokenizer.bin (token count from the file). Write them to a tokenizer.model file to convert a llama2.c model directory.
    /// </summary>
    /// <exception cref="DirectoryNotFoundException">The directory does not exist.</exception>
    /// <exception cref="FileNotFoundException">The directory has neither tokenizer.model nor tokenizer.bin.</exception>
    /// <exception cref="InvalidDataException">tokenizer.bin is truncated or corrupt.</exception>
    public static byte[] GetSentencePieceModelBytes(string directory) => GetSentencePieceModelBytes(directory, null, out _);

    /// <summary>As <see cref="GetSentencePieceModelBytes(string)"/>, with a tokenizer.bin required to hold exactly <paramref name="vocabularySize"/> tokens.</summary>
    /// <param name="directory">The model directory.</param>
    /// <param name="vocabularySize">The model's vocabulary size.</param>
    /// <exception cref="DirectoryNotFoundException">The directory does not exist.</exception>
    /// <exception cref="FileNotFoundException">The directory has neither tokenizer.model nor tokenizer.bin.</exception>
    /// <exception cref="InvalidDataException">tokenizer.bin is truncated, corrupt, or holds another number of tokens.</exception>
    public static byte[] GetSentencePieceModelBytes(string directory, int vocabularySize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(vocabularySize);
        return GetSentencePieceModelBytes(directory, vocabularySize, out _);
    }

    private static ITextTokenizer Load(string directory, int? vocabularySize)
    {
        ArgumentNullException.ThrowIfNull(directory);
        string json = Path.Combine(directory, HuggingFaceJsonFileName);
        if (Directory.Exists(directory) && !File.Exists(Path.Combine(directory, SentencePieceFileName)) && File.Exists(json))
            return ByteLevelBpeTokenizer.Load(json, vocabularySize);
        var bytes = GetSentencePieceModelBytes(directory, vocabularySize, out string source);
        var tokenizer = LlamaTextTokenizer.FromSentencePieceModel(bytes, source);
        if (vocabularySize is int size && tokenizer.VocabularySize > size)
            throw new InvalidDataException(
                $"{source}: the tokenizer has {tokenizer.VocabularySize} tokens but the model's vocabulary has {size}; its ids would not fit the model.");
        return tokenizer;
    }

    private static byte[] GetSentencePieceModelBytes(string directory, int? vocabularySize, out string source)
    {
        ArgumentNullException.ThrowIfNull(directory);
        if (!Directory.Exists(directory))
            throw new DirectoryNotFoundException($"tokenizer directory '{directory}' does not exist");

        source = Path.Combine(directory, SentencePieceFileName);
        if (File.Exists(source))
            return ReadSentencePieceModel(source);

        source = Path.Combine(directory, Llama2cFileName);
        if (File.Exists(source))
        {
            return vocabularySize is int size
                ? SentencePieceModelBuilder.FromLlama2cTokenizer(source, size)
                : SentencePieceModelBuilder.FromLlama2cTokenizer(source);
        }

        string jsonNote = File.Exists(Path.Combine(directory, HuggingFaceJsonFileName))
            ? $"; its {HuggingFaceJsonFileName} is a byte-level BPE tokenizer, which has no SentencePiece model"
            : "";
        throw new FileNotFoundException(
            $"no tokenizer in '{directory}': looked for {SentencePieceFileName} (SentencePiece), {HuggingFaceJsonFileName} (Hugging Face, byte-level BPE) and {Llama2cFileName} (llama2.c){jsonNote}.",
            Path.Combine(directory, SentencePieceFileName));
    }

    private static byte[] ReadSentencePieceModel(string path)
    {
        long length = new FileInfo(path).Length;
        if (length > MaxSentencePieceModelBytes)
            throw new InvalidDataException($"{path}: {length} bytes is too large for a SentencePiece tokenizer.model (at most {MaxSentencePieceModelBytes} accepted).");
        return File.ReadAllBytes(path);
    }
}
