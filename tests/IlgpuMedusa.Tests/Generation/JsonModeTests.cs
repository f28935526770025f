using System.Text;
using System.Text.Json;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Generation.Constraints;
using IlgpuMedusa.Tests.Hosting;

namespace IlgpuMedusa.Tests.Generation;

/// <summary>
/// JSON mode (<see cref="ResponseFormat.JsonObject"/>). The grammar is checked against System.Text.Json (an independent
/// parser) on hand-written and mutated documents and against <see cref="System.Text.Unicode.Utf8.IsValid"/> on every
/// short byte sequence; the vocabulary mask against the grammar token by token; random walks through the demo vocabulary
/// end in text System.Text.Json parses; on the demo model, Medusa gives the tokens of plain decoding and every text is a
/// JSON prefix (System.Text.Json's reader) or, ended by the model, a whole object.
/// </summary>
public sealed class JsonModeTests(DemoEngineFixture fixture) : IClassFixture<DemoEngineFixture>
{
    private static readonly System.Buffers.SearchValues<byte> Closing = System.Buffers.SearchValues.Create("}]\",:"u8);
    private static readonly System.Buffers.SearchValues<byte> Opening = System.Buffers.SearchValues.Create("{[0123456789tfn-"u8);

    private static bool Reads(string text, out JsonGrammar state) => Reads(Encoding.UTF8.GetBytes(text), out state);

    private static bool Reads(ReadOnlySpan<byte> bytes, out JsonGrammar state)
    {
        state = JsonGrammar.Start;
        foreach (byte b in bytes)
            if (!state.Advance(b)) return false;
        return true;
    }

    private static bool GrammarAccepts(string text) => Reads(text, out var state) && state.IsComplete;

    private static bool ParsesAsObject(string text) => ParsesAsObject(Encoding.UTF8.GetBytes(text));

    private static bool ParsesAsObject(byte[] text)
    {
        try
        {
            using var document = JsonDocument.Parse(text);
            return document.RootElement.ValueKind == JsonValueKind.Object && StringsDecode(document.RootElement);
        }
        catch (JsonException)
        {
            return false;
        }
        catch (InvalidOperationException)
        {
            return false; // a string that is not well-formed UTF-8 (the parser checks them when they are read)
        }
    }

    private static bool StringsDecode(JsonElement element)
    {
        switch (element.ValueKind)
        {
            case JsonValueKind.Object:
                foreach (var property in element.EnumerateObject())
                    if (property.Name is null || !StringsDecode(property.Value)) return false;
                return true;
            case JsonValueKind.Array:
                return element.EnumerateArray().All(StringsDecode);
            case JsonValueKind.String:
                return element.GetString() is not null;
            default:
                return true;
        }
    }

    /// <summary>Whether System.Text.Json's reader finds nothing wrong in <paramref name="text"/> read as the start of a document.</summary>
    private static bool IsJsonPrefix(string text)
    {
        var reader = new Utf8JsonReader(Encoding.UTF8.GetBytes(text), isFinalBlock: false, state: default);
        try
        {
            while (reader.Read())
            {
            }
            return true;
        }
        catch (JsonException)
        {
            return false;
        }
    }

    private static readonly string[] ValidDocuments =
    [
        "{}",
        " \n{ } ",
        "{\"a\":1}",
        "{\"a\": -0.5e+10, \"b\": [true, false, null, 0, -0, 12.25E-3, \"x\"], \"c\": {\"d\": {}}}",
        "{\"\": \"\", \"esc\": \"\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9 \\uD7FF \\uE000 \\uFFFF\"}",
        "{\"utf8\": \"é ü 中文 🙂 \u007f\"}",
        "{\"nested\": [[[[]]], [{}], {\"k\": [1, {\"z\": null}]}]}",
        "{\r\n\t\"pretty\": [\r\n\t\t1,\r\n\t\t2\r\n\t]\r\n}",
        "{\"n\":0,\"m\":10,\"o\":1e5,\"p\":1E-0,\"q\":0.0}",
    ];

    public static TheoryData<string> ValidObjects() => new(ValidDocuments);

    [Theory]
    [MemberData(nameof(ValidObjects))]
    public void ValidObjects_AreAccepted_AndEveryPrefixCanContinue(string text)
    {
        text = text.Trim(); // the text is the object, from brace to brace
        Assert.True(ParsesAsObject(text), "System.Text.Json must accept the test document");
        Assert.True(GrammarAccepts(text));
        var bytes = Encoding.UTF8.GetBytes(text);
        for (int n = 0; n < bytes.Length; n++)
        {
            Assert.True(Reads(bytes.AsSpan(0, n), out var state), $"prefix of {n} bytes");
            Assert.False(state.IsComplete, $"prefix of {n} bytes is not a whole object");
        }
    }

    [Theory]
    [InlineData("")]
    [InlineData("[1]")]             // not an object
    [InlineData("\"s\"")]
    [InlineData("1")]
    [InlineData("{,}")]
    [InlineData("{\"a\"}")]
    [InlineData("{\"a\":}")]
    [InlineData("{\"a\":1,}")]
    [InlineData("{\"a\":[1,]}")]
    [InlineData("{\"a\":01}")]
    [InlineData("{\"a\":1.}")]
    [InlineData("{\"a\":.5}")]
    [InlineData("{\"a\":-}")]
    [InlineData("{\"a\":+1}")]
    [InlineData("{\"a\":1e}")]
    [InlineData("{\"a\":1e+}")]
    [InlineData("{\"a\":tru}")]
    [InlineData("{\"a\":True}")]
    [InlineData("{\"a\":NaN}")]
    [InlineData("{\"a\":\"\t\"}")]  // a raw control character in a string
    [InlineData("{\"a\":\"\\x\"}")]
    [InlineData("{\"a\":\"\\u12G4\"}")]
    [InlineData("{'a':1}")]
    [InlineData("{\"a\":1}}")]
    [InlineData("{\"a\":1]")]
    [InlineData("{\"a\":[1}")]
    [InlineData("{} {}")]
    [InlineData("{\"a\" 1}")]
    [InlineData("{\"a\":1 \"b\":2}")]
    public void InvalidTexts_AreRejected(string text)
    {
        Assert.False(ParsesAsObject(text), "System.Text.Json must reject the test document");
        Assert.False(GrammarAccepts(text));
    }

    [Fact]
    public void TheDocumentedLimits()
    {
        // Nesting: 64 levels, as System.Text.Json's default; a 65th is refused by both.
        string deep = "{\"a\":" + new string('[', 63) + new string(']', 63) + "}";
        Assert.True(ParsesAsObject(deep));
        Assert.True(GrammarAccepts(deep));
        string deeper = "{\"a\":" + new string('[', 64) + new string(']', 64) + "}";
        Assert.False(ParsesAsObject(deeper));
        Assert.False(GrammarAccepts(deeper));
        // Whitespace: 16 bytes in a row, not 17 (valid JSON, refused so that a model cannot stall in blank lines).
        Assert.True(GrammarAccepts("{" + new string(' ', JsonGrammar.MaxWhitespaceRun) + "}"));
        Assert.True(ParsesAsObject("{" + new string(' ', JsonGrammar.MaxWhitespaceRun + 1) + "}"));
        Assert.False(GrammarAccepts("{" + new string(' ', JsonGrammar.MaxWhitespaceRun + 1) + "}"));
        Assert.True(GrammarAccepts("{" + new string(' ', 16) + "\"a\"" + new string('\n', 16) + ":" + new string('\t', 16) + "1" + new string(' ', 16) + "}"));
        // Nothing before the opening brace or after the closing one, not even whitespace.
        Assert.False(Reads("{} ", out _));
        // U+2581, the tokenizer's space marker, is shown as a space: refused in strings (its neighbours are not).
        Assert.False(GrammarAccepts("{\"a\":\"x\u2581y\"}"));
        Assert.True(GrammarAccepts("{\"a\":\"x\u2580\u2582y\"}"));
        Assert.False(Reads(" {}", out _));
        Assert.False(Reads("\n", out _));
        // \u escapes of surrogates are refused (the character is written as UTF-8 instead); their neighbours are not.
        foreach (string escape in new[] { "D800", "d800", "DBFF", "DC00", "DFFF", "dfff" })
            Assert.False(GrammarAccepts($"{{\"a\":\"\\u{escape}\"}}"), escape);
        foreach (string escape in new[] { "D7FF", "d7ff", "E000", "0000", "FFFF", "00e9", "D700" })
            Assert.True(GrammarAccepts($"{{\"a\":\"\\u{escape}\"}}"), escape);
    }

    /// <summary>Strings hold exactly the well-formed UTF-8 sequences: every sequence of 1-4 bytes from the interesting ones, against .NET's validator.</summary>
    [Fact]
    public void StringsHoldExactlyWellFormedUtf8()
    {
        byte[] interesting = [0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF];
        var head = "{\"k\":\""u8.ToArray();
        Assert.True(Reads(head, out var start));
        int checkedCount = 0;
        var sequence = new byte[4];
        for (int length = 1; length <= 4; length++)
        {
            int combinations = (int)Math.Pow(interesting.Length, length);
            for (int c = 0; c < combinations; c++)
            {
                for (int i = 0, x = c; i < length; i++, x /= interesting.Length) sequence[i] = interesting[x % interesting.Length];
                var bytes = sequence.AsSpan(0, length);
                var state = start;
                bool accepted = true;
                foreach (byte b in bytes)
                    if (!(accepted = state.Advance(b))) break;
                // Complete: the string can close right after the sequence.
                bool closes = accepted && state.Advance((byte)'"');
                Assert.Equal(System.Text.Unicode.Utf8.IsValid(bytes), closes);
                checkedCount++;
            }
        }
        Assert.Equal(24 + 24 * 24 + 24 * 24 * 24 + 24 * 24 * 24 * 24, checkedCount);
    }

    /// <summary>
    /// Byte edits of valid documents (insert, delete, replace; the bytes of 'é' among them, so UTF-8 breaks too): the
    /// grammar and System.Text.Json agree on every one.
    /// </summary>
    [Fact]
    public void MutatedDocuments_AgreeWithSystemTextJson()
    {
        // No 'd'/'D' (a surrogate escape is the documented difference) and at most single spaces (the whitespace limit).
        var alphabet = "{}[]\":,. -+0123456789eEtrufalsn\\/bx\u00e9"u8.ToArray();
        var random = new Random(7);
        int checkedCount = 0, accepted = 0;
        foreach (string seed in ValidDocuments)
        {
            string document = seed.Trim();
            if (document.Contains("\\u", StringComparison.Ordinal) || document.Contains('\t') || document.Contains('\r')) continue;
            for (int trial = 0; trial < 600; trial++)
            {
                var text = new List<byte>(Encoding.UTF8.GetBytes(document));
                for (int edits = 1 + random.Next(2); edits > 0; edits--)
                {
                    int at = random.Next(text.Count + 1);
                    byte c = alphabet[random.Next(alphabet.Length)];
                    switch (random.Next(3))
                    {
                        case 0: text.Insert(at, c); break;
                        case 1: if (at < text.Count) text.RemoveAt(at); break;
                        default: if (at < text.Count) text[at] = c; break;
                    }
                }
                var mutated = text.ToArray();
                if (mutated.Length > 0 && (mutated[^1] == (byte)' ' || mutated[0] == (byte)' ')) continue; // the grammar starts and ends at a brace
                bool expected = ParsesAsObject(mutated);
                bool actual = Reads(mutated, out var state) && state.IsComplete;
                Assert.True(expected == actual, $"'{Convert.ToHexString(mutated)}' ({Encoding.UTF8.GetString(mutated)}): System.Text.Json {expected}");
                checkedCount++;
                if (expected) accepted++;
            }
        }
        Assert.True(checkedCount > 2000 && accepted > 100, $"{checkedCount} checked, {accepted} valid");
    }

    /// <summary>The sorted-prefix mask rules out exactly the tokens the grammar refuses one by one, in states met on the way through real documents.</summary>
    [Fact]
    public void TheMask_EqualsTokenByTokenChecks()
    {
        var engine = fixture.Engine;
        var vocabulary = ConstraintVocabulary.Build(engine.Tokenizer, engine.Config.VocabSize, engine.Config.EndTokenIds);
        var scratch = new JsonGrammar[vocabulary.LongestToken + 1];
        var logits = new float[vocabulary.Size];
        string document = "{\"name\": \"Lily é\\n\", \"age\": -3.5e2, \"toys\": [true, null, {\"k\": []}], \"x\": \"\\u00e9\"}";
        var bytes = Encoding.UTF8.GetBytes(document);
        int states = 0;
        for (int n = 0; n <= bytes.Length; n++)
        {
            Assert.True(Reads(bytes.AsSpan(0, n), out var state));
            Array.Fill(logits, 0f);
            int allowed = vocabulary.Mask(state, logits, scratch);
            int counted = 0;
            for (int token = 0; token < vocabulary.Size; token++)
            {
                bool expected = vocabulary.Allows(state, token);
                Assert.True(expected == (logits[token] == 0f), $"after {n} bytes, token {token} ('{Encoding.UTF8.GetString(vocabulary.Bytes(token))}'): grammar {expected}");
                if (expected) counted++;
            }
            Assert.Equal(counted, allowed);
            Assert.True(allowed > 0, $"after {n} bytes nothing is allowed");
            if (n == bytes.Length) Assert.Equal(engine.Config.EndTokenIds.Count(id => id < vocabulary.Size), allowed); // complete: end tokens only
            states++;
        }
        Assert.Equal(bytes.Length + 1, states);
    }

    /// <summary>
    /// Medusa's guesses under the constraint: a node takes the rank-th guess of its head that the constraint allows after
    /// its path (worked out by hand on a three-node tree), and keeps its guess when too few are allowed or its parent's
    /// token is ruled out.
    /// </summary>
    [Fact]
    public void TreeGuesses_AreTheAllowedOnesOfEachHead()
    {
        var tokenizer = fixture.Engine.Tokenizer;
        var vocabulary = ConstraintVocabulary.Build(tokenizer, fixture.Engine.Config.VocabSize, fixture.Engine.Config.EndTokenIds);
        // The word piece spelling exactly these bytes (the last id with them: byte tokens come first).
        int Token(string text) => Enumerable.Range(0, vocabulary.Size).Last(id => vocabulary.Bytes(id).SequenceEqual(Encoding.UTF8.GetBytes(text)));
        int brace = Token("{"), quote = Token("\""), close = Token("}"), the = Token(" The"), name = Token(" name");
        var constraint = new GrammarConstraint<JsonGrammar>(vocabulary, JsonGrammar.Start);
        constraint.Append(brace); // node 0: the text so far is "{"
        const int width = 4;
        int[] topK =
        [
            the, quote, the, close,  // head 0: after "{" only '"' and '}' are allowed of these
            name, the, quote, close, // head 1
        ];
        // node 1: head 0's best allowed guess; node 2: its second; node 3 (after node 1): head 1's best allowed;
        // node 4 (after node 2, whose '}' closes the object): nothing may follow, it keeps its guess.
        int[] parents = [-1, 0, 0, 1, 2], depths = [0, 1, 1, 2, 2], ranks = [-1, 0, 1, 0, 0];
        int[] tokens = [brace, the, the, name, name];
        constraint.ConstrainGuesses(parents, depths, ranks, tokens, topK, width);
        Assert.Equal([brace, quote, close, name, name], tokens);
        // Too few allowed guesses for the rank: the node keeps its own.
        int[] few = [brace, the, the, the, the];
        constraint.ConstrainGuesses(parents, depths, [-1, 2, 3, 0, 0], few, topK, width);
        Assert.Equal(the, few[1]);
        Assert.Equal(the, few[2]);
    }

    /// <summary>
    /// Random walks through the demo vocabulary, each step a token the mask allows (structural tokens favoured so that
    /// objects close), end in text that the tokenizer decodes to one JSON object System.Text.Json parses.
    /// </summary>
    [Fact]
    public void RandomWalksThroughTheVocabulary_DecodeToValidObjects()
    {
        var engine = fixture.Engine;
        var tokenizer = engine.Tokenizer;
        var vocabulary = ConstraintVocabulary.Build(tokenizer, engine.Config.VocabSize, engine.Config.EndTokenIds);
        var scratch = new JsonGrammar[vocabulary.LongestToken + 1];
        var logits = new float[vocabulary.Size];
        var weights = new double[vocabulary.Size];
        for (int token = 0; token < vocabulary.Size; token++)
        {
            var b = vocabulary.Bytes(token);
            weights[token] = b.IndexOfAny(Closing) >= 0 ? 300 : b.IndexOfAny(Opening) >= 0 ? 20 : 1;
        }
        int completed = 0;
        for (int seed = 0; seed < 60; seed++)
        {
            var random = new Random(seed);
            var state = JsonGrammar.Start;
            var tokens = new List<int>();
            for (int step = 0; step < 600 && !state.IsComplete; step++)
            {
                Array.Fill(logits, 0f);
                Assert.True(vocabulary.Mask(state, logits, scratch) > 0);
                double total = 0;
                for (int t = 0; t < logits.Length; t++) if (logits[t] == 0f) total += weights[t];
                double r = random.NextDouble() * total;
                int chosen = -1;
                for (int t = 0; t < logits.Length && chosen < 0; t++)
                    if (logits[t] == 0f && (r -= weights[t]) <= 0) chosen = t;
                if (chosen < 0) chosen = Array.FindLastIndex(logits, v => v == 0f);
                Assert.True(vocabulary.TryAppend(ref state, chosen));
                tokens.Add(chosen);
            }
            if (!state.IsComplete) continue;
            completed++;
            // Whole-sequence and streaming decoding (the prompt before it) both give one object.
            string decoded = tokenizer.Decode(tokens);
            Assert.True(ParsesAsObject(decoded), $"seed {seed}: {decoded}");
            var streaming = tokenizer.CreateStreamingDetokenizer(continuesText: true);
            string streamed = string.Concat(tokens.Select(streaming.Append)) + streaming.Flush();
            Assert.True(ParsesAsObject(streamed), $"seed {seed}: {streamed}");
        }
        Assert.True(completed >= 50, $"{completed} of 60 walks closed their object");
    }

    /// <summary>The generated tokens as the grammar read them: their bytes, one after the other, as UTF-8.</summary>
    private static string GrammarView(InferenceEngine engine, IEnumerable<int> ids) =>
        Encoding.UTF8.GetString(ids.Where(id => !engine.Config.EndTokenIds.Contains(id)).SelectMany(engine.Tokenizer.TokenBytes).ToArray());

    /// <summary>From an empty prompt (BOS alone), the text keeps every space the grammar read: no dummy-prefix space is dropped.</summary>
    [Fact]
    public void FromAnEmptyPrompt_TheTextIsTheBytesTheGrammarRead()
    {
        var engine = fixture.Engine;
        var options = new GenerationOptions { MaxTokens = 60, ResponseFormat = ResponseFormat.JsonObject, Sampling = Sampling.From(0.9f, 1f), Seed = 11 };
        var prompt = engine.EncodePrompt("", options);
        Assert.Equal([engine.Tokenizer.BosId], prompt);
        var result = Run(engine, prompt, options);
        Assert.StartsWith("{", result.Text, StringComparison.Ordinal);
        Assert.Equal(GrammarView(engine, result.Ids), result.Text);
        Assert.Contains(' ', result.Text);
    }

    /// <summary>
    /// The dummy-prefix case on a model whose logits are known (the same at every position): from an empty prompt the
    /// byte token '{', the byte token '"', then the piece "▁x" (the penalties push each used token down). Shown with its
    /// dummy-prefix space dropped, the key would read "x" while the grammar read " x"; under a constraint the space stays.
    /// </summary>
    [Fact]
    public void AfterByteTokens_AWordPiecesSpace_IsShownAsTheGrammarReadIt()
    {
        var tokenizer = fixture.Engine.Tokenizer;
        int Byte(byte value) => Enumerable.Range(0, 300).First(id => tokenizer.TokenBytes(id) is [var b] && b == value); // <0xNN> come first
        int brace = Byte((byte)'{'), quote = Byte((byte)'"');
        var x = tokenizer.Encode("x", addBos: false);
        Assert.Single(x); // "▁x"
        var vocab = new float[32000];
        Array.Fill(vocab, -5f);
        vocab[brace] = 10f;
        vocab[x[0]] = 9f;
        vocab[quote] = 8f;
        using var engine = InferenceEngine.Load(new EngineOptions
        {
            ModelPath = LogprobsTests.WriteKnownLogitsModel(8, vocab), Device = new IlgpuMedusa.Compute.DeviceOptions { Kind = IlgpuMedusa.Compute.DeviceKind.Host }, Heads = "none",
        });
        var options = new GenerationOptions { MaxTokens = 3, ResponseFormat = ResponseFormat.JsonObject, FrequencyPenalty = 2, PresencePenalty = 2 };
        var result = Run(engine, [engine.Tokenizer.BosId], options);
        Assert.Equal([brace, quote, x[0]], result.Ids);
        Assert.Equal("{\" x", result.Text);
    }

    private static (List<int> Ids, string Text, GenerationStats Stats) Run(IlgpuMedusa.Generation.InferenceEngine engine, IReadOnlyList<int> prompt, GenerationOptions options)
    {
        var stats = new GenerationStats();
        var pieces = engine.Generate(prompt, options, stats).ToList();
        return (pieces.SelectMany(p => p.TokenIds).ToList(), string.Concat(pieces.Select(p => p.Text)), stats);
    }

    public static TheoryData<string, float, ulong> Settings() => new()
    {
        // tree, temperature, seed
        { "dynamic-3", 0f, 1 },
        { "tree-8", 0f, 1 },
        { "chain-3", 0f, 1 },
        { "dynamic-3", 0.8f, 3 },
        { "mc_sim_7b_63", 1.0f, 4 },
    };

    [Theory]
    [MemberData(nameof(Settings))]
    public void OnTheDemoModel_MedusaEqualsPlainDecoding_AndTheTextIsJson(string tree, float temperature, ulong seed)
    {
        var engine = fixture.Engine;
        var options = new GenerationOptions
        {
            MaxTokens = 80, Sampling = Sampling.From(temperature, 1f), Seed = seed, Tree = tree, ResponseFormat = ResponseFormat.JsonObject,
        };
        var prompt = engine.EncodePrompt("Lily wrote down her name and her age as JSON:", options);
        var plain = Run(engine, prompt, options with { UseMedusa = false });
        var medusa = Run(engine, prompt, options);
        Assert.Equal(plain.Ids, medusa.Ids);
        Assert.Equal(plain.Text, medusa.Text);
        Assert.Contains('{', plain.Text);
        Assert.Equal(GrammarView(engine, plain.Ids), plain.Text); // the text shown is the bytes the grammar read
        if (plain.Stats.FinishReason == FinishReason.EndToken) Assert.True(ParsesAsObject(plain.Text), plain.Text);
        else Assert.True(IsJsonPrefix(plain.Text), plain.Text);
        // The constraint changed the text: unconstrained, the model tells a story.
        var free = Run(engine, prompt, options with { ResponseFormat = ResponseFormat.Text, UseMedusa = false });
        Assert.False(IsJsonPrefix(free.Text), free.Text);
    }

    /// <summary>
    /// A logit bias toward closing brackets and quotes (applied before the constraint, which still decides what is
    /// allowed) lets the small story model finish objects: each ends with an end token, and its text is one object.
    /// </summary>
    [Fact]
    public void GenerationsThatEnd_AreOneValidObject()
    {
        var engine = fixture.Engine;
        var bias = new Dictionary<int, float>();
        foreach (string piece in new[] { "}", "\"", "\",", "1", ":" })
        {
            var ids = engine.Tokenizer.Encode(piece, addBos: false);
            bias[ids[^1]] = 6f;
        }
        int ended = 0;
        for (ulong seed = 1; seed <= 6; seed++)
        {
            var options = new GenerationOptions
            {
                MaxTokens = 120, Sampling = Sampling.From(0.7f, 1f), Seed = seed, ResponseFormat = ResponseFormat.JsonObject, LogitBias = bias,
            };
            var prompt = engine.EncodePrompt("Tom's toy list:", options);
            var result = Run(engine, prompt, options); // with Medusa (its equality with plain decoding is tested above)
            if (result.Stats.FinishReason != FinishReason.EndToken)
            {
                Assert.True(IsJsonPrefix(result.Text), result.Text);
                continue;
            }
            ended++;
            Assert.True(ParsesAsObject(result.Text), $"seed {seed}: {result.Text}");
            Assert.EndsWith("}", result.Text, StringComparison.Ordinal);
        }
        Assert.True(ended >= 3, $"{ended} of 6 generations ended with an end token");
    }

    /// <summary>The chat client: <see cref="Microsoft.Extensions.AI.ChatResponseFormat.Json"/> is JSON mode, with a schema structured output; an unsupported schema is refused, naming the option.</summary>
    [Fact]
    public async Task TheChatClient_MapsChatResponseFormatJson()
    {
        var client = new IlgpuMedusa.Hosting.IlgpuMedusaChatClient(fixture.Engine);
        var json = new Microsoft.Extensions.AI.ChatOptions { ResponseFormat = Microsoft.Extensions.AI.ChatResponseFormat.Json, MaxOutputTokens = 30 };
        Assert.Equal(ResponseFormat.JsonObject, client.ToGenerationOptions(json).ResponseFormat);
        Assert.Equal(ResponseFormat.Text, client.ToGenerationOptions(new() { ResponseFormat = Microsoft.Extensions.AI.ChatResponseFormat.Text }).ResponseFormat);
        var reply = await ((Microsoft.Extensions.AI.IChatClient)client).GetResponseAsync([new Microsoft.Extensions.AI.ChatMessage(Microsoft.Extensions.AI.ChatRole.User, "Lily's name and age as JSON, please.")], json);
        Assert.StartsWith("{", reply.Text, StringComparison.Ordinal);
        Assert.True(IsJsonPrefix(reply.Text), reply.Text);
        // With a schema: structured output; the reply is an object with the schema's first property first.
        using var schema = JsonDocument.Parse("""{"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}""");
        var withSchema = new Microsoft.Extensions.AI.ChatOptions { ResponseFormat = Microsoft.Extensions.AI.ChatResponseFormat.ForJsonSchema(schema.RootElement.Clone(), "person"), MaxOutputTokens = 30 };
        var mapped = client.ToGenerationOptions(withSchema);
        Assert.Equal(ResponseFormat.JsonSchema, mapped.ResponseFormat);
        Assert.Equal(schema.RootElement.GetRawText(), mapped.JsonSchema);
        var structured = await ((Microsoft.Extensions.AI.IChatClient)client).GetResponseAsync([new Microsoft.Extensions.AI.ChatMessage(Microsoft.Extensions.AI.ChatRole.User, "Lily's card.")], withSchema);
        Assert.Matches("^\\{\\s?\"name\"", structured.Text);
        // An unsupported schema is refused, naming the option and the schema path.
        using var unsupported = JsonDocument.Parse("""{"type": "object", "properties": {"name": {"type": "string", "pattern": "^L"}}}""");
        var bad = new Microsoft.Extensions.AI.ChatOptions { ResponseFormat = Microsoft.Extensions.AI.ChatResponseFormat.ForJsonSchema(unsupported.RootElement.Clone(), "person") };
        var e = Assert.ThrowsAny<ArgumentException>(() => client.ToGenerationOptions(bad));
        Assert.Contains("ChatOptions.ResponseFormat", e.Message, StringComparison.Ordinal);
        Assert.Contains("$.properties.name: keyword 'pattern' is not supported", e.Message, StringComparison.Ordinal);
    }

    /// <summary>The command line: <c>generate --response-format json --json</c> prints a text that starts a JSON object.</summary>
    [Fact]
    public void TheCommandLine_GeneratesJson()
    {
        var result = IlgpuMedusa.Tests.Cli.CliRunner.Run("generate", "--model", TestModels.Stories15MDirectory, "--prompt", "Lily's toys as JSON:",
            "--max-tokens", "30", "--response-format", "json", "--json", "--device", "host");
        Assert.True(result.ExitCode == 0, result.StandardError);
        using var output = JsonDocument.Parse(result.StandardOutput);
        string text = output.RootElement.GetProperty("text").GetString()!;
        Assert.StartsWith("{", text, StringComparison.Ordinal);
        Assert.True(IsJsonPrefix(text), text);
    }

    [Fact]
    public void TypicalAcceptance_AndUnknownFormats_AreRefused()
    {
        var engine = fixture.Engine;
        var typical = new GenerationOptions { MaxTokens = 3, ResponseFormat = ResponseFormat.JsonObject, Acceptance = IlgpuMedusa.Medusa.Acceptance.Typical() };
        var prompt = engine.EncodePrompt("Hi", typical);
        Assert.Contains("typical", Assert.ThrowsAny<ArgumentException>(() => engine.Generate(prompt, typical, new GenerationStats()).ToList()).Message, StringComparison.Ordinal);
        var unknown = new GenerationOptions { ResponseFormat = (ResponseFormat)7 };
        Assert.Contains("ResponseFormat", Assert.ThrowsAny<ArgumentException>(() => unknown.Validate()).Message, StringComparison.Ordinal);
    }
}
