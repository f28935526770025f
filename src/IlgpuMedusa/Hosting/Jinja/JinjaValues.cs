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
/// A mapping in insertion order (Python's dict). Keys remember whether they came from the caller's data (a JSON
/// document's, or a template's dict literal keyed by message text) rather than from the template, so that iterating,
/// printing or serializing it keeps them marked.
/// </summary>
public sealed class JinjaDict(bool keysFromData = false)
{
    private HashSet<string>? _dataKeys;

    /// <summary>The entries.</summary>
    public OrderedDictionary<string, object?> Items { get; } = new(StringComparer.Ordinal);

    /// <summary>Whether every key came from data.</summary>
    public bool KeysFromData { get; } = keysFromData;

    /// <summary>Whether any key came from data.</summary>
    public bool AnyKeyFromData => KeysFromData || _dataKeys is { Count: > 0 };

    /// <summary>A key as a template string, marked when it came from data.</summary>
    public JinjaText Key(string key) => KeysFromData || _dataKeys?.Contains(key) == true ? JinjaText.FromData(key) : new JinjaText(key);

    /// <summary>Sets an entry whose key came from data when <paramref name="fromData"/>.</summary>
    public void Set(string key, object? value, bool fromData)
    {
        Items[key] = value;
        if (fromData) (_dataKeys ??= new HashSet<string>(StringComparer.Ordinal)).Add(key);
        else _dataKeys?.Remove(key);
    }

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
        System.Runtime.CompilerServices.RuntimeHelpers.EnsureSufficientExecutionStack();
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

    /// <summary>
    /// Python's repr of a float: the shortest digits that round-trip, in positional notation when the decimal exponent
    /// is from −4 to 15 (with ".0" when integral), else as d.ddde±XX.
    /// </summary>
    public static string FloatText(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        if (d == 0) return double.IsNegative(d) ? "-0.0" : "0.0";
        // "R": the shortest text that round-trips; its digits and decimal exponent, whichever notation it chose.
        string r = Math.Abs(d).ToString("R", CultureInfo.InvariantCulture);
        string digits;
        int exponent;
        int e = r.IndexOf('E');
        if (e >= 0)
        {
            digits = r[..e].Replace(".", "", StringComparison.Ordinal);
            exponent = int.Parse(r[(e + 1)..], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
        }
        else
        {
            int point = r.IndexOf('.');
            string whole = point < 0 ? r : r[..point], fraction = point < 0 ? "" : r[(point + 1)..];
            if (whole != "0")
            {
                exponent = whole.Length - 1;
                digits = whole + fraction;
            }
            else
            {
                string significant = fraction.TrimStart('0');
                exponent = -(fraction.Length - significant.Length + 1);
                digits = significant;
            }
        }
        digits = digits.TrimEnd('0');
        if (digits.Length == 0) digits = "0";
        string sign = d < 0 ? "-" : "";
        if (exponent >= -4 && exponent < 16)
        {
            string text;
            if (exponent >= 0)
            {
                text = digits.Length <= exponent + 1
                    ? digits + new string('0', exponent + 1 - digits.Length) + ".0"
                    : digits[..(exponent + 1)] + "." + digits[(exponent + 1)..];
            }
            else text = "0." + new string('0', -exponent - 1) + digits;
            return sign + text;
        }
        string mantissa = digits.Length == 1 ? digits : digits[0] + "." + digits[1..];
        return $"{sign}{mantissa}e{(exponent < 0 ? '-' : '+')}{Math.Abs(exponent):00}";
    }

    /// <summary>
    /// transformers' tojson: Python's json.dumps with ensure_ascii off, separators ", " and ": " (",", ": " when indented),
    /// keys in order unless <paramref name="sortKeys"/>. The result is marked as data when any string in it is.
    /// </summary>
    public static JinjaText ToJson(object? v, int? indent, bool sortKeys, bool ensureAscii = false, (string Item, string Key)? separators = null)
    {
        var sb = new StringBuilder();
        bool data = false;
        string itemSeparator = separators?.Item ?? (indent is null ? ", " : ",");
        string keySeparator = separators?.Key ?? ": ";
        void Write(object? x, int depth)
        {
            System.Runtime.CompilerServices.RuntimeHelpers.EnsureSufficientExecutionStack();
            if (sb.Length > JinjaTemplate.MaxOutputChars) throw new JinjaException($"tojson: more than {JinjaTemplate.MaxOutputChars} characters");
            switch (x)
            {
                case null: sb.Append("null"); break;
                case JinjaUndefined: throw new JinjaException("tojson: undefined is not JSON serializable");
                case bool b: sb.Append(b ? "true" : "false"); break;
                case long n: sb.Append(n.ToString(CultureInfo.InvariantCulture)); break;
                case double d: sb.Append(double.IsNaN(d) ? "NaN" : double.IsInfinity(d) ? (d > 0 ? "Infinity" : "-Infinity") : FloatText(d)); break;
                case JinjaText t:
                    data |= t.HasData;
                    JsonString(sb, t.Text, ensureAscii);
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
                        if (i > 0) sb.Append(itemSeparator);
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
                    data |= dict.AnyKeyFromData;
                    sb.Append('{');
                    var keys = dict.Items.Keys.ToList();
                    if (sortKeys) keys.Sort(StringComparer.Ordinal);
                    for (int i = 0; i < keys.Count; i++)
                    {
                        if (i > 0) sb.Append(itemSeparator);
                        NewLine(depth + 1);
                        JsonString(sb, keys[i], ensureAscii);
                        sb.Append(keySeparator);
                        Write(dict.Items[keys[i]], depth + 1);
                    }
                    NewLine(depth);
                    sb.Append('}');
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

    private static void JsonString(StringBuilder sb, string s, bool ensureAscii)
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
                    if (c < 0x20 || ensureAscii && c > 0x7e) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
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
        System.Runtime.CompilerServices.RuntimeHelpers.EnsureSufficientExecutionStack();
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
