using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace IlgpuMedusa.Tokenization;

/// <summary>A token of tokenizer.json's <c>added_tokens</c>: special ones (BOS, EOS, chat markers) decode to no text.</summary>
/// <param name="Id">The id.</param>
/// <param name="Content">The text it stands for.</param>
/// <param name="Special">Whether it is a control token rather than text.</param>
internal readonly record struct AddedToken(int Id, string Content, bool Special);

/// <summary>
/// What a Hugging Face <c>tokenizer.json</c> (with <c>tokenizer_config.json</c> beside it) says about a byte-level BPE
/// tokenizer, read and checked: the vocabulary, merges, added tokens, the normalizer, the pre-tokenizer's splitting
/// patterns, and which tokens are BOS and EOS. Everything else the format can say is refused with an error naming the
/// field, so a tokenizer this runtime cannot follow exactly is never used half-understood.
/// </summary>
internal sealed class TokenizerJson
{
    /// <summary>Real tokenizer.json files are tens of MB; anything far larger is refused before it is read.</summary>
    public const long MaxFileBytes = 512L * 1024 * 1024;

    /// <summary>Ids at or above this are refused (the largest real vocabularies hold about 260,000 tokens).</summary>
    public const int MaxTokenId = 1 << 22;

    /// <summary>How long one pre-tokenizer pattern may run on one text before encoding fails (patterns come from the file).</summary>
    public static readonly TimeSpan PatternTimeout = TimeSpan.FromSeconds(10);

    /// <summary>GPT-2's splitting pattern, which a ByteLevel pre-tokenizer with <c>use_regex</c> applies.</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private TokenizerJson(string source) => Source = source;

    /// <summary>The tokenizer.json path, named in errors.</summary>
    public string Source { get; }

    /// <summary>model.vocab: byte-level spellings to ids.</summary>
    public Dictionary<string, int> Vocabulary { get; private set; } = [];

    /// <summary>model.merges as "left right", in priority order.</summary>
    public List<string> Merges { get; } = [];

    /// <summary>added_tokens.</summary>
    public List<AddedToken> AddedTokens { get; } = [];

    /// <summary>The Unicode normalizations applied before splitting, in order.</summary>
    public List<NormalizationForm> Normalizations { get; } = [];

    /// <summary>Patterns whose matches and the text between them become separate pieces ("Isolated"), applied in order.</summary>
    public List<Regex> SplitPatterns { get; } = [];

    /// <summary>ByteLevel's add_prefix_space: a space is put before every piece that does not start with one.</summary>
    public bool AddPrefixSpace { get; private set; }

    /// <summary>How many of <see cref="SplitPatterns"/> come before the ByteLevel step (where the prefix space is added).</summary>
    public int SplitsBeforeByteLevel { get; private set; }

    /// <summary>model.ignore_merges: a piece that is a vocabulary entry as a whole is that token.</summary>
    public bool IgnoreMerges { get; private set; }

    /// <summary>The BOS token's content, when the tokenizer names one.</summary>
    public string? BosToken { get; private set; }

    /// <summary>Whether encoding puts BOS first (post_processor TemplateProcessing, or add_bos_token).</summary>
    public bool AddsBos { get; private set; }

    /// <summary>The EOS token's content, when the tokenizer names one.</summary>
    public string? EosToken { get; private set; }

    /// <summary>Reads <c>tokenizer.json</c> at <paramref name="path"/> and <c>tokenizer_config.json</c> beside it, when present.</summary>
    /// <exception cref="InvalidDataException">The file is malformed, too large, or holds ids out of range.</exception>
    /// <exception cref="NotSupportedException">The tokenizer is not a byte-level BPE tokenizer this runtime follows exactly.</exception>
    public static TokenizerJson Read(string path)
    {
        using (var document = ParseFile(path))
        {
            var spec = new TokenizerJson(path);
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw spec.Error("", "must be a JSON object");
            spec.ReadModel(Property(root, "model") ?? throw spec.Error("model", "is missing"));
            spec.ReadAddedTokens(Property(root, "added_tokens"));
            spec.ReadNormalizer(Property(root, "normalizer"), "normalizer");
            spec.ReadPreTokenizer(Property(root, "pre_tokenizer") ?? throw spec.Unsupported("pre_tokenizer", "is null"), "pre_tokenizer");
            spec.ReadDecoder(Property(root, "decoder"), "decoder");
            spec.ReadPostProcessor(Property(root, "post_processor"), "post_processor");
            spec.ReadConfig(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "tokenizer_config.json"));
            return spec;
        }
    }

    /// <summary>Parses a JSON file after checking its size against <see cref="MaxFileBytes"/>.</summary>
    private static JsonDocument ParseFile(string path)
    {
        long length = new FileInfo(path).Length;
        if (length > MaxFileBytes)
            throw new InvalidDataException($"{path}: {length} bytes is too large for a tokenizer file (at most {MaxFileBytes} accepted).");
        try
        {
            return JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { MaxDepth = 64 });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON ({e.Message})", e);
        }
    }

    private static JsonElement? Property(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    private InvalidDataException Error(string field, string what) =>
        new($"{Source}: {(field.Length == 0 ? "the file" : $"'{field}'")} {what}");

    private NotSupportedException Unsupported(string field, string what) =>
        new($"{Source}: '{field}' {what}; only byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM) are supported from tokenizer.json " +
            "(a SentencePiece model such as Llama 2's or Mistral's needs its tokenizer.model beside it)");

    private string String(JsonElement e, string name, string field) =>
        Property(e, name) is { ValueKind: JsonValueKind.String } v ? v.GetString()! : throw Error($"{field}.{name}", "must be a string");

    private bool Bool(JsonElement e, string name, bool absent, string field) => Property(e, name) switch
    {
        null => absent,
        { ValueKind: JsonValueKind.True } => true,
        { ValueKind: JsonValueKind.False } => false,
        _ => throw Error($"{field}.{name}", "must be true or false"),
    };

    private int Id(JsonElement e, string field)
    {
        if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out int id) || id < 0 || id >= MaxTokenId)
            throw Error(field, $"must be a token id in [0, {MaxTokenId}), found {Shorten(e.GetRawText())}");
        return id;
    }

    private static string Shorten(string text) => text.Length <= 60 ? text : text[..57] + "...";

    private void ReadModel(JsonElement model)
    {
        if (model.ValueKind != JsonValueKind.Object) throw Error("model", "must be an object");
        string type = Property(model, "type") is { } t ? String(model, "type", "model") : "BPE"; // old files leave the type out
        if (type != "BPE") throw Unsupported("model.type", $"is '{type}'");
        if (Bool(model, "byte_fallback", false, "model")) throw Unsupported("model.byte_fallback", "is true (a SentencePiece-style BPE)");
        foreach (var name in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
        {
            if (Property(model, name) is { } affix && (affix.ValueKind != JsonValueKind.String || affix.GetString()!.Length > 0))
                throw Unsupported($"model.{name}", $"is {Shorten(affix.GetRawText())}");
        }
        if (Property(model, "dropout") is { } dropout && !(dropout.ValueKind == JsonValueKind.Number && dropout.GetDouble() == 0))
            throw Unsupported("model.dropout", $"is {dropout.GetRawText()} (BPE dropout is for training)");
        IgnoreMerges = Bool(model, "ignore_merges", false, "model");

        var vocab = Property(model, "vocab") ?? throw Error("model.vocab", "is missing");
        if (vocab.ValueKind != JsonValueKind.Object) throw Error("model.vocab", "must be an object of token -> id");
        var byId = _vocabularyById;
        foreach (var entry in vocab.EnumerateObject())
        {
            int id = Id(entry.Value, $"model.vocab[\"{Shorten(entry.Name)}\"]");
            if (!byId.TryAdd(id, entry.Name)) throw Error("model.vocab", $"gives id {id} to both \"{Shorten(byId[id])}\" and \"{Shorten(entry.Name)}\"");
            if (!Vocabulary.TryAdd(entry.Name, id)) throw Error("model.vocab", $"lists \"{Shorten(entry.Name)}\" twice");
        }
        if (Vocabulary.Count == 0) throw Error("model.vocab", "is empty");
        for (int b = 0; b < 256; b++)
        {
            if (!Vocabulary.ContainsKey(ByteLevelAlphabet.Spell((byte)b).ToString()))
                throw Unsupported("model.vocab", $"has no entry for byte 0x{b:X2} ('{ByteLevelAlphabet.Spell((byte)b)}'), so it is not a byte-level vocabulary");
        }

        var merges = Property(model, "merges");
        if (merges is null) return;
        if (merges.Value.ValueKind != JsonValueKind.Array) throw Error("model.merges", "must be an array");
        int i = 0;
        var seen = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var merge in merges.Value.EnumerateArray())
        {
            string field = $"model.merges[{i++}]";
            string left, right;
            if (merge.ValueKind == JsonValueKind.String)
            {
                var parts = merge.GetString()!.Split(' ');
                if (parts.Length != 2) throw Error(field, $"must be two tokens separated by one space, found \"{Shorten(merge.GetString()!)}\"");
                (left, right) = (parts[0], parts[1]);
            }
            else if (merge.ValueKind == JsonValueKind.Array && merge.GetArrayLength() == 2
                && merge[0].ValueKind == JsonValueKind.String && merge[1].ValueKind == JsonValueKind.String)
            {
                (left, right) = (merge[0].GetString()!, merge[1].GetString()!);
                if (left.Contains(' ') || right.Contains(' ')) throw Error(field, "has a space inside a token (byte-level tokens spell spaces as 'Ġ')");
            }
            else
            {
                throw Error(field, $"must be \"left right\" or [\"left\", \"right\"], found {Shorten(merge.GetRawText())}");
            }
            foreach (var token in new[] { left, right, left + right })
            {
                if (!Vocabulary.ContainsKey(token)) throw Error(field, $"uses \"{Shorten(token)}\", which is not in model.vocab");
            }
            if (!seen.TryAdd(left + " " + right, i - 1)) throw Error(field, $"repeats model.merges[{seen[left + " " + right]}] (\"{Shorten(left + " " + right)}\")");
            Merges.Add(left + " " + right);
        }
    }

    private void ReadAddedTokens(JsonElement? added)
    {
        if (added is null) return;
        if (added.Value.ValueKind != JsonValueKind.Array) throw Error("added_tokens", "must be an array");
        int i = 0;
        var ids = new HashSet<int>();
        foreach (var token in added.Value.EnumerateArray())
        {
            string field = $"added_tokens[{i++}]";
            if (token.ValueKind != JsonValueKind.Object) throw Error(field, "must be an object");
            int id = Id(Property(token, "id") ?? throw Error($"{field}.id", "is missing"), $"{field}.id");
            string content = String(token, "content", field);
            if (content.Length == 0) throw Error($"{field}.content", "is empty");
            if (!ids.Add(id)) throw Error($"{field}.id", $"{id} is given to another added token too");
            if (Vocabulary.TryGetValue(content, out int existing) && existing != id)
                throw Error(field, $"gives \"{Shorten(content)}\" id {id}, but model.vocab has it as {existing}");
            if (_vocabularyById.TryGetValue(id, out var other) && other != content)
                throw Error(field, $"gives id {id} to \"{Shorten(content)}\", but model.vocab gives it to \"{Shorten(other)}\"");
            bool special = Bool(token, "special", false, field);
            // How a token is matched in text: special tokens never are here, so their flags do not matter.
            foreach (var flag in new[] { "lstrip", "rstrip", "single_word" })
            {
                if (!special && Bool(token, flag, false, field))
                    throw Unsupported($"{field}.{flag}", $"is true for \"{Shorten(content)}\" (added tokens are matched exactly)");
            }
            AddedTokens.Add(new AddedToken(id, content, special));
        }
    }

    private void ReadNormalizer(JsonElement? normalizer, string field)
    {
        if (normalizer is not { } n) return;
        string type = String(n, "type", field);
        switch (type)
        {
            case "NFC": Normalizations.Add(NormalizationForm.FormC); break;
            case "NFKC": Normalizations.Add(NormalizationForm.FormKC); break;
            case "NFD": Normalizations.Add(NormalizationForm.FormD); break;
            case "NFKD": Normalizations.Add(NormalizationForm.FormKD); break;
            case "Sequence":
                var list = Property(n, "normalizers") ?? throw Error($"{field}.normalizers", "is missing");
                if (list.ValueKind != JsonValueKind.Array) throw Error($"{field}.normalizers", "must be an array");
                int i = 0;
                foreach (var item in list.EnumerateArray()) ReadNormalizer(item, $"{field}.normalizers[{i++}]");
                break;
            default:
                throw Unsupported($"{field}.type", $"is '{type}' (supported normalizers: NFC, NFKC, NFD, NFKD, Sequence)");
        }
    }

    private bool _byteLevelSeen;
    private readonly Dictionary<int, string> _vocabularyById = [];

    private void ReadPreTokenizer(JsonElement pre, string field)
    {
        string type = String(pre, "type", field);
        switch (type)
        {
            case "Sequence":
                var list = Property(pre, "pretokenizers") ?? throw Error($"{field}.pretokenizers", "is missing");
                if (list.ValueKind != JsonValueKind.Array) throw Error($"{field}.pretokenizers", "must be an array");
                int i = 0;
                foreach (var item in list.EnumerateArray()) ReadPreTokenizer(item, $"{field}.pretokenizers[{i++}]");
                break;
            case "Split":
                if (_byteLevelSeen) throw Unsupported(field, "splits after ByteLevel");
                var pattern = Property(pre, "pattern") ?? throw Error($"{field}.pattern", "is missing");
                string? regex = Property(pattern, "Regex") is { ValueKind: JsonValueKind.String } r ? r.GetString()
                    : Property(pattern, "String") is { ValueKind: JsonValueKind.String } s ? Regex.Escape(s.GetString()!)
                    : throw Error($"{field}.pattern", "must be {\"Regex\": ...} or {\"String\": ...}");
                string behavior = String(pre, "behavior", field);
                if (behavior != "Isolated") throw Unsupported($"{field}.behavior", $"is '{behavior}' (supported: Isolated)");
                if (Bool(pre, "invert", false, field)) throw Unsupported($"{field}.invert", "is true");
                SplitPatterns.Add(Compile(regex!, $"{field}.pattern"));
                break;
            case "Digits":
                if (_byteLevelSeen) throw Unsupported(field, "splits after ByteLevel");
                SplitPatterns.Add(Compile(Bool(pre, "individual_digits", false, field) ? @"\p{N}" : @"\p{N}+", field));
                break;
            case "ByteLevel":
                if (_byteLevelSeen) throw Unsupported(field, "is a second ByteLevel");
                _byteLevelSeen = true;
                AddPrefixSpace = Bool(pre, "add_prefix_space", true, field);
                SplitsBeforeByteLevel = SplitPatterns.Count;
                if (Bool(pre, "use_regex", true, field)) SplitPatterns.Add(Compile(Gpt2Pattern, field));
                break;
            default:
                throw Unsupported($"{field}.type", $"is '{type}' (supported pre-tokenizers: ByteLevel, Split, Digits, Sequence)");
        }
        if (field == "pre_tokenizer" && !_byteLevelSeen) throw Unsupported(field, "has no ByteLevel step");
    }

    private Regex Compile(string pattern, string field)
    {
        try
        {
            return new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant, PatternTimeout);
        }
        catch (ArgumentException e)
        {
            throw Error(field, $"is not a pattern .NET can run ({e.Message})");
        }
    }

    private void ReadDecoder(JsonElement? decoder, string field)
    {
        if (decoder is not { } d) return;
        string type = String(d, "type", field);
        if (type == "ByteLevel") return;
        if (type == "Sequence" && Property(d, "decoders") is { ValueKind: JsonValueKind.Array } list)
        {
            int i = 0;
            foreach (var item in list.EnumerateArray()) ReadDecoder(item, $"{field}.decoders[{i++}]");
            return;
        }
        throw Unsupported($"{field}.type", $"is '{type}' (supported decoders: ByteLevel)");
    }

    private void ReadPostProcessor(JsonElement? post, string field)
    {
        if (post is not { } p) return;
        string type = String(p, "type", field);
        switch (type)
        {
            case "ByteLevel": return; // offsets only
            case "Sequence":
                if (Property(p, "processors") is { ValueKind: JsonValueKind.Array } list)
                {
                    int i = 0;
                    foreach (var item in list.EnumerateArray()) ReadPostProcessor(item, $"{field}.processors[{i++}]");
                }
                return;
            case "TemplateProcessing":
                var single = Property(p, "single");
                if (single is not { ValueKind: JsonValueKind.Array } items) throw Error($"{field}.single", "must be an array");
                // BOS is a special token before the text ($A); anything after it (an EOS some templates append) is not added
                // to prompts, which the model continues.
                foreach (var item in items.EnumerateArray())
                {
                    if (Property(item, "Sequence") is not null) break;
                    if (Property(item, "SpecialToken") is { } special)
                    {
                        BosToken = String(special, "id", $"{field}.single[0].SpecialToken");
                        AddsBos = true;
                        break;
                    }
                }
                return;
            default:
                throw Unsupported($"{field}.type", $"is '{type}' (supported post-processors: ByteLevel, TemplateProcessing, Sequence)");
        }
    }

    private void ReadConfig(string path)
    {
        if (!File.Exists(path)) return;
        using (var document = ParseFile(path))
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{path}: must be a JSON object");
            string? TokenName(string name) => Property(root, name) switch
            {
                null => null,
                { ValueKind: JsonValueKind.String } s => s.GetString(),
                { ValueKind: JsonValueKind.Object } o when Property(o, "content") is { ValueKind: JsonValueKind.String } c => c.GetString(),
                var other => throw new InvalidDataException($"{path}: '{name}' must be a token's text or {{\"content\": ...}}, found {Shorten(other.Value.GetRawText())}"),
            };
            if (TokenName("bos_token") is { } bos) BosToken = bos;
            if (TokenName("eos_token") is { } eos) EosToken = eos;
            if (Property(root, "add_bos_token") is { } add)
            {
                AddsBos = add.ValueKind switch
                {
                    JsonValueKind.True => true,
                    JsonValueKind.False => false,
                    _ => throw new InvalidDataException($"{path}: 'add_bos_token' must be true or false"),
                };
            }
        }
    }
}
