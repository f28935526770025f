using System.Text;

namespace IlgpuMedusa.Hosting.Jinja;

/// <summary>
/// A string value of a template, with which of its characters came from the caller's data (message texts, tool
/// definitions) rather than from the template itself. Only characters the template wrote can form a special token
/// (<see cref="ModelChatTemplate"/>): a user who types <c>&lt;|im_end|&gt;</c> gets text, not the marker.
/// String operations keep the marks character by character (slices, strips, splits, case changes, joins, replaces).
/// </summary>
public sealed class JinjaText : IEquatable<JinjaText>
{
    private readonly bool[]? _data; // null: no character came from data

    /// <summary>A string the template wrote (every character clean).</summary>
    public JinjaText(string text) : this(text, null)
    {
    }

    private JinjaText(string text, bool[]? data)
    {
        Text = text;
        _data = data is not null && Array.IndexOf(data, true) >= 0 ? data : null;
    }

    /// <summary>A string from the caller's data (every character marked).</summary>
    public static JinjaText FromData(string text) => new(text, Enumerable.Repeat(true, text.Length).ToArray());

    /// <summary>The empty string.</summary>
    public static JinjaText Empty { get; } = new("");

    /// <summary>The characters.</summary>
    public string Text { get; }

    /// <summary>Length in UTF-16 units.</summary>
    public int Length => Text.Length;

    /// <summary>Whether any character came from data.</summary>
    public bool HasData => _data is not null;

    /// <summary>Whether character <paramref name="index"/> came from data.</summary>
    public bool IsData(int index) => _data is not null && _data[index];

    /// <summary>Characters [start, start + length).</summary>
    public JinjaText Slice(int start, int length) =>
        new(Text.Substring(start, length), _data is null ? null : _data.AsSpan(start, length).ToArray());

    /// <summary>The same marks on text of the same length (case changes).</summary>
    public JinjaText WithText(string text) =>
        text.Length == Text.Length ? new JinjaText(text, _data) : new JinjaText(text, HasData ? Enumerable.Repeat(true, text.Length).ToArray() : null);

    /// <summary>All of <paramref name="text"/> marked as data when any character of this one is.</summary>
    public JinjaText Derived(string text) => HasData ? FromData(text) : new JinjaText(text);

    /// <summary>Concatenation, marks kept.</summary>
    public static JinjaText Concat(IReadOnlyList<JinjaText> parts)
    {
        if (parts.Count == 1) return parts[0];
        long total = 0;
        foreach (var p in parts) total += p.Length;
        if (total > JinjaTemplate.MaxOutputChars) throw new JinjaException($"a string of more than {JinjaTemplate.MaxOutputChars} characters");
        var text = new StringBuilder((int)total);
        bool any = false;
        foreach (var p in parts)
        {
            text.Append(p.Text);
            any |= p.HasData;
        }
        if (!any) return new JinjaText(text.ToString());
        var data = new bool[text.Length];
        int at = 0;
        foreach (var p in parts)
        {
            if (p._data is not null) Array.Copy(p._data, 0, data, at, p.Length);
            at += p.Length;
        }
        return new JinjaText(text.ToString(), data);
    }

    /// <summary>Concatenation of two.</summary>
    public static JinjaText operator +(JinjaText a, JinjaText b) => Concat([a, b]);

    /// <summary>Without leading and trailing characters of <paramref name="chars"/> (whitespace when null).</summary>
    public JinjaText Strip(string? chars, bool start = true, bool end = true)
    {
        int from = 0, to = Text.Length;
        bool Strippable(char c) => chars is null ? char.IsWhiteSpace(c) : chars.Contains(c);
        if (start) while (from < to && Strippable(Text[from])) from++;
        if (end) while (to > from && Strippable(Text[to - 1])) to--;
        return from == 0 && to == Text.Length ? this : Slice(from, to - from);
    }

    /// <summary>Python's str.split: on <paramref name="separator"/>, or on runs of whitespace when null; at most <paramref name="maxSplit"/> splits (−1: all).</summary>
    public List<JinjaText> Split(string? separator, int maxSplit = -1)
    {
        var parts = new List<JinjaText>();
        if (separator is null)
        {
            int i = 0;
            while (true)
            {
                while (i < Text.Length && char.IsWhiteSpace(Text[i])) i++;
                if (i >= Text.Length) break;
                if (maxSplit >= 0 && parts.Count == maxSplit)
                {
                    int end = Text.Length;
                    while (end > i && char.IsWhiteSpace(Text[end - 1])) end--;
                    parts.Add(Slice(i, end - i));
                    break;
                }
                int start = i;
                while (i < Text.Length && !char.IsWhiteSpace(Text[i])) i++;
                parts.Add(Slice(start, i - start));
            }
            return parts;
        }
        if (separator.Length == 0) throw new JinjaException("split: empty separator");
        int from = 0;
        while (maxSplit < 0 || parts.Count < maxSplit)
        {
            int at = Text.IndexOf(separator, from, StringComparison.Ordinal);
            if (at < 0) break;
            parts.Add(Slice(from, at - from));
            from = at + separator.Length;
        }
        parts.Add(Slice(from, Text.Length - from));
        return parts;
    }

    /// <summary>Python's str.replace, the replacement's own marks kept.</summary>
    public JinjaText Replace(string old, JinjaText replacement, int count = -1)
    {
        if (old.Length == 0)
        {
            // Python inserts the replacement around every character.
            var pieces = new List<JinjaText>();
            int n = 0;
            for (int i = 0; i <= Text.Length; i++)
            {
                if (count < 0 || n < count)
                {
                    pieces.Add(replacement);
                    n++;
                }
                if (i < Text.Length) pieces.Add(Slice(i, 1));
            }
            return Concat(pieces);
        }
        var parts = new List<JinjaText>();
        int from = 0, done = 0;
        while (count < 0 || done < count)
        {
            int at = Text.IndexOf(old, from, StringComparison.Ordinal);
            if (at < 0) break;
            parts.Add(Slice(from, at - from));
            parts.Add(replacement);
            from = at + old.Length;
            done++;
        }
        if (done == 0) return this;
        parts.Add(Slice(from, Text.Length - from));
        return Concat(parts);
    }

    /// <inheritdoc />
    public bool Equals(JinjaText? other) => other is not null && string.Equals(Text, other.Text, StringComparison.Ordinal);

    /// <inheritdoc />
    public override bool Equals(object? obj) => obj is JinjaText t && Equals(t);

    /// <inheritdoc />
    public override int GetHashCode() => StringComparer.Ordinal.GetHashCode(Text);

    /// <inheritdoc />
    public override string ToString() => Text;
}

/// <summary>A template that cannot be parsed or rendered: the message names the line, or what the template raised.</summary>
public sealed class JinjaException(string message) : Exception(message);
