namespace IlgpuMedusa.Tokenization;

/// <summary>Text to token ids and back, for one model's vocabulary.</summary>
public interface ITextTokenizer
{
    /// <summary>Number of tokens in the vocabulary.</summary>
    int VocabularySize { get; }

    /// <summary>Beginning-of-sequence id.</summary>
    int BosId { get; }

    /// <summary>End-of-sequence id.</summary>
    int EosId { get; }

    /// <summary>Whether <see cref="Encode"/> puts BOS first when asked (tokenizers without a BOS token, such as Qwen's, do not).</summary>
    bool AddsBos => true;

    /// <summary>
    /// Encodes text (SentencePiece: Llama rules, dummy prefix, byte fallback; tokenizer.json: its own rules); BOS first
    /// when <paramref name="addBos"/> and <see cref="AddsBos"/>.
    /// </summary>
    IReadOnlyList<int> Encode(string text, bool addBos);

    /// <summary>Decodes ids to text (special tokens such as BOS/EOS produce no text).</summary>
    string Decode(IEnumerable<int> ids);

    /// <summary>
    /// A decoder for streaming that never emits half a UTF-8 character. At the start of a text the first piece's
    /// dummy-prefix space is dropped (as <see cref="Decode"/> does); when <paramref name="continuesText"/> is true the ids
    /// continue text already shown (a prompt), so that space is a real space between words and is kept.
    /// </summary>
    IStreamingDetokenizer CreateStreamingDetokenizer(bool continuesText = false);

    /// <summary>
    /// The UTF-8 bytes token <paramref name="id"/> stands for, as a log-probability listing shows it: a word piece's
    /// text with its leading space (no dummy-prefix removal), one raw byte for a byte-fallback token (possibly part of a
    /// character), nothing for BOS/EOS and other special tokens. This default decodes the id on its own.
    /// </summary>
    byte[] TokenBytes(int id) => System.Text.Encoding.UTF8.GetBytes(Decode([id]));

    /// <summary>
    /// The id of the special token whose text is <paramref name="content"/> (a chat template's marker such as
    /// <c>&lt;|eot_id|&gt;</c>), or null when the tokenizer has no such token. Special tokens are never read from text.
    /// This default has none.
    /// </summary>
    int? SpecialTokenId(string content) => null;

    /// <summary>
    /// The texts of the special tokens (what a model's own chat template writes as markers: <c>&lt;|im_start|&gt;</c>,
    /// <c>&lt;|eot_id|&gt;</c>...; see <see cref="Hosting.ModelChatTemplate"/>). This default has none.
    /// </summary>
    IReadOnlyCollection<string> SpecialTokens => [];
}

/// <summary>Turns a stream of generated ids into text deltas, holding back incomplete UTF-8 sequences.</summary>
public interface IStreamingDetokenizer
{
    /// <summary>Adds one generated id; returns the text that is now complete (possibly empty).</summary>
    string Append(int tokenId);

    /// <summary>Returns whatever text is still held back (incomplete bytes become U+FFFD).</summary>
    string Flush();
}
