using System.Globalization;
using System.Text;

namespace IlgpuMedusa.Hosting.Jinja;

/// <summary>
/// Parses the Jinja subset chat templates use into a tree (<see cref="JinjaNode"/>). Whitespace follows the settings
/// Hugging Face renders chat templates with: <c>trim_blocks</c> (the newline after a block tag goes) and
/// <c>lstrip_blocks</c> (spaces before a block tag on its own line go), plus the <c>-</c> markers. Statements: if / elif /
/// else, for (tuple targets, an <c>if</c> filter, else, <c>loop</c>, break / continue), set (names, namespace attributes,
/// blocks), macro, and the generation block; expressions with Jinja's precedence, filters and tests.
/// </summary>
internal sealed class JinjaParser
{
    private readonly List<Token> _tokens;
    private int _at;

    private JinjaParser(List<Token> tokens) => _tokens = tokens;

    /// <summary>The tree of <paramref name="source"/>; <see cref="JinjaException"/> naming the line when it is not valid.</summary>
    public static List<JinjaNode> Parse(string source)
    {
        var parser = new JinjaParser(Lex(source));
        var body = parser.ParseBody([]);
        if (parser.Peek.Kind != TokenKind.End) throw parser.Error($"unexpected '{parser.Peek.Text}'");
        return body;
    }

    // ---- lexing -------------------------------------------------------------------------------------------------

    private enum TokenKind { Text, BlockStart, BlockEnd, VariableStart, VariableEnd, Name, String, Integer, Float, Operator, End }

    private readonly record struct Token(TokenKind Kind, string Text, int Line);

    private static List<Token> Lex(string source)
    {
        source = source.Replace("\r\n", "\n", StringComparison.Ordinal).Replace('\r', '\n');
        if (source.EndsWith('\n')) source = source[..^1]; // jinja2's keep_trailing_newline=False
        var tokens = new List<Token>();
        int i = 0, line = 1;
        var pendingText = new StringBuilder();
        int textLine = 1;
        bool trimNextNewline = false, stripNextWhitespace = false;

        void FlushText()
        {
            if (pendingText.Length > 0) tokens.Add(new Token(TokenKind.Text, pendingText.ToString(), textLine));
            pendingText.Clear();
        }

        while (i < source.Length)
        {
            int open = FindTagStart(source, i);
            string text = source[i..(open < 0 ? source.Length : open)];
            if (open >= 0)
            {
                char tagKind = source[open + 1];
                bool tagMinus = open + 2 < source.Length && source[open + 2] == '-';
                bool tagPlus = open + 2 < source.Length && source[open + 2] == '+';
                if (tagMinus) text = text.TrimEnd();
                else if (tagKind != '{' && !tagPlus)
                {
                    // lstrip_blocks: spaces and tabs between a line's start (in the source) and a block or comment tag go.
                    int newline = text.LastIndexOf('\n');
                    if ((newline >= 0 || i == 0) && text.AsSpan(newline + 1).ToString().All(c => char.IsWhiteSpace(c) && c != '\n')) text = text[..(newline + 1)];
                }
            }
            if (stripNextWhitespace) text = text.TrimStart();
            else if (trimNextNewline && text.StartsWith('\n')) text = text[1..];
            trimNextNewline = stripNextWhitespace = false;
            if (open < 0)
            {
                if (pendingText.Length == 0) textLine = line;
                pendingText.Append(text);
                break;
            }
            char kind = source[open + 1];
            bool minus = open + 2 < source.Length && source[open + 2] == '-';
            bool plus = open + 2 < source.Length && source[open + 2] == '+';
            if (pendingText.Length == 0) textLine = line;
            pendingText.Append(text);
            line += CountNewlines(source, i, open);
            int bodyStart = open + 2 + (minus || plus ? 1 : 0);
            if (kind == '#')
            {
                int close = source.IndexOf("#}", bodyStart, StringComparison.Ordinal);
                if (close < 0) throw new JinjaException($"line {line}: unclosed comment");
                bool closeMinus = source[close - 1] == '-' && close - 1 >= bodyStart;
                bool closePlus = source[close - 1] == '+' && close - 1 >= bodyStart;
                line += CountNewlines(source, open, close);
                i = close + 2;
                if (closeMinus) stripNextWhitespace = true;
                else if (!closePlus) trimNextNewline = true;
                continue;
            }
            FlushText();
            tokens.Add(new Token(kind == '{' ? TokenKind.VariableStart : TokenKind.BlockStart, kind == '{' ? "{{" : "{%", line));
            i = LexExpression(source, bodyStart, kind == '{' ? '}' : '%', tokens, ref line, out char endMarker);
            if (endMarker == '-') stripNextWhitespace = true;
            else if (kind == '%' && endMarker != '+') trimNextNewline = true;
            // A raw block's body is text up to its end tag.
            if (kind == '%' && tokens.Count >= 2 && tokens[^2] is { Kind: TokenKind.Name, Text: "raw" } && tokens[^3].Kind == TokenKind.BlockStart)
            {
                var endRaw = System.Text.RegularExpressions.Regex.Match(source[i..], @"\{%(-?)\s*endraw\s*(-?)%\}");
                if (!endRaw.Success) throw new JinjaException($"line {line}: raw block without endraw");
                tokens.RemoveRange(tokens.Count - 3, 3);
                string raw = source.Substring(i, endRaw.Index);
                if (stripNextWhitespace) raw = raw.TrimStart(); // {% raw -%}; trim_blocks does not apply after raw's opening tag
                if (endRaw.Groups[1].Length > 0) raw = raw.TrimEnd();
                tokens.Add(new Token(TokenKind.Text, raw, line));
                line += CountNewlines(source, i, i + endRaw.Index + endRaw.Length);
                i += endRaw.Index + endRaw.Length;
                trimNextNewline = endRaw.Groups[2].Length == 0;
                stripNextWhitespace = endRaw.Groups[2].Length > 0;
            }
        }
        FlushText();
        tokens.Add(new Token(TokenKind.End, "end of template", line));
        return tokens;
    }

    private static int FindTagStart(string source, int from)
    {
        for (int i = source.IndexOf('{', from); i >= 0 && i + 1 < source.Length; i = source.IndexOf('{', i + 1))
            if (source[i + 1] is '{' or '%' or '#') return i;
        return -1;
    }

    private static int CountNewlines(string s, int from, int to)
    {
        int n = 0;
        for (int i = from; i < to && i < s.Length; i++) if (s[i] == '\n') n++;
        return n;
    }

    private static readonly string[] Operators =
        ["**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"];

    /// <summary>Tokens of one tag's body up to its closing <c>}}</c> or <c>%}</c> (outside brackets); returns the index after it.</summary>
    private static int LexExpression(string s, int i, char closer, List<Token> tokens, ref int line, out char endMarker)
    {
        int depth = 0;
        while (true)
        {
            while (i < s.Length && char.IsWhiteSpace(s[i]))
            {
                if (s[i] == '\n') line++;
                i++;
            }
            if (i >= s.Length) throw new JinjaException($"line {line}: unclosed tag");
            if (depth == 0)
            {
                if (s[i] is '-' or '+' && i + 2 < s.Length && s[i + 1] == closer && s[i + 2] == '}')
                {
                    tokens.Add(new Token(closer == '}' ? TokenKind.VariableEnd : TokenKind.BlockEnd, "", line));
                    endMarker = s[i];
                    return i + 3;
                }
                if (s[i] == closer && i + 1 < s.Length && s[i + 1] == '}')
                {
                    tokens.Add(new Token(closer == '}' ? TokenKind.VariableEnd : TokenKind.BlockEnd, "", line));
                    endMarker = ' ';
                    return i + 2;
                }
            }
            char c = s[i];
            if (char.IsLetter(c) || c == '_')
            {
                int start = i;
                while (i < s.Length && (char.IsLetterOrDigit(s[i]) || s[i] == '_')) i++;
                tokens.Add(new Token(TokenKind.Name, s[start..i], line));
                continue;
            }
            if (char.IsDigit(c))
            {
                int start = i;
                while (i < s.Length && (char.IsDigit(s[i]) || s[i] == '_')) i++;
                bool isFloat = false;
                if (i + 1 < s.Length && s[i] == '.' && char.IsDigit(s[i + 1]))
                {
                    isFloat = true;
                    i++;
                    while (i < s.Length && char.IsDigit(s[i])) i++;
                }
                if (i < s.Length && s[i] is 'e' or 'E')
                {
                    int mark = i;
                    i++;
                    if (i < s.Length && s[i] is '+' or '-') i++;
                    if (i < s.Length && char.IsDigit(s[i]))
                    {
                        isFloat = true;
                        while (i < s.Length && char.IsDigit(s[i])) i++;
                    }
                    else i = mark;
                }
                tokens.Add(new Token(isFloat ? TokenKind.Float : TokenKind.Integer, s[start..i].Replace("_", ""), line));
                continue;
            }
            if (c is '\'' or '"')
            {
                var value = new StringBuilder();
                i++;
                while (true)
                {
                    if (i >= s.Length) throw new JinjaException($"line {line}: unclosed string");
                    char d = s[i];
                    if (d == c)
                    {
                        i++;
                        break;
                    }
                    if (d == '\n') line++;
                    if (d == '\\' && i + 1 < s.Length)
                    {
                        i = Unescape(s, i, value);
                        continue;
                    }
                    value.Append(d);
                    i++;
                }
                tokens.Add(new Token(TokenKind.String, value.ToString(), line));
                continue;
            }
            string? op = Operators.FirstOrDefault(o => string.CompareOrdinal(s, i, o, 0, o.Length) == 0);
            if (op is null) throw new JinjaException($"line {line}: unexpected character '{c}'");
            if (op is "(" or "[" or "{") depth++;
            if (op is ")" or "]" or "}") depth--;
            tokens.Add(new Token(TokenKind.Operator, op, line));
            i += op.Length;
        }
    }

    /// <summary>One backslash escape of a string literal (Python's: \n \t \r \\ \' \" \xhh \uhhhh \Uhhhhhhhh; others kept as written).</summary>
    private static int Unescape(string s, int i, StringBuilder value)
    {
        char e = s[i + 1];
        int Hex(int digits)
        {
            if (i + 2 + digits > s.Length || !int.TryParse(s.AsSpan(i + 2, digits), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out int code)
                || code < 0 || code > 0x10FFFF)
                throw new JinjaException($"bad \\{e} escape in a string");
            if (code <= 0xFFFF) value.Append((char)code); // a lone surrogate stays, as in Python
            else value.Append(char.ConvertFromUtf32(code));
            return i + 2 + digits;
        }
        switch (e)
        {
            case 'n': value.Append('\n'); return i + 2;
            case 't': value.Append('\t'); return i + 2;
            case 'r': value.Append('\r'); return i + 2;
            case 'b': value.Append('\b'); return i + 2;
            case 'f': value.Append('\f'); return i + 2;
            case 'v': value.Append('\v'); return i + 2;
            case 'a': value.Append('\a'); return i + 2;
            case '0': value.Append('\0'); return i + 2;
            case '\\': value.Append('\\'); return i + 2;
            case '\'': value.Append('\''); return i + 2;
            case '"': value.Append('"'); return i + 2;
            case '\n': return i + 2; // a line continuation
            case 'x': return Hex(2);
            case 'u': return Hex(4);
            case 'U': return Hex(8);
            default: value.Append('\\').Append(e); return i + 2;
        }
    }

    // ---- statements ---------------------------------------------------------------------------------------------

    private Token Peek => _tokens[_at];

    private Token Next() => _tokens[_at++];

    private JinjaException Error(string what) => new($"line {Peek.Line}: {what}");

    private bool IsBlock(params string[] names) =>
        Peek.Kind == TokenKind.BlockStart && _tokens[_at + 1].Kind == TokenKind.Name && names.Contains(_tokens[_at + 1].Text);

    private void Expect(TokenKind kind, string? text = null)
    {
        var t = Next();
        if (t.Kind != kind || text is not null && t.Text != text)
            throw new JinjaException($"line {t.Line}: expected {text ?? kind.ToString()}, found '{(t.Kind is TokenKind.BlockEnd or TokenKind.VariableEnd ? "end of tag" : t.Text)}'");
    }

    private bool IsOp(string op) => Peek.Kind == TokenKind.Operator && Peek.Text == op;

    private bool Skip(string op)
    {
        if (Peek.Kind is TokenKind.Operator or TokenKind.Name && Peek.Text == op)
        {
            _at++;
            return true;
        }
        return false;
    }

    private string Name()
    {
        var t = Next();
        if (t.Kind != TokenKind.Name) throw new JinjaException($"line {t.Line}: expected a name, found '{t.Text}'");
        return t.Text;
    }

    /// <summary>Nodes until one of the block tags <paramref name="stops"/> (left unread) or the end.</summary>
    private List<JinjaNode> ParseBody(string[] stops)
    {
        var body = new List<JinjaNode>();
        while (true)
        {
            var t = Peek;
            switch (t.Kind)
            {
                case TokenKind.End:
                    if (stops.Length > 0) throw Error($"missing {string.Join(" or ", stops)}");
                    return body;
                case TokenKind.Text:
                    _at++;
                    body.Add(new JinjaNode.Output(t.Text));
                    break;
                case TokenKind.VariableStart:
                    _at++;
                    var expression = ParseExpression();
                    Expect(TokenKind.VariableEnd);
                    body.Add(new JinjaNode.Emit(expression));
                    break;
                case TokenKind.BlockStart:
                    if (IsBlock(stops)) return body;
                    body.Add(ParseStatement());
                    break;
                default:
                    throw Error($"unexpected '{t.Text}'");
            }
        }
    }

    private JinjaNode ParseStatement()
    {
        Enter();
        try
        {
            return ParseStatementBody();
        }
        finally
        {
            _nesting--;
        }
    }

    private JinjaNode ParseStatementBody()
    {
        Expect(TokenKind.BlockStart);
        int line = Peek.Line;
        string keyword = Name();
        switch (keyword)
        {
            case "if":
            {
                var branches = new List<(JinjaExpr, List<JinjaNode>)>();
                var condition = ParseExpression();
                Expect(TokenKind.BlockEnd);
                while (true)
                {
                    var body = ParseBody(["elif", "else", "endif"]);
                    branches.Add((condition, body));
                    Expect(TokenKind.BlockStart);
                    string next = Name();
                    if (next == "elif")
                    {
                        condition = ParseExpression();
                        Expect(TokenKind.BlockEnd);
                        continue;
                    }
                    List<JinjaNode>? otherwise = null;
                    if (next == "else")
                    {
                        Expect(TokenKind.BlockEnd);
                        otherwise = ParseBody(["endif"]);
                        Expect(TokenKind.BlockStart);
                        Name();
                    }
                    Expect(TokenKind.BlockEnd);
                    return new JinjaNode.If(branches, otherwise);
                }
            }
            case "for":
            {
                var targets = new List<string> { Name() };
                while (Skip(",")) targets.Add(Name());
                Expect(TokenKind.Name, "in");
                var iterable = ParseExpression(withCondition: false);
                JinjaExpr? filter = null;
                if (Skip("if")) filter = ParseExpression(withCondition: false);
                if (Skip("recursive")) throw new JinjaException($"line {line}: recursive loops are not supported");
                Expect(TokenKind.BlockEnd);
                _loops++;
                var body = ParseBody(["else", "endfor"]);
                _loops--;
                Expect(TokenKind.BlockStart);
                List<JinjaNode>? otherwise = null;
                if (Name() == "else")
                {
                    Expect(TokenKind.BlockEnd);
                    otherwise = ParseBody(["endfor"]);
                    Expect(TokenKind.BlockStart);
                    Name();
                }
                Expect(TokenKind.BlockEnd);
                return new JinjaNode.For(targets, iterable, filter, body, otherwise);
            }
            case "set":
            {
                var first = Name();
                string? attribute = null;
                var names = new List<string> { first };
                if (Skip(".")) attribute = Name();
                else while (Skip(",")) names.Add(Name());
                if (Peek.Kind == TokenKind.BlockEnd && attribute is null && names.Count == 1)
                {
                    Expect(TokenKind.BlockEnd);
                    var body = ParseBody(["endset"]);
                    Expect(TokenKind.BlockStart);
                    Name();
                    Expect(TokenKind.BlockEnd);
                    return new JinjaNode.SetBlock(first, body);
                }
                Expect(TokenKind.Operator, "=");
                var value = ParseTuple();
                Expect(TokenKind.BlockEnd);
                return new JinjaNode.Set(names, attribute, value);
            }
            case "macro":
            {
                string name = Name();
                Expect(TokenKind.Operator, "(");
                var parameters = new List<(string, JinjaExpr?)>();
                while (!Skip(")"))
                {
                    string p = Name();
                    JinjaExpr? fallback = Skip("=") ? ParseExpression() : null;
                    parameters.Add((p, fallback));
                    if (!Skip(",") && !IsOp(")")) throw Error("expected ',' or ')' in the macro's parameters");
                }
                Expect(TokenKind.BlockEnd);
                int loops = _loops;
                _loops = 0; // a macro's body is outside any loop
                var body = ParseBody(["endmacro"]);
                _loops = loops;
                Expect(TokenKind.BlockStart);
                Name();
                Expect(TokenKind.BlockEnd);
                return new JinjaNode.Macro(name, parameters, body);
            }
            case "break" or "continue":
                if (_loops == 0) throw new JinjaException($"line {line}: '{keyword}' outside a loop");
                Expect(TokenKind.BlockEnd);
                return keyword == "break" ? new JinjaNode.Break() : new JinjaNode.Continue();
            case "generation":
            {
                // transformers' assistant-mask marker: renders its body.
                Expect(TokenKind.BlockEnd);
                var body = ParseBody(["endgeneration"]);
                Expect(TokenKind.BlockStart);
                Name();
                Expect(TokenKind.BlockEnd);
                return new JinjaNode.Sequence(body);
            }
            case "do":
            {
                var e = ParseExpression();
                Expect(TokenKind.BlockEnd);
                return new JinjaNode.Do(e);
            }
            default:
                throw new JinjaException($"line {line}: the '{keyword}' statement is not supported");
        }
    }

    // ---- expressions --------------------------------------------------------------------------------------------

    /// <summary>An expression, or a tuple of them without brackets (set's right side).</summary>
    private JinjaExpr ParseTuple()
    {
        var first = ParseExpression();
        if (!IsOp(",")) return first;
        var items = new List<JinjaExpr> { first };
        while (Skip(",") && Peek.Kind is not (TokenKind.BlockEnd or TokenKind.VariableEnd)) items.Add(ParseExpression());
        return new JinjaExpr.ListLiteral(items, Tuple: true);
    }

    /// <summary>Deepest nesting of expressions and blocks accepted (the parser recurses; a template nested deeper is refused, not a stack overflow).</summary>
    public const int MaxNesting = 128;

    private int _nesting;
    private int _loops;

    private void Enter()
    {
        if (++_nesting > MaxNesting) throw Error($"nested deeper than {MaxNesting} levels");
        System.Runtime.CompilerServices.RuntimeHelpers.EnsureSufficientExecutionStack();
    }

    private JinjaExpr ParseExpression(bool withCondition = true)
    {
        Enter();
        try
        {
            return ParseConditional(withCondition);
        }
        finally
        {
            _nesting--;
        }
    }

    private JinjaExpr ParseConditional(bool withCondition)
    {
        var value = ParseOr();
        if (!withCondition) return value;
        while (Skip("if"))
        {
            var condition = ParseOr();
            JinjaExpr? otherwise = Skip("else") ? ParseExpression() : null;
            value = new JinjaExpr.Conditional(condition, value, otherwise);
        }
        return value;
    }

    private JinjaExpr ParseOr()
    {
        var left = ParseAnd();
        while (Skip("or")) left = new JinjaExpr.Logical(true, left, ParseAnd());
        return left;
    }

    private JinjaExpr ParseAnd()
    {
        var left = ParseNot();
        while (Skip("and")) left = new JinjaExpr.Logical(false, left, ParseNot());
        return left;
    }

    private JinjaExpr ParseNot()
    {
        if (!Skip("not")) return ParseCompare();
        Enter();
        try
        {
            return new JinjaExpr.Not(ParseNot());
        }
        finally
        {
            _nesting--;
        }
    }

    /// <summary>Comparisons chain as in Python: a &lt; b &lt; c is a &lt; b and b &lt; c.</summary>
    private JinjaExpr ParseCompare()
    {
        var first = ParseMath1();
        var rest = new List<(string, JinjaExpr)>();
        while (true)
        {
            var t = Peek;
            if (t.Kind == TokenKind.Operator && t.Text is "==" or "!=" or "<" or "<=" or ">" or ">=")
            {
                _at++;
                rest.Add((t.Text, ParseMath1()));
            }
            else if (t is { Kind: TokenKind.Name, Text: "in" })
            {
                _at++;
                rest.Add(("in", ParseMath1()));
            }
            else if (t is { Kind: TokenKind.Name, Text: "not" } && _tokens[_at + 1] is { Kind: TokenKind.Name, Text: "in" })
            {
                _at += 2;
                rest.Add(("not in", ParseMath1()));
            }
            else break;
        }
        return rest.Count == 0 ? first : new JinjaExpr.Compare(first, rest);
    }

    private JinjaExpr ParseMath1()
    {
        var left = ParseConcat();
        while (Peek.Kind == TokenKind.Operator && Peek.Text is "+" or "-")
        {
            string op = Next().Text;
            left = new JinjaExpr.Binary(op, left, ParseConcat());
        }
        return left;
    }

    private JinjaExpr ParseConcat()
    {
        var left = ParseMath2();
        while (Skip("~")) left = new JinjaExpr.Binary("~", left, ParseMath2());
        return left;
    }

    private JinjaExpr ParseMath2()
    {
        var left = ParsePow();
        while (Peek.Kind == TokenKind.Operator && Peek.Text is "*" or "/" or "//" or "%")
        {
            string op = Next().Text;
            left = new JinjaExpr.Binary(op, left, ParsePow());
        }
        return left;
    }

    private JinjaExpr ParsePow()
    {
        var left = ParseUnary();
        while (Skip("**")) left = new JinjaExpr.Binary("**", left, ParseUnary());
        return left;
    }

    private JinjaExpr ParseUnary(bool withFilter = true)
    {
        JinjaExpr node;
        if (Peek is { Kind: TokenKind.Operator, Text: "-" or "+" } op)
        {
            _at++;
            Enter();
            try
            {
                node = op.Text == "-" ? new JinjaExpr.Negate(ParseUnary(false)) : ParseUnary(false);
            }
            finally
            {
                _nesting--;
            }
        }
        else node = ParsePostfix(ParsePrimary());
        return withFilter ? ParseFilters(node) : node;
    }

    private JinjaExpr ParsePrimary()
    {
        var t = Next();
        switch (t.Kind)
        {
            case TokenKind.String:
            {
                // Adjacent literals join, as in Python.
                var text = new StringBuilder(t.Text);
                while (Peek.Kind == TokenKind.String) text.Append(Next().Text);
                return new JinjaExpr.Literal(new JinjaText(text.ToString()));
            }
            case TokenKind.Integer:
                return new JinjaExpr.Literal(long.TryParse(t.Text, NumberStyles.None, CultureInfo.InvariantCulture, out long n)
                    ? n
                    : throw new JinjaException($"line {t.Line}: integer {t.Text} is too large"));
            case TokenKind.Float:
                return new JinjaExpr.Literal(double.Parse(t.Text, NumberStyles.Float, CultureInfo.InvariantCulture));
            case TokenKind.Name:
                return t.Text switch
                {
                    "true" or "True" => new JinjaExpr.Literal(true),
                    "false" or "False" => new JinjaExpr.Literal(false),
                    "none" or "None" => new JinjaExpr.Literal(null),
                    _ => new JinjaExpr.Variable(t.Text),
                };
            case TokenKind.Operator when t.Text == "(":
            {
                if (Skip(")")) return new JinjaExpr.ListLiteral([], Tuple: true);
                var first = ParseExpression();
                if (Skip(")")) return first;
                var items = new List<JinjaExpr> { first };
                while (Skip(","))
                {
                    if (IsOp(")")) break;
                    items.Add(ParseExpression());
                }
                Expect(TokenKind.Operator, ")");
                return new JinjaExpr.ListLiteral(items, Tuple: true);
            }
            case TokenKind.Operator when t.Text == "[":
            {
                var items = new List<JinjaExpr>();
                while (!Skip("]"))
                {
                    items.Add(ParseExpression());
                    if (!Skip(",") && !IsOp("]")) throw Error("expected ',' or ']'");
                }
                return new JinjaExpr.ListLiteral(items, Tuple: false);
            }
            case TokenKind.Operator when t.Text == "{":
            {
                var entries = new List<(JinjaExpr, JinjaExpr)>();
                while (!Skip("}"))
                {
                    var key = ParseExpression();
                    Expect(TokenKind.Operator, ":");
                    entries.Add((key, ParseExpression()));
                    if (!Skip(",") && !IsOp("}")) throw Error("expected ',' or '}'");
                }
                return new JinjaExpr.DictLiteral(entries);
            }
            default:
                throw new JinjaException($"line {t.Line}: unexpected '{(t.Kind is TokenKind.BlockEnd or TokenKind.VariableEnd ? "end of tag" : t.Text)}' in an expression");
        }
    }

    private JinjaExpr ParsePostfix(JinjaExpr node, bool calls = true)
    {
        while (true)
        {
            if (!calls && !IsOp(".") && !IsOp("[")) return node;
            if (Skip("."))
            {
                var t = Next();
                node = t.Kind switch
                {
                    TokenKind.Name => new JinjaExpr.Attribute(node, t.Text),
                    TokenKind.Integer => new JinjaExpr.Index(node, new JinjaExpr.Literal(long.TryParse(t.Text, NumberStyles.None, CultureInfo.InvariantCulture, out long index)
                        ? index
                        : throw new JinjaException($"line {t.Line}: index {t.Text} is too large"))),
                    _ => throw new JinjaException($"line {t.Line}: expected an attribute name after '.'"),
                };
            }
            else if (Skip("["))
            {
                JinjaExpr? start = null, stop = null, step = null;
                bool slice = false;
                if (!IsOp(":")) start = ParseExpression();
                if (Skip(":"))
                {
                    slice = true;
                    if (!IsOp(":") && !IsOp("]")) stop = ParseExpression();
                    if (Skip(":") && !IsOp("]")) step = ParseExpression();
                }
                Expect(TokenKind.Operator, "]");
                node = slice ? new JinjaExpr.Slice(node, start, stop, step) : new JinjaExpr.Index(node, start!);
            }
            else if (calls && Peek is { Kind: TokenKind.Operator, Text: "(" })
            {
                node = ParseCall(node);
            }
            else return node;
            if (!calls) return node;
        }
    }

    private JinjaExpr ParsePostfixNoCall(JinjaExpr node)
    {
        while (true)
        {
            if (IsOp(".") || IsOp("[")) node = ParsePostfix(node, calls: false);
            else return node;
        }
    }

    private JinjaExpr.Call ParseCall(JinjaExpr callee)
    {
        Expect(TokenKind.Operator, "(");
        var (args, kwargs) = ParseArguments();
        return new JinjaExpr.Call(callee, args, kwargs);
    }

    /// <summary>Arguments after an opening parenthesis, through the closing one.</summary>
    private (List<JinjaExpr>, List<(string, JinjaExpr)>) ParseArguments()
    {
        var args = new List<JinjaExpr>();
        var kwargs = new List<(string, JinjaExpr)>();
        while (!Skip(")"))
        {
            if (Peek.Kind == TokenKind.Name && _tokens[_at + 1] is { Kind: TokenKind.Operator, Text: "=" })
            {
                string name = Next().Text;
                _at++;
                kwargs.Add((name, ParseExpression()));
            }
            else
            {
                if (kwargs.Count > 0) throw Error("a positional argument after keyword arguments");
                args.Add(ParseExpression());
            }
            if (!Skip(",") && !IsOp(")")) throw Error("expected ',' or ')' in the arguments");
        }
        return (args, kwargs);
    }

    private JinjaExpr ParseFilters(JinjaExpr node)
    {
        while (true)
        {
            if (Skip("|"))
            {
                string name = Name();
                while (Skip(".")) name += "." + Name();
                var (args, kwargs) = Peek is { Kind: TokenKind.Operator, Text: "(" } && Next().Kind == TokenKind.Operator ? ParseArguments() : ([], []);
                node = new JinjaExpr.Filter(node, name, args, kwargs);
            }
            else if (Skip("is"))
            {
                bool negated = Skip("not");
                string name = Name();
                var args = new List<JinjaExpr>();
                if (Peek is { Kind: TokenKind.Operator, Text: "(" })
                {
                    _at++;
                    var (a, _) = ParseArguments();
                    args.AddRange(a);
                }
                else if (Peek.Kind is TokenKind.String or TokenKind.Integer or TokenKind.Float || IsOp("[") || IsOp("{")
                         || Peek.Kind == TokenKind.Name && Peek.Text is not ("and" or "or" or "else"))
                {
                    // jinja2: one argument without parentheses, a primary with its attributes and subscripts.
                    args.Add(ParsePostfixNoCall(ParsePrimary()));
                }
                node = new JinjaExpr.Test(node, name, args, negated);
            }
            else if (Peek is { Kind: TokenKind.Operator, Text: "(" })
            {
                node = ParseCall(node);
            }
            else return node;
        }
    }
}

/// <summary>A statement of a parsed template.</summary>
internal abstract record JinjaNode
{
    public sealed record Output(string Text) : JinjaNode;
    public sealed record Emit(JinjaExpr Value) : JinjaNode;
    public sealed record If(List<(JinjaExpr Condition, List<JinjaNode> Body)> Branches, List<JinjaNode>? Otherwise) : JinjaNode;
    public sealed record For(List<string> Targets, JinjaExpr Iterable, JinjaExpr? Filter, List<JinjaNode> Body, List<JinjaNode>? Otherwise) : JinjaNode;
    public sealed record Set(List<string> Names, string? Attribute, JinjaExpr Value) : JinjaNode;
    public sealed record SetBlock(string Name, List<JinjaNode> Body) : JinjaNode;
    public sealed record Macro(string Name, List<(string Name, JinjaExpr? Default)> Parameters, List<JinjaNode> Body) : JinjaNode;
    public sealed record Sequence(List<JinjaNode> Body) : JinjaNode;
    public sealed record Do(JinjaExpr Value) : JinjaNode;
    public sealed record Break : JinjaNode;
    public sealed record Continue : JinjaNode;
}

/// <summary>An expression of a parsed template.</summary>
internal abstract record JinjaExpr
{
    public sealed record Literal(object? Value) : JinjaExpr;
    public sealed record Variable(string Name) : JinjaExpr;
    public sealed record ListLiteral(List<JinjaExpr> Items, bool Tuple) : JinjaExpr;
    public sealed record DictLiteral(List<(JinjaExpr Key, JinjaExpr Value)> Entries) : JinjaExpr;
    public sealed record Attribute(JinjaExpr Target, string Name) : JinjaExpr;
    public sealed record Index(JinjaExpr Target, JinjaExpr Key) : JinjaExpr;
    public sealed record Slice(JinjaExpr Target, JinjaExpr? Start, JinjaExpr? Stop, JinjaExpr? Step) : JinjaExpr;
    public sealed record Call(JinjaExpr Callee, List<JinjaExpr> Args, List<(string Name, JinjaExpr Value)> Kwargs) : JinjaExpr;
    public sealed record Filter(JinjaExpr Target, string Name, List<JinjaExpr> Args, List<(string Name, JinjaExpr Value)> Kwargs) : JinjaExpr;
    public sealed record Test(JinjaExpr Target, string Name, List<JinjaExpr> Args, bool Negated) : JinjaExpr;
    public sealed record Negate(JinjaExpr Value) : JinjaExpr;
    public sealed record Not(JinjaExpr Value) : JinjaExpr;
    public sealed record Logical(bool Or, JinjaExpr Left, JinjaExpr Right) : JinjaExpr;
    public sealed record Binary(string Op, JinjaExpr Left, JinjaExpr Right) : JinjaExpr;
    public sealed record Compare(JinjaExpr First, List<(string Op, JinjaExpr Right)> Rest) : JinjaExpr;
    public sealed record Conditional(JinjaExpr Condition, JinjaExpr Then, JinjaExpr? Otherwise) : JinjaExpr;
}
