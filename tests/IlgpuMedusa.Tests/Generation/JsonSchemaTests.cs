using System.Text;
using System.Text.Json;
using System.Text.Json.Schema;
using System.Text.Json.Serialization;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Generation.Constraints;
using IlgpuMedusa.Tests.Hosting;

namespace IlgpuMedusa.Tests.Generation;

/// <summary>
/// Structured output (<see cref="ResponseFormat.JsonSchema"/>). The schemas come from System.Text.Json's schema exporter
/// for .NET types, and what the grammar lets through is read back by System.Text.Json's deserializer with strict
/// options (required properties, no unknown members, nullability respected): an independent check of every text.
/// Hand-labelled documents cover what the deserializer does not see (property order, integers, item counts).
/// </summary>
public sealed class JsonSchemaTests(DemoEngineFixture fixture) : IClassFixture<DemoEngineFixture>
{
    public enum Color { Red, Green, Blue }

    public sealed record Pet(string Kind, double Weight);

    public sealed record Person(string Name, long Age, bool? Student, Color Favorite, List<Pet> Pets, Pet Best);

    private static readonly JsonSerializerOptions Strict = new(JsonSerializerOptions.Default)
    {
        RespectNullableAnnotations = true,
        RespectRequiredConstructorParameters = true,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        Converters = { new JsonStringEnumConverter(allowIntegerValues: false) },
    };

    /// <summary>The schema System.Text.Json exports for <see cref="Person"/> (objects, integers, numbers, a nullable boolean, an enum, an array of objects).</summary>
    private static readonly string PersonSchema =
        JsonSchemaExporter.GetJsonSchemaAsNode(Strict, typeof(Person), new JsonSchemaExporterOptions { TreatNullObliviousAsNonNullable = true }).ToJsonString();

    private static bool Accepts(CompiledJsonSchema schema, string text)
    {
        var state = schema.Start;
        foreach (byte b in Encoding.UTF8.GetBytes(text))
            if (!state.Advance(b)) return false;
        return state.IsComplete;
    }

    private static bool IsPrefix(CompiledJsonSchema schema, string text)
    {
        var state = schema.Start;
        foreach (byte b in Encoding.UTF8.GetBytes(text))
            if (!state.Advance(b)) return false;
        return true;
    }

    [Fact]
    public void TheExportedSchema_UsesOnlyTheSupportedSubset()
    {
        var schema = CompiledJsonSchema.Compile(PersonSchema);
        Assert.Equal(SchemaKind.Object, schema.Root.Kind);
        Assert.Equal(6, schema.Root.Keys.Length);
    }

    [Theory]
    [InlineData("""{"Name":"Lily","Age":5,"Student":null,"Favorite":"Red","Pets":[],"Best":{"Kind":"cat","Weight":4.5}}""", true)]
    [InlineData("""{"Name": "Lily é", "Age": -12, "Student": true, "Favorite": "Blue", "Pets": [{"Kind": "dog", "Weight": 1e2}, {"Kind": "\"fish\"", "Weight": 0}], "Best": {"Kind": "", "Weight": -0.5}}""", true)]
    [InlineData("{\n\"Name\": \"Tom\",\n\"Age\": 0,\n\"Student\": false,\n\"Favorite\": \"Green\",\n\"Pets\": [ ],\n\"Best\": { \"Kind\": \"x\", \"Weight\": 3 }\n}", true)]
    [InlineData("{\n  \"Name\": \"Tom\",\n  \"Age\": 0,\n  \"Student\": false,\n  \"Favorite\": \"Green\",\n  \"Pets\": [ ],\n  \"Best\": { \"Kind\": \"x\", \"Weight\": 3 }\n}", false)] // indentation: one whitespace byte in a row
    [InlineData("""{"Age":5,"Name":"Lily","Student":null,"Favorite":"Red","Pets":[],"Best":{"Kind":"cat","Weight":4.5}}""", false)] // order
    [InlineData("""{"Name":"Lily","Age":5,"Student":null,"Favorite":"Red","Pets":[]}""", false)]                              // a property missing
    [InlineData("""{"Name":"Lily","Age":5.5,"Student":null,"Favorite":"Red","Pets":[],"Best":{"Kind":"cat","Weight":4.5}}""", false)] // not an integer
    [InlineData("""{"Name":"Lily","Age":5e1,"Student":null,"Favorite":"Red","Pets":[],"Best":{"Kind":"cat","Weight":4.5}}""", false)]
    [InlineData("""{"Name":"Lily","Age":5,"Student":"yes","Favorite":"Red","Pets":[],"Best":{"Kind":"cat","Weight":4.5}}""", false)]
    [InlineData("""{"Name":"Lily","Age":5,"Student":null,"Favorite":"Purple","Pets":[],"Best":{"Kind":"cat","Weight":4.5}}""", false)] // not in the enum
    [InlineData("""{"Name":"Lily","Age":5,"Student":null,"Favorite":"Red","Pets":[1],"Best":{"Kind":"cat","Weight":4.5}}""", false)]
    [InlineData("""{"Name":"Lily","Age":5,"Student":null,"Favorite":"Red","Pets":[],"Best":{"Kind":"cat","Weight":4.5},"Extra":1}""", false)]
    [InlineData("""{"Name":null,"Age":5,"Student":null,"Favorite":"Red","Pets":[],"Best":{"Kind":"cat","Weight":4.5}}""", false)]
    [InlineData(""" {"Name":"Lily","Age":5,"Student":null,"Favorite":"Red","Pets":[],"Best":{"Kind":"cat","Weight":4.5}}""", false)] // text before the brace
    public void HandLabelledDocuments(string text, bool valid)
    {
        Assert.Equal(valid, Accepts(CompiledJsonSchema.Compile(PersonSchema), text));
        if (valid) Assert.NotNull(JsonSerializer.Deserialize<Person>(text, Strict)); // the deserializer agrees
    }

    [Fact]
    public void ArraysCountTheirItems_AndEnumsOfNumbersEndWhereTheyCan()
    {
        var schema = CompiledJsonSchema.Compile("""
            {"type": "object", "properties": {
               "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
               "n": {"enum": [1, 12, 123, "x", null, true]},
               "c": {"const": {"a": [1, "é"]}},
               "u": {"type": ["integer", "null", "string"]}}}
            """);
        Assert.True(Accepts(schema, """{"tags":["a"],"n":1,"c":{"a":[1,"é"]},"u":7}"""));
        Assert.True(Accepts(schema, """{"tags":["a","b"],"n":12,"c":{"a":[1,"é"]},"u":null}"""));
        Assert.True(Accepts(schema, """{"tags":["a"],"n":123,"c":{"a":[1,"é"]},"u":"s"}"""));
        Assert.True(Accepts(schema, """{"tags":["a"],"n":"x","c":{"a":[1,"é"]},"u":-3}"""));
        Assert.True(Accepts(schema, """{"tags":["a"],"n":null,"c":{"a":[1,"é"]},"u":0}"""));
        Assert.True(Accepts(schema, """{"tags":["a"],"n":true,"c":{"a":[1,"é"]},"u":0}"""));
        Assert.False(Accepts(schema, """{"tags":[],"n":1,"c":{"a":[1,"é"]},"u":7}"""));          // minItems 1
        Assert.False(Accepts(schema, """{"tags":["a","b","c"],"n":1,"c":{"a":[1,"é"]},"u":7}""")); // maxItems 2
        Assert.False(Accepts(schema, """{"tags":["a"],"n":2,"c":{"a":[1,"é"]},"u":7}"""));
        Assert.False(Accepts(schema, """{"tags":["a"],"n":1234,"c":{"a":[1,"é"]},"u":7}"""));
        Assert.False(Accepts(schema, """{"tags":["a"],"n":false,"c":{"a":[1,"é"]},"u":7}"""));
        Assert.False(Accepts(schema, """{"tags":["a"],"n":1,"c":{"a": [1,"é"]},"u":7}"""));     // a const is written exactly
        Assert.False(Accepts(schema, """{"tags":["a"],"n":1,"c":{"a":[1,"\u00e9"]},"u":7}"""));
        Assert.False(Accepts(schema, """{"tags":["a"],"n":1,"c":{"a":[1,"é"]},"u":7.5}"""));
        Assert.False(Accepts(schema, """{"tags":["a"],"n":1,"c":{"a":[1,"é"]},"u":true}"""));
        // A type listed twice beside "number" is still a number.
        Assert.True(Accepts(CompiledJsonSchema.Compile("""{"type": "object", "properties": {"x": {"type": ["integer", "integer", "number"]}}}"""), """{"x":1.5}"""));
        // Every prefix of a valid text continues; the grammar is complete only at its end.
        const string valid = """{"tags":["a","b"],"n":12,"c":{"a":[1,"é"]},"u":"s"}""";
        var bytes = Encoding.UTF8.GetBytes(valid);
        var state = schema.Start;
        for (int i = 0; i < bytes.Length; i++)
        {
            Assert.False(state.IsComplete);
            Assert.True(state.Advance(bytes[i]), $"byte {i}");
        }
        Assert.True(state.IsComplete);
        Assert.False(state.Advance((byte)' '));
    }

    [Theory]
    [InlineData("", "needs a schema")]
    [InlineData("{", "not valid JSON")]
    [InlineData("""{"type": "string"}""", "top-level schema must be an object")]
    [InlineData("""{"type": "object"}""", "needs its 'properties'")]
    [InlineData("""{"type": "object", "properties": {"a": {"type": "string", "pattern": "^a"}}}""", "$.properties.a: keyword 'pattern' is not supported")]
    [InlineData("""{"type": "object", "properties": {"a": {"not": {"type": "string"}}}}""", "keyword 'not' is not supported")]
    [InlineData("""{"type": "object", "properties": {"a": {"anyOf": [{"type": "object", "properties": {}}, {"type": "object", "properties": {"b": {"type": "string"}}}]}}}""",
        "$.properties.a.anyOf[0] and $.properties.a.anyOf[1] are both objects: alternative objects must start with the same property (a discriminator)")]
    [InlineData("""{"type": "object", "properties": {"a": {"anyOf": [{"type": "object", "properties": {"k": {"const": 1}}}, {"type": "object", "properties": {"k": {"enum": [2, 1]}}}]}}}""",
        "1 is a value of two of them")]
    [InlineData("""{"type": "object", "properties": {"a": {"type": "object", "anyOf": [{"type": "string"}, {"type": "object", "properties": {}}]}}}""",
        "$.properties.a.type: an alternative allows string values, which the type object beside them does not")]
    [InlineData("""{"type": "object", "properties": {"a": {"required": ["y"], "anyOf": [{"type": "object", "properties": {"x": {"const": 1}}}, {"type": "object", "properties": {"x": {"const": 2}, "y": {"type": "string"}}}]}}}""",
        "$.properties.a.required: \"y\" is not a property of every alternative")]
    [InlineData("""{"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"const": "x"}]}}}""", "can both start with '\"'")]
    [InlineData("""{"type": "object", "properties": {"a": {"anyOf": []}}}""", "$.properties.a.anyOf: expected a non-empty array")]
    [InlineData("""{"type": "object", "properties": {"a": {"allOf": [{"type": "string"}, {"type": "string"}]}}}""", "allOf of more than one schema")]
    [InlineData("""{"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}], "minItems": 1}}}""", "'minItems' beside 'anyOf'")]
    [InlineData("""{"type": "object", "properties": {"a": {"type": "array", "items": {"$ref": "#"}}}}""", "refers to itself through # -> #: recursive schemas are not supported")]
    [InlineData("""{"type": "object", "$defs": {"N": {"anyOf": [{"$ref": "#/%24defs/N"}, {"type": "null"}]}}, "properties": {"a": {"$ref": "#/$defs/N"}}}""",
        "recursive schemas are not supported")]
    [InlineData("""{"type": "object", "properties": {"a": {"$ref": "other.json#/a"}}}""", "$.properties.a.$ref: 'other.json#/a': only references within the schema")]
    [InlineData("""{"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}""", "'#/$defs/Missing' points to nothing")]
    [InlineData("""{"type": "object", "$defs": {"S": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/S", "type": "string"}}}""", "'type' beside '$ref'")]
    [InlineData("""{"type": "object", "$defs": 3, "properties": {}}""", "$.$defs: expected an object of schemas")]
    [InlineData("""{"type": "object", "$defs": {"S": {"type": "strung"}}, "properties": {"a": {"$ref": "#/$defs/S"}}}""", "$.properties.a.$ref(#/$defs/S).type: unknown type 'strung'")]
    [InlineData("""{"type": "object", "properties": {}, "additionalProperties": true}""", "$.additionalProperties: only false")]
    [InlineData("""{"type": "object", "properties": {"a": {"type": "array"}}}""", "$.properties.a: an array needs 'items'")]
    [InlineData("""{"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 2}}}""", "minItems 3 is above maxItems 2")]
    [InlineData("""{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}""", "$.required: \"b\" is not one of the listed properties")]
    [InlineData("""{"type": "object", "properties": {"a": {"type": "strung"}}}""", "unknown type 'strung'")]
    [InlineData("""{"type": "object", "properties": {"a": {}}}""", "needs a 'type'")]
    [InlineData("""{"type": "object", "properties": {"a": true}}""", "boolean schemas are not supported")]
    [InlineData("""{"type": "object", "properties": {"a": {"type": "string", "items": {"type": "string"}}}}""", "'items' applies to arrays only")]
    [InlineData("""{"type": "object", "properties": {"a": {"enum": []}}}""", "$.properties.a.enum: expected a non-empty array")]
    public void UnsupportedSchemas_AreRefused_NamingWhere(string schema, string expected)
    {
        var e = Assert.ThrowsAny<ArgumentException>(() => CompiledJsonSchema.Compile(schema));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.StartsWith("JsonSchema", e.Message, StringComparison.Ordinal);
        // The options say the same when validated.
        var options = new GenerationOptions { ResponseFormat = ResponseFormat.JsonSchema, JsonSchema = schema };
        Assert.Contains(expected, Assert.ThrowsAny<ArgumentException>(() => options.Validate()).Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("""{"type": "string", "enum": [1]}""", "$.properties.a.enum: 1 is not of type string")]
    [InlineData("""{"type": "integer", "const": 1.5}""", "$.properties.a.const: 1.5 is not of type integer")]
    [InlineData("""{"type": "array", "items": {"type": "string"}, "enum": [[1]]}""", "'items' beside 'enum' is not supported")]
    [InlineData("""{"enum": ["a"], "const": "a"}""", "'const' and 'enum' together")]
    [InlineData("""{"const": "x\u2581y"}""", "U+2581")]
    [InlineData("""{"const": "\uD800"}""", "cannot be decoded")]
    [InlineData("""{"type": "array", "items": {"type": "string"}, "minItems": 1.5}""", "$.properties.a.minItems: expected a non-negative integer, got 1.5")]
    public void EnumsAndConsts_AreCheckedAgainstTheirType_AndOddValuesAreRefused(string property, string expected)
    {
        string schema = """{"type": "object", "properties": {"a": """ + property + "}}";
        var e = Assert.ThrowsAny<ArgumentException>(() => CompiledJsonSchema.Compile(schema));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        // The options and the chat client say it as an ArgumentException too, not an InvalidOperationException.
        Assert.ThrowsAny<ArgumentException>(() => new GenerationOptions { ResponseFormat = ResponseFormat.JsonSchema, JsonSchema = schema }.Validate());
    }

    [Fact]
    public void EnumValues_AreWrittenCanonically_AsUtf8_AndKeysWithSurrogateEscapesAreRefused()
    {
        var schema = CompiledJsonSchema.Compile("""{"type": "object", "properties": {"e": {"type": ["string", "integer"], "enum": ["😀", "a\"b\n", 2, 2.0, "\u00e9"]}}}""");
        Assert.True(Accepts(schema, "{\"e\":\"😀\"}"));
        Assert.False(Accepts(schema, "{\"e\":\"\\uD83D\\uDE00\"}"));
        Assert.True(Accepts(schema, "{\"e\":\"a\\\"b\\n\"}"));
        Assert.True(Accepts(schema, "{\"e\":\"é\"}"));
        Assert.True(Accepts(schema, "{\"e\":2}"));
        Assert.True(Accepts(schema, "{\"e\":2.0}")); // numbers as the schema writes them (2.0 is an integer)
        Assert.Contains("cannot be decoded", Assert.ThrowsAny<ArgumentException>(() => CompiledJsonSchema.Compile("""{"type": "object", "properties": {"\uD800": {"type": "string"}}}""")).Message, StringComparison.Ordinal);
        Assert.Contains("U+2581", Assert.ThrowsAny<ArgumentException>(() => CompiledJsonSchema.Compile("""{"type": "object", "properties": {"a\u2581": {"type": "string"}}}""")).Message, StringComparison.Ordinal);
        Assert.Equal(1, CompiledJsonSchema.Compile("""{"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}, "minItems": 1.0}}}""").Root.Properties[0].MinItems);
        // A key the grammar could not count to the end is refused (the grammar's place in a key is 16 bits).
        string longKey = new('a', 70_000);
        Assert.Contains("property name longer than", Assert.ThrowsAny<ArgumentException>(() => CompiledJsonSchema.Compile("{\"type\": \"object\", \"properties\": {\"" + longKey + "\": {\"type\": \"null\"}}}")).Message, StringComparison.Ordinal);
        string fits = new('a', 60_000);
        Assert.True(Accepts(CompiledJsonSchema.Compile("{\"type\": \"object\", \"properties\": {\"" + fits + "\": {\"type\": \"null\"}}}"), "{\"" + fits + "\":null}"));
    }

    /// <summary>
    /// Hostile schemas a client may send end in an error, not a stack overflow or a hang: a chain of thousands of
    /// references, and references that double at every level.
    /// </summary>
    [Fact]
    public void LongReferenceChains_AndDoublingReferences_AreRefused()
    {
        var chain = new System.Text.StringBuilder("""{"type": "object", "properties": {"a": {"$ref": "#/$defs/d0"}}, "$defs": {""");
        for (int i = 0; i < 5000; i++) chain.Append($$"""
            "d{{i}}": {"$ref": "#/$defs/d{{i + 1}}"},
            """);
        chain.Append("""
            "d5000": {"type": "string"}}}
            """);
        var e = Assert.ThrowsAny<ArgumentException>(() => CompiledJsonSchema.Compile(chain.ToString()));
        Assert.Contains($"references nest more than {CompiledJsonSchema.MaxReferenceDepth} deep", e.Message, StringComparison.Ordinal);

        var doubling = new System.Text.StringBuilder("""{"type": "object", "properties": {"a": {"$ref": "#/$defs/d0"}}, "$defs": {""");
        for (int i = 0; i < 40; i++) doubling.Append($$"""
            "d{{i}}": {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/d{{i + 1}}"}, {"type": "null"}]}, "maxItems": 1},
            """);
        doubling.Append("""
            "d40": {"type": "string"}}}
            """);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        e = Assert.ThrowsAny<ArgumentException>(() => CompiledJsonSchema.Compile(doubling.ToString()));
        Assert.Contains("nested more than", e.Message, StringComparison.Ordinal);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"{clock.Elapsed} to refuse it");
    }

    /// <summary>
    /// More hostile schemas: allOf wrappers nesting thousands of schemas through references (each definition within the
    /// JSON depth limit) end in an error, not a stack overflow; a large enum referenced a thousand times is compiled once.
    /// </summary>
    [Fact]
    public void WrappersNestingThroughReferences_AreRefused_AndAReferencedEnumIsCompiledOnce()
    {
        var wrapped = new StringBuilder("""{"type": "object", "properties": {"a": {"$ref": "#/$defs/d0"}}, "$defs": {""");
        for (int i = 0; i < 63; i++)
            wrapped.Append($"\"d{i}\": ").Append(string.Concat(Enumerable.Repeat("{\"allOf\": [", 40))).Append($"{{\"$ref\": \"#/$defs/d{i + 1}\"}}")
                .Append(string.Concat(Enumerable.Repeat("]}", 40))).Append(',');
        wrapped.Append("\"d63\": {\"type\": \"string\"}}}");
        var e = Assert.ThrowsAny<ArgumentException>(() => CompiledJsonSchema.Compile(wrapped.ToString()));
        Assert.Contains($"schemas are nested more than {CompiledJsonSchema.MaxNesting} deep", e.Message, StringComparison.Ordinal);

        var many = new StringBuilder("""{"type": "object", "$defs": {"e": {"enum": [""");
        many.AppendJoin(", ", Enumerable.Range(0, 30_000)).Append("]}}, \"properties\": {");
        many.AppendJoin(", ", Enumerable.Range(0, 1000).Select(i => $"\"p{i}\": {{\"$ref\": \"#/$defs/e\"}}")).Append("}}");
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var schema = CompiledJsonSchema.Compile(many.ToString());
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"{clock.Elapsed} to compile");
        Assert.True(schema.Nodes.Length < 1100, $"{schema.Nodes.Length} nodes");
        Assert.True(Accepts(schema, "{" + string.Join(",", Enumerable.Range(0, 1000).Select(i => $"\"p{i}\":{i * 29}")) + "}"));
    }

    [Theory]
    [InlineData("""{"type": "objekt", "anyOf": [{"properties": {}}]}""", "$.properties.a.type: unknown type 'objekt'")]
    [InlineData("""{"type": [], "anyOf": [{"type": "string"}]}""", "$.properties.a.type: expected a type name or a non-empty array")]
    public void ATypeBesideAnyOf_IsCheckedAtItsOwnPath(string property, string expected)
    {
        var e = Assert.ThrowsAny<ArgumentException>(() => CompiledJsonSchema.Compile("""{"type": "object", "properties": {"a": """ + property + "}}"));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    /// <summary>The type beside an anyOf reaches an alternative through a reference, and integral literals such as 1.0 are integers.</summary>
    [Fact]
    public void ATypeBesideAnyOf_ReachesReferencedAlternatives()
    {
        var schema = CompiledJsonSchema.Compile("""
            {"type": "object", "$defs": {"C": {"properties": {"k": {"const": "c"}}}}, "properties": {"a": {"type": "object", "anyOf": [{"$ref": "#/$defs/C"}, {"properties": {"k": {"const": "d"}, "n": {"type": "integer", "anyOf": [{"const": 1.0}, {"const": 2}]}}}]}}}
            """);
        Assert.True(Accepts(schema, """{"a":{"k":"c"}}"""));
        Assert.True(Accepts(schema, """{"a":{"k":"d","n":1.0}}"""));
        Assert.False(Accepts(schema, """{"a":{"k":"d","n":3}}"""));
    }

    [Fact]
    public void DeepSchemas_AreRefused_AndASchemaWithoutTheFormat_Too()
    {
        string deep = """{"type": "object", "properties": {"a": """;
        for (int i = 0; i < CompiledJsonSchema.MaxDepth; i++) deep += """{"type": "object", "properties": {"a": """;
        deep += """{"type": "string"}""" + string.Concat(Enumerable.Repeat("}}", CompiledJsonSchema.MaxDepth + 1));
        Assert.Contains("nested more than", Assert.ThrowsAny<ArgumentException>(() => CompiledJsonSchema.Compile(deep)).Message, StringComparison.Ordinal);
        var stray = new GenerationOptions { JsonSchema = PersonSchema };
        Assert.Contains("ResponseFormat is not JsonSchema", Assert.ThrowsAny<ArgumentException>(() => stray.Validate()).Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// Random walks through the demo vocabulary under the schema (structural tokens favoured so that strings end) decode to
    /// text that System.Text.Json deserializes into <see cref="Person"/> with strict options; the mask equals token-by-token checks on the way.
    /// </summary>
    [Fact]
    public void RandomWalksThroughTheVocabulary_DeserializeStrictly()
    {
        var (texts, maskChecks) = RandomWalks(CompiledJsonSchema.Compile(PersonSchema), 40);
        foreach (var text in texts)
        {
            Assert.NotNull(JsonSerializer.Deserialize<Person>(text, Strict));
            using var document = JsonDocument.Parse(text);
            Assert.Equal(["Name", "Age", "Student", "Favorite", "Pets", "Best"], document.RootElement.EnumerateObject().Select(p => p.Name));
        }
        Assert.True(texts.Count >= 30, $"{texts.Count} of 40 walks closed their object");
        Assert.True(maskChecks > 10);
    }

    /// <summary>
    /// Walks through the demo vocabulary under <paramref name="schema"/>, each step a token the mask allows (structural
    /// tokens favoured so that strings end, long numbers disfavoured); returns the texts of the walks that completed, and
    /// how often the mask was checked against token-by-token <see cref="ConstraintVocabulary.Allows"/> on the way.
    /// </summary>
    private (List<string> Texts, int MaskChecks) RandomWalks(CompiledJsonSchema schema, int walks)
    {
        var engine = fixture.Engine;
        var tokenizer = engine.Tokenizer;
        var vocabulary = ConstraintVocabulary.Build(tokenizer, engine.Config.VocabSize, engine.Config.EndTokenIds);
        var scratch = new JsonSchemaGrammar[vocabulary.LongestToken + 1];
        var logits = new float[vocabulary.Size];
        var closing = System.Buffers.SearchValues.Create("}]\",:"u8);
        var texts = new List<string>();
        int maskChecks = 0;
        for (int seed = 0; seed < walks; seed++)
        {
            var random = new Random(seed);
            var state = schema.Start;
            var tokens = new List<int>();
            for (int step = 0; step < 400 && !state.IsComplete; step++)
            {
                Array.Fill(logits, 0f);
                int allowed = vocabulary.Mask(state, logits, scratch);
                Assert.True(allowed > 0, $"seed {seed}, step {step}: nothing allowed after '{tokenizer.Decode(tokens)}'");
                if (seed < 3 && step % 5 == 0)
                {
                    for (int t = 0; t < logits.Length; t++)
                        Assert.True(vocabulary.Allows(state, t) == (logits[t] == 0f), $"token {t}");
                    maskChecks++;
                }
                // Short numbers: the deserializer reads integers as longs.
                double Weight(int t) => vocabulary.Bytes(t).IndexOfAny(closing) >= 0 ? 400 : vocabulary.Bytes(t).Length > 2 && vocabulary.Bytes(t).IndexOfAnyInRange((byte)'0', (byte)'9') >= 0 ? 0.01 : 1;
                double total = 0;
                for (int t = 0; t < logits.Length; t++) if (logits[t] == 0f) total += Weight(t);
                double r = random.NextDouble() * total;
                int chosen = -1;
                for (int t = 0; t < logits.Length && chosen < 0; t++)
                    if (logits[t] == 0f && (r -= Weight(t)) <= 0) chosen = t;
                if (chosen < 0) chosen = Array.FindLastIndex(logits, v => v == 0f);
                Assert.True(vocabulary.TryAppend(ref state, chosen));
                tokens.Add(chosen);
            }
            if (state.IsComplete) texts.Add(tokenizer.Decode(tokens));
        }
        return (texts, maskChecks);
    }

    [JsonPolymorphic(TypeDiscriminatorPropertyName = "kind")]
    [JsonDerivedType(typeof(Cat), "cat")]
    [JsonDerivedType(typeof(Dog), "dog")]
    public abstract record Animal;

    public sealed record Cat(int Lives) : Animal;

    public sealed record Dog(bool Good, string Name) : Animal;

    public sealed record Zoo(string Name, Animal Star, List<Animal> Others, Animal? Visitor);

    /// <summary>
    /// System.Text.Json's schema for a polymorphic type: <c>"type": "object"</c> and <c>"required": ["kind"]</c> beside an
    /// <c>anyOf</c> of objects without a type, each starting with the discriminator <c>"kind": {"const": ...}</c>.
    /// </summary>
    private static readonly string ZooSchema =
        JsonSchemaExporter.GetJsonSchemaAsNode(Strict, typeof(Zoo), new JsonSchemaExporterOptions { TreatNullObliviousAsNonNullable = true }).ToJsonString();

    [Theory]
    [InlineData("""{"Name":"Z","Star":{"kind":"cat","Lives":9},"Others":[],"Visitor":null}""", true)]
    [InlineData("""{"Name": "Z", "Star": {"kind": "dog", "Good": true, "Name": "Rex"}, "Others": [{"kind": "cat", "Lives": 1}, {"kind": "dog", "Good": false, "Name": ""}], "Visitor": {"kind": "cat", "Lives": 2}}""", true)]
    [InlineData("""{"Name":"Z","Star":{"kind":"dog","Lives":9},"Others":[],"Visitor":null}""", false)]          // a cat's property on a dog
    [InlineData("""{"Name":"Z","Star":{"kind":"cow","Lives":9},"Others":[],"Visitor":null}""", false)]          // no such kind
    [InlineData("""{"Name":"Z","Star":{"Lives":9,"kind":"cat"},"Others":[],"Visitor":null}""", false)]          // the discriminator comes first
    [InlineData("""{"Name":"Z","Star":{"kind":"cat"},"Others":[],"Visitor":null}""", false)]                    // every property written
    [InlineData("""{"Name":"Z","Star":{"kind":"cat","Lives":9},"Others":[{"kind":"dog","Good":true}],"Visitor":null}""", false)]
    public void PolymorphicTypes_AreReadByTheirDiscriminator(string text, bool valid) =>
        Assert.Equal(valid, Accepts(CompiledJsonSchema.Compile(ZooSchema), text));

    /// <summary>Random walks under the polymorphic schema deserialize into <see cref="Zoo"/> (System.Text.Json reads the discriminator, which must come first).</summary>
    [Fact]
    public void RandomWalksUnderAPolymorphicSchema_DeserializeStrictly()
    {
        var (texts, _) = RandomWalks(CompiledJsonSchema.Compile(ZooSchema), 30);
        var kinds = new HashSet<Type>();
        foreach (var text in texts)
        {
            var zoo = JsonSerializer.Deserialize<Zoo>(text, Strict);
            Assert.NotNull(zoo);
            kinds.Add(zoo.Star.GetType());
        }
        Assert.True(texts.Count >= 20, $"{texts.Count} of 30 walks closed their object");
        Assert.Equal(2, kinds.Count); // both kinds were written
    }

    /// <summary>A union of a discriminated pair of objects and null, with the discriminator required beside it.</summary>
    [Fact]
    public void ADiscriminatedUnion_MayBeNullable_AndItsRequiredPropertiesAreChecked()
    {
        var schema = CompiledJsonSchema.Compile("""
            {"type": "object", "properties": {"a": {"required": ["x"], "anyOf": [{"type": "object", "properties": {"x": {"const": 1}}},
              {"type": "object", "properties": {"x": {"const": 12}, "y": {"type": "string"}}}, {"type": "null"}]}}}
            """);
        Assert.True(Accepts(schema, """{"a":{"x":1}}"""));
        Assert.True(Accepts(schema, """{"a":{"x":12,"y":"z"}}"""));
        Assert.True(Accepts(schema, """{"a":null}"""));
        Assert.False(Accepts(schema, """{"a":{"x":1,"y":"z"}}"""));
        Assert.False(Accepts(schema, """{"a":{"x":12}}"""));
        Assert.False(Accepts(schema, """{"a":{"x":2}}"""));
    }

    public sealed record PyPet(string Kind, double Weight);

    public sealed record PyPerson(string Name, string? Nickname, PyPet Best, List<PyPet> Pets, PyPet? Rival, string? Size);

    /// <summary>
    /// The schema the OpenAI Python SDK sends for a Pydantic v2 model (<c>response_format=Person</c>: Pydantic's
    /// <c>model_json_schema()</c> made strict): nested models under <c>$defs</c> and <c>$ref</c>, optional fields as
    /// <c>anyOf</c> with null, a Literal as an enum; written out by hand for
    /// <c>class Pet(BaseModel): kind: str; weight: float</c> and <c>class Person(BaseModel): name: str;
    /// nickname: Optional[str]; best: Pet; pets: list[Pet]; rival: Optional[Pet]; size: Optional[Literal["S", "M"]]</c>.
    /// </summary>
    private const string PydanticSchema = """
        {"$defs": {"Pet": {"additionalProperties": false, "properties": {"kind": {"title": "Kind", "type": "string"},
           "weight": {"title": "Weight", "type": "number"}}, "required": ["kind", "weight"], "title": "Pet", "type": "object"}},
         "additionalProperties": false,
         "properties": {"name": {"title": "Name", "type": "string"},
           "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null, "title": "Nickname"},
           "best": {"$ref": "#/$defs/Pet"},
           "pets": {"items": {"$ref": "#/$defs/Pet"}, "title": "Pets", "type": "array"},
           "rival": {"anyOf": [{"$ref": "#/$defs/Pet"}, {"type": "null"}], "default": null},
           "size": {"anyOf": [{"enum": ["S", "M"], "type": "string"}, {"type": "null"}], "default": null, "title": "Size"}},
         "required": ["name", "nickname", "best", "pets", "rival", "size"], "title": "Person", "type": "object"}
        """;

    [Theory]
    [InlineData("""{"name":"A","nickname":null,"best":{"kind":"cat","weight":2},"pets":[],"rival":null,"size":null}""", true)]
    [InlineData("""{"name": "A", "nickname": "Al", "best": {"kind": "cat", "weight": 2.5}, "pets": [{"kind": "dog", "weight": 1}], "rival": {"kind": "rat", "weight": 0}, "size": "M"}""", true)]
    [InlineData("""{"name":"A","nickname":null,"best":{"kind":"cat","weight":2},"pets":[],"rival":"x","size":null}""", false)]   // rival: a Pet or null
    [InlineData("""{"name":"A","nickname":null,"best":{"kind":"cat","weight":2},"pets":[],"rival":null,"size":"L"}""", false)]   // not one of the Literal's values
    [InlineData("""{"name":"A","nickname":null,"best":{"kind":"cat"},"pets":[],"rival":null,"size":null}""", false)]             // Pet without weight
    [InlineData("""{"name":"A","nickname":3,"best":{"kind":"cat","weight":2},"pets":[],"rival":null,"size":null}""", false)]     // nickname: a string or null
    [InlineData("""{"name":"A","nickname":null,"best":{"kind":"cat","weight":2},"pets":[null],"rival":null,"size":null}""", false)] // pets: Pets only
    public void PydanticSchemas_WithDefsRefsAndOptionalFields_AreFollowed(string text, bool valid) =>
        Assert.Equal(valid, Accepts(CompiledJsonSchema.Compile(PydanticSchema), text));

    /// <summary>Random walks under the Pydantic schema deserialize into the same model (as C# records) with strict options.</summary>
    [Fact]
    public void RandomWalksUnderAPydanticSchema_DeserializeStrictly()
    {
        var options = new JsonSerializerOptions(Strict) { PropertyNamingPolicy = JsonNamingPolicy.CamelCase };
        var (texts, _) = RandomWalks(CompiledJsonSchema.Compile(PydanticSchema), 30);
        foreach (var text in texts)
        {
            var person = JsonSerializer.Deserialize<PyPerson>(text, options);
            Assert.NotNull(person);
            Assert.True(person.Size is null or "S" or "M", text);
        }
        Assert.True(texts.Count >= 20, $"{texts.Count} of 30 walks closed their object");
        // The optional Pet's object alternative was taken (the walks favour '"', so its null is left to the labelled documents).
        Assert.Contains(texts, t => System.Text.RegularExpressions.Regex.IsMatch(t, "\"rival\"\\s?:\\s?\\{"));
    }

    /// <summary>
    /// On OpenCL (PoCL, the ILGPU kernels): greedy decoding under the schema keeps the logits rows there (the argmax pass
    /// computes them anyway) and reads one where the constraint rules the argmax out; Medusa and plain decoding agree, and
    /// the text is one the grammar can continue.
    /// </summary>
    [Fact]
    public void OnOpenCL_ConstrainedGreedyDecoding_AgreesWithAndWithoutMedusa()
    {
        using var engine = InferenceEngine.Load(new EngineOptions
        {
            ModelPath = TestModels.Stories15MDirectory,
            Device = new IlgpuMedusa.Compute.DeviceOptions { Kind = IlgpuMedusa.Compute.DeviceKind.OpenCL, AllowCpuOpenCL = true },
        });
        Assert.Equal(IlgpuMedusa.Compute.DeviceKind.OpenCL, engine.Backend.Kind);
        var options = new GenerationOptions { MaxTokens = 40, Tree = "tree-8", ResponseFormat = ResponseFormat.JsonSchema, JsonSchema = PersonSchema };
        var prompt = engine.EncodePrompt("Lily's card:", options);
        var plain = Run(engine, prompt, options with { UseMedusa = false });
        var medusa = Run(engine, prompt, options);
        Assert.Equal(plain.Ids, medusa.Ids);
        Assert.True(IsPrefix(CompiledJsonSchema.Compile(PersonSchema), plain.Text), plain.Text);
        Assert.Contains("\"Age\"", plain.Text, StringComparison.Ordinal); // past the first property: forced keys were taken
    }

    /// <summary>The command line: <c>generate --json-schema FILE --json</c> prints a text the schema's grammar can continue, starting with its first key.</summary>
    [Fact]
    public void TheCommandLine_FollowsASchemaFile()
    {
        string file = Path.Combine(Directory.CreateTempSubdirectory("ilgpu-medusa-schema-").FullName, "person.json");
        File.WriteAllText(file, PersonSchema);
        try
        {
            var result = IlgpuMedusa.Tests.Cli.CliRunner.Run("generate", "--model", TestModels.Stories15MDirectory, "--prompt", "Lily's card:",
                "--max-tokens", "30", "--json-schema", file, "--json", "--device", "host");
            Assert.True(result.ExitCode == 0, result.StandardError);
            using var output = JsonDocument.Parse(result.StandardOutput);
            string text = output.RootElement.GetProperty("text").GetString()!;
            Assert.Matches("^\\{\\s?\"Name\"", text);
            Assert.True(IsPrefix(CompiledJsonSchema.Compile(PersonSchema), text), text);
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(file)!, recursive: true);
        }
    }

    private static (List<int> Ids, string Text, GenerationStats Stats) Run(InferenceEngine engine, IReadOnlyList<int> prompt, GenerationOptions options)
    {
        var stats = new GenerationStats();
        var pieces = engine.Generate(prompt, options, stats).ToList();
        return (pieces.SelectMany(p => p.TokenIds).ToList(), string.Concat(pieces.Select(p => p.Text)), stats);
    }

    /// <summary>
    /// On the demo model (a logit bias toward quotes, commas and closing brackets, applied before the constraint, helps
    /// the story model finish): Medusa gives plain decoding's tokens, every text is one the grammar can continue, and the
    /// texts the model ends deserialize strictly.
    /// </summary>
    [Theory]
    [InlineData("dynamic-3", 0f, 1UL, false)]
    [InlineData("tree-8", 0.8f, 2UL, true)]
    [InlineData("chain-3", 1.0f, 3UL, true)]
    public void OnTheDemoModel_MedusaEqualsPlainDecoding_AndEndedTextsDeserialize(string tree, float temperature, ulong seed, bool ends)
    {
        var engine = fixture.Engine;
        var bias = new Dictionary<int, float>();
        foreach (string piece in new[] { "\"", "\",", ",", "}", "]" }) bias[engine.Tokenizer.Encode(piece, addBos: false)[^1]] = 4f;
        var options = new GenerationOptions
        {
            MaxTokens = 150, Sampling = Sampling.From(temperature, 1f), Seed = seed, Tree = tree,
            ResponseFormat = ResponseFormat.JsonSchema, JsonSchema = PersonSchema, LogitBias = bias,
        };
        var prompt = engine.EncodePrompt("Lily's card:", options);
        var plain = Run(engine, prompt, options with { UseMedusa = false });
        var medusa = Run(engine, prompt, options);
        Assert.Equal(plain.Ids, medusa.Ids);
        var schema = CompiledJsonSchema.Compile(PersonSchema);
        Assert.True(IsPrefix(schema, plain.Text), plain.Text);
        Assert.StartsWith("{", plain.Text, StringComparison.Ordinal);
        Assert.Contains("\"Name\"", plain.Text, StringComparison.Ordinal);
        Assert.Equal(ends, plain.Stats.FinishReason == FinishReason.EndToken);
        if (ends)
        {
            Assert.True(Accepts(schema, plain.Text), plain.Text);
            Assert.NotNull(JsonSerializer.Deserialize<Person>(plain.Text, Strict));
        }
    }
}
