using System.Globalization;
using static IlgpuMedusa.Hosting.Jinja.JinjaValues;

namespace IlgpuMedusa.Hosting.Jinja;

/// <summary>
/// A parsed Jinja template (the subset chat templates use; see <see cref="JinjaParser"/>), rendered with Jinja's scoping
/// (a loop's body has its own variables, so templates carry state out of loops in a <c>namespace</c>), Python's value
/// semantics, the filters, tests and string/dict methods chat templates call, and transformers' globals
/// (<c>raise_exception</c>, <c>strftime_now</c>). Output is <see cref="JinjaText"/>: which characters came from the
/// caller's data is kept. Limits on output size and loop iterations stop a runaway template with an error.
/// </summary>
public sealed class JinjaTemplate
{
    private readonly List<JinjaNode> _body;

    /// <summary>Most characters a render may produce.</summary>
    public const int MaxOutputChars = 16 << 20;
    /// <summary>Most loop iterations a render may run.</summary>
    public const int MaxIterations = 1 << 22;

    private JinjaTemplate(List<JinjaNode> body) => _body = body;

    /// <summary>Parses <paramref name="source"/>; <see cref="JinjaException"/> naming the line when it is not valid.</summary>
    public static JinjaTemplate Parse(string source)
    {
        ArgumentNullException.ThrowIfNull(source);
        try
        {
            return new(JinjaParser.Parse(source));
        }
        catch (InsufficientExecutionStackException)
        {
            throw new JinjaException("the template nests expressions too deeply");
        }
    }

    /// <summary>
    /// Renders with <paramref name="variables"/> (values: null, bool, long, double, string or <see cref="JinjaText"/>,
    /// lists, <see cref="JinjaDict"/>); <paramref name="now"/> is the clock <c>strftime_now</c> reads (default: local time).
    /// </summary>
    public JinjaText Render(IReadOnlyDictionary<string, object?> variables, Func<DateTime>? now = null)
    {
        var run = new Run(now ?? (() => DateTime.Now));
        var scope = new Scope(null);
        foreach (var (name, value) in variables) scope.Set(name, Normalize(value));
        run.Globals(scope);
        var outer = Run.Current;
        Run.Current = run;
        try
        {
            run.Execute(_body, scope);
            return JinjaText.Concat(run.Output);
        }
        catch (InsufficientExecutionStackException)
        {
            throw new JinjaException("the template nests values or expressions too deeply");
        }
        catch (Exception e) when (e is InvalidCastException or ArgumentException or IndexOutOfRangeException or KeyNotFoundException
                                   or InvalidOperationException or OverflowException or FormatException or NullReferenceException
                                   or DivideByZeroException)
        {
            // A call with arguments of the wrong kind or number (a bug of the template, or a value it did not expect).
            throw new JinjaException($"the template failed: {e.Message}");
        }
        finally
        {
            Run.Current = outer;
        }
    }

    /// <summary>Deepest nesting of macro calls a render allows (a macro calling itself without end stops here, not with a stack overflow).</summary>
    public const int MaxCallDepth = 64;

    private static object? Normalize(object? v) => v switch
    {
        string s => new JinjaText(s),
        int i => (long)i,
        float f => (double)f,
        IEnumerable<object?> e and not List<object?> => e.Select(Normalize).ToList(),
        _ => v,
    };

    private sealed class Scope(Scope? parent)
    {
        private readonly Dictionary<string, object?> _vars = new(StringComparer.Ordinal);

        public Scope? Parent { get; } = parent;

        public bool TryGet(string name, out object? value)
        {
            for (var s = this; s is not null; s = s.Parent)
                if (s._vars.TryGetValue(name, out value)) return true;
            value = null;
            return false;
        }

        public void Set(string name, object? value) => _vars[name] = value;
    }

    private enum Flow { Normal, Break, Continue }

    private sealed class Run(Func<DateTime> now)
    {
        [ThreadStatic]
        private static Run? t_current;

        /// <summary>The render in progress on this thread (its budget).</summary>
        public static Run? Current
        {
            get => t_current;
            set => t_current = value;
        }

        private static void Charge(long work) => Current?.Spend(work);

        public void Spend(long work)
        {
            _iterations += work;
            if (_iterations > MaxIterations) throw new JinjaException($"the template ran more than {MaxIterations} loop iterations or comparisons");
        }

        public List<JinjaText> Output { get; private set; } = [];
        private long _chars;
        private long _iterations;
        private Scope? _root;

        public void Globals(Scope scope)
        {
            _root = scope;
            void Define(string name, Func<List<object?>, Dictionary<string, object?>, object?> f)
            {
                if (!scope.TryGet(name, out _)) scope.Set(name, new JinjaCallable(name, f));
            }
            Define("raise_exception", (a, _) => throw new JinjaException($"the chat template raised an error: {(a.Count > 0 ? ToText(a[0]).Text : "")}"));
            Define("strftime_now", (a, _) =>
            {
                var format = a.Count > 0 ? ToText(a[0]) : new JinjaText("%Y-%m-%d");
                return format.Derived(Strftime(now(), format.Text)); // a format from data gives data
            });
            Define("namespace", (a, kw) =>
            {
                var ns = new JinjaNamespace();
                foreach (var x in a)
                {
                    if (x is not JinjaDict d) throw new JinjaException("namespace: positional arguments must be dicts");
                    foreach (var (k, v) in d.Items) ns.Attributes[k] = v;
                }
                foreach (var (k, v) in kw) ns.Attributes[k] = v;
                return ns;
            });
            Define("dict", (a, kw) =>
            {
                var d = new JinjaDict();
                foreach (var (k, v) in kw) d.Items[k] = v;
                return d;
            });
            Define("range", (a, _) =>
            {
                long start = 0, stop, step = 1;
                if (a.Count == 1) stop = Int(a[0]);
                else if (a.Count is 2 or 3)
                {
                    start = Int(a[0]);
                    stop = Int(a[1]);
                    if (a.Count == 3) step = Int(a[2]);
                }
                else throw new JinjaException("range takes 1 to 3 arguments");
                if (step == 0) throw new JinjaException("range: step must not be zero");
                var list = new List<object?>();
                for (long i = start; step > 0 ? i < stop : i > stop; i += step)
                {
                    Count();
                    list.Add(i);
                }
                return list;
            });
        }

        private void Count() => Spend(1);

        private void Write(JinjaText text)
        {
            if (text.Length == 0) return;
            _chars += text.Length;
            if (_chars > MaxOutputChars) throw new JinjaException($"the template wrote more than {MaxOutputChars} characters");
            Output.Add(text);
        }

        public Flow Execute(List<JinjaNode> body, Scope scope)
        {
            foreach (var node in body)
            {
                var flow = Execute(node, scope);
                if (flow != Flow.Normal) return flow;
            }
            return Flow.Normal;
        }

        private Flow Execute(JinjaNode node, Scope scope)
        {
            System.Runtime.CompilerServices.RuntimeHelpers.EnsureSufficientExecutionStack();
            switch (node)
            {
                case JinjaNode.Output o:
                    Write(new JinjaText(o.Text));
                    return Flow.Normal;
                case JinjaNode.Emit e:
                    Write(ToText(Eval(e.Value, scope)));
                    return Flow.Normal;
                case JinjaNode.If i:
                    foreach (var (condition, body) in i.Branches)
                        if (Truthy(Eval(condition, scope))) return Execute(body, scope);
                    return i.Otherwise is null ? Flow.Normal : Execute(i.Otherwise, scope);
                case JinjaNode.For f:
                    return ExecuteFor(f, scope);
                case JinjaNode.Set s:
                {
                    var value = Eval(s.Value, scope);
                    if (s.Attribute is not null)
                    {
                        if (!scope.TryGet(s.Names[0], out var target) || target is not JinjaNamespace ns)
                            throw new JinjaException($"cannot set '{s.Names[0]}.{s.Attribute}': '{s.Names[0]}' is not a namespace");
                        ns.Attributes[s.Attribute] = value;
                    }
                    else if (s.Names.Count == 1) scope.Set(s.Names[0], value);
                    else
                    {
                        var items = Iterate(value);
                        if (items.Count != s.Names.Count) throw new JinjaException($"cannot unpack {items.Count} values into {s.Names.Count} names");
                        for (int k = 0; k < items.Count; k++) scope.Set(s.Names[k], items[k]);
                    }
                    return Flow.Normal;
                }
                case JinjaNode.SetBlock sb:
                {
                    var saved = Output;
                    Output = [];
                    Execute(sb.Body, scope);
                    var text = JinjaText.Concat(Output);
                    Output = saved;
                    scope.Set(sb.Name, text);
                    return Flow.Normal;
                }
                case JinjaNode.Macro m:
                    scope.Set(m.Name, new JinjaCallable(m.Name, (args, kwargs) => CallMacro(m, args, kwargs)));
                    return Flow.Normal;
                case JinjaNode.Sequence seq:
                    return Execute(seq.Body, scope);
                case JinjaNode.Do d:
                    Eval(d.Value, scope);
                    return Flow.Normal;
                case JinjaNode.Break:
                    return Flow.Break;
                case JinjaNode.Continue:
                    return Flow.Continue;
                default:
                    throw new JinjaException($"unknown statement {node.GetType().Name}");
            }
        }

        private int _depth;

        private JinjaText CallMacro(JinjaNode.Macro m, List<object?> args, Dictionary<string, object?> kwargs)
        {
            if (++_depth > MaxCallDepth) throw new JinjaException($"macro '{m.Name}': calls nested deeper than {MaxCallDepth}");
            try
            {
                return CallMacroBody(m, args, kwargs);
            }
            finally
            {
                _depth--;
            }
        }

        private JinjaText CallMacroBody(JinjaNode.Macro m, List<object?> args, Dictionary<string, object?> kwargs)
        {
            if (args.Count > m.Parameters.Count) throw new JinjaException($"macro '{m.Name}' takes {m.Parameters.Count} arguments, got {args.Count}");
            var scope = new Scope(_root);
            for (int k = 0; k < m.Parameters.Count; k++)
            {
                var (name, fallback) = m.Parameters[k];
                object? value = k < args.Count ? args[k]
                    : kwargs.TryGetValue(name, out var named) ? named
                    : fallback is not null ? Eval(fallback, scope) : JinjaUndefined.Instance;
                scope.Set(name, value);
            }
            var saved = Output;
            Output = [];
            Execute(m.Body, scope);
            var text = JinjaText.Concat(Output);
            Output = saved;
            return text;
        }

        private Flow ExecuteFor(JinjaNode.For f, Scope scope)
        {
            var source = Iterate(Eval(f.Iterable, scope));
            var items = new List<object?>();
            foreach (var item in source)
            {
                if (f.Filter is not null)
                {
                    var probe = new Scope(scope);
                    Bind(f.Targets, item, probe);
                    if (!Truthy(Eval(f.Filter, probe))) continue;
                }
                items.Add(item);
            }
            if (items.Count == 0)
                return f.Otherwise is null ? Flow.Normal : Execute(f.Otherwise, scope);
            for (int k = 0; k < items.Count; k++)
            {
                Count();
                var inner = new Scope(scope);
                Bind(f.Targets, items[k], inner);
                inner.Set("loop", new JinjaDict()
                    .With("index", (long)(k + 1)).With("index0", (long)k)
                    .With("revindex", (long)(items.Count - k)).With("revindex0", (long)(items.Count - k - 1))
                    .With("first", k == 0).With("last", k == items.Count - 1).With("length", (long)items.Count)
                    .With("previtem", k > 0 ? items[k - 1] : JinjaUndefined.Instance)
                    .With("nextitem", k + 1 < items.Count ? items[k + 1] : JinjaUndefined.Instance)
                    .With("depth", 1L).With("depth0", 0L));
                if (Execute(f.Body, inner) == Flow.Break) break;
            }
            return Flow.Normal;
        }

        private static void Bind(List<string> targets, object? item, Scope scope)
        {
            if (targets.Count == 1)
            {
                scope.Set(targets[0], item);
                return;
            }
            var parts = item as List<object?> ?? throw new JinjaException($"cannot unpack {TypeName(item)} into {targets.Count} names");
            if (parts.Count != targets.Count) throw new JinjaException($"cannot unpack {parts.Count} values into {targets.Count} names");
            for (int k = 0; k < targets.Count; k++) scope.Set(targets[k], parts[k]);
        }

        /// <summary>The items a for loop visits.</summary>
        private static List<object?> Iterate(object? v) => v switch
        {
            JinjaUndefined => [],
            List<object?> l => l,
            JinjaDict d => d.Items.Keys.Select(k => (object?)d.Key(k)).ToList(),
            JinjaText t => Enumerable.Range(0, t.Length).Select(k => (object?)t.Slice(k, 1)).ToList(),
            _ => throw new JinjaException($"'{TypeName(v)}' object is not iterable"),
        };

        // ---- expressions ------------------------------------------------------------------------------------------

        private static object? Eval(JinjaExpr e, Scope scope)
        {
            System.Runtime.CompilerServices.RuntimeHelpers.EnsureSufficientExecutionStack();
            switch (e)
            {
                case JinjaExpr.Literal l:
                    return l.Value;
                case JinjaExpr.Variable v:
                    return scope.TryGet(v.Name, out var value) ? value : JinjaUndefined.Instance;
                case JinjaExpr.ListLiteral list:
                    return list.Items.Select(x => Eval(x, scope)).ToList();
                case JinjaExpr.DictLiteral dict:
                {
                    var d = new JinjaDict();
                    foreach (var (k, x) in dict.Entries)
                    {
                        var key = Eval(k, scope);
                        d.Set(KeyOf(key), Eval(x, scope), fromData: key is JinjaText { HasData: true });
                    }
                    return d;
                }
                case JinjaExpr.Attribute a:
                    return GetAttribute(Eval(a.Target, scope), a.Name);
                case JinjaExpr.Index i:
                    return GetItem(Eval(i.Target, scope), Eval(i.Key, scope));
                case JinjaExpr.Slice s:
                    return Slice(Eval(s.Target, scope), s.Start is null ? null : Eval(s.Start, scope), s.Stop is null ? null : Eval(s.Stop, scope),
                        s.Step is null ? null : Eval(s.Step, scope));
                case JinjaExpr.Call c:
                {
                    var callee = Eval(c.Callee, scope);
                    var args = c.Args.Select(x => Eval(x, scope)).ToList();
                    var kwargs = c.Kwargs.ToDictionary(k => k.Name, k => Eval(k.Value, scope), StringComparer.Ordinal);
                    return callee is JinjaCallable f
                        ? f.Invoke(args, kwargs)
                        : throw new JinjaException($"{Describe(c.Callee)} is {(callee is JinjaUndefined ? "undefined" : $"a {TypeName(callee)}")}, not a function");
                }
                case JinjaExpr.Filter f:
                    return ApplyFilter(f.Name, Eval(f.Target, scope), f.Args.Select(x => Eval(x, scope)).ToList(),
                        f.Kwargs.ToDictionary(k => k.Name, k => Eval(k.Value, scope), StringComparer.Ordinal));
                case JinjaExpr.Test t:
                {
                    var result = ApplyTest(t.Name, Eval(t.Target, scope), t.Args.Select(x => Eval(x, scope)).ToList());
                    return t.Negated ? !result : result;
                }
                case JinjaExpr.Negate n:
                {
                    var x = Eval(n.Value, scope);
                    return x switch
                    {
                        long k => (object)-k,
                        double d => -d,
                        bool b => b ? -1L : 0L,
                        _ => throw new JinjaException($"bad operand for unary -: {TypeName(x)}"),
                    };
                }
                case JinjaExpr.Not n:
                    return !Truthy(Eval(n.Value, scope));
                case JinjaExpr.Logical l:
                {
                    var left = Eval(l.Left, scope);
                    return l.Or ? (Truthy(left) ? left : Eval(l.Right, scope)) : (Truthy(left) ? Eval(l.Right, scope) : left);
                }
                case JinjaExpr.Conditional c:
                    return Truthy(Eval(c.Condition, scope)) ? Eval(c.Then, scope) : c.Otherwise is null ? JinjaUndefined.Instance : Eval(c.Otherwise, scope);
                case JinjaExpr.Binary b:
                    return Binary(b.Op, Eval(b.Left, scope), Eval(b.Right, scope));
                case JinjaExpr.Compare c:
                {
                    var left = Eval(c.First, scope);
                    foreach (var (op, rightExpr) in c.Rest)
                    {
                        var right = Eval(rightExpr, scope);
                        bool holds = op == "not in" ? !Contains(right, left) : (bool)Binary(op, left, right)!;
                        if (!holds) return false;
                        left = right;
                    }
                    return true;
                }
                default:
                    throw new JinjaException($"unknown expression {e.GetType().Name}");
            }
        }

        private static string Describe(JinjaExpr e) => e switch
        {
            JinjaExpr.Variable v => $"'{v.Name}'",
            JinjaExpr.Attribute a => $"'{a.Name}'",
            _ => "the callee",
        };

        private static string KeyOf(object? k) => k switch
        {
            JinjaText t => t.Text,
            long or double or bool or null => Repr(k).Text,
            _ => throw new JinjaException($"unhashable type: '{TypeName(k)}'"),
        };

        private static long Int(object? v) => v switch
        {
            long n => n,
            bool b => b ? 1 : 0,
            double d when d == Math.Floor(d) => (long)d,
            _ => throw new JinjaException($"expected an integer, got {TypeName(v)}"),
        };

        private static object? Binary(string op, object? a, object? b)
        {
            switch (op)
            {
                case "==": return Equal(a, b);
                case "!=": return !Equal(a, b);
                case "<": return Compare(a, b) < 0;
                case "<=": return Compare(a, b) <= 0;
                case ">": return Compare(a, b) > 0;
                case ">=": return Compare(a, b) >= 0;
                case "in": return Contains(b, a);
                case "~": return ToText(a) + ToText(b);
                case "+":
                    if (a is JinjaText ta && b is JinjaText tb) return ta + tb;
                    if (a is List<object?> la && b is List<object?> lb) return la.Concat(lb).ToList();
                    break;
                case "*":
                    if (a is JinjaText ts && b is long times)
                    {
                        if (times > 0 && (double)ts.Length * times > MaxOutputChars) throw new JinjaException($"'*' would make a string of more than {MaxOutputChars} characters");
                        return JinjaText.Concat(Enumerable.Repeat(ts, (int)Math.Max(times, 0)).ToList());
                    }
                    if (a is List<object?> ls && b is long copies)
                    {
                        if (copies > 0 && (double)ls.Count * copies > MaxIterations) throw new JinjaException($"'*' would make a list of more than {MaxIterations} items");
                        Charge(Math.Max(copies, 0) * ls.Count);
                        return Enumerable.Repeat(ls, (int)Math.Max(copies, 0)).SelectMany(x => x).ToList();
                    }
                    break;
            }
            if (!IsNumber(a) || !IsNumber(b))
                throw new JinjaException($"unsupported operand types for {op}: '{TypeName(a)}' and '{TypeName(b)}'");
            bool integers = a is long or bool && b is long or bool;
            switch (op)
            {
                case "+": return integers ? Int(a) + Int(b) : (object)(ToDouble(a) + ToDouble(b));
                case "-": return integers ? Int(a) - Int(b) : (object)(ToDouble(a) - ToDouble(b));
                case "*": return integers ? Int(a) * Int(b) : (object)(ToDouble(a) * ToDouble(b));
                case "/":
                    if (ToDouble(b) == 0) throw new JinjaException("division by zero");
                    return ToDouble(a) / ToDouble(b);
                case "//":
                    if (ToDouble(b) == 0) throw new JinjaException("division by zero");
                    if (!integers) return Math.Floor(ToDouble(a) / ToDouble(b));
                    {
                        long x = Int(a), y = Int(b);
                        if (y == -1) return x == long.MinValue ? -(double)x : -x; // no hardware trap on overflow
                        long q = x / y;
                        return (object)(x % y != 0 && (x < 0) != (y < 0) ? q - 1 : q); // floor, as Python's //
                    }
                case "%":
                    if (ToDouble(b) == 0) throw new JinjaException("modulo by zero");
                    if (integers)
                    {
                        if (Int(b) == -1) return 0L; // long.MinValue % -1 traps in hardware; the answer is 0
                        long m = Int(a) % Int(b);
                        return (object)(m != 0 && (m < 0) != (Int(b) < 0) ? m + Int(b) : m);
                    }
                    double r = ToDouble(a) % ToDouble(b);
                    return r != 0 && (r < 0) != (ToDouble(b) < 0) ? r + ToDouble(b) : r;
                case "**":
                    return integers && Int(b) >= 0 ? (long)Math.Pow(Int(a), Int(b)) : (object)Math.Pow(ToDouble(a), ToDouble(b));
                default:
                    throw new JinjaException($"unknown operator {op}");
            }
        }

        private static int Compare(object? a, object? b)
        {
            System.Runtime.CompilerServices.RuntimeHelpers.EnsureSufficientExecutionStack();
            if (IsNumber(a) && IsNumber(b)) return ToDouble(a).CompareTo(ToDouble(b));
            if (a is JinjaText ta && b is JinjaText tb) return string.CompareOrdinal(ta.Text, tb.Text);
            if (a is List<object?> la && b is List<object?> lb)
            {
                for (int k = 0; k < Math.Min(la.Count, lb.Count); k++)
                {
                    if (Equal(la[k], lb[k])) continue;
                    return Compare(la[k], lb[k]);
                }
                return la.Count.CompareTo(lb.Count);
            }
            throw new JinjaException($"'<' not supported between '{TypeName(a)}' and '{TypeName(b)}'");
        }

        private static bool Contains(object? haystack, object? needle)
        {
            if (haystack is List<object?> list) Charge(list.Count);
            return ContainsUncharged(haystack, needle);
        }

        private static bool ContainsUncharged(object? haystack, object? needle) => haystack switch
        {
            JinjaText t => needle is JinjaText n
                ? t.Text.Contains(n.Text, StringComparison.Ordinal)
                : throw new JinjaException($"'in <string>' requires a string as left operand, not {TypeName(needle)}"),
            List<object?> l => l.Any(x => Equal(x, needle)),
            JinjaDict d => needle is JinjaText k && d.Items.ContainsKey(k.Text),
            JinjaUndefined => false,
            _ => throw new JinjaException($"argument of type '{TypeName(haystack)}' is not iterable"),
        };

        // ---- attributes, items, slices ------------------------------------------------------------------------------

        private static object? GetAttribute(object? target, string name)
        {
            switch (target)
            {
                case JinjaUndefined:
                    throw new JinjaException($"undefined has no attribute '{name}'");
                case JinjaNamespace ns:
                    return ns.Attributes.TryGetValue(name, out var v) ? v : JinjaUndefined.Instance;
                case JinjaDict d:
                    if (DictMethod(d, name) is { } method) return method;
                    return d.Items.TryGetValue(name, out var value) ? value : JinjaUndefined.Instance;
                case JinjaText t:
                    return (object?)StringMethod(t, name) ?? JinjaUndefined.Instance;
                case List<object?> l when name is "index" or "count":
                    return new JinjaCallable(name, (a, _) =>
                    {
                        if (a.Count != 1) throw new JinjaException($"list.{name} takes one argument");
                        if (name == "count") return (long)l.Count(x => Equal(x, a[0]));
                        int k = l.FindIndex(x => Equal(x, a[0]));
                        return k >= 0 ? (long)k : throw new JinjaException("list.index(x): x not in list");
                    });
                default:
                    return JinjaUndefined.Instance;
            }
        }

        private static object? GetItem(object? target, object? key)
        {
            switch (target)
            {
                case JinjaUndefined:
                    throw new JinjaException($"undefined has no item {Repr(key).Text}");
                case JinjaDict d:
                    return key is JinjaText k && d.Items.TryGetValue(k.Text, out var v) ? v
                        : key is not JinjaText && key is not null && d.Items.TryGetValue(KeyOf(key), out var w) ? w
                        : key is JinjaText m ? GetAttribute(d, m.Text) is JinjaCallable c ? c : JinjaUndefined.Instance
                        : JinjaUndefined.Instance;
                case JinjaNamespace ns:
                    return key is JinjaText a && ns.Attributes.TryGetValue(a.Text, out var x) ? x : JinjaUndefined.Instance;
                case List<object?> l when key is long or bool:
                {
                    long i = Int(key);
                    if (i < 0) i += l.Count;
                    return i >= 0 && i < l.Count ? l[(int)i] : JinjaUndefined.Instance;
                }
                case JinjaText t when key is long or bool:
                {
                    long i = Int(key);
                    if (i < 0) i += t.Length;
                    return i >= 0 && i < t.Length ? t.Slice((int)i, 1) : JinjaUndefined.Instance;
                }
                case JinjaText t when key is JinjaText name:
                    return (object?)StringMethod(t, name.Text) ?? JinjaUndefined.Instance;
                default:
                    return JinjaUndefined.Instance;
            }
        }

        private static object? Slice(object? target, object? start, object? stop, object? step)
        {
            long s = step is null ? 1 : Int(step);
            if (s == 0) throw new JinjaException("slice step cannot be zero");
            int length = target switch
            {
                List<object?> l => l.Count,
                JinjaText t => t.Length,
                _ => throw new JinjaException($"'{TypeName(target)}' object is not subscriptable"),
            };
            long Clamp(object? v, long fallback, bool forStop)
            {
                if (v is null) return fallback;
                long i = Int(v);
                if (i < 0) i += length;
                return s > 0 ? Math.Clamp(i, 0, length) : Math.Clamp(i, -1, length - 1);
            }
            long from = Clamp(start, s > 0 ? 0 : length - 1, false);
            long to = Clamp(stop, s > 0 ? length : -1, true);
            var indices = new List<int>();
            for (long i = from; s > 0 ? i < to : i > to; i += s) indices.Add((int)i);
            return target switch
            {
                List<object?> l => indices.Select(i => l[i]).ToList(),
                JinjaText t => s == 1 ? t.Slice((int)from, Math.Max(0, (int)(to - from))) : JinjaText.Concat(indices.Select(i => t.Slice(i, 1)).ToList()),
                _ => null,
            };
        }

        private static JinjaCallable? DictMethod(JinjaDict d, string name) => name switch
        {
            "items" => new JinjaCallable(name, (_, _) => d.Items.Select(kv => (object?)new List<object?> { d.Key(kv.Key), kv.Value }).ToList()),
            "keys" => new JinjaCallable(name, (_, _) => d.Items.Keys.Select(k => (object?)d.Key(k)).ToList()),
            "values" => new JinjaCallable(name, (_, _) => d.Items.Values.ToList()),
            "get" => new JinjaCallable(name, (a, _) => a.Count > 0 && a[0] is JinjaText k && d.Items.TryGetValue(k.Text, out var v) ? v : a.Count > 1 ? a[1] : null),
            _ => null,
        };

        private static JinjaCallable? StringMethod(JinjaText t, string name)
        {
            string? Chars(List<object?> a) => a.Count > 0 && a[0] is JinjaText c ? c.Text : null;
            return name switch
            {
                "strip" => new JinjaCallable(name, (a, _) => t.Strip(Chars(a))),
                "lstrip" => new JinjaCallable(name, (a, _) => t.Strip(Chars(a), end: false)),
                "rstrip" => new JinjaCallable(name, (a, _) => t.Strip(Chars(a), start: false)),
                "split" => new JinjaCallable(name, (a, kw) =>
                {
                    string? separator = a.Count > 0 ? (a[0] as JinjaText)?.Text : kw.TryGetValue("sep", out var sep) ? (sep as JinjaText)?.Text : null;
                    long max = a.Count > 1 ? Int(a[1]) : kw.TryGetValue("maxsplit", out var m) ? Int(m) : -1;
                    return t.Split(separator, (int)max).Select(p => (object?)p).ToList();
                }),
                "startswith" => new JinjaCallable(name, (a, _) => Prefixes(a).Any(p => t.Text.StartsWith(p, StringComparison.Ordinal))),
                "endswith" => new JinjaCallable(name, (a, _) => Prefixes(a).Any(p => t.Text.EndsWith(p, StringComparison.Ordinal))),
                "upper" => new JinjaCallable(name, (_, _) => t.WithText(Upper(t.Text))),
                "lower" => new JinjaCallable(name, (_, _) => t.WithText(t.Text.ToLowerInvariant())),
                "title" => new JinjaCallable(name, (_, _) => t.WithText(Title(t.Text))),
                "capitalize" => new JinjaCallable(name, (_, _) => t.WithText(Capitalize(t.Text))),
                "replace" => new JinjaCallable(name, (a, _) => t.Replace(((JinjaText)a[0]!).Text, ToText(a[1]), a.Count > 2 ? (int)Int(a[2]) : -1)),
                "find" => new JinjaCallable(name, (a, _) => (long)t.Text.IndexOf(((JinjaText)a[0]!).Text, StringComparison.Ordinal)),
                "count" => new JinjaCallable(name, (a, _) => (long)t.Split(((JinjaText)a[0]!).Text).Count - 1),
                "join" => new JinjaCallable(name, (a, _) => Join(a[0], t)),
                "isdigit" => new JinjaCallable(name, (_, _) => t.Length > 0 && t.Text.All(char.IsDigit)),
                "isspace" => new JinjaCallable(name, (_, _) => t.Length > 0 && t.Text.All(char.IsWhiteSpace)),
                "isalpha" => new JinjaCallable(name, (_, _) => t.Length > 0 && t.Text.All(char.IsLetter)),
                _ => null,
            };

            static IEnumerable<string> Prefixes(List<object?> a) => a.Count == 0 ? []
                : a[0] is List<object?> l ? l.Select(x => ToText(x).Text) : [ToText(a[0]).Text];
        }

        private static JinjaText Join(object? items, JinjaText separator)
        {
            var list = items switch
            {
                List<object?> l => l,
                JinjaText t => Enumerable.Range(0, t.Length).Select(k => (object?)t.Slice(k, 1)).ToList(),
                JinjaDict d => d.Items.Keys.Select(k => (object?)d.Key(k)).ToList(),
                JinjaUndefined => [],
                _ => throw new JinjaException($"cannot join a {TypeName(items)}"),
            };
            var parts = new List<JinjaText>();
            for (int k = 0; k < list.Count; k++)
            {
                if (k > 0) parts.Add(separator);
                parts.Add(ToText(list[k]));
            }
            return parts.Count == 0 ? JinjaText.Empty : JinjaText.Concat(parts);
        }

        private static string Title(string s)
        {
            var chars = s.ToCharArray();
            bool startOfWord = true;
            for (int k = 0; k < chars.Length; k++)
            {
                if (char.IsLetter(chars[k]))
                {
                    chars[k] = startOfWord ? char.ToUpperInvariant(chars[k]) : char.ToLowerInvariant(chars[k]);
                    startOfWord = false;
                }
                else startOfWord = true;
            }
            return new string(chars);
        }

        private static int CodePoints(string s)
        {
            int n = 0;
            for (int k = 0; k < s.Length; k++)
            {
                if (char.IsHighSurrogate(s[k]) && k + 1 < s.Length && char.IsLowSurrogate(s[k + 1])) k++;
                n++;
            }
            return n;
        }

        /// <summary>Python's str.upper: .NET's simple mapping, plus ß to SS (Python maps it in full).</summary>
        private static string Upper(string s) => s.ToUpperInvariant().Replace("ß", "SS", StringComparison.Ordinal);

        /// <summary>Jinja's title filter: each piece between runs of '-', whitespace, '(', '{', '[' and '&lt;' capitalized.</summary>
        private static string TitleFilter(string s)
        {
            var chars = s.ToCharArray();
            bool start = true;
            for (int k = 0; k < chars.Length; k++)
            {
                bool separator = chars[k] is '-' or '(' or '{' or '[' or '<' || char.IsWhiteSpace(chars[k]);
                if (separator)
                {
                    start = true;
                    continue;
                }
                chars[k] = start ? char.ToUpperInvariant(chars[k]) : char.ToLowerInvariant(chars[k]);
                start = false;
            }
            return new string(chars);
        }

        private static string Capitalize(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

        // ---- filters and tests --------------------------------------------------------------------------------------

        private static object? ApplyFilter(string name, object? v, List<object?> a, Dictionary<string, object?> kw)
        {
            object? Arg(int index, string key, object? fallback) => index < a.Count ? a[index] : kw.TryGetValue(key, out var x) ? x : fallback;
            switch (name)
            {
                case "trim":
                    return ToText(v).Strip(Arg(0, "chars", null) is JinjaText c ? c.Text : null);
                case "length" or "count":
                    return v switch
                    {
                        JinjaText t => (long)CodePoints(t.Text), // Python counts code points, not UTF-16 units
                        List<object?> l => (long)l.Count,
                        JinjaDict d => (long)d.Items.Count,
                        JinjaUndefined => 0L,
                        _ => throw new JinjaException($"object of type '{TypeName(v)}' has no len()"),
                    };
                case "upper": return ToText(v).WithText(Upper(ToText(v).Text));
                case "lower": return ToText(v).WithText(ToText(v).Text.ToLowerInvariant());
                case "title": return ToText(v).WithText(TitleFilter(ToText(v).Text));
                case "capitalize": return ToText(v).WithText(Capitalize(ToText(v).Text));
                case "string": return ToText(v);
                case "safe": return v;
                case "tojson":
                {
                    // transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
                    bool ascii = Truthy(Arg(0, "ensure_ascii", false));
                    var indent = Arg(1, "indent", null);
                    (string, string)? separators = Arg(2, "separators", null) is List<object?> { Count: 2 } sep ? (ToText(sep[0]).Text, ToText(sep[1]).Text) : null;
                    return ToJson(v, indent is null ? null : (int)Int(indent), Truthy(Arg(3, "sort_keys", false)), ascii, separators);
                }
                case "int":
                {
                    var fallback = Arg(0, "default", 0L);
                    return v switch
                    {
                        long n => n,
                        bool b => b ? 1L : 0L,
                        double d => (long)Math.Truncate(d),
                        JinjaText t when long.TryParse(t.Text.Trim(), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long n) => n,
                        JinjaText t when double.TryParse(t.Text.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) => (long)Math.Truncate(d),
                        _ => fallback,
                    };
                }
                case "float":
                    return v switch
                    {
                        long or double or bool => ToDouble(v),
                        JinjaText t when double.TryParse(t.Text.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) => d,
                        _ => Arg(0, "default", 0.0),
                    };
                case "abs":
                    return v switch { long n => Math.Abs(n), double d => Math.Abs(d), _ => throw new JinjaException($"abs of {TypeName(v)}") };
                case "round":
                {
                    int digits = (int)Int(Arg(0, "precision", 0L));
                    string method = ToText(Arg(1, "method", new JinjaText("common"))).Text;
                    if (v is long whole && method == "common" && digits >= 0) return whole; // Python's round keeps an int an int
                    double x = ToDouble(v), scale = Math.Pow(10, digits);
                    return method switch
                    {
                        "floor" => Math.Floor(x * scale) / scale,
                        "ceil" => Math.Ceiling(x * scale) / scale,
                        _ => Math.Round(x, Math.Clamp(digits, 0, 15), MidpointRounding.ToEven), // Python's round: halves to even
                    };
                }
                case "join":
                {
                    var separator = ToText(Arg(0, "d", JinjaText.Empty));
                    if (Arg(1, "attribute", null) is JinjaText attribute)
                        v = Iterate(v).Select(x => GetAttribute(x, attribute.Text)).ToList();
                    return Join(v, separator);
                }
                case "first":
                {
                    var items = Iterate(v);
                    return items.Count > 0 ? items[0] : JinjaUndefined.Instance;
                }
                case "last":
                {
                    var items = Iterate(v);
                    return items.Count > 0 ? items[^1] : JinjaUndefined.Instance;
                }
                case "list": return Iterate(v).ToList();
                case "reverse":
                    return v is JinjaText rt ? Slice(rt, null, null, -1L) : Enumerable.Reverse(Iterate(v)).ToList();
                case "replace":
                    return ToText(v).Replace(ToText(Arg(0, "old", null)).Text, ToText(Arg(1, "new", null)), (int)Int(Arg(2, "count", -1L)));
                case "default" or "d":
                {
                    var fallback = Arg(0, "default_value", JinjaText.Empty);
                    bool boolean = Truthy(Arg(1, "boolean", false));
                    return v is JinjaUndefined || boolean && !Truthy(v) ? fallback : v;
                }
                case "items":
                    return v switch
                    {
                        JinjaDict d => d.Items.Select(kv => (object?)new List<object?> { d.Key(kv.Key), kv.Value }).ToList(),
                        JinjaUndefined => new List<object?>(),
                        _ => throw new JinjaException($"items: expected a mapping, got {TypeName(v)}"),
                    };
                case "dictsort":
                    return v is JinjaDict ds
                        ? ds.Items.OrderBy(kv => kv.Key, StringComparer.OrdinalIgnoreCase).Select(kv => (object?)new List<object?> { ds.Key(kv.Key), kv.Value }).ToList()
                        : throw new JinjaException($"dictsort: expected a mapping, got {TypeName(v)}");
                case "selectattr" or "rejectattr":
                {
                    string attribute = ToText(Arg(0, "attribute", null)).Text;
                    string? test = a.Count > 1 ? ToText(a[1]).Text : null;
                    var testArgs = a.Skip(2).ToList();
                    bool keep = name == "selectattr";
                    return Iterate(v).Where(x =>
                    {
                        var field = GetAttributeOrUndefined(x, attribute);
                        return (test is null ? Truthy(field) : ApplyTest(test, field, testArgs)) == keep;
                    }).ToList();
                }
                case "select" or "reject":
                {
                    string? test = a.Count > 0 ? ToText(a[0]).Text : null;
                    var testArgs = a.Skip(1).ToList();
                    bool keep = name == "select";
                    return Iterate(v).Where(x => (test is null ? Truthy(x) : ApplyTest(test, x, testArgs)) == keep).ToList();
                }
                case "map":
                {
                    if (kw.TryGetValue("attribute", out var attribute))
                    {
                        var fallback = kw.GetValueOrDefault("default", JinjaUndefined.Instance);
                        string field = ToText(attribute).Text;
                        return Iterate(v).Select(x => GetAttributeOrUndefined(x, field) is var value and not JinjaUndefined ? value : fallback).ToList();
                    }
                    if (a.Count == 0) throw new JinjaException("map needs a filter name or attribute=");
                    string filter = ToText(a[0]).Text;
                    var rest = a.Skip(1).ToList();
                    return Iterate(v).Select(x => ApplyFilter(filter, x, rest, [])).ToList();
                }
                case "unique":
                {
                    bool caseSensitive = Truthy(Arg(0, "case_sensitive", false));
                    var attribute = Arg(1, "attribute", null) is JinjaText at ? at.Text : null;
                    var result = new List<object?>();
                    var seen = new List<object?>();
                    foreach (var x in Iterate(v))
                    {
                        var key = SortKey(attribute is null ? x : GetAttributeOrUndefined(x, attribute), caseSensitive);
                        Charge(seen.Count + 1);
                        if (seen.Any(y => Equal(key, y))) continue;
                        seen.Add(key);
                        result.Add(x);
                    }
                    return result;
                }
                case "sort":
                {
                    bool reverse = Truthy(Arg(0, "reverse", false));
                    bool caseSensitive = Truthy(Arg(1, "case_sensitive", false));
                    var attribute = Arg(2, "attribute", null) is JinjaText at ? at.Text : null;
                    var items = Iterate(v).ToList();
                    Charge((long)items.Count * Math.Max(1, (int)Math.Log2(items.Count + 1)));
                    var comparer = Comparer<object?>.Create((x, y) => Compare(x, y));
                    var keyed = items.Select(x => SortKey(attribute is null ? x : GetAttributeOrUndefined(x, attribute), caseSensitive));
                    // Stable, as Python's sorted is; reversed by comparing the other way (equal items keep their order).
                    var order = items.Zip(keyed, (item, key) => (item, key));
                    return (reverse ? order.OrderByDescending(p => p.key, comparer) : order.OrderBy(p => p.key, comparer)).Select(p => p.item).ToList();
                }
                case "sum":
                {
                    object? total = Arg(1, "start", 0L);
                    var attribute = Arg(0, "attribute", null) is JinjaText at ? at.Text : null;
                    foreach (var x in Iterate(v)) total = Binary("+", total, attribute is null ? x : GetAttributeOrUndefined(x, attribute));
                    return total;
                }
                case "min" or "max":
                {
                    bool caseSensitive = Truthy(Arg(0, "case_sensitive", false));
                    var attribute = Arg(1, "attribute", null) is JinjaText at ? at.Text : null;
                    var items = Iterate(v);
                    if (items.Count == 0) return JinjaUndefined.Instance;
                    var best = items[0];
                    object? Key(object? x) => SortKey(attribute is null ? x : GetAttributeOrUndefined(x, attribute), caseSensitive);
                    foreach (var x in items.Skip(1))
                        if (name == "min" ? Compare(Key(x), Key(best)) < 0 : Compare(Key(x), Key(best)) > 0) best = x;
                    return best;
                }
                case "attr":
                    return GetAttributeOrUndefined(v, ToText(Arg(0, "name", null)).Text);
                case "indent":
                {
                    var width = Arg(0, "width", 4L);
                    var pad = new JinjaText(width is JinjaText w ? w.Text : new string(' ', (int)Int(width)));
                    bool first = Truthy(Arg(1, "first", false)), blank = Truthy(Arg(2, "blank", false));
                    if (width is JinjaText { HasData: true } w2) pad = w2;
                    var lines = ToText(v).Split("\n");
                    var parts = new List<JinjaText>();
                    for (int k = 0; k < lines.Count; k++)
                    {
                        if (k > 0) parts.Add(new JinjaText("\n"));
                        // jinja2: every line after the first that is not empty (or every one with blank); the first with first.
                        if (k == 0 ? first : blank || lines[k].Length > 0) parts.Add(pad);
                        parts.Add(lines[k]);
                    }
                    return JinjaText.Concat(parts);
                }
                case "e" or "escape":
                {
                    var t = ToText(v);
                    return t.Derived(t.Text.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;").Replace("\"", "&#34;").Replace("'", "&#39;"));
                }
                default:
                    throw new JinjaException($"the filter '{name}' is not supported");
            }
        }

        /// <summary>What sort, unique, min and max compare: strings lower-cased unless case-sensitive (jinja2's default is not).</summary>
        private static object? SortKey(object? x, bool caseSensitive) =>
            !caseSensitive && x is JinjaText t ? new JinjaText(t.Text.ToLowerInvariant()) : x;

        /// <summary>How filters read a field (jinja2's environment.getitem): a dict's entry before its methods; undefined stays undefined.</summary>
        private static object? GetAttributeOrUndefined(object? target, string name) => target switch
        {
            JinjaUndefined => JinjaUndefined.Instance,
            JinjaDict d when d.Items.TryGetValue(name, out var item) => item,
            _ => GetAttribute(target, name),
        };

        private static bool ApplyTest(string name, object? v, List<object?> a)
        {
            switch (name)
            {
                case "defined": return v is not JinjaUndefined;
                case "undefined": return v is JinjaUndefined;
                case "none": return v is null;
                case "boolean": return v is bool;
                case "true": return v is true;
                case "false": return v is false;
                case "string": return v is JinjaText;
                case "number": return v is long or double or bool; // Python's bool is a number
                case "integer": return v is long;
                case "float": return v is double;
                case "mapping": return v is JinjaDict;
                case "iterable": return v is JinjaText or List<object?> or JinjaDict;
                case "sequence": return v is JinjaText or List<object?> or JinjaDict;
                case "callable": return v is JinjaCallable;
                case "odd": return Int(v) % 2 != 0;
                case "even": return Int(v) % 2 == 0;
                case "divisibleby":
                {
                    // No hardware division by zero: a native library's signal handler (LLVM in PoCL) may take the trap.
                    long divisor = Int(a[0]);
                    if (divisor == 0) throw new JinjaException("divisibleby 0");
                    return divisor == -1 || Int(v) % divisor == 0;
                }
                case "eq" or "equalto" or "==": return Equal(v, a[0]);
                case "ne" or "!=": return !Equal(v, a[0]);
                case "lt" or "lessthan" or "<": return Compare(v, a[0]) < 0;
                case "le" or "<=": return Compare(v, a[0]) <= 0;
                case "gt" or "greaterthan" or ">": return Compare(v, a[0]) > 0;
                case "ge" or ">=": return Compare(v, a[0]) >= 0;
                case "in": return Contains(a[0], v);
                case "lower": return v is JinjaText lt && string.Equals(lt.Text, lt.Text.ToLowerInvariant(), StringComparison.Ordinal);
                case "upper": return v is JinjaText ut && string.Equals(ut.Text, ut.Text.ToUpperInvariant(), StringComparison.Ordinal);
                case "sameas": return ReferenceEquals(v, a[0]) || v is null && a[0] is null || v is bool b && a[0] is bool c && b == c;
                default: throw new JinjaException($"the test '{name}' is not supported");
            }
        }

        /// <summary>Python's strftime for the codes date templates use.</summary>
        private static string Strftime(DateTime t, string format)
        {
            var c = CultureInfo.InvariantCulture;
            var sb = new System.Text.StringBuilder();
            for (int k = 0; k < format.Length; k++)
            {
                if (format[k] != '%' || k + 1 >= format.Length)
                {
                    sb.Append(format[k]);
                    continue;
                }
                char code = format[++k];
                sb.Append(code switch
                {
                    'd' => t.ToString("dd", c),
                    '-' when k + 1 < format.Length && format[k + 1] == 'd' => t.Day.ToString(c) + (k++ >= 0 ? "" : ""),
                    'm' => t.ToString("MM", c),
                    'Y' => t.ToString("yyyy", c),
                    'y' => t.ToString("yy", c),
                    'b' => t.ToString("MMM", c),
                    'B' => t.ToString("MMMM", c),
                    'a' => t.ToString("ddd", c),
                    'A' => t.ToString("dddd", c),
                    'H' => t.ToString("HH", c),
                    'I' => t.ToString("hh", c),
                    'M' => t.ToString("mm", c),
                    'S' => t.ToString("ss", c),
                    'p' => t.Hour < 12 ? "AM" : "PM",
                    'j' => t.DayOfYear.ToString("000", c),
                    '%' => "%",
                    _ => "%" + code,
                });
            }
            return sb.ToString();
        }
    }
}
