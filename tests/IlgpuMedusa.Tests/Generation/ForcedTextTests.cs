using System.Text;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Generation.Constraints;
using IlgpuMedusa.Tests.Hosting;

namespace IlgpuMedusa.Tests.Generation;

/// <summary>
/// Forced text under a constraint: what a JSON schema's grammar leaves no choice about (the next key, the rest of an enum
/// value) is spelled in tokens (<see cref="ITokenConstraint.ForcedTokens"/>) and verified as a chain in Medusa's tree.
/// The expected texts are worked out by hand from the schemas; the spelling is checked against a brute-force search of
/// the vocabulary; on the demo model Medusa still gives plain decoding's tokens, and steps accept more tokens than the
/// tree alone could hold.
/// </summary>
public sealed class ForcedTextTests(DemoEngineFixture fixture) : IClassFixture<DemoEngineFixture>
{
    private const string Schema = """
        {"type": "object", "additionalProperties": false, "required": ["name", "age", "color"],
         "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "color": {"type": "string", "enum": ["red", "green"]}}}
        """;

    private ConstraintVocabulary Vocabulary() =>
        ConstraintVocabulary.Build(fixture.Engine.Tokenizer, fixture.Engine.Config.VocabSize, fixture.Engine.Config.EndTokenIds);

    /// <summary>The token of one raw byte (the lowest id carrying exactly that byte: SentencePiece's byte-fallback token).</summary>
    private static int ByteToken(ConstraintVocabulary vocabulary, byte b) =>
        Enumerable.Range(0, vocabulary.Size).First(id => vocabulary.Bytes(id) is { Length: 1 } bytes && bytes[0] == b);

    /// <summary>A constraint after <paramref name="history"/>, appended one byte token at a time (no spelling of the code's).</summary>
    private static GrammarConstraint<TGrammar> After<TGrammar>(ConstraintVocabulary vocabulary, TGrammar start, string history)
        where TGrammar : struct, IByteGrammar
    {
        var constraint = new GrammarConstraint<TGrammar>(vocabulary, start);
        foreach (byte b in Encoding.UTF8.GetBytes(history)) constraint.Append(ByteToken(vocabulary, b));
        return constraint;
    }

    /// <summary>Brute force: the longest token that starts <paramref name="text"/>, the highest id of those with its bytes.</summary>
    private static int LongestByScan(ConstraintVocabulary vocabulary, ReadOnlySpan<byte> text)
    {
        int best = -1, bestLength = 0;
        for (int id = 0; id < vocabulary.Size; id++)
        {
            var bytes = vocabulary.Bytes(id);
            if (bytes.Length == 0 || bytes.Length < bestLength || !text.StartsWith(bytes)) continue;
            best = id;
            bestLength = bytes.Length;
        }
        return best;
    }

    private static string Text(ConstraintVocabulary vocabulary, IEnumerable<int> tokens) =>
        Encoding.UTF8.GetString(tokens.SelectMany(t => vocabulary.Bytes(t).ToArray()).ToArray());

    [Theory]
    [InlineData(", \"age\":")]
    [InlineData(" \"favorite\": \"")]
    [InlineData("ed\"}")]
    [InlineData("\":")]
    [InlineData("été")]
    [InlineData("\u2581x")] // U+2581 itself (no token carries its bytes: the tokenizer shows it as a space)
    public void LongestTokenAt_IsTheLongestTokenStartingTheText(string text)
    {
        var vocabulary = Vocabulary();
        var bytes = Encoding.UTF8.GetBytes(text);
        for (int at = 0; at < bytes.Length; at++)
            Assert.Equal(LongestByScan(vocabulary, bytes.AsSpan(at)), vocabulary.LongestTokenAt(bytes.AsSpan(at)));
        Assert.Equal(-1, vocabulary.LongestTokenAt([]));
    }

    /// <summary>
    /// After a schema's string value closes, the grammar forces the comma and the next key up to its colon; the value
    /// that follows is free. The whitespace is the text's own habit (a space after ',' and ':' before the text shows one).
    /// </summary>
    [Theory]
    [InlineData("{\"name\": \"Bob\"", ", \"age\":")]                                // default: a space after ','
    [InlineData("{\"name\": \"Bob\", \"age\": 7", "")]                          // more digits may come
    [InlineData("{\"name\":\"Bob\",\"age\":7,", "\"color\":\"")]                 // the text wrote no space after ',' and ':'; an enum of strings opens with '"'
    [InlineData("{\"name\": \"Bob\", \"age\": 7,", " \"color\": \"")]
    [InlineData("{\"name\" : \"Bob\" ,\"age\" : 7 ,", "\"color\" : \"")]         // whitespace before ':' as well
    [InlineData("{\"name\": \"Bob\", \"age\": 7, \"color\": \"r", "ed\"}")]         // the rest of the enum value, and the object's end
    [InlineData("{\"name\": \"Bob\", \"age\": 7, \"color\": \"", "")]              // "red" or "green": not forced
    [InlineData("{\"name\": \"Bo", "")]                                              // inside a free string
    [InlineData("{\"name\": \"Bob\", \"age\": 7, \"color\": \"red\"}", "")]          // complete: only an end token may come
    [InlineData("", "{\"name\": \"")]                                               // the first key and its string's quote
    [InlineData("{\"name\": \"Bob\", \"age\": 7, \"color\": \"g", "reen\"}")]
    public void TheSchemasForcedText_IsSpelledByTheLongestTokens(string history, string expected)
    {
        var vocabulary = Vocabulary();
        var constraint = After(vocabulary, CompiledJsonSchema.Compile(Schema).Start, history);
        var tokens = new int[16];
        int count = constraint.ForcedTokens([], tokens);
        Assert.Equal(expected, Text(vocabulary, tokens.Take(count)));
        var bytes = Encoding.UTF8.GetBytes(expected);
        for (int i = 0, at = 0; i < count; at += vocabulary.Bytes(tokens[i++]).Length)
            Assert.Equal(LongestByScan(vocabulary, bytes.AsSpan(at)), tokens[i]);
    }

    /// <summary>
    /// A space inside a key or an enum value is forced text like any byte; whitespace the text already wrote is not
    /// doubled by the habit (JSON mode allows several bytes of it).
    /// </summary>
    [Fact]
    public void SpacesInsideKeysAndValues_AreForced_AndWrittenWhitespaceIsNotDoubled()
    {
        var vocabulary = Vocabulary();
        var schema = CompiledJsonSchema.Compile("""
            {"type": "object", "properties": {"first name": {"type": "string"}, "shade": {"enum": ["dark red", "green"]}}}
            """);
        var tokens = new int[16];
        string Forced<TGrammar>(TGrammar start, string history) where TGrammar : struct, IByteGrammar =>
            Text(vocabulary, tokens.Take(After(vocabulary, start, history).ForcedTokens([], tokens)));
        Assert.Equal("{\"first name\": \"", Forced(schema.Start, ""));
        Assert.Equal("ark red\"}", Forced(schema.Start, "{\"first name\": \"Al\", \"shade\": \"d"));
        Assert.Equal(", \"shade\": \"", Forced(schema.Start, "{\"first name\": \"Al\""));
        // JSON mode: the text wrote a space before ':' once; after a key and a space already written, only ':' is forced.
        Assert.Equal(" :", Forced(JsonGrammar.Start, "{\"x\" : 1, \"a\""));
        Assert.Equal(":", Forced(JsonGrammar.Start, "{\"x\" : 1, \"a\" "));
    }

    /// <summary>Pending tokens (a Medusa path) count as if appended; a short span takes the first tokens only; JSON mode forces a key's colon.</summary>
    [Fact]
    public void PendingTokens_CountAsAppended_AndTheSpanBoundsTheTokens()
    {
        var vocabulary = Vocabulary();
        var schema = CompiledJsonSchema.Compile(Schema);
        var tokens = new int[16];
        string history = "{\"name\":\"Bob\"", more = ",\"age\":7,";
        int[] pending = Encoding.UTF8.GetBytes(more).Select(b => ByteToken(vocabulary, b)).ToArray();
        int count = After(vocabulary, schema.Start, history).ForcedTokens(pending, tokens);
        var appended = new int[16];
        int expected = After(vocabulary, schema.Start, history + more).ForcedTokens([], appended);
        Assert.Equal("\"color\":\"", Text(vocabulary, appended.Take(expected)));
        Assert.Equal(appended.Take(expected), tokens.Take(count));

        int all = After(vocabulary, schema.Start, history).ForcedTokens([], tokens);
        Assert.Equal(", \"age\":", Text(vocabulary, tokens.Take(all)));
        Assert.True(all > 1);
        var one = new int[1];
        Assert.Equal(1, After(vocabulary, schema.Start, history).ForcedTokens([], one));
        Assert.Equal(tokens[0], one[0]);

        var json = After(vocabulary, JsonGrammar.Start, "{\"a\"");
        Assert.Equal(":", Text(vocabulary, tokens.Take(json.ForcedTokens([], tokens))));
        Assert.Equal(0, After(vocabulary, JsonGrammar.Start, "{").ForcedTokens([], tokens)); // a key or '}'
    }

    private static (List<int> Ids, GenerationStats Stats) Run(InferenceEngine engine, IReadOnlyList<int> prompt, GenerationOptions options)
    {
        var stats = new GenerationStats();
        var ids = engine.Generate(prompt, options, stats).SelectMany(p => p.TokenIds).ToList();
        return (ids, stats);
    }

    /// <summary>
    /// On the demo model under a schema with long keys: Medusa gives plain decoding's tokens, forced text was accepted,
    /// and some steps emitted more tokens than a <c>dynamic-3</c> tree (root and two guesses) can hold.
    /// </summary>
    [Theory]
    [InlineData("dynamic-3", 0f)]
    [InlineData("chain-2", 0.7f)]
    public void OnTheDemoModel_ForcedTextIsAccepted_AndMedusaStillEqualsPlain(string tree, float temperature)
    {
        const string schema = """
            {"type": "object", "additionalProperties": false, "required": ["first_name", "favourite_colour", "number_of_friends"],
             "properties": {"first_name": {"type": "string"}, "favourite_colour": {"type": "string"}, "number_of_friends": {"type": "integer"}}}
            """;
        var engine = fixture.Engine;
        var bias = new Dictionary<int, float>();
        foreach (string piece in new[] { "\"", "\",", "}" }) bias[engine.Tokenizer.Encode(piece, addBos: false)[^1]] = 4f; // help the story model close its strings
        var options = new GenerationOptions
        {
            MaxTokens = 80, Sampling = Sampling.From(temperature, 1f), Seed = 5, Tree = tree,
            ResponseFormat = ResponseFormat.JsonSchema, JsonSchema = schema, LogitBias = bias,
        };
        var prompt = engine.EncodePrompt("Tom's card:", options);
        var plain = Run(engine, prompt, options with { UseMedusa = false });
        var medusa = Run(engine, prompt, options);
        Assert.Equal(plain.Ids, medusa.Ids);
        var text = engine.Tokenizer.Decode(plain.Ids);
        Assert.Contains("\"number_of_friends\"", text, StringComparison.Ordinal); // the keys were reached
        var stats = medusa.Stats.Medusa!;
        Assert.True(stats.ForcedTokens >= 4, $"{stats.ForcedTokens} forced tokens accepted in: {text}");
        Assert.True(stats.AcceptHistogram.Skip(4).Sum() > 0, $"no step emitted more than 3 tokens: [{string.Join(", ", stats.AcceptHistogram)}]");
    }

    /// <summary>
    /// In a batch too small for the trees and their forced text (64 rows, the least an engine takes, for requests whose
    /// tree-32 and tree-16 steps ask for 33 and 17 rows and 8 more of forced text), a later request verifies less forced
    /// text, or none, or no tree: requests together still give what each gives alone, and some step had its forced text
    /// cut.
    /// </summary>
    [Fact]
    public async Task InASmallBatch_ForcedTextShrinks_AndRequestsStillEqualAlone()
    {
        using var engine = InferenceEngine.Load(new EngineOptions
        {
            ModelPath = TestModels.Stories15MDirectory,
            Device = new IlgpuMedusa.Compute.DeviceOptions { Kind = IlgpuMedusa.Compute.DeviceKind.Host },
            MaxBatchTokens = 64,
            SpeculationBatchLimit = 8, // the host's default, 2, would have them decode one token per step
        });
        var options = new GenerationOptions { MaxTokens = 60, ResponseFormat = ResponseFormat.JsonSchema, JsonSchema = Schema };
        (string Prompt, string Tree)[] requests = [("Tom's card:", "tree-32"), ("Lily's card:", "tree-16"), ("A card for Sam:", "tree-32"), ("Ben wrote:", "tree-16")];
        var alone = requests.Select(r => Run(engine, engine.EncodePrompt(r.Prompt, options), options with { UseMedusa = false }).Ids).ToArray();
        var stats = requests.Select(_ => new GenerationStats()).ToArray();
        var together = await Task.WhenAll(requests.Select(async (r, i) =>
        {
            var ids = new List<int>();
            await foreach (var piece in engine.GenerateAsync(engine.EncodePrompt(r.Prompt, options), options with { Tree = r.Tree }, stats[i])) ids.AddRange(piece.TokenIds);
            return ids;
        }));
        for (int i = 0; i < requests.Length; i++) Assert.Equal(alone[i], together[i]);
        Assert.True(stats.Sum(s => s.Medusa!.ForcedTokens) > 0, "no forced text was accepted");
        Assert.True(stats.Sum(s => s.Medusa!.ForcedTextCuts) > 0,
            "no step had its forced text cut (the batch was not short): " + string.Join("; ", stats.Select(s => $"{s.Medusa!.Steps} steps, {s.Medusa.ForcedTokens} forced")));
    }

    /// <summary>
    /// Medusa's statistics count forced text apart from the heads' guesses: the head hit rates come from the guesses
    /// alone, and a step longer than the heads reach has its own histogram entry.
    /// </summary>
    [Fact]
    public void Statistics_TellForcedTextFromGuesses()
    {
        var stats = new IlgpuMedusa.Medusa.MedusaStats(heads: 2);
        stats.Record(emitted: 7, guesses: 0, forced: 6); // a chain under the root: no head was right
        stats.Record(emitted: 3, guesses: 2, forced: 0);
        Assert.Equal(1, stats.AcceptHistogram[7]);
        Assert.Equal(1, stats.AcceptHistogram[3]);
        Assert.Equal([0.5, 0.5], stats.HeadHitRates());
        Assert.Equal(6, stats.ForcedTokens);
        Assert.Equal(5.0, stats.MeanAccepted);
    }
}
