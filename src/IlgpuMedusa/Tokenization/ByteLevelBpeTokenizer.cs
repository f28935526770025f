using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace IlgpuMedusa.Tokenization;

/// <summary>
/// A byte-level BPE tokenizer read from a Hugging Face <c>tokenizer.json</c> (GPT-2, Llama 3, Qwen, SmolLM and their
/// kin), merging with Microsoft.ML.Tokenizers' <see cref="BpeTokenizer"/>.
/// </summary>
/// <remarks>
/// Encoding follows the file: added tokens that are not special (Qwen's <c>&lt;think&gt;</c>) are found in the raw text
/// first, as the file's own tokenizer does; the text between them gets the normalizer (NFC and kin), the splitting
/// patterns (each match and the text between matches a piece of its own; ByteLevel's prefix space before each piece
/// when the file asks), then per piece either the whole piece when <c>ignore_merges</c> is set and the vocabulary has
/// it, or BPE merges over the piece's bytes. Special tokens (BOS, EOS, chat markers) are never read from text: text a
/// user typed stays text, and templates put those tokens in by id (<see cref="SpecialTokenId"/>). Lone UTF-16
/// surrogates (not text) become U+FFFD. Decoding maps every token
/// back to its bytes and reads them as UTF-8, invalid bytes as U+FFFD; special tokens, and ids the file does not give a
/// token (a model's padded embedding rows), decode to nothing. Instances are immutable and safe to share between threads.
/// </remarks>
public sealed class ByteLevelBpeTokenizer : ITextTokenizer
{
    private readonly TokenizerJson _spec;
    private readonly BpeTokenizer _bpe;
    private readonly byte[][] _bytes;           // (V) what each id decodes to
    private readonly Dictionary<string, int> _specials = new(StringComparer.Ordinal);
    private readonly Dictionary<string, int> _textTokens = new(StringComparer.Ordinal); // non-special added tokens
    private readonly Regex? _textTokenPattern;

    private ByteLevelBpeTokenizer(TokenizerJson spec, BpeTokenizer bpe, byte[][] bytes, int bosId, int eosId)
    {
        _spec = spec;
        _bpe = bpe;
        _bytes = bytes;
        BosId = bosId;
        EosId = eosId;
        foreach (var token in spec.AddedTokens)
        {
            if (token.Special) _specials[token.Content] = token.Id;
            else _textTokens[token.Content] = token.Id;
        }
        if (_textTokens.Count > 0)
        {
            // Longest first, so a token that begins another never wins over it.
            var alternatives = _textTokens.Keys.OrderByDescending(k => k.Length).ThenBy(k => k, StringComparer.Ordinal).Select(Regex.Escape);
            _textTokenPattern = new Regex(string.Join('|', alternatives), RegexOptions.CultureInvariant, TokenizerJson.PatternTimeout);
        }
    }

    /// <inheritdoc/>
    public int VocabularySize => _bytes.Length;

    /// <inheritdoc/>
    /// <remarks>The tokenizer's BOS token; for tokenizers that have none (Qwen), the EOS token.</remarks>
    public int BosId { get; }

    /// <inheritdoc/>
    public int EosId { get; }

    /// <inheritdoc/>
    /// <remarks>The file's post-processor (TemplateProcessing) or <c>add_bos_token</c> says so.</remarks>
    public bool AddsBos => _spec.AddsBos;

    /// <summary>Loads <c>tokenizer.json</c> at <paramref name="path"/> (and <c>tokenizer_config.json</c> beside it).</summary>
    /// <param name="path">The tokenizer.json file.</param>
    /// <param name="vocabularySize">
    /// The model's vocabulary size, when known: every id must fit it, and ids the file leaves out (padding) decode to nothing.
    /// </param>
    /// <exception cref="InvalidDataException">The file is malformed or does not fit the vocabulary size.</exception>
    /// <exception cref="NotSupportedException">The file describes a tokenizer other than byte-level BPE.</exception>
    public static ByteLevelBpeTokenizer Load(string path, int? vocabularySize = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (vocabularySize is int v) ArgumentOutOfRangeException.ThrowIfNegativeOrZero(v);
        var spec = TokenizerJson.Read(path);
        foreach (var form in spec.Normalizations)
        {
            // Invariant globalization mode (no ICU) makes string.Normalize return its input unchanged: text would be
            // tokenized wrong without a word, so such a process cannot use this tokenizer.
            if (!"e\u0301".Normalize(form).Equals(form is NormalizationForm.FormC or NormalizationForm.FormKC ? "\u00e9" : "e\u0301", StringComparison.Ordinal)
                || !"\u00e9".Normalize(form).Equals(form is NormalizationForm.FormC or NormalizationForm.FormKC ? "\u00e9" : "e\u0301", StringComparison.Ordinal))
                throw new NotSupportedException(
                    $"{path}: the tokenizer normalizes text ({form}), which this process cannot do: it runs in invariant globalization " +
                    "mode (no ICU). Install ICU (libicu) and run without InvariantGlobalization / DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1.");
        }

        int maxId = Math.Max(spec.Vocabulary.Values.Max(), spec.AddedTokens.Count == 0 ? 0 : spec.AddedTokens.Max(t => t.Id));
        if (vocabularySize is int size && maxId >= size)
            throw new InvalidDataException($"{path}: the tokenizer has ids up to {maxId} but the model's vocabulary has {size}; its ids would not fit the model.");
        var bytes = new byte[vocabularySize ?? maxId + 1][];
        foreach (var (spelling, id) in spec.Vocabulary)
        {
            if (!ByteLevelAlphabet.TryRead(spelling, out bytes[id]))
                bytes[id] = Encoding.UTF8.GetBytes(spelling); // not a byte-level spelling: only an added token's own text can be
        }
        foreach (var token in spec.AddedTokens)
            bytes[token.Id] = token.Special ? [] : Encoding.UTF8.GetBytes(token.Content);
        for (int i = 0; i < bytes.Length; i++) bytes[i] ??= [];

        int? Find(string? content, string what)
        {
            if (content is null) return null;
            foreach (var token in spec.AddedTokens)
                if (token.Content == content) return token.Id;
            if (spec.Vocabulary.TryGetValue(content, out int id)) return id;
            throw new InvalidDataException($"{path}: the {what} \"{content}\" is neither an added token nor in model.vocab");
        }
        int eos = Find(spec.EosToken, "eos_token")
            ?? spec.AddedTokens.Where(t => t.Special).Select(t => (int?)t.Id).FirstOrDefault()
            ?? throw new InvalidDataException($"{path}: no EOS token: tokenizer_config.json has no eos_token and the file has no special tokens");
        int bos = Find(spec.BosToken, "bos_token") ?? eos;
        if (spec.AddsBos && spec.BosToken is null)
            throw new InvalidDataException($"{path}: add_bos_token is true but no bos_token is named");

        BpeTokenizer bpe;
        try
        {
            bpe = BpeTokenizer.Create(new BpeOptions(spec.Vocabulary) { Merges = spec.Merges, ByteLevel = true });
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException or KeyNotFoundException)
        {
            throw new InvalidDataException($"{path}: the BPE model could not be built ({e.GetType().Name}: {e.Message})", e);
        }
        return new ByteLevelBpeTokenizer(spec, bpe, bytes, bos, eos);
    }

    /// <summary>
    /// The id of the added token <paramref name="content"/> (such as <c>&lt;|eot_id|&gt;</c>; special or not, since
    /// fine-tunes often add chat markers as plain added tokens), or null when the tokenizer has none.
    /// </summary>
    public int? SpecialTokenId(string content) =>
        _specials.TryGetValue(content, out int id) || _textTokens.TryGetValue(content, out id) ? id : null;

    /// <inheritdoc/>
    public IReadOnlyCollection<string> SpecialTokens => _specials.Keys;

    /// <inheritdoc/>
    public IReadOnlyList<int> Encode(string text, bool addBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 3 + 2);
        if (addBos && AddsBos) ids.Add(BosId);
        text = WithoutLoneSurrogates(text);

        if (_textTokenPattern is null)
        {
            EncodeText(text, ids);
            return ids;
        }
        int at = 0;
        foreach (Match m in _textTokenPattern.Matches(text))
        {
            EncodeText(text[at..m.Index], ids);
            ids.Add(_textTokens[m.Value]);
            at = m.Index + m.Length;
        }
        EncodeText(text[at..], ids);
        return ids;
    }

    private void EncodeText(string text, List<int> ids)
    {
        foreach (var form in _spec.Normalizations) text = text.Normalize(form);
        if (text.Length == 0) return;
        var pieces = new List<string> { text };
        for (int p = 0; p <= _spec.SplitPatterns.Count; p++)
        {
            // ByteLevel's prefix space goes before every piece there is when its step comes (Hugging Face's order).
            if (p == _spec.SplitsBeforeByteLevel && _spec.AddPrefixSpace)
                pieces = pieces.Select(piece => piece[0] == ' ' ? piece : " " + piece).ToList();
            if (p == _spec.SplitPatterns.Count) break;
            var next = new List<string>(pieces.Count * 2);
            try
            {
                foreach (var piece in pieces) Isolate(_spec.SplitPatterns[p], piece, next);
            }
            catch (RegexMatchTimeoutException e)
            {
                throw new InvalidOperationException(
                    $"{_spec.Source}: the pre-tokenizer pattern {_spec.SplitPatterns[p]} ran longer than {TokenizerJson.PatternTimeout.TotalSeconds} s on a text of {text.Length} characters; the tokenizer file's pattern is unusable.", e);
            }
            pieces = next;
        }
        foreach (var piece in pieces)
        {
            if (_spec.IgnoreMerges && _spec.Vocabulary.TryGetValue(ByteLevelAlphabet.Spell(piece), out int whole))
                ids.Add(whole);
            else
                ids.AddRange(_bpe.EncodeToIds(piece, considerPreTokenization: false, considerNormalization: false));
        }
    }

    /// <summary>The text with every unpaired UTF-16 surrogate replaced by U+FFFD (normalization refuses them; UTF-8 cannot hold them).</summary>
    private static string WithoutLoneSurrogates(string text)
    {
        char[]? copy = null;
        for (int i = 0; i < text.Length; i++)
        {
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) { i++; continue; }
            if (!char.IsSurrogate(text[i])) continue;
            copy ??= text.ToCharArray();
            copy[i] = '\uFFFD';
        }
        return copy is null ? text : new string(copy);
    }

    /// <summary>
    /// Hugging Face's "Isolated" split: every match and every stretch between matches, in order, empty ones left out.
    /// The file's patterns are written for code points (Rust's regex), .NET's run on UTF-16 units, where a character
    /// outside the Basic Multilingual Plane is two surrogates that match neither <c>\p{L}</c> nor <c>\p{N}</c>. So such
    /// characters are matched as a stand-in of their own Unicode category from the BMP, and the pieces cut from the text.
    /// </summary>
    private static void Isolate(Regex pattern, string text, List<string> into)
    {
        var (matched, starts) = WithBmpStandIns(text);
        int Original(int index) => starts is null ? index : index < starts.Length ? starts[index] : text.Length;
        int at = 0;
        foreach (Match m in pattern.Matches(matched))
        {
            if (m.Length == 0) continue;
            int start = Original(m.Index), end = Original(m.Index + m.Length);
            if (start > at) into.Add(text[at..start]);
            into.Add(text[start..end]);
            at = end;
        }
        if (at < text.Length) into.Add(text[at..]);
    }

    /// <summary>
    /// The text with each surrogate pair replaced by one BMP character of the same Unicode category, and where each
    /// character of the result starts in the text (null when the text has no pair).
    /// </summary>
    private static (string Text, int[]? Starts) WithBmpStandIns(string text)
    {
        if (text.AsSpan().IndexOfAnyInRange('\uD800', '\uDBFF') < 0) return (text, null);
        var result = new System.Text.StringBuilder(text.Length);
        var starts = new List<int>(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            starts.Add(i);
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                result.Append(StandIn(System.Globalization.CharUnicodeInfo.GetUnicodeCategory(char.ConvertToUtf32(text[i], text[i + 1]))));
                i++;
            }
            else
            {
                result.Append(text[i]);
            }
        }
        return (result.ToString(), [.. starts]);
    }

    /// <summary>
    /// A BMP character of <paramref name="category"/>, outside ASCII (so that no pattern's literal characters or case-insensitive
    /// contractions such as <c>'s</c> can match it).
    /// </summary>
    private static char StandIn(System.Globalization.UnicodeCategory category) => category switch
    {
        System.Globalization.UnicodeCategory.UppercaseLetter => '\u00C0',
        System.Globalization.UnicodeCategory.LowercaseLetter => '\u00E0',
        System.Globalization.UnicodeCategory.TitlecaseLetter => '\u01C5',
        System.Globalization.UnicodeCategory.ModifierLetter => '\u02B0',
        System.Globalization.UnicodeCategory.OtherLetter => '\u4E00',
        System.Globalization.UnicodeCategory.NonSpacingMark => '\u0300',
        System.Globalization.UnicodeCategory.SpacingCombiningMark => '\u0903',
        System.Globalization.UnicodeCategory.EnclosingMark => '\u20DD',
        System.Globalization.UnicodeCategory.DecimalDigitNumber => '\u0660',
        System.Globalization.UnicodeCategory.LetterNumber => '\u2160',
        System.Globalization.UnicodeCategory.OtherNumber => '\u00B2',
        System.Globalization.UnicodeCategory.ConnectorPunctuation => '\u203F',
        System.Globalization.UnicodeCategory.DashPunctuation => '\u2010',
        System.Globalization.UnicodeCategory.OpenPunctuation => '\u2045',
        System.Globalization.UnicodeCategory.ClosePunctuation => '\u2046',
        System.Globalization.UnicodeCategory.InitialQuotePunctuation => '\u00AB',
        System.Globalization.UnicodeCategory.FinalQuotePunctuation => '\u00BB',
        System.Globalization.UnicodeCategory.OtherPunctuation => '\u00B6',
        System.Globalization.UnicodeCategory.MathSymbol => '\u00AC',
        System.Globalization.UnicodeCategory.CurrencySymbol => '\u00A2',
        System.Globalization.UnicodeCategory.ModifierSymbol => '\u02C2',
        System.Globalization.UnicodeCategory.OtherSymbol => '\u00A9',
        System.Globalization.UnicodeCategory.Format => '\u200B',
        System.Globalization.UnicodeCategory.PrivateUse => '\uE000',
        _ => '\u0378', // unassigned (no other category has characters outside the BMP)
    };

    /// <inheritdoc/>
    /// <exception cref="ArgumentOutOfRangeException">An id is outside the vocabulary.</exception>
    public string Decode(IEnumerable<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var bytes = new List<byte>();
        foreach (int id in ids) bytes.AddRange(TokenBytes(id));
        return Encoding.UTF8.GetString(bytes.ToArray());
    }

    /// <inheritdoc/>
    /// <remarks>Byte-level text has no dummy prefix, so <paramref name="continuesText"/> changes nothing.</remarks>
    public IStreamingDetokenizer CreateStreamingDetokenizer(bool continuesText = false) => new ByteStreamingDetokenizer(this);

    /// <inheritdoc/>
    /// <exception cref="ArgumentOutOfRangeException">The id is outside the vocabulary.</exception>
    public byte[] TokenBytes(int id)
    {
        if ((uint)id >= (uint)_bytes.Length)
            throw new ArgumentOutOfRangeException(nameof(id), id, $"token id outside the vocabulary [0, {_bytes.Length})");
        return _bytes[id];
    }

    /// <summary>Decodes ids one at a time through one UTF-8 decoder, so deltas never split a character and add up to <see cref="Decode"/>.</summary>
    private sealed class ByteStreamingDetokenizer(ByteLevelBpeTokenizer tokenizer) : IStreamingDetokenizer
    {
        private readonly Decoder _utf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false).GetDecoder();

        public string Append(int tokenId) => Decode(tokenizer.TokenBytes(tokenId), flush: false);

        public string Flush() => Decode([], flush: true);

        private string Decode(byte[] bytes, bool flush)
        {
            var chars = new char[_utf8.GetCharCount(bytes, flush)];
            int count = _utf8.GetChars(bytes, 0, bytes.Length, chars, 0, flush);
            return new string(chars, 0, count);
        }
    }
}
