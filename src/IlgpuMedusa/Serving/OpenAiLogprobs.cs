using System.Text;
using System.Text.Json;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Tokenization;

namespace IlgpuMedusa.Serving;

/// <summary>
/// Writes log-probabilities in OpenAI's two shapes: the chat one (<c>logprobs.content</c>: token, logprob, bytes and
/// <c>top_logprobs</c> objects) and the legacy completion one (parallel arrays <c>tokens</c>, <c>token_logprobs</c>,
/// <c>top_logprobs</c> maps and <c>text_offset</c>). A token is shown as the text it stands for (a word piece with its
/// leading space); a byte-fallback token that is only part of a UTF-8 character is shown as <c>bytes:\xNN</c>, its
/// <c>bytes</c> field holding the byte itself.
/// </summary>
internal sealed class OpenAiLogprobs(ITextTokenizer tokenizer)
{
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
    private readonly Dictionary<int, (string Text, byte[] Bytes)> _tokens = [];

    /// <summary>The text and bytes of <paramref name="id"/>.</summary>
    public (string Text, byte[] Bytes) Token(int id)
    {
        lock (_tokens)
        {
            if (_tokens.TryGetValue(id, out var known)) return known;
            var bytes = tokenizer.TokenBytes(id);
            string text;
            try
            {
                text = StrictUtf8.GetString(bytes);
            }
            catch (DecoderFallbackException)
            {
                text = "bytes:" + string.Concat(bytes.Select(b => $"\\x{b:x2}"));
            }
            // The vocabulary is bounded, so is this cache.
            _tokens[id] = (text, bytes);
            return (text, bytes);
        }
    }

    /// <summary>The chat <c>"logprobs"</c> object: <c>{"content": [...], "refusal": null}</c>.</summary>
    public void WriteChat(Utf8JsonWriter w, IEnumerable<TokenLogprob> tokens)
    {
        w.WriteStartObject("logprobs");
        w.WriteStartArray("content");
        foreach (var token in tokens)
        {
            w.WriteStartObject();
            WriteChatEntry(w, token.TokenId, token.Logprob);
            w.WriteStartArray("top_logprobs");
            foreach (var alternative in token.Top)
            {
                w.WriteStartObject();
                WriteChatEntry(w, alternative.TokenId, alternative.Logprob);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteNull("refusal");
        w.WriteEndObject();
    }

    private void WriteChatEntry(Utf8JsonWriter w, int id, float logprob)
    {
        var (text, bytes) = Token(id);
        w.WriteString("token", text);
        WriteLogprob(w, "logprob", logprob);
        w.WriteStartArray("bytes");
        foreach (byte b in bytes) w.WriteNumberValue(b);
        w.WriteEndArray();
    }

    /// <summary>
    /// Where each of <paramref name="ids"/> starts in the text <paramref name="detokenizer"/> makes of them (the reply's
    /// own text: the first word's dummy-prefix space dropped at the start of a text, a multi-byte character placed where
    /// its first byte token is), counted from <paramref name="position"/>, which moves past them.
    /// </summary>
    public static int[] Offsets(IStreamingDetokenizer detokenizer, IReadOnlyList<int> ids, ref int position)
    {
        var offsets = new int[ids.Count];
        for (int i = 0; i < ids.Count; i++)
        {
            offsets[i] = position;
            position += detokenizer.Append(ids[i]).Length;
        }
        return offsets;
    }

    /// <summary>
    /// The completion <c>"logprobs"</c> object for <paramref name="tokens"/> (a null entry: a token with no score, the
    /// first prompt token, whose id is <paramref name="ids"/>' entry). <c>top_logprobs</c> maps hold the alternatives and
    /// the token itself, as OpenAI's do (so up to n + 1 entries). <c>text_offset</c> is <paramref name="offsets"/>: where
    /// each token starts in the reply's text (see <see cref="Offsets"/>).
    /// </summary>
    public void WriteCompletion(Utf8JsonWriter w, IReadOnlyList<int> ids, IReadOnlyList<TokenLogprob?> tokens, IReadOnlyList<int> offsets)
    {
        w.WriteStartObject("logprobs");
        w.WriteStartArray("tokens");
        foreach (int id in ids) w.WriteStringValue(Token(id).Text);
        w.WriteEndArray();
        w.WriteStartArray("token_logprobs");
        foreach (var token in tokens)
        {
            if (token is null) w.WriteNullValue();
            else WriteLogprobValue(w, token.Logprob);
        }
        w.WriteEndArray();
        w.WriteStartArray("top_logprobs");
        foreach (var token in tokens)
        {
            if (token is null)
            {
                w.WriteNullValue();
                continue;
            }
            w.WriteStartObject();
            var written = new HashSet<string>(StringComparer.Ordinal);
            foreach (var alternative in token.Top)
            {
                var text = Token(alternative.TokenId).Text;
                if (written.Add(text)) WriteLogprob(w, text, alternative.Logprob);
            }
            var own = Token(token.TokenId).Text;
            if (written.Add(own)) WriteLogprob(w, own, token.Logprob);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteStartArray("text_offset");
        foreach (int offset in offsets) w.WriteNumberValue(offset);
        w.WriteEndArray();
        w.WriteEndObject();
    }

    /// <summary>A log-probability; −∞ (a token the model rules out) is written as −9999, for JSON has no infinity; NaN (a broken model) as null.</summary>
    private static void WriteLogprob(Utf8JsonWriter w, string name, float logprob)
    {
        w.WritePropertyName(name);
        WriteLogprobValue(w, logprob);
    }

    private static void WriteLogprobValue(Utf8JsonWriter w, float logprob)
    {
        if (float.IsNaN(logprob)) w.WriteNullValue();
        else w.WriteNumberValue(float.IsNegativeInfinity(logprob) ? -9999f : logprob);
    }
}
