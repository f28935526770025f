using System.Text.Json;

namespace IlgpuMedusa.Generation.Constraints;

/// <summary>What a value of a <see cref="SchemaNode"/> may be.</summary>
internal enum SchemaKind : byte
{
    /// <summary>An object with exactly its listed properties, written in the listed order.</summary>
    Object,
    /// <summary>An array whose items all follow one schema.</summary>
    Array,
    /// <summary>Any string.</summary>
    String,
    /// <summary>Any number.</summary>
    Number,
    /// <summary>An integer: a number without fraction or exponent.</summary>
    Integer,
    /// <summary>One of a set of values written exactly (enum, const, booleans, null).</summary>
    Literals,
    /// <summary>One of several of the kinds above, told apart by their first byte (a list of types, such as ["string", "null"]).</summary>
    Union,
    /// <summary>
    /// One of several objects whose first property has the same key and a literal value each object has its own of (a
    /// discriminator, such as <c>"kind": "cat"</c> or <c>"kind": "dog"</c>): read as an object with that one property
    /// until its value is known, then as the object that value names.
    /// </summary>
    Discriminated,
}

/// <summary>One schema of a <see cref="CompiledJsonSchema"/>, immutable after compilation.</summary>
internal sealed class SchemaNode
{
    public required SchemaKind Kind { get; init; }
    /// <summary>Index in <see cref="CompiledJsonSchema.Nodes"/>.</summary>
    public int Id { get; set; }
    /// <summary>Object: each property's key as written, quotes included (<c>"name"</c>), in order.</summary>
    public byte[][] Keys { get; init; } = [];
    /// <summary>Object: each property's schema.</summary>
    public SchemaNode[] Properties { get; init; } = [];
    /// <summary>Array: the items' schema.</summary>
    public SchemaNode? Items { get; init; }
    /// <summary>Array: fewest items.</summary>
    public int MinItems { get; init; }
    /// <summary>Array: most items.</summary>
    public int MaxItems { get; init; } = int.MaxValue;
    /// <summary>Literals: every allowed value as its bytes, sorted, no duplicates.</summary>
    public byte[][] Literals { get; init; } = [];
    /// <summary>Union: the alternative a value starting with each byte belongs to (null: none; no two alternatives share a first byte).</summary>
    public SchemaNode?[] ByFirstByte { get; init; } = [];
    /// <summary>Discriminated: the object each value of the discriminator (the literals of <see cref="Properties"/>[0], in their order) names.</summary>
    public SchemaNode[] Variants { get; init; } = [];
}

/// <summary>
/// A JSON schema compiled for constrained generation (<see cref="ResponseFormat.JsonSchema"/>): the subset that structured
/// output needs and that a left-to-right grammar can enforce exactly. Supported: <c>type</c> (<c>object</c>, <c>array</c>,
/// <c>string</c>, <c>number</c>, <c>integer</c>, <c>boolean</c>, <c>null</c>, or a list of them, such as
/// <c>["string", "null"]</c>), <c>properties</c>, <c>required</c>, <c>additionalProperties: false</c>, <c>items</c>,
/// <c>minItems</c>, <c>maxItems</c>, <c>enum</c>, <c>const</c>; <c>anyOf</c> and <c>oneOf</c> whose alternatives start
/// with different bytes (different types, such as a schema or null: what Pydantic writes for optional fields) or are
/// objects whose first property is a discriminator with values of their own (System.Text.Json's polymorphic types,
/// with <c>type</c> and <c>required</c> beside them), and
/// <c>allOf</c> of one schema; <c>$ref</c> to a JSON pointer in the same document (<c>#/$defs/Name</c>, not recursive),
/// with <c>$defs</c> and <c>definitions</c> holding the schemas it names; <c>title</c>, <c>description</c>, <c>$schema</c>,
/// <c>$comment</c>, <c>$id</c>, <c>default</c>, <c>examples</c> and <c>format</c> are read as annotations (a format is not
/// enforced). The text is written as OpenAI's strict structured outputs write it: every listed property, in the listed
/// order (so optional properties are present too), nothing else; the top level is an object. Anything else is refused
/// with an <see cref="ArgumentException"/> naming the schema path and the keyword.
/// </summary>
internal sealed class CompiledJsonSchema
{
    /// <summary>Most objects and arrays nested in one another.</summary>
    public const int MaxDepth = JsonSchemaGrammar.MaxFrames;

    /// <summary>Most schema nodes.</summary>
    public const int MaxNodes = 4096;

    /// <summary>Most bytes of a schema's text.</summary>
    public const int MaxSchemaBytes = GenerationOptions.MaxJsonSchemaBytes;

    private static readonly HashSet<string> Annotations = ["title", "description", "$schema", "$comment", "$id", "default", "examples", "format"];
    private static readonly HashSet<string> Keywords = ["type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum", "const",
        "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions"];
    private static readonly byte[][] Booleans = ["false"u8.ToArray(), "true"u8.ToArray()];
    private static readonly byte[][] Null = ["null"u8.ToArray()];

    private CompiledJsonSchema(SchemaNode root, SchemaNode[] nodes)
    {
        Root = root;
        Nodes = nodes;
    }

    /// <summary>The top-level schema (an object).</summary>
    public SchemaNode Root { get; }

    /// <summary>Every node, by <see cref="SchemaNode.Id"/>.</summary>
    public SchemaNode[] Nodes { get; }

    /// <summary>The grammar state before the first byte.</summary>
    public JsonSchemaGrammar Start => new(this);

    // Compiled schemas by their text (options are validated several times on their way to a request, and clients repeat
    // their schemas); at most CacheEntries, then it starts over.
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, CompiledJsonSchema> Cache = new(StringComparer.Ordinal);
    private const int CacheEntries = 32;

    /// <summary>Compiles <paramref name="schema"/>, a JSON schema as text; throws <see cref="ArgumentException"/> naming what is wrong or unsupported.</summary>
    public static CompiledJsonSchema Compile(string? schema)
    {
        if (schema is not null && Cache.TryGetValue(schema, out var compiled)) return compiled;
        compiled = CompileText(schema);
        if (Cache.Count >= CacheEntries) Cache.Clear();
        Cache[schema!] = compiled;
        return compiled;
    }

    private static CompiledJsonSchema CompileText(string? schema)
    {
        if (string.IsNullOrWhiteSpace(schema))
            throw new ArgumentException("JsonSchema: ResponseFormat JsonSchema needs a schema (a JSON object).");
        if (System.Text.Encoding.UTF8.GetByteCount(schema) > MaxSchemaBytes)
            throw new ArgumentException($"JsonSchema: the schema is longer than {MaxSchemaBytes / 1024} KiB.");
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(schema, new JsonDocumentOptions { MaxDepth = MaxJsonDepth });
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"JsonSchema: not valid JSON, or nested more than {MaxJsonDepth} deep ({e.Message}).", e);
        }
        using (document)
        {
            var nodes = new Context(document.RootElement);
            SchemaNode root;
            try
            {
                root = Node(document.RootElement, "$", 0, nodes);
            }
            catch (InvalidOperationException e)
            {
                // A name or string the reader cannot decode (an escaped unpaired surrogate such as "\uD800").
                throw new ArgumentException($"JsonSchema: the schema holds text that cannot be decoded: {e.Message}", e);
            }
            if (root.Kind is not (SchemaKind.Object or SchemaKind.Discriminated))
                throw new ArgumentException("JsonSchema: the top-level schema must be an object (\"type\": \"object\" with \"properties\", or objects told apart by a discriminator).");
            return new CompiledJsonSchema(root, [.. nodes]);
        }
    }

    /// <summary>Most references followed within one another (a long chain would take the stack).</summary>
    public const int MaxReferenceDepth = 64;

    /// <summary>Most levels of JSON in a schema's text (a const value's included).</summary>
    private const int MaxJsonDepth = 256;

    private static ArgumentException Error(string path, string message) => new($"JsonSchema at {path}: {message}");

    /// <summary>The nodes compiled so far, the document (for <c>$ref</c>), and the references being expanded (a cycle is refused).</summary>
    private sealed class Context(JsonElement document) : List<SchemaNode>
    {
        public JsonElement Document { get; } = document;
        public List<string> Expanding { get; } = [];
        /// <summary>Schemas compiled within one another now (each level a few stack frames).</summary>
        public int Nesting { get; set; }
        /// <summary>Literal values compiled so far (enums, consts, merged alternatives).</summary>
        public long Literals { get; set; }
        /// <summary>Each reference's schema compiled once (by pointer and implied type), with the objects and arrays it nests.</summary>
        public Dictionary<(string Pointer, string? Implied), (SchemaNode Node, int Height)> References { get; } = [];
        /// <summary><see cref="Height"/> of the nodes asked about so far.</summary>
        public Dictionary<SchemaNode, int> Heights { get; } = new(ReferenceEqualityComparer.Instance);
    }

    /// <summary>Most schemas compiled within one another (keywords such as allOf nest without objects or arrays).</summary>
    public const int MaxNesting = 512;

    /// <summary>Most literal values (enum and const values, counted again where alternatives merge them) in one schema.</summary>
    public const int MaxLiterals = 1 << 18;

    /// <summary>
    /// How many objects and arrays a value of <paramref name="node"/> nests (0 for a scalar), each node's worked out once
    /// (referenced schemas are shared, so the nodes form a graph without cycles, not a tree).
    /// </summary>
    private static int Height(SchemaNode node, Context nodes)
    {
        if (nodes.Heights.TryGetValue(node, out int known)) return known;
        int height = node.Kind switch
        {
            SchemaKind.Object => 1 + node.Properties.Select(p => Height(p, nodes)).DefaultIfEmpty(0).Max(),
            SchemaKind.Discriminated => node.Variants.Distinct().Select(v => Height(v, nodes)).Max(),
            SchemaKind.Array => 1 + Height(node.Items!, nodes),
            SchemaKind.Union => node.ByFirstByte.OfType<SchemaNode>().Distinct().Select(a => Height(a, nodes)).Max(),
            _ => 0,
        };
        nodes.Heights[node] = height;
        return height;
    }

    private static void CountLiterals(Context nodes, int count, string path)
    {
        nodes.Literals += count;
        if (nodes.Literals > MaxLiterals) throw Error(path, $"the schema lists more than {MaxLiterals} enum or const values in all.");
    }

    /// <summary>
    /// Compiles one schema. <paramref name="implied"/>: the type of an <c>anyOf</c>/<c>oneOf</c> whose alternatives leave
    /// it out (System.Text.Json writes a polymorphic type so: <c>"type": "object"</c> beside the alternatives).
    /// </summary>
    private static SchemaNode Node(JsonElement schema, string path, int depth, Context nodes, JsonElement? implied = null)
    {
        if (nodes.Nesting >= MaxNesting || !System.Runtime.CompilerServices.RuntimeHelpers.TryEnsureSufficientExecutionStack())
            throw Error(path, $"schemas are nested more than {MaxNesting} deep (through allOf, anyOf and references).");
        nodes.Nesting++;
        try
        {
            return NodeCore(schema, path, depth, nodes, implied);
        }
        finally
        {
            nodes.Nesting--;
        }
    }

    private static SchemaNode NodeCore(JsonElement schema, string path, int depth, Context nodes, JsonElement? implied)
    {
        if (schema.ValueKind != JsonValueKind.Object)
            throw Error(path, $"expected a schema object, got {schema.ValueKind.ToString().ToLowerInvariant()} (boolean schemas are not supported).");
        foreach (var property in schema.EnumerateObject())
            if (!Keywords.Contains(property.Name) && !Annotations.Contains(property.Name))
                throw Error(path, $"keyword '{property.Name}' is not supported; supported: {string.Join(", ", Keywords)} (and the annotations {string.Join(", ", Annotations)}).");
        if (nodes.Count >= MaxNodes) throw Error(path, $"the schema has more than {MaxNodes} parts.");
        foreach (var holder in (string[])["$defs", "definitions"])
            if (schema.TryGetProperty(holder, out var defined) && defined.ValueKind != JsonValueKind.Object)
                throw Error($"{path}.{holder}", "expected an object of schemas.");
        foreach (var combinator in (string[])["$ref", "anyOf", "oneOf", "allOf"])
        {
            if (!schema.TryGetProperty(combinator, out var value)) continue;
            // The referenced or combined schemas are the schema: beside them only annotations (and definitions), and
            // beside anyOf / oneOf the type its alternatives leave out and properties they must all have.
            foreach (var property in schema.EnumerateObject())
                if (Keywords.Contains(property.Name) && property.Name != combinator && property.Name is not ("$defs" or "definitions") &&
                    !(combinator is "anyOf" or "oneOf" && property.Name is "type" or "required"))
                    throw Error(path, $"'{property.Name}' beside '{combinator}' is not supported.");
            if (combinator == "$ref") return Reference(value, path, depth, nodes, implied);
            if (schema.TryGetProperty("type", out var sharedType)) TypeNames(sharedType, $"{path}.type"); // checked here, at its own path
            var combined = Combined(combinator, value, path, depth, nodes, schema.TryGetProperty("type", out var shared) ? shared : null);
            if (schema.TryGetProperty("type", out _)) CheckTypes(combined, shared, $"{path}.type");
            if (schema.TryGetProperty("required", out var needed)) CheckRequired(combined, needed, $"{path}.required");
            return combined;
        }

        List<string>? types = null;
        bool typed = schema.TryGetProperty("type", out var type);
        if (!typed && implied is { } inherited && (schema.TryGetProperty("properties", out _) || schema.TryGetProperty("items", out _)))
        {
            typed = true;
            type = inherited;
        }
        if (typed)
        {
            types = [];
            if (type.ValueKind == JsonValueKind.String) types.Add(type.GetString()!);
            else if (type.ValueKind == JsonValueKind.Array && type.GetArrayLength() > 0 && type.EnumerateArray().All(t => t.ValueKind == JsonValueKind.String))
                types.AddRange(type.EnumerateArray().Select(t => t.GetString()!));
            else throw Error($"{path}.type", "expected a type name or a non-empty array of type names.");
            foreach (var name in types)
                if (name is not ("object" or "array" or "string" or "number" or "integer" or "boolean" or "null"))
                    throw Error($"{path}.type", $"unknown type '{name}'; expected object, array, string, number, integer, boolean or null.");
        }
        bool hasConst = schema.TryGetProperty("const", out var constant), hasEnum = schema.TryGetProperty("enum", out var values);
        if (hasConst || hasEnum)
        {
            // The values are the schema: beside them only a type (which every value must have) and annotations.
            if (hasConst && hasEnum) throw Error(path, "'const' and 'enum' together are not supported.");
            foreach (var property in schema.EnumerateObject())
                if (Keywords.Contains(property.Name) && property.Name is not ("type" or "const" or "enum"))
                    throw Error(path, $"'{property.Name}' beside '{(hasConst ? "const" : "enum")}' is not supported: the listed values are the schema.");
            if (hasEnum && (values.ValueKind != JsonValueKind.Array || values.GetArrayLength() == 0))
                throw Error($"{path}.enum", "expected a non-empty array of values.");
            var listed = hasConst ? [constant] : values.EnumerateArray().ToArray();
            if (types is not null)
                foreach (var value in listed)
                    if (!types.Any(t => HasType(value, t)))
                        throw Error($"{path}.{(hasConst ? "const" : "enum")}", $"{Shorten(value.GetRawText())} is not of type {string.Join(" or ", types)}.");
            CountLiterals(nodes, listed.Length, path);
            var literals = listed.Select(v => Canonical(v, $"{path}.{(hasConst ? "const" : "enum")}")).Distinct(ByteArrayComparer.Instance).ToArray();
            if (literals.Length > ushort.MaxValue) throw Error($"{path}.enum", $"more than {ushort.MaxValue} values.");
            Array.Sort(literals, (a, b) => a.AsSpan().SequenceCompareTo(b));
            return Add(new SchemaNode { Kind = SchemaKind.Literals, Literals = literals }, nodes);
        }
        if (types is null)
            throw Error(path, "needs a 'type' (or 'enum' or 'const'): schemas that allow any value are not supported.");
        foreach (var keyword in (string[])["properties", "required", "additionalProperties"])
            if (schema.TryGetProperty(keyword, out _) && !types.Contains("object")) throw Error(path, $"'{keyword}' applies to objects only.");
        foreach (var keyword in (string[])["items", "minItems", "maxItems"])
            if (schema.TryGetProperty(keyword, out _) && !types.Contains("array")) throw Error(path, $"'{keyword}' applies to arrays only.");
        if (types.Contains("number")) types.RemoveAll(t => t == "integer"); // every integer is a number
        // The types start with different bytes ({, [, ", a digit or -, t or f, n): a union reads the first byte to choose.
        var alternatives = types.Distinct().Select(t => Typed(t, schema, path, depth, nodes)).ToArray();
        if (alternatives.Length == 1) return alternatives[0];
        var byFirstByte = new SchemaNode?[256];
        foreach (var alternative in alternatives)
            for (int b = 0; b < 256; b++)
                if (StartsWith(alternative, (byte)b)) byFirstByte[b] = alternative;
        return Add(new SchemaNode { Kind = SchemaKind.Union, ByFirstByte = byFirstByte }, nodes);
    }

    /// <summary>The schema <c>$ref</c> points to (a JSON pointer into this document), compiled where the reference stands.</summary>
    private static SchemaNode Reference(JsonElement reference, string path, int depth, Context nodes, JsonElement? implied = null)
    {
        if (reference.ValueKind != JsonValueKind.String) throw Error($"{path}.$ref", "expected a string such as \"#/$defs/Name\".");
        string pointer = reference.GetString()!;
        if (!pointer.StartsWith('#'))
            throw Error($"{path}.$ref", $"'{Shorten(pointer)}': only references within the schema (\"#/...\") are supported.");
        string fragment = Uri.UnescapeDataString(pointer[1..]); // the key of the schema it names, however it is escaped
        if (nodes.Expanding.Contains(fragment))
            throw Error($"{path}.$ref", $"'{Shorten(pointer)}' refers to itself through #{string.Join(" -> #", nodes.Expanding.SkipWhile(p => p != fragment).Append(fragment))}: recursive schemas are not supported.");
        var target = nodes.Document;
        if (fragment.Length > 0)
        {
            if (fragment[0] != '/') throw Error($"{path}.$ref", $"'{Shorten(pointer)}' is not a JSON pointer (\"#/...\").");
            foreach (var segment in fragment[1..].Split('/'))
            {
                string name = segment.Replace("~1", "/", StringComparison.Ordinal).Replace("~0", "~", StringComparison.Ordinal);
                bool found = target.ValueKind switch
                {
                    JsonValueKind.Object => target.TryGetProperty(name, out target),
                    JsonValueKind.Array => int.TryParse(name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int i) &&
                        i < target.GetArrayLength() && (target = target[i]).ValueKind != JsonValueKind.Undefined,
                    _ => false,
                };
                if (!found) throw Error($"{path}.$ref", $"'{Shorten(pointer)}' points to nothing in the schema.");
            }
        }
        if (nodes.Expanding.Count >= MaxReferenceDepth)
            throw Error($"{path}.$ref", $"references nest more than {MaxReferenceDepth} deep.");
        // A schema referenced again is the node compiled the first time (nodes are immutable), where it still nests
        // within the frames a text can hold.
        var key = (fragment, implied?.GetRawText());
        if (nodes.References.TryGetValue(key, out var known))
        {
            if (depth + known.Height > MaxDepth) throw Error(path, $"objects and arrays are nested more than {MaxDepth} deep.");
            return known.Node;
        }
        nodes.Expanding.Add(fragment);
        var node = Node(target, $"{path}.$ref({Shorten(pointer)})", depth, nodes, implied);
        nodes.Expanding.RemoveAt(nodes.Expanding.Count - 1);
        nodes.References[key] = (node, Height(node, nodes));
        return node;
    }

    /// <summary>
    /// anyOf / oneOf: alternatives a value's first byte tells apart (so at most one can match, and oneOf means the same);
    /// literal alternatives are merged into one set, an integer beside a number is the number. allOf: one schema only.
    /// </summary>
    private static SchemaNode Combined(string combinator, JsonElement list, string path, int depth, Context nodes, JsonElement? implied = null)
    {
        if (list.ValueKind != JsonValueKind.Array || list.GetArrayLength() == 0)
            throw Error($"{path}.{combinator}", "expected a non-empty array of schemas.");
        if (combinator == "allOf")
        {
            if (list.GetArrayLength() > 1) throw Error($"{path}.allOf", "allOf of more than one schema is not supported (only a single schema, as some generators wrap a $ref).");
            return Node(list[0], $"{path}.allOf[0]", depth, nodes);
        }
        var alternatives = new List<(SchemaNode Node, string Path)>();
        int index = 0;
        foreach (var item in list.EnumerateArray())
        {
            string at = $"{path}.{combinator}[{index++}]";
            var node = Node(item, at, depth, nodes, implied);
            if (node.Kind == SchemaKind.Union)
                alternatives.AddRange(node.ByFirstByte.OfType<SchemaNode>().Distinct().Select(n => (n, at)));
            else alternatives.Add((node, at));
        }
        if (alternatives.Any(a => a.Node.Kind == SchemaKind.Number)) alternatives.RemoveAll(a => a.Node.Kind == SchemaKind.Integer);
        var literals = alternatives.Where(a => a.Node.Kind == SchemaKind.Literals).ToList();
        if (literals.Count > 1)
        {
            CountLiterals(nodes, literals.Sum(a => a.Node.Literals.Length), $"{path}.{combinator}");
            var merged = literals.SelectMany(a => a.Node.Literals).Distinct(ByteArrayComparer.Instance).ToArray();
            if (merged.Length > ushort.MaxValue) throw Error($"{path}.{combinator}", $"more than {ushort.MaxValue} values.");
            Array.Sort(merged, (a, b) => a.AsSpan().SequenceCompareTo(b));
            alternatives.RemoveAll(a => a.Node.Kind == SchemaKind.Literals);
            alternatives.Add((Add(new SchemaNode { Kind = SchemaKind.Literals, Literals = merged }, nodes), literals[0].Path));
        }
        var objects = alternatives.Where(a => a.Node.Kind == SchemaKind.Object).ToList();
        if (objects.Count > 1)
        {
            alternatives.RemoveAll(a => a.Node.Kind == SchemaKind.Object);
            alternatives.Add((Discriminate(objects, $"{path}.{combinator}", nodes), objects[0].Path));
        }
        if (alternatives.Count == 1) return alternatives[0].Node;
        var byFirstByte = new SchemaNode?[256];
        var owner = new string?[256];
        foreach (var (node, at) in alternatives)
            for (int b = 0; b < 256; b++)
            {
                if (!StartsWith(node, (byte)b)) continue;
                if (byFirstByte[b] is { } other && !ReferenceEquals(other, node))
                    throw Error($"{path}.{combinator}", $"{owner[b]} and {at} can both start with '{(char)b}': alternatives must be told apart by their first byte (different types, such as an object or null).");
                byFirstByte[b] = node;
                owner[b] = at;
            }
        return Add(new SchemaNode { Kind = SchemaKind.Union, ByFirstByte = byFirstByte }, nodes);
    }

    /// <summary>The type beside an anyOf / oneOf: every value its alternatives allow has it.</summary>
    private static void CheckTypes(SchemaNode combined, JsonElement type, string path)
    {
        var names = TypeNames(type, path);
        bool Allowed(string name) => names.Contains(name) || (name == "integer" && names.Contains("number"));
        var alternatives = combined.Kind == SchemaKind.Union ? combined.ByFirstByte.OfType<SchemaNode>().Distinct() : [combined];
        foreach (var node in alternatives)
        {
            var kinds = node.Kind switch
            {
                SchemaKind.Object or SchemaKind.Discriminated => ["object"],
                SchemaKind.Array => ["array"],
                SchemaKind.String => ["string"],
                SchemaKind.Number => ["number"],
                SchemaKind.Integer => ["integer"],
                SchemaKind.Literals => node.Literals.Select(l => l[0] switch
                {
                    (byte)'"' => "string", (byte)'{' => "object", (byte)'[' => "array", (byte)'t' or (byte)'f' => "boolean", (byte)'n' => "null",
                    _ => decimal.TryParse(System.Text.Encoding.UTF8.GetString(l), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var d) &&
                         decimal.Truncate(d) == d ? "integer" : "number",
                }).Distinct().ToArray(),
                _ => (string[])[],
            };
            foreach (var kind in kinds)
                if (!Allowed(kind)) throw Error(path, $"an alternative allows {kind} values, which the type {string.Join(" or ", names)} beside them does not.");
        }
    }

    /// <summary>A <c>type</c> keyword's names: one, or a non-empty list, each a JSON Schema type.</summary>
    private static string[] TypeNames(JsonElement type, string path)
    {
        var names = type.ValueKind == JsonValueKind.String ? [type.GetString()!]
            : type.ValueKind == JsonValueKind.Array && type.GetArrayLength() > 0 && type.EnumerateArray().All(t => t.ValueKind == JsonValueKind.String)
                ? type.EnumerateArray().Select(t => t.GetString()!).ToArray()
                : throw Error(path, "expected a type name or a non-empty array of type names.");
        foreach (var name in names)
            if (name is not ("object" or "array" or "string" or "number" or "integer" or "boolean" or "null"))
                throw Error(path, $"unknown type '{name}'; expected object, array, string, number, integer, boolean or null.");
        return names;
    }

    /// <summary>The properties an anyOf / oneOf lists as required beside its alternatives: every object alternative has them (and writes them).</summary>
    private static void CheckRequired(SchemaNode combined, JsonElement required, string path)
    {
        if (required.ValueKind != JsonValueKind.Array) throw Error(path, "expected an array of property names.");
        var objects = combined.Kind switch
        {
            SchemaKind.Object => [combined],
            SchemaKind.Discriminated => combined.Variants.Distinct(),
            SchemaKind.Union => combined.ByFirstByte.OfType<SchemaNode>().Distinct().SelectMany(n => n.Kind == SchemaKind.Discriminated ? n.Variants.Distinct() : [n])
                .Where(n => n.Kind == SchemaKind.Object),
            _ => [],
        };
        foreach (var name in required.EnumerateArray())
        {
            if (name.ValueKind != JsonValueKind.String) throw Error(path, $"{Shorten(name.GetRawText())} is not a property name.");
            var key = new List<byte>();
            WriteString(name.GetString()!, key, path);
            foreach (var node in objects)
                if (!node.Keys.Any(k => k.AsSpan().SequenceEqual(key.ToArray())))
                    throw Error(path, $"{name.GetRawText()} is not a property of every alternative.");
        }
    }

    /// <summary>
    /// Several objects as one <see cref="SchemaKind.Discriminated"/> node: each must start with the same key whose value is
    /// a literal (const or enum), no value shared by two of them; otherwise they cannot be told apart as they are read.
    /// </summary>
    private static SchemaNode Discriminate(List<(SchemaNode Node, string Path)> objects, string path, Context nodes)
    {
        var (first, firstPath) = objects[0];
        string Why(string at) => $"{firstPath} and {at} are both objects: alternative objects must start with the same property (a discriminator) whose const or enum values differ";
        if (first.Keys.Length == 0) throw Error(path, Why(objects[1].Path));
        var key = first.Keys[0];
        var values = new List<(byte[] Value, SchemaNode Variant)>();
        foreach (var (node, at) in objects)
        {
            if (node.Keys.Length == 0 || !node.Keys[0].AsSpan().SequenceEqual(key) || node.Properties[0].Kind != SchemaKind.Literals)
                throw Error(path, Why(at) + ".");
            foreach (var value in node.Properties[0].Literals)
            {
                if (values.Any(v => v.Value.AsSpan().SequenceEqual(value)))
                    throw Error(path, Why(at) + $"; {System.Text.Encoding.UTF8.GetString(value)} is a value of two of them.");
                values.Add((value, node));
            }
        }
        values.Sort((a, b) => a.Value.AsSpan().SequenceCompareTo(b.Value));
        var discriminator = Add(new SchemaNode { Kind = SchemaKind.Literals, Literals = [.. values.Select(v => v.Value)] }, nodes);
        return Add(new SchemaNode { Kind = SchemaKind.Discriminated, Keys = [key], Properties = [discriminator], Variants = [.. values.Select(v => v.Variant)] }, nodes);
    }

    /// <summary>Whether a value of <paramref name="node"/> (not a union) can start with <paramref name="b"/>.</summary>
    private static bool StartsWith(SchemaNode node, byte b) => node.Kind switch
    {
        SchemaKind.Object or SchemaKind.Discriminated => b == (byte)'{',
        SchemaKind.Array => b == (byte)'[',
        SchemaKind.String => b == (byte)'"',
        SchemaKind.Number or SchemaKind.Integer => JsonNumberScanner.Starts(b),
        SchemaKind.Literals => node.Literals.Any(l => l[0] == b),
        _ => false,
    };

    private static SchemaNode Typed(string type, JsonElement schema, string path, int depth, Context nodes) => type switch
    {
        "object" => ObjectSchema(schema, path, depth, nodes),
        "array" => ArraySchema(schema, path, depth, nodes),
        "string" => Add(new SchemaNode { Kind = SchemaKind.String }, nodes),
        "number" => Add(new SchemaNode { Kind = SchemaKind.Number }, nodes),
        "integer" => Add(new SchemaNode { Kind = SchemaKind.Integer }, nodes),
        "boolean" => Add(new SchemaNode { Kind = SchemaKind.Literals, Literals = Booleans }, nodes),
        "null" => Add(new SchemaNode { Kind = SchemaKind.Literals, Literals = Null }, nodes),
        _ => throw Error($"{path}.type", $"unknown type '{type}'; expected object, array, string, number, integer, boolean or null."),
    };

    private static SchemaNode ObjectSchema(JsonElement schema, string path, int depth, Context nodes)
    {
        if (depth >= MaxDepth) throw Error(path, $"objects and arrays are nested more than {MaxDepth} deep.");
        if (!schema.TryGetProperty("properties", out var properties) || properties.ValueKind != JsonValueKind.Object)
            throw Error(path, "an object needs its 'properties' (an object of schemas): objects with any properties are not supported.");
        if (schema.TryGetProperty("additionalProperties", out var additional) && additional.ValueKind != JsonValueKind.False)
            throw Error($"{path}.additionalProperties", "only false is supported: the object has exactly its listed properties.");
        var names = new List<string>();
        var keys = new List<byte[]>();
        var children = new List<SchemaNode>();
        foreach (var property in properties.EnumerateObject())
        {
            if (names.Contains(property.Name)) throw Error($"{path}.properties", $"property '{property.Name}' is listed twice.");
            names.Add(property.Name);
            var key = new List<byte>();
            WriteString(property.Name, key, $"{path}.properties");
            if (key.Count > ushort.MaxValue) throw Error($"{path}.properties", $"a property name longer than {ushort.MaxValue} bytes.");
            keys.Add([.. key]);
            children.Add(Node(property.Value, $"{path}.properties.{property.Name}", depth + 1, nodes));
        }
        if (schema.TryGetProperty("required", out var required))
        {
            if (required.ValueKind != JsonValueKind.Array) throw Error($"{path}.required", "expected an array of property names.");
            foreach (var name in required.EnumerateArray())
                if (name.ValueKind != JsonValueKind.String || !names.Contains(name.GetString()!))
                    throw Error($"{path}.required", $"{name.GetRawText()} is not one of the listed properties.");
        }
        return Add(new SchemaNode { Kind = SchemaKind.Object, Keys = [.. keys], Properties = [.. children] }, nodes);
    }

    private static SchemaNode ArraySchema(JsonElement schema, string path, int depth, Context nodes)
    {
        if (depth >= MaxDepth) throw Error(path, $"objects and arrays are nested more than {MaxDepth} deep.");
        if (!schema.TryGetProperty("items", out var items))
            throw Error(path, "an array needs 'items' (the schema of every item): arrays of any values are not supported.");
        int min = Count(schema, "minItems", path, 0), max = Count(schema, "maxItems", path, int.MaxValue);
        if (min > max) throw Error(path, $"minItems {min} is above maxItems {max}.");
        var item = Node(items, $"{path}.items", depth + 1, nodes);
        return Add(new SchemaNode { Kind = SchemaKind.Array, Items = item, MinItems = min, MaxItems = max }, nodes);
    }

    private static int Count(JsonElement schema, string keyword, string path, int absent)
    {
        if (!schema.TryGetProperty(keyword, out var value)) return absent;
        if (value.ValueKind != JsonValueKind.Number || !IsIntegral(value) || !value.TryGetDouble(out double count) || count < 0 || count > int.MaxValue)
            throw Error($"{path}.{keyword}", $"expected a non-negative integer, got {Shorten(value.GetRawText())}.");
        return (int)count;
    }

    private static SchemaNode Add(SchemaNode node, Context nodes)
    {
        node.Id = nodes.Count;
        nodes.Add(node);
        return node;
    }

    /// <summary>
    /// A value as the only bytes that may write it: compact, numbers as the schema writes them, strings with only '"',
    /// '\\' and control characters escaped (everything else as UTF-8).
    /// </summary>
    private static byte[] Canonical(JsonElement value, string path)
    {
        var bytes = new List<byte>();
        Write(value, bytes, path);
        if (bytes.Count > ushort.MaxValue) throw Error(path, $"a value longer than {ushort.MaxValue} bytes.");
        return [.. bytes];
    }

    private static void Write(JsonElement value, List<byte> output, string path)
    {
        switch (value.ValueKind)
        {
            case JsonValueKind.Object:
                output.Add((byte)'{');
                bool first = true;
                foreach (var property in value.EnumerateObject())
                {
                    if (!first) output.Add((byte)',');
                    first = false;
                    WriteString(property.Name, output, path);
                    output.Add((byte)':');
                    Write(property.Value, output, path);
                }
                output.Add((byte)'}');
                break;
            case JsonValueKind.Array:
                output.Add((byte)'[');
                int i = 0;
                foreach (var item in value.EnumerateArray())
                {
                    if (i++ > 0) output.Add((byte)',');
                    Write(item, output, path);
                }
                output.Add((byte)']');
                break;
            case JsonValueKind.String:
                WriteString(value.GetString()!, output, path);
                break;
            default: // numbers as written, true, false, null
                output.AddRange(System.Text.Encoding.UTF8.GetBytes(value.GetRawText()));
                break;
        }
    }

    private static void WriteString(string text, List<byte> output, string path)
    {
        // The tokenizer shows U+2581 (its space marker) as a space even when byte tokens spell it: such text could be
        // generated but not shown as it is.
        if (text.Contains('\u2581')) throw Error(path, "U+2581 (▁) cannot be generated as it is: the tokenizer shows it as a space.");
        output.Add((byte)'"');
        Span<byte> utf8 = stackalloc byte[4];
        foreach (var rune in text.EnumerateRunes())
        {
            switch (rune.Value)
            {
                case '"': output.AddRange("\\\""u8); break;
                case '\\': output.AddRange("\\\\"u8); break;
                case '\b': output.AddRange("\\b"u8); break;
                case '\f': output.AddRange("\\f"u8); break;
                case '\n': output.AddRange("\\n"u8); break;
                case '\r': output.AddRange("\\r"u8); break;
                case '\t': output.AddRange("\\t"u8); break;
                case < 0x20: output.AddRange(System.Text.Encoding.ASCII.GetBytes($"\\u{rune.Value:x4}")); break;
                default: output.AddRange(utf8[..rune.EncodeToUtf8(utf8)]); break;
            }
        }
        output.Add((byte)'"');
    }

    /// <summary>Whether <paramref name="value"/> is of JSON Schema type <paramref name="type"/> (1.0 is an integer).</summary>
    private static bool HasType(JsonElement value, string type) => type switch
    {
        "object" => value.ValueKind == JsonValueKind.Object,
        "array" => value.ValueKind == JsonValueKind.Array,
        "string" => value.ValueKind == JsonValueKind.String,
        "number" => value.ValueKind == JsonValueKind.Number,
        "integer" => value.ValueKind == JsonValueKind.Number && IsIntegral(value),
        "boolean" => value.ValueKind is JsonValueKind.True or JsonValueKind.False,
        "null" => value.ValueKind == JsonValueKind.Null,
        _ => false,
    };

    private static bool IsIntegral(JsonElement number) =>
        number.TryGetDecimal(out decimal d) ? decimal.Truncate(d) == d : number.TryGetDouble(out double x) && double.IsFinite(x) && Math.Floor(x) == x;

    private static string Shorten(string text) => text.Length <= 40 ? text : text[..40] + "...";

    private sealed class ByteArrayComparer : IEqualityComparer<byte[]>
    {
        public static readonly ByteArrayComparer Instance = new();

        public bool Equals(byte[]? x, byte[]? y) => x.AsSpan().SequenceEqual(y);

        public int GetHashCode(byte[] obj)
        {
            var hash = new HashCode();
            hash.AddBytes(obj);
            return hash.ToHashCode();
        }
    }
}
