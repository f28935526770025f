using System.Globalization;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Hosting;
using IlgpuMedusa.Medusa;
using Microsoft.Extensions.AI;
using Spectre.Console;

namespace IlgpuMedusa.Repl;

/// <summary>
/// The read-eval-print loop: a line is a prompt (or a /command); its continuation streams as tokens are accepted, then
/// one line of statistics. Base models (plain template) continue each prompt on its own; chat models keep the conversation
/// until /reset.
/// </summary>
internal sealed class ReplSession
{
    private readonly InferenceEngine _engine;
    private readonly IAnsiConsole _console;
    private readonly bool _promptVisible;
    private readonly ChatTemplateKind _template;
    private readonly ModelChatTemplate? _modelTemplate;
    private readonly List<ChatMessage> _history = [];
    private readonly SessionTotals _totals = new();
    private GenerationOptions _options;
    private GenerationStats? _last;
    private CancellationTokenSource? _running;

    public ReplSession(InferenceEngine engine, IAnsiConsole console, bool promptVisible, ChatTemplateKind template, int maxTokens)
    {
        _engine = engine;
        _console = console;
        _promptVisible = promptVisible;
        _template = ChatTemplate.Resolve(template, engine.Options.ModelPath, engine.Tokenizer);
        _modelTemplate = ChatTemplate.LoadModelTemplate(_template, engine.Options.ModelPath, engine.Tokenizer);
        _options = new GenerationOptions { MaxTokens = maxTokens };
    }

    /// <summary>Session totals: every reply since the start or the last /reset.</summary>
    private sealed class SessionTotals
    {
        public int Replies;
        public long Tokens;        // generated, the prefill's first token included
        public long Forwards;      // the prefill's included
        public long DecodedTokens; // by decode steps: what accepted tokens per step and tokens/s count
        public long DecodeSteps;
        public double DecodeSeconds;
    }

    /// <summary>Ctrl+C: cancels the running generation (true), or returns false when none runs.</summary>
    public bool CancelRunning()
    {
        var running = _running;
        if (running is null) return false;
        try
        {
            running.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // it finished meanwhile
        }
        return true;
    }

    public async Task<int> RunAsync(TextReader input)
    {
        _console.MarkupLine(_template == ChatTemplateKind.Plain
            ? "Completion mode (base model): each line is continued on its own. /help lists the commands."
            : $"Chat mode ({(_modelTemplate is { } own ? $"the model's own template, {Markup.Escape(Path.GetFileName(own.Origin))}" : $"{_template} template")}): the conversation is kept until /reset. /help lists the commands.");
        while (true)
        {
            if (_promptVisible) _console.Markup("[green]>[/] ");
            var line = await input.ReadLineAsync().ConfigureAwait(false);
            if (line is null) return 0;
            line = line.Trim();
            if (line.Length == 0) continue;
            if (line.StartsWith('/'))
            {
                if (!Command(line)) return 0;
                continue;
            }
            await ReplyAsync(line).ConfigureAwait(false);
        }
    }

    /// <summary>Runs a /command; false means quit.</summary>
    private bool Command(string line)
    {
        var parts = line.Split(' ', 2, StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        string argument = parts.Length > 1 ? parts[1] : "";
        try
        {
            switch (parts[0].ToLowerInvariant())
            {
                case "/quit" or "/exit":
                    return false;
                case "/help":
                    Help();
                    break;
                case "/medusa":
                    SetMedusa(argument);
                    break;
                case "/tree":
                    SetTree(argument);
                    break;
                case "/temp":
                    SetTemperature(argument);
                    break;
                case "/json":
                    SetJson(argument);
                    break;
                case "/stats":
                    Stats();
                    break;
                case "/reset":
                    _history.Clear();
                    _last = null;
                    (_totals.Replies, _totals.Tokens, _totals.Forwards, _totals.DecodedTokens, _totals.DecodeSteps, _totals.DecodeSeconds) = (0, 0, 0, 0, 0, 0);
                    _console.MarkupLine(_template == ChatTemplateKind.Plain ? "Statistics cleared." : "Conversation and statistics cleared.");
                    break;
                default:
                    Error($"unknown command {parts[0]}; /help lists the commands.");
                    break;
            }
        }
        catch (Exception e) when (e is ArgumentException or IOException or InvalidDataException)
        {
            // A bad name or value, a tree file that is missing or malformed: say so, the session goes on.
            Error(e.Message);
        }
        return true;
    }

    private void Help()
    {
        var table = new Table().Border(TableBorder.Simple).AddColumn("command").AddColumn("what it does");
        table.AddRow("/help", "this list");
        table.AddRow("/medusa on|off", Markup.Escape("decode with the Medusa heads, or one token per forward"));
        table.AddRow("/tree NAME", Markup.Escape($"Medusa tree: {string.Join(", ", TreePresets.Names)}, or a JSON file of paths"));
        table.AddRow("/temp X", "sampling temperature; 0 is greedy");
        table.AddRow("/json on|off|FILE", "JSON mode (each reply one JSON object), free text, or replies following a JSON schema file");
        table.AddRow("/stats", "accepted tokens per step of the last reply (bar chart), and session totals");
        table.AddRow("/reset", "forget the conversation and the statistics");
        table.AddRow("/quit", "leave (end of input does too)");
        _console.Write(table);
        _console.MarkupLine("Ctrl+C stops a reply and keeps the REPL.");
    }

    private void SetMedusa(string argument)
    {
        bool on = argument.ToLowerInvariant() switch
        {
            "on" => true,
            "off" => false,
            _ => throw new ArgumentException($"/medusa takes on or off, got '{argument}'."),
        };
        _options = _options with { UseMedusa = on };
        if (!on) _console.MarkupLine("Medusa off: one token per forward.");
        else if (_engine.Heads is null) _console.MarkupLine("Medusa on, but this model has no Medusa heads: decoding stays autoregressive.");
        else _console.MarkupLine(Markup.Escape($"Medusa on: {_engine.Heads.HeadCount} heads, tree {_options.Tree ?? _engine.DefaultTree}."));
    }

    private void SetTree(string argument)
    {
        if (argument.Length == 0) throw new ArgumentException($"/tree needs a name: {string.Join(", ", TreePresets.Names)}, or a JSON file of paths.");
        var options = (_options with { Tree = argument }).Validate();
        if (_engine.Heads is { } heads)
        {
            var tree = CandidateTree.Resolve(argument, heads.HeadCount, MedusaHeads.TopK);
            if (tree.NodeCount > InferenceEngine.MaxTreeNodes)
                throw new ArgumentException($"tree '{argument}' has {tree.NodeCount} nodes; at most {InferenceEngine.MaxTreeNodes} are verified in one forward.");
            _console.MarkupLine(Markup.Escape(tree.IsDynamic
                ? $"Tree {tree.Name}: {tree.NodeCount} nodes planned each step from the heads' confidence, depth up to {tree.MaxDepth}."
                : $"Tree {tree.Name}: {tree.NodeCount} nodes, depth {tree.MaxDepth}."));
        }
        else
        {
            _console.MarkupLine(Markup.Escape($"Tree {argument} (used once the model has Medusa heads)."));
        }
        _options = options;
    }

    private void SetTemperature(string argument)
    {
        if (!float.TryParse(argument, NumberStyles.Float, CultureInfo.InvariantCulture, out float temperature))
            throw new ArgumentException($"/temp takes a number (0 is greedy), got '{argument}'.");
        _options = _options with { Sampling = Sampling.From(temperature, 1f) };
        _console.MarkupLine(temperature == 0 ? "Greedy decoding." : $"Sampling at temperature {temperature.ToString(CultureInfo.InvariantCulture)}.");
    }

    private void SetJson(string argument)
    {
        switch (argument.ToLowerInvariant())
        {
            case "":
                throw new ArgumentException("/json takes on, off or a JSON schema file.");
            case "off":
                _options = _options with { ResponseFormat = ResponseFormat.Text, JsonSchema = null };
                _console.MarkupLine("Free text.");
                break;
            case "on":
                _options = _options with { ResponseFormat = ResponseFormat.JsonObject, JsonSchema = null };
                _console.MarkupLine("JSON mode: each reply is one JSON object.");
                break;
            default:
                _options = (_options with { ResponseFormat = ResponseFormat.JsonSchema, JsonSchema = GenerationOptions.ReadJsonSchemaFile(argument) }).Validate();
                _console.MarkupLine(Markup.Escape($"Each reply follows the JSON schema in {argument}."));
                break;
        }
    }

    private async Task ReplyAsync(string line)
    {
        IReadOnlyList<int> ids;
        try
        {
            ids = PromptIds(line);
        }
        catch (ArgumentException e)
        {
            Error(e.Message);
            return;
        }
        var stats = new GenerationStats();
        var reply = new System.Text.StringBuilder();
        if (_template == ChatTemplateKind.Plain) _console.Write(new Text(line, new Style(decoration: Decoration.Bold)));
        using var running = new CancellationTokenSource();
        _running = running;
        bool cancelled = false;
        try
        {
            await foreach (var piece in _engine.GenerateAsync(ids, _options, stats, running.Token).ConfigureAwait(false))
            {
                var text = _template != ChatTemplateKind.Plain && reply.Length == 0 ? piece.Text.TrimStart() : piece.Text;
                if (text.Length == 0) continue;
                reply.Append(text);
                // Tokens that arrived together in one Medusa step are shown in colour (no colour when redirected).
                _console.Write(new Text(text, piece.TokenIds.Count > 1 ? new Style(Color.Aqua) : Style.Plain));
            }
        }
        catch (OperationCanceledException)
        {
            cancelled = true;
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or IOException)
        {
            _console.WriteLine();
            Error(e.Message);
            if (_template != ChatTemplateKind.Plain) _history.RemoveAt(_history.Count - 1);
            return;
        }
        finally
        {
            _running = null;
        }
        _console.WriteLine();
        if (_template != ChatTemplateKind.Plain) _history.Add(new ChatMessage(ChatRole.Assistant, reply.ToString()));
        Record(stats);
        _console.MarkupLine("[grey]" + Markup.Escape(Summary(stats, cancelled)) + "[/]");
    }

    /// <summary>Completion: the line itself. Chat: the whole conversation under the template, the line appended.</summary>
    private IReadOnlyList<int> PromptIds(string line)
    {
        if (_template == ChatTemplateKind.Plain) return _engine.EncodePrompt(line, _options);
        _history.Add(new ChatMessage(ChatRole.User, line));
        IReadOnlyList<int> ids;
        try
        {
            ids = ChatTemplate.Encode(ChatTemplate.Apply(_template, _modelTemplate, _history, null, _engine.Tokenizer), _engine.Tokenizer);
        }
        catch
        {
            _history.RemoveAt(_history.Count - 1); // a template that refuses the conversation leaves it as it was
            throw;
        }
        if (ids.Count < _engine.Config.MaxSequenceLength) return ids;
        _history.RemoveAt(_history.Count - 1);
        throw new ArgumentException($"the conversation is {ids.Count} tokens, which leaves no room in the model's context of {_engine.Config.MaxSequenceLength}; /reset starts a new one.");
    }

    private void Record(GenerationStats stats)
    {
        _last = stats;
        _totals.Replies++;
        _totals.Tokens += stats.GeneratedTokens;
        _totals.Forwards += ForwardsOf(stats);
        _totals.DecodedTokens += stats.DecodedTokens;
        _totals.DecodeSteps += DecodeStepsOf(stats);
        _totals.DecodeSeconds += stats.DecodeSeconds;
    }

    /// <summary>Forward passes that produced the reply's tokens: its decode steps, and the prefill, which yields the first token.</summary>
    private static long ForwardsOf(GenerationStats stats) => stats.GeneratedTokens == 0 ? 0 : DecodeStepsOf(stats) + 1;

    /// <summary>Decode steps (Medusa verification steps, one-token steps included), the prefill not counted.</summary>
    private static long DecodeStepsOf(GenerationStats stats) => stats.Medusa?.Steps ?? Math.Max(0, Math.Min(stats.DecodedTokens, stats.Steps));

    private static double MeanAccepted(long tokens, long steps) => steps == 0 ? 0 : (double)tokens / steps;

    private static string Summary(GenerationStats stats, bool cancelled)
    {
        string mode = stats.Medusa is not null ? $"Medusa, tree {stats.Tree}" : "autoregressive";
        string finish = cancelled ? "cancelled" : stats.FinishReason.ToString();
        return FormattableString.Invariant(
            $"[{stats.GeneratedTokens} tokens, {stats.DecodeTokensPerSecond:0.0} tokens/s, {stats.Medusa?.MeanAccepted ?? 1.0:0.00} accepted tokens/step ({mode}), {finish}]");
    }

    private void Stats()
    {
        if (_last is not { } last)
        {
            _console.MarkupLine("No reply yet.");
            return;
        }
        long forwards = ForwardsOf(last);
        string mode = last.Medusa is not null ? $"Medusa, tree {last.Tree}" : "autoregressive";
        _console.MarkupLine(Markup.Escape(FormattableString.Invariant(
            $"Last reply: {last.GeneratedTokens} tokens in {forwards} forwards ({mode}; the prefill gives the first), {last.DecodeTokensPerSecond:0.0} tokens/s decoding, prefill {last.PromptTokens} tokens ({last.CachedPromptTokens} of them from the prefix cache) in {last.PrefillSeconds * 1000:0} ms, {last.FinishReason}.")));
        // Index k: decode steps that emitted k tokens. Autoregressive decoding emits one per step.
        IReadOnlyList<long> histogram = last.Medusa?.AcceptHistogram ?? [0, DecodeStepsOf(last)];
        var chart = new BarChart().Width(60).Label("Accepted tokens per decode step (last reply)").LeftAlignLabel();
        // Up to the longest step of the reply (forced text can make steps longer than the heads reach).
        int longest = histogram.Count - 1;
        while (longest > 1 && histogram[longest] == 0) longest--;
        for (int k = 1; k <= longest; k++)
            chart.AddItem(k == 1 ? "1 token" : $"{k} tokens", histogram[k], k == 1 ? Color.Grey : Color.Aqua);
        _console.Write(chart);
        _console.MarkupLine(Markup.Escape(FormattableString.Invariant(
            $"Session totals: {_totals.Replies} {(_totals.Replies == 1 ? "reply" : "replies")}, {_totals.Tokens} tokens in {_totals.Forwards} forwards, {MeanAccepted(_totals.DecodedTokens, _totals.DecodeSteps):0.00} accepted tokens per decode step, {(_totals.DecodeSeconds > 0 ? _totals.DecodedTokens / _totals.DecodeSeconds : 0):0.0} tokens/s decoding.")));
        var s = _engine.SchedulerStats;
        _console.MarkupLine(Markup.Escape(FormattableString.Invariant(
            $"Scheduler: {s.Running} running, {s.Waiting} waiting, {s.Preemptions} preempted so far, KV blocks {s.BlocksUsed} used / {s.BlocksFree} free ({s.BlocksCached} keeping cached prefixes), prefix cache {s.PrefixHitTokens} of {s.PrefixQueryTokens} prompt tokens, {s.Steps} batched forwards, {s.TokensPerSecond:0.0} tokens/s while busy, {s.MeanAcceptedPerStep:0.00} tokens per sequence-step.")));
    }

    private void Error(string message) => _console.MarkupLine("[red]error:[/] " + Markup.Escape(message));
}
