using System.Text;
using Google.Protobuf;

namespace IlgpuMedusa.Tokenization;

/// <summary>
/// Builds a SentencePiece <c>ModelProto</c> (the bytes of a tokenizer.model file) from llama2.c's tokenizer.bin, so that
/// one SentencePiece implementation serves both model layouts.
/// </summary>
/// <remarks>
/// llama2.c exports the Llama SentencePiece vocabulary in its own layout: id 0 <c>&lt;unk&gt;</c>, ids 1 and 2 BOS/EOS
/// (stored as <c>"\n&lt;s&gt;\n"</c> and <c>"\n&lt;/s&gt;\n"</c>), ids 3..258 the 256 byte-fallback tokens (stored as the
/// byte, as its Latin-1 character in UTF-8, or as <c>&lt;0xNN&gt;</c>), then the normal pieces with ' ' for U+2581.
/// The ModelProto restores SentencePiece's names and types; field numbers follow sentencepiece_model.proto.
/// </remarks>
public static class SentencePieceModelBuilder
{
    /// <summary>Id of <c>&lt;unk&gt;</c> in the llama2.c layout.</summary>
    public const int UnknownId = 0;

    /// <summary>Id of <c>&lt;s&gt;</c> (beginning of sequence) in the llama2.c layout.</summary>
    public const int BosId = 1;

    /// <summary>Id of <c>&lt;/s&gt;</c> (end of sequence) in the llama2.c layout.</summary>
    public const int EosId = 2;

    /// <summary>Id of the byte token <c>&lt;0x00&gt;</c>; byte b has id <c>FirstByteId + b</c>.</summary>
    public const int FirstByteId = 3;

    /// <summary>The smallest vocabulary the layout allows: three special tokens and 256 byte tokens.</summary>
    public const int MinimumVocabularySize = FirstByteId + 256;

    /// <summary>SentencePiece's whitespace marker U+2581 (LOWER ONE EIGHTH BLOCK), which stands for ' ' inside pieces.</summary>
    internal const char SpaceMarker = '\u2581';

    // sentencepiece_model.proto field numbers (checked against Microsoft.ML.Tokenizers' generated ModelProto).
    private const int ModelPiecesField = 1, ModelTrainerSpecField = 2, ModelNormalizerSpecField = 3;
    private const int PieceTextField = 1, PieceScoreField = 2, PieceTypeField = 3;
    private const int TrainerModelTypeField = 3, TrainerVocabSizeField = 4, TrainerByteFallbackField = 35;
    private const int TrainerUnkIdField = 40, TrainerBosIdField = 41, TrainerEosIdField = 42, TrainerPadIdField = 43;
    private const int NormalizerNameField = 1, NormalizerAddDummyPrefixField = 3;
    private const int NormalizerRemoveExtraWhitespacesField = 4, NormalizerEscapeWhitespacesField = 5;

    private const int ModelTypeBpe = 2;
    private const int NoPadId = -1;

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>SentencePiece piece types (sentencepiece_model.proto, <c>SentencePiece.Type</c>).</summary>
    private enum PieceType
    {
        Normal = 1,
        Unknown = 2,
        Control = 3,
        Byte = 6,
    }

    /// <summary>The tokenizer.model bytes equivalent to a llama2.c tokenizer.bin holding exactly <paramref name="vocabularySize"/> tokens.</summary>
    /// <param name="tokenizerBinPath">Path of the tokenizer.bin file.</param>
    /// <param name="vocabularySize">The model's vocabulary size (the checkpoint header's vocab_size); the file must hold exactly this many tokens.</param>
    /// <exception cref="InvalidDataException">The file is truncated, corrupt, or holds another number of tokens; the message names the file and the token.</exception>
    public static byte[] FromLlama2cTokenizer(string tokenizerBinPath, int vocabularySize)
    {
        ArgumentNullException.ThrowIfNull(tokenizerBinPath);
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabularySize, MinimumVocabularySize);
        return Build(Llama2cTokenizerFile.Read(tokenizerBinPath, vocabularySize), tokenizerBinPath);
    }

    /// <summary>The tokenizer.model bytes equivalent to a llama2.c tokenizer.bin; the vocabulary size is the number of tokens in the file.</summary>
    /// <param name="tokenizerBinPath">Path of the tokenizer.bin file.</param>
    /// <exception cref="InvalidDataException">The file is truncated or corrupt; the message names the file and the token.</exception>
    public static byte[] FromLlama2cTokenizer(string tokenizerBinPath)
    {
        ArgumentNullException.ThrowIfNull(tokenizerBinPath);
        var entries = Llama2cTokenizerFile.Read(tokenizerBinPath, expectedCount: null);
        if (entries.Length < MinimumVocabularySize)
            throw Llama2cTokenizerFile.Corrupt(tokenizerBinPath, $"it holds {entries.Length} tokens; the Llama layout needs at least {MinimumVocabularySize} (3 special + 256 byte tokens)");
        return Build(entries, tokenizerBinPath);
    }

    /// <summary>Names and types the entries as SentencePiece expects them and encodes the ModelProto.</summary>
    internal static byte[] Build(IReadOnlyList<Llama2cVocabularyEntry> entries, string path)
    {
        var firstIdOfPiece = new Dictionary<string, int>(entries.Count, StringComparer.Ordinal);
        using var buffer = new MemoryStream(entries.Count * 16);
        using (var output = new CodedOutputStream(buffer, leaveOpen: true))
        {
            for (int id = 0; id < entries.Count; id++)
            {
                var (piece, type) = NameAndType(id, entries[id].Bytes, path);
                if (!firstIdOfPiece.TryAdd(piece, id))
                    throw Llama2cTokenizerFile.Corrupt(path, $"token {id}: piece \"{piece}\" appears twice (first as token {firstIdOfPiece[piece]})");
                WritePiece(output, piece, entries[id].Score, type);
            }

            WriteMessage(output, ModelTrainerSpecField, spec =>
            {
                spec.WriteTag(TrainerModelTypeField, WireFormat.WireType.Varint);
                spec.WriteEnum(ModelTypeBpe);
                spec.WriteTag(TrainerVocabSizeField, WireFormat.WireType.Varint);
                spec.WriteInt32(entries.Count);
                spec.WriteTag(TrainerByteFallbackField, WireFormat.WireType.Varint);
                spec.WriteBool(true);
                spec.WriteTag(TrainerUnkIdField, WireFormat.WireType.Varint);
                spec.WriteInt32(UnknownId);
                spec.WriteTag(TrainerBosIdField, WireFormat.WireType.Varint);
                spec.WriteInt32(BosId);
                spec.WriteTag(TrainerEosIdField, WireFormat.WireType.Varint);
                spec.WriteInt32(EosId);
                spec.WriteTag(TrainerPadIdField, WireFormat.WireType.Varint);
                spec.WriteInt32(NoPadId);
            });

            // Llama's normalizer: no Unicode normalization ("identity"; Microsoft.ML.Tokenizers' LlamaTokenizer accepts no other),
            // a dummy space before the text, whitespace runs kept, spaces escaped as U+2581.
            WriteMessage(output, ModelNormalizerSpecField, spec =>
            {
                spec.WriteTag(NormalizerNameField, WireFormat.WireType.LengthDelimited);
                spec.WriteString("identity");
                spec.WriteTag(NormalizerAddDummyPrefixField, WireFormat.WireType.Varint);
                spec.WriteBool(true);
                spec.WriteTag(NormalizerRemoveExtraWhitespacesField, WireFormat.WireType.Varint);
                spec.WriteBool(false);
                spec.WriteTag(NormalizerEscapeWhitespacesField, WireFormat.WireType.Varint);
                spec.WriteBool(true);
            });
        }

        return buffer.ToArray();
    }

    /// <summary>The SentencePiece name and type of token <paramref name="id"/>, whose bytes in tokenizer.bin are <paramref name="bytes"/>.</summary>
    private static (string Piece, PieceType Type) NameAndType(int id, byte[] bytes, string path)
    {
        switch (id)
        {
            case UnknownId: return ("<unk>", PieceType.Unknown);
            case BosId: return ("<s>", PieceType.Control);
            case EosId: return ("</s>", PieceType.Control);
        }

        if (id < MinimumVocabularySize)
        {
            // The library recognises byte tokens by exactly these names.
            var value = (byte)(id - FirstByteId);
            var name = $"<0x{value:X2}>";
            if (!IsByteToken(bytes, value, name))
                throw Llama2cTokenizerFile.Corrupt(path, $"token {id}: expected the byte token for 0x{value:X2} (the byte itself, its Latin-1 character, or \"{name}\"), found {Describe(bytes)}");
            return (name, PieceType.Byte);
        }

        string text;
        try
        {
            text = StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException e)
        {
            throw new InvalidDataException($"{path}: not a valid llama2.c tokenizer.bin: token {id}: the piece {Describe(bytes)} is not valid UTF-8.", e);
        }

        // Whitespace-run pieces ("  ", "    ", ...) stay NORMAL: Llama's tokenizer.model has them as normal pieces.
        return (text.Replace(' ', SpaceMarker), PieceType.Normal);
    }

    private static bool IsByteToken(byte[] bytes, byte value, string name)
    {
        if (bytes.Length == 1)
            return bytes[0] == value;
        Span<byte> latin1 = stackalloc byte[2];
        int latin1Length = Encoding.UTF8.GetBytes([(char)value], latin1);
        return bytes.AsSpan().SequenceEqual(latin1[..latin1Length])
            || Encoding.ASCII.GetString(bytes).Equals(name, StringComparison.OrdinalIgnoreCase);
    }

    private static string Describe(byte[] bytes) =>
        $"{bytes.Length} bytes [{Convert.ToHexString(bytes.AsSpan(0, Math.Min(bytes.Length, 16)))}{(bytes.Length > 16 ? "..." : "")}]";

    /// <summary>Writes one <c>ModelProto.pieces</c> entry: the piece message with its length computed up front.</summary>
    private static void WritePiece(CodedOutputStream output, string piece, float score, PieceType type)
    {
        int size = CodedOutputStream.ComputeTagSize(PieceTextField) + CodedOutputStream.ComputeStringSize(piece)
                 + CodedOutputStream.ComputeTagSize(PieceScoreField) + CodedOutputStream.ComputeFloatSize(score)
                 + CodedOutputStream.ComputeTagSize(PieceTypeField) + CodedOutputStream.ComputeEnumSize((int)type);
        output.WriteTag(ModelPiecesField, WireFormat.WireType.LengthDelimited);
        output.WriteLength(size);
        output.WriteTag(PieceTextField, WireFormat.WireType.LengthDelimited);
        output.WriteString(piece);
        output.WriteTag(PieceScoreField, WireFormat.WireType.Fixed32);
        output.WriteFloat(score);
        output.WriteTag(PieceTypeField, WireFormat.WireType.Varint);
        output.WriteEnum((int)type);
    }

    /// <summary>Writes an embedded message field; the fields are encoded first so that its length is known.</summary>
    private static void WriteMessage(CodedOutputStream output, int fieldNumber, Action<CodedOutputStream> writeFields)
    {
        using var message = new MemoryStream();
        using (var messageOutput = new CodedOutputStream(message, leaveOpen: true))
            writeFields(messageOutput);
        output.WriteTag(fieldNumber, WireFormat.WireType.LengthDelimited);
        output.WriteBytes(ByteString.CopyFrom(message.GetBuffer(), 0, (int)message.Length));
    }
}
