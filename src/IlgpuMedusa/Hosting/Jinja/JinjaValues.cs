using System.Globalization;
using System.Text;

namespace IlgpuMedusa.Hosting.Jinja;

/// <summary>Jinja's undefined: what a missing variable, key or index gives. Renders as nothing, is false, iterates as empty.</summary>
public sealed class JinjaUndefined
{
    private JinjaUndefined()
    {
    }

    /// <summary>The one instance.</summary>
    public static JinjaUndefined Instance { get; } = new();

    /// <inheritdoc />
    public override string ToString() => "";
}

/// <summary>
/// A mapping in insertion order (Python's dict). <see cref="KeysFromData"/> says whether its keys came from the caller's
/// data (a tool's JSON schema) rather than from the template, so that iterating it keeps them marked.
/// </summary>
public sealed class JinjaDict(bool keysFromData = false)
{
    /// <summary>The entries.</summary>
    public OrderedDictionary<string, object?> Items { get; } = new(StringComparer.Ordinal);

    /// <summary>Whether the keys came from data.</summary>
    public bool KeysFromData { get; } = keysFromData;

    /// <summary>A key as a template string, marked when the keys came from data.</summary>
    public JinjaText Key(string key) => KeysFromData ? JinjaText.FromData(key) : new JinjaText(key);

    /// <summary>Sets an entry (fluent).</summary>
    public JinjaDict With(string key, object? value)
    {
        Items[key] = value;
        return this;
    }
}

/// <summary>The mutable object <c>namespace(...)</c> makes: its attributes may be set from inside loops.</summary>
internal sealed class JinjaNamespace
{
    public Dictionary<string, object?> Attributes { get; } = new(StringComparer.Ordinal);
}

/// <summary>A callable value: a global function, a bound method or a macro.</summary>
internal sealed class JinjaCallable(string name, Func<List<object?>, Dictionary<string, object?>, object?> invoke)
{
    public string Name { get; } = name;

    public object? Invoke(List<object?> args, Dictionary<string, object?> kwargs) => invoke(args, kwargs);
}

/// <summary>Conversions between template values and text, Python-style.</summary>
internal static class JinjaValues
{
    /// <summary>Python's truthiness.</summary>
    public static bool Truthy(object? v) => v switch
    {
        null or JinjaUndefined => false,
        bool b => b,
        long n => n != 0,
        double d => d != 0,
        JinjaText t => t.Length > 0,
        List<object?> l => l.Count > 0,
        JinjaDict d => d.Items.Count > 0,
        _ => true,
    };

    /// <summary>What <c>{{ v }}</c> prints (str(v)), marked where the value came from data.</summary>
    public static JinjaText ToText(object? v) => v switch
    {
        JinjaText t => t,
        JinjaUndefined => JinjaText.Empty,
        null => new JinjaText("None"),
        _ => Repr(v, top: true),
    };

    /// <summary>Python's repr (str at the top level for numbers and booleans; repr for strings inside containers).</summary>
    public static JinjaText Repr(object? v, bool top = false)
    {
        switch (v)
        {
            case null: return new JinjaText("None");
            case JinjaUndefined: return JinjaText.Empty;
            case bool b: return new JinjaText(b ? "True" : "False");
            case long n: return new JinjaText(n.ToString(CultureInfo.InvariantCulture));
            case double d: return new JinjaText(FloatText(d));
            case JinjaText t:
                if (top) return t;
                bool useDouble = t.Text.Contains('\'') && !t.Text.Contains('"');
                char q = useDouble ? '"' : '\'';
                var sb = new StringBuilder().Append(q);
                foreach (char c in t.Text)
                {
                    sb.Append(c switch
                    {
                        '\\' => "\\\\",
                        '\n' => "\\n",
                        '\r' => "\\r",
                        '\t' => "\\t",
                        _ when c == q => "\\" + c,
                        _ when c < 0x20 || c == 0x7f => $"\\x{(int)c:x2}",
                        _ => c.ToString(),
                    });
                }
                return t.Derived(sb.Append(q).ToString());
            case List<object?> list:
            {
                var parts = new List<JinjaText> { new("[") };
                for (int i = 0; i < list.Count; i++)
                {
                    if (i > 0) parts.Add(new JinjaText(", "));
                    parts.Add(Repr(list[i]));
                }
                parts.Add(new JinjaText("]"));
                return JinjaText.Concat(parts);
            }
            case JinjaDict dict:
            {
                var parts = new List<JinjaText> { new("{") };
                bool first = true;
                foreach (var (key, value) in dict.Items)
                {
                    if (!first) parts.Add(new JinjaText(", "));
                    first = false;
                    parts.Add(Repr(dict.Key(key)));
                    parts.Add(new JinjaText(": "));
                    parts.Add(Repr(value));
                }
                parts.Add(new JinjaText("}"));
                return JinjaText.Concat(parts);
            }
            case JinjaNamespace: return new JinjaText("<Namespace>");
            case JinjaCallable c: return new JinjaText($"<function {c.Name}>");
            default: return new JinjaText(v.ToString() ?? "");
        }
    }

    /// <summary>Python's repr of a float: shortest round trip, always with a point or exponent.</summary>
    public static string FloatText(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        if (d == Math.Floor(d) && Math.Abs(d) < 1e16) return d.ToString("0.0", CultureInfo.InvariantCulture);
        string r = d.ToString("R", CultureInfo.InvariantCulture);
        int e = r.IndexOf('E');
        if (e < 0) return r;
        // 1E+16 -> 1e+16, 1E-05 -> 1e-05
        string mantissa = r[..e], exponent = r[(e + 1)..];
        char sign = exponent[0] == '-' ? '-' : '+';
        exponent = exponent.TrimStart('+', '-');
        if (exponent.Length < 2) exponent = "0" + exponent;
        return mantissa + "e" + sign + exponent;
    }

    /// <summary>
    /// transformers' tojson: Python's json.dumps with ensure_ascii off, separators ", " and ": " (",", ": " when indented),
    /// keys in order unless <paramref name="sortKeys"/>. The result is marked as data when any string in it is.
    /// </summary>
    public static JinjaText ToJson(object? v, int? indent, bool sortKeys)
    {
        var sb = new StringBuilder();
        bool data = false;
        void Write(object? x, int depth)
        {
            switch (x)
            {
                case null: sb.Append("null"); break;
                case JinjaUndefined: throw new JinjaException("tojson: undefined is not JSON serializable");
                case bool b: sb.Append(b ? "true" : "false"); break;
                case long n: sb.Append(n.ToString(CultureInfo.InvariantCulture)); break;
                case double d: sb.Append(double.IsNaN(d) ? "NaN" : double.IsInfinity(d) ? (d > 0 ? "Infinity" : "-Infinity") : FloatText(d)); break;
                case JinjaText t:
                    data |= t.HasData;
                    JsonString(sb, t.Text);
                    break;
                case List<object?> list:
                    if (list.Count == 0)
                    {
                        sb.Append("[]");
                        break;
                    }
                    sb.Append('[');
                    for (int i = 0; i < list.Count; i++)
                    {
                        if (i > 0) sb.Append(indent is null ? ", " : ",");
                        NewLine(depth + 1);
                        Write(list[i], depth + 1);
                    }
                    NewLine(depth);
                    sb.Append(']');
                    break;
                case JinjaDict dict:
                    if (dict.Items.Count == 0)
                    {
                        sb.Append("{}");
                        break;
                    }
                    data |= dict.KeysFromData;
                    sb.Append('{');
                    var keys = dict.Items.Keys.ToList();
                    if (sortKeys) keys.Sort(StringComparer.Ordinal);
                    for (int i = 0; i < keys.Count; i++)
                    {
                        if (i > 0) sb.Append(indent is null ? ", " : ",");
                        NewLine(depth + 1);
                        JsonString(sb, keys[i]);
                        sb.Append(": ");
                        Write(dict.Items[keys[i]], depth + 1);
                    }
                    NewLine(depth);
                    sb.Append('}');
                    break;
                case JinjaNamespace ns:
                    var asDict = new JinjaDict();
                    foreach (var (k, value) in ns.Attributes) asDict.Items[k] = value;
                    Write(asDict, depth);
                    break;
                default:
                    throw new JinjaException($"tojson: {x.GetType().Name} is not JSON serializable");
            }
        }
        void NewLine(int depth)
        {
            if (indent is int width) sb.Append('\n').Append(' ', width * depth);
        }
        Write(v, 0);
        return data ? JinjaText.FromData(sb.ToString()) : new JinjaText(sb.ToString());
    }

    private static void JsonString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }

    /// <summary>A JSON document as template values: strings, keys and all marked as data.</summary>
    public static object? FromJson(System.Text.Json.JsonElement e) => e.ValueKind switch
    {
        System.Text.Json.JsonValueKind.Null or System.Text.Json.JsonValueKind.Undefined => null,
        System.Text.Json.JsonValueKind.True => true,
        System.Text.Json.JsonValueKind.False => false,
        System.Text.Json.JsonValueKind.Number => e.TryGetInt64(out long n) ? n : e.GetDouble(),
        System.Text.Json.JsonValueKind.String => JinjaText.FromData(e.GetString()!),
        System.Text.Json.JsonValueKind.Array => e.EnumerateArray().Select(FromJson).ToList(),
        _ => e.EnumerateObject().Aggregate(new JinjaDict(keysFromData: true), (d, p) => d.With(p.Name, FromJson(p.Value))),
    };

    /// <summary>Python's == across types (1 == 1.0; strings by value; lists element by element).</summary>
    public static bool Equal(object? a, object? b)
    {
        if (a is null || b is null) return a is null && b is null;
        if (a is JinjaUndefined || b is JinjaUndefined) return a is JinjaUndefined && b is JinjaUndefined;
        if (IsNumber(a) && IsNumber(b)) return ToDouble(a) == ToDouble(b);
        if (a is JinjaText ta && b is JinjaText tb) return ta.Equals(tb);
        if (a is List<object?> la && b is List<object?> lb) return la.Count == lb.Count && la.Zip(lb).All(p => Equal(p.First, p.Second));
        if (a is JinjaDict da && b is JinjaDict db)
            return da.Items.Count == db.Items.Count && da.Items.All(kv => db.Items.TryGetValue(kv.Key, out var other) && Equal(kv.Value, other));
        return ReferenceEquals(a, b);
    }

    public static bool IsNumber(object? v) => v is long or double or bool;

    public static double ToDouble(object? v) => v switch
    {
        long n => n,
        double d => d,
        bool b => b ? 1 : 0,
        _ => throw new JinjaException($"expected a number, got {TypeName(v)}"),
    };

    /// <summary>Python's name of a value's type, for messages.</summary>
    public static string TypeName(object? v) => v switch
    {
        null => "None",
        JinjaUndefined => "undefined",
        bool => "bool",
        long => "int",
        double => "float",
        JinjaText => "str",
        List<object?> => "list",
        JinjaDict => "dict",
        JinjaNamespace => "namespace",
        JinjaCallable => "function",
        _ => v.GetType().Name,
    };
}
