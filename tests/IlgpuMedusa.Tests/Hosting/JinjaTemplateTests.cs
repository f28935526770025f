using System.Text.Json;
using System.Text.Json.Nodes;
using IlgpuMedusa.Hosting;
using IlgpuMedusa.Hosting.Jinja;
using IlgpuMedusa.Tests.Tokenization;
using Xunit.Abstractions;

namespace IlgpuMedusa.Tests.Hosting;

/// <summary>
/// The Jinja interpreter that renders models' own chat templates: against @huggingface/jinja on the real Llama 3 and
/// Qwen3 templates and on templates written here in the styles of others (a default system prompt, a dated system block,
/// role alternation checks, role renaming, macros and filters, whitespace control), over conversations with system
/// prompts, reasoning, tool results, markers typed by users and non-ASCII text; and by hand where Python's Jinja and the
/// JavaScript one differ (printing None and booleans), for scoping, errors and limits.
/// </summary>
public sealed class JinjaTemplateTests(HuggingFaceReferenceTokenizers references, ITestOutputHelper output) : IClassFixture<HuggingFaceReferenceTokenizers>
{
    /// <summary>A ChatML template with a default system prompt when the conversation has none (as Qwen2.5's and SmolLM2's do).</summary>
    internal const string ChatMLWithDefaultSystem = """
        {%- if messages[0]['role'] == 'system' %}
            {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
        {%- else %}
            {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
        {%- endif %}
        {%- for message in messages %}
            {%- if not (message.role == 'system' and loop.first) %}
                {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
            {%- endif %}
        {%- endfor %}
        {%- if add_generation_prompt %}
            {{- '<|im_start|>assistant\n' }}
        {%- endif %}
        """;

    /// <summary>A Llama-3-style template with a dated system block that is always there (as Llama 3.1's and 3.2's are).</summary>
    internal const string DatedLlama3 = """
        {{- bos_token }}
        {%- if not date_string is defined %}
            {%- set date_string = strftime_now("%d %b %Y") %}
        {%- endif %}
        {%- if messages[0]['role'] == 'system' %}
            {%- set system_message = messages[0]['content']|trim %}
            {%- set messages = messages[1:] %}
        {%- else %}
            {%- set system_message = "" %}
        {%- endif %}
        {{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
        {{- "Knowledge cutoff: 2023\n" }}
        {{- "Date: " + date_string + "\n\n" }}
        {{- system_message }}
        {{- "<|eot_id|>" }}
        {%- for message in messages %}
            {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
        {%- endfor %}
        {%- if add_generation_prompt %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
        {%- endif %}
        """;

    /// <summary>An [INST] template that refuses roles out of turn (as Mistral's do), with a namespace and loop controls.</summary>
    private const string Alternating = """
        {%- set ns = namespace(system='', turns=0) %}
        {{- bos_token }}
        {%- for message in messages %}
            {%- if message.role == 'system' %}
                {%- set ns.system = message.content %}
                {%- continue %}
            {%- endif %}
            {%- if (message.role == 'user') != (ns.turns % 2 == 0) %}
                {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
            {%- endif %}
            {%- set ns.turns = ns.turns + 1 %}
            {%- if message.role == 'user' %}
                {{- '[INST] ' + (ns.system + '\n\n' if ns.system and loop.last else '') + message.content + ' [/INST]' }}
            {%- else %}
                {{- ' ' + message.content|trim + eos_token }}
            {%- endif %}
        {%- endfor %}
        """;

    /// <summary>Roles renamed and the system prompt folded into the first user turn (as Gemma's template does).</summary>
    private const string RenamedRoles = """
        {{ bos_token }}
        {%- if messages[0]['role'] == 'system' -%}
            {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
            {%- set loop_messages = messages[1:] -%}
        {%- else -%}
            {%- set first_user_prefix = "" -%}
            {%- set loop_messages = messages -%}
        {%- endif -%}
        {%- for message in loop_messages -%}
            {%- set role = "model" if message['role'] == 'assistant' else message['role'] -%}
            {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
            {{- message['content'] | trim }}
            {{ '<end_of_turn>\n' }}
        {%- endfor -%}
        {%- if add_generation_prompt -%}
            {{'<start_of_turn>model\n'}}
        {%- endif -%}
        """;

    /// <summary>Macros, filters, tests, slices, string methods, arithmetic, a set block and dict iteration.</summary>
    private const string Features = """
        {%- macro show(m, prefix='> ') -%}
        {{ prefix }}{{ m.role | upper }}: {{ m.content | replace('\n', ' ') }}
        {%- endmacro -%}
        {%- set users = messages | selectattr('role', 'equalto', 'user') | list -%}
        {{ users | length }} user messages; roles: {{ messages | map(attribute='role') | join(', ') }}
        {% for m in messages if m.role != 'system' -%}
        {{ loop.index }}/{{ loop.length }}{% if loop.first %} first{% endif %}{% if loop.last %} last{% endif %} {{ show(m) }}
        {% endfor -%}
        {{ messages[-1].content[:5] }}|{{ messages[0].content.split(' ')[0] }}|{{ 'many' if messages | length > 2 else 'few' }}
        {{- '\n' ~ (messages | map(attribute='role') | join | length) }}
        {{ {'a': 1, 'b': [1, 2, 'c'], 'd': {'e': none}} | tojson }}|{{ messages[0] | tojson }}
        {{ messages[-1] | tojson(indent=2) }}
        {% for k, v in {'b': 2, 'a': 1} | dictsort %}{{ k }}={{ v }};{% endfor %}
        {% for k, v in messages[0].items() %}{{ k }}:{{ v[:3] }} {% endfor %}
        {% set block %}inside {{ messages | length }} {% endset %}[{{ block | trim }}]
        {{ 7 // 2 }} {{ 7 % 3 }} {{ 2 ** 10 }} {{ 1 / 4 }} {{ 3 - 5 }} {{ ([1, 2] + [3]) | length }}
        {{ 'yes' if messages[0].content.startswith('You') else 'no' }} {{ 'in' if 'Hi' in messages[-1].content else 'out' }}
        {{ (messages | first).role }} {{ (messages | last).role }} {{ messages[::-1][0].role }} {{ messages[1:3] | length }}
        {{ messages[0].content.lower() }}|{{ messages[0].content.upper() }}|{{ '  pad  '.strip() }}|{{ 'a,b,,c'.split(',') | join('+') }}
        {{ 'x' if undefined_thing is defined else 'no thing' }} {{ undefined_thing | default('fallback') }} {{ messages[0].missing | default('none here') }}
        {%- for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 4 %}{% break %}{% endif %}{{ i }}{% endfor %}
        {{ messages | map(attribute='role') | unique | list | length }} {{ [3, 1, 2] | sort | join }} {{ ['b', 'a'] | sort(reverse=true) | join }}
        {{ "tab\there 'quoted' \"double\" \u00e9" }} {{ 'multi\nline' | indent(2) }}
        """;

    /// <summary>Whitespace control: trim_blocks, lstrip_blocks, the '-' markers, comments.</summary>
    private const string Whitespace = """
        <start>
          {% if true %}
            indented line
          {% endif %}
          {#- a comment -#}
          {{ 'a' }}  {{- 'b' -}}  {{ 'c' }}
        {% for m in messages %}
          item {{ loop.index0 }}
        {%- endfor %}
        {# comment on its own line #}
        end {{ messages | length }}
            {% if true %}stripped spaces{% endif %}
        """;

    private static readonly (string Name, JsonArray Messages)[] Conversations =
    [
        ("one user turn", Messages(("user", "Hello!"))),
        ("system and turns", Messages(("system", "You are a pirate."), ("user", "Hi there"), ("assistant", "Arr, hello."), ("user", "  Where is the treasure?  \n"))),
        ("reasoning", Messages(("user", "What is 2+2?"), ("assistant", "<think>\nadd them\n</think>\n\n4"), ("user", "And 3+3? Hi"))),
        ("typed markers", Messages(("user", "typed <|im_end|> and <|eot_id|> markers"), ("assistant", "ok <|im_start|>"))),
        ("tool result", Messages(("system", "You are terse."), ("user", "Use the tool"), ("assistant", "{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}"),
            ("tool", "{\"temperature\": 21}"), ("user", "thanks"))),
        ("non-ASCII", Messages(("user", "Grüße 👋 日本語\ttab \u00e9"))),
        ("out of turn", Messages(("user", "a"), ("user", "b"))),
    ];

    private static JsonArray Messages(params (string Role, string Content)[] messages) =>
        new(messages.Select(m => (JsonNode)new JsonObject { ["role"] = m.Role, ["content"] = m.Content }).ToArray());

    private IEnumerable<(string Name, string Template, JsonObject Context)> Corpus()
    {
        var templates = new List<(string Name, string Source, string Bos, string Eos)>
        {
            ("ChatML with a default system prompt", ChatMLWithDefaultSystem, "", "<|im_end|>"),
            ("dated Llama 3 style", DatedLlama3, "<|begin_of_text|>", "<|eot_id|>"),
            ("alternating [INST]", Alternating, "<s>", "</s>"),
            ("renamed roles", RenamedRoles, "<bos>", "<eos>"),
            ("features", Features, "<s>", "</s>"),
            ("whitespace", Whitespace, "<s>", "</s>"),
            ("Llama 3 (real)", RealTemplate(references.Llama3), "<|begin_of_text|>", "<|eot_id|>"),
            ("Qwen3 (real)", RealTemplate(references.Qwen3), "", "<|im_end|>"),
        };
        foreach (var (name, source, bos, eos) in templates)
        {
            foreach (var (conversation, messages) in Conversations)
            {
                foreach (bool generation in new[] { true, false })
                {
                    var context = new JsonObject
                    {
                        ["messages"] = messages.DeepClone(),
                        ["add_generation_prompt"] = generation,
                        ["bos_token"] = bos,
                        ["eos_token"] = eos,
                    };
                    yield return ($"{name} / {conversation} / generation {generation}", source, context);
                }
            }
        }
        // Qwen3's switch for answers without reasoning, and a date given by the caller.
        var noThinking = new JsonObject { ["messages"] = Conversations[2].Messages.DeepClone(), ["add_generation_prompt"] = true, ["enable_thinking"] = false };
        yield return ("Qwen3 (real) / enable_thinking false", RealTemplate(references.Qwen3), noThinking);
        var dated = new JsonObject { ["messages"] = Conversations[0].Messages.DeepClone(), ["add_generation_prompt"] = true, ["bos_token"] = "<|begin_of_text|>", ["date_string"] = "26 Jul 2024" };
        yield return ("dated Llama 3 style / date_string given", DatedLlama3, dated);
    }

    private static string RealTemplate(string directory)
    {
        using var document = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(directory, "tokenizer_config.json")));
        return document.RootElement.GetProperty("chat_template").GetString()!;
    }

    private static string? RenderOurs(string template, JsonObject context) => RenderOrError(template, context).Text;

    private static (string? Text, string? Error) RenderOrError(string template, JsonObject context)
    {
        var variables = new Dictionary<string, object?>(StringComparer.Ordinal);
        using var document = JsonDocument.Parse(context.ToJsonString());
        foreach (var property in document.RootElement.EnumerateObject()) variables[property.Name] = JinjaValues.FromJson(property.Value);
        try
        {
            return (JinjaTemplate.Parse(template).Render(variables, () => JinjaReference.Now).Text, null);
        }
        catch (JinjaException e)
        {
            return (null, e.Message);
        }
    }

    [Fact]
    public void Renders_as_huggingface_jinja_does_on_real_and_styled_templates()
    {
        var corpus = Corpus().ToList();
        var expected = JinjaReference.Render(corpus.Select(c => (c.Template, c.Context)).ToList());
        Assert.Equal(corpus.Count, expected.Count);
        int errors = 0, failures = 0;
        for (int i = 0; i < corpus.Count; i++)
        {
            var (actual, error) = RenderOrError(corpus[i].Template, corpus[i].Context);
            if (expected[i] is null)
            {
                errors++;
                output.WriteLine($"error on both sides: {corpus[i].Name}: {error}");
            }
            if (actual == expected[i]) continue;
            failures++;
            output.WriteLine($"MISMATCH {corpus[i].Name}\n--- @huggingface/jinja:\n{expected[i] ?? "(error)"}\n--- ours:\n{actual ?? "(error: " + error + ")"}\n");
        }
        output.WriteLine($"{corpus.Count} renders compared, {errors} of them errors on both sides");
        Assert.Equal(0, failures);
        // The alternating template refuses the out-of-turn conversation and the tool result (a role it does not know),
        // with and without the generation prompt, and nothing else fails.
        Assert.Equal(4, errors);
    }

    private static string Render(string template, object? context = null)
    {
        var variables = new Dictionary<string, object?>(StringComparer.Ordinal);
        if (context is not null)
        {
            using var document = JsonDocument.Parse(JsonSerializer.Serialize(context));
            foreach (var property in document.RootElement.EnumerateObject()) variables[property.Name] = JinjaValues.FromJson(property.Value);
        }
        return JinjaTemplate.Parse(template).Render(variables, () => JinjaReference.Now).Text;
    }

    /// <summary>Where the JavaScript implementation prints as JavaScript would, Python's Jinja (transformers') is followed: worked out by hand.</summary>
    [Theory]
    [InlineData("{{ none }}|{{ true }}|{{ false }}", "None|True|False")]
    [InlineData("{{ [1, 'a', none, 2.5] }}", "[1, 'a', None, 2.5]")]
    [InlineData("{{ {'k': \"it's\"} }}", "{'k': \"it's\"}")]
    [InlineData("{{ 1.0 }} {{ 3 / 2 }} {{ 4 / 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 1e20 }} {{ 9007199254740993 // 1 }} {{ 7 // -2 }} {{ 5 % -1 }}", "1.0 1.5 2.0 -4 2 1e+20 9007199254740993 -4 0")]
    [InlineData("{{ 'a' ~ 1 ~ none }}|{{ 'ab' * 3 }}|{{ [0] * 2 }}|{{ {'r': 'x'} | attr('r') }}", "a1None|ababab|[0, 0]|x")]
    [InlineData("{{ 'Hello World'[::-1] }}|{{ 'abc'[5:] }}|{{ [1,2,3][-2:] }}", "dlroW olleH||[2, 3]")]
    [InlineData("{{ '  x  ' | trim }}|{{ 'xxhixx'.strip('x') }}|{{ 'a b  c'.split() }}|{{ 'a-b-c'.split('-', 1) }}", "x|hi|['a', 'b', 'c']|['a', 'b-c']")]
    [InlineData("{{ 'hello world' | title }} {{ 'hELLO' | capitalize }} {{ 'abc' | upper }}", "Hello World Hello ABC")]
    [InlineData("{{ 'a👋b' | length }} {{ 'Grüße'.upper() }} {{ 'Grüße' | upper }}", "3 GRÜSSE GRÜSSE")]
    [InlineData("{{ \"it's <b>x-y im_end\" | title }}|{{ \"it's im_end\".title() }}", "It's <B>x-Y Im_end|It'S Im_End")]
    [InlineData("{{ 2.5 | round }} {{ 3.5 | round }} {{ 2 | round }} {{ 3.14159 | round(2) }} {{ 3.7 | int }} {{ '12' | int + 1 }} {{ 'x' | int }}", "2.0 4.0 2 3.14 3 13 0")]
    [InlineData("{{ 1e15 + 0.5 }} {{ 1e16 }} {{ 0.0001 }} {{ 0.00001 }} {{ 123456789.125 }} {{ -2.5e-7 }}", "1000000000000000.5 1e+16 0.0001 1e-05 123456789.125 -2.5e-07")]
    [InlineData("{{ 'yes' if 3 > 2 > 1 else 'no' }} {{ 'a' in 'abc' == true }} {{ 1 < 2 < 2 }}", "yes False False")]
    [InlineData("{{ 'a' is in ['a'] }} {{ true is number }} {{ true is integer }} {{ 3 is eq 3 }}", "True True False True")]
    [InlineData("{{ ['b', 'a', 'B'] | sort }} {{ ['A', 'a'] | unique }} {{ ['b', 'A'] | max }} {{ ['b', 'a', 'B'] | sort(case_sensitive=true) }}", "['a', 'b', 'B'] ['A'] b ['B', 'a', 'b']")]
    [InlineData("{{ 'é' | tojson(true) }} {{ {'a': [1]} | tojson(separators=(',', ':')) }}", "\"\\u00e9\" {\"a\":[1]}")]
    [InlineData("{{ \"a\\n  \\nb\" | indent(2) }}", "a\n    \n  b")]
    [InlineData("{{ '\\ud800' | length }}", "1")]
    [InlineData("{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }} {{ 'é\"\\n' | tojson }}", "{\"a\": 2, \"b\": 1} \"é\\\"\\n\"")]
    [InlineData("{{ x is defined }} {{ none is none }} {{ 'a' is string }} {{ 3 is odd }} {{ 4 is divisibleby 2 }} {{ {} is mapping }}", "False True True True True True")]
    public void Prints_as_python_jinja_does(string template, string expected) => Assert.Equal(expected, Render(template));

    [Fact]
    public void Whitespace_markers_follow_python_jinja()
    {
        // lstrip_blocks leaves a '+' block's indentation (the JavaScript implementation has no '+' marker).
        Assert.Equal("a\n    kept b", Render("a\n    {%+ if true %}kept{% endif %} b"));
        Assert.Equal("a\nstripped b", Render("a\n    {% if true %}stripped{% endif %} b"));
        // trim_blocks takes one newline after a block tag, not after an expression.
        Assert.Equal("xy\nz\n", Render("{% if true %}\nx{% endif %}y\n{{ 'z' }}\n\n"));
        Assert.Equal("raw {{ not rendered }}", Render("{% raw %}raw {{ not rendered }}{% endraw %}"));
        Assert.Equal("\nA", Render("{% raw %}\nA{% endraw %}")); // no trim_blocks after raw's opening tag
        Assert.Equal("\nx", Render("{% if 1 +%}\nx{% endif %}")); // '+' keeps the newline
        Assert.Equal("\nx", Render("{# c +#}\nx"));
        Assert.Equal("x1", Render("x{{ 1 }}\n")); // keep_trailing_newline=False: one trailing newline goes
        Assert.Equal("a\nb", Render("a\rb"));
    }

    [Fact]
    public void A_loop_keeps_its_variables_and_a_namespace_carries_them_out()
    {
        Assert.Equal("1", Render("{% set x = 1 %}{% for i in [1, 2] %}{% set x = i %}{% endfor %}{{ x }}"));
        Assert.Equal("2", Render("{% set ns = namespace(x=1) %}{% for i in [1, 2] %}{% set ns.x = i %}{% endfor %}{{ ns.x }}"));
        Assert.Equal("5", Render("{% if true %}{% set y = 5 %}{% endif %}{{ y }}"));
        Assert.Equal("a-b", Render("{% set a, b = ['a', 'b'] %}{{ a }}-{{ b }}"));
        Assert.Equal("empty", Render("{% for x in [] %}{{ x }}{% else %}empty{% endfor %}"));
    }

    [Theory]
    [InlineData("{% if %}x{% endif %}", "line 1")]
    [InlineData("a\nb\n{% for x in y %}", "line 3")]
    [InlineData("{{ x | frobnicate }}", "frobnicate")]
    [InlineData("{% include 'other.jinja' %}", "include")]
    [InlineData("{{ 'a' + 1 }}", "str")]
    [InlineData("{{ raise_exception('roles must alternate') }}", "roles must alternate")]
    [InlineData("{{ undefined_thing.field }}", "undefined")]
    [InlineData("{% for i in range(100000000) %}{% endfor %}", "loop iterations")]
    [InlineData("{% for i in range(5000) %}{{ 'x' * 5000 }}{% endfor %}", "characters")]
    [InlineData("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "nested deeper")]
    [InlineData("{{ 'abc'.replace(1, 2) }}", "the template failed")]
    [InlineData("{{ 1 is divisibleby 0 }}", "divisibleby 0")]
    [InlineData("{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, 2) }}", "takes 1 arguments")]
    [InlineData("{% break %}", "outside a loop")]
    [InlineData("{{ \"\\U00110000\" }}", "escape")]
    [InlineData("{{ x.99999999999999999999 }}", "too large")]
    [InlineData("{% set ns = namespace(x=0) %}{% for i in range(200000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}", "too deeply")]
    [InlineData("{% set ns = namespace(s='x') %}{% for i in range(31) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "characters")]
    [InlineData("{{ ('x' * 16000000) * 16000000 }}", "characters")]
    [InlineData("{{ range(4000000) | unique | length }}", "iterations")]
    [InlineData("{{ 'abc'.replace() }}", "the template failed")]
    [InlineData("{% set ns = namespace(a=1) %}{% set ns.self = ns %}{{ ns | tojson }}", "not JSON serializable")]
    public void Errors_say_what_and_where(string template, string expected)
    {
        // Also what would otherwise overflow the stack: expressions nested deeper than the parser allows.
        if (expected == "nested deeper") Assert.Contains("nested deeper", Assert.Throws<JinjaException>(() => Render("{{ " + new string('(', 5000) + "1" + new string(')', 5000) + " }}")).Message);
        // A long flat chain parses in a loop but evaluates recursively: stopped before the stack runs out.
        if (expected == "too deeply") Assert.Contains("too deeply", Assert.Throws<JinjaException>(() => Render("{{ 0" + string.Concat(Enumerable.Repeat(" + 0", 200000)) + " }}")).Message);
        var e = Assert.Throws<JinjaException>(() => Render(template));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Text_from_messages_stays_marked_through_string_operations()
    {
        var template = JinjaTemplate.Parse(
            "<|im_start|>{{ (messages[0].content | trim).split('x')[0] ~ messages[0].content.upper()[-6:] }}<|im_end|>{{ messages | map(attribute='content') | join('<|sep|>') }}");
        var messages = JinjaValues.FromJson(JsonDocument.Parse("""[{"content": " <|im_end|>|x<|im_end|>"}, {"content": "b"}]""").RootElement);
        var text = template.Render(new Dictionary<string, object?> { ["messages"] = messages });
        // Keys of a dict built from message text, dates formatted by message text and indentation by message text stay marked too.
        var keyed = JinjaTemplate.Parse("{% for k in {messages[0].content: 1} %}{{ k }}{% endfor %}{{ {messages[0].content: 1} | tojson }}{{ strftime_now(messages[0].content) }}{{ 'a\nb' | indent(messages[0].content) }}")
            .Render(new Dictionary<string, object?> { ["messages"] = messages });
        Assert.DoesNotContain(ModelChatTemplate.Segments(keyed, ["<|im_end|>"]), segment => segment.IsSpecial);
        Assert.Equal("<|im_start|><|im_end|>|_END|><|im_end|> <|im_end|>|x<|im_end|><|sep|>b", text.Text);
        var segments = ModelChatTemplate.Segments(text, ["<|im_start|>", "<|im_end|>", "<|sep|>"]);
        // Only the template's own markers become special tokens; everything from the messages stays text.
        Assert.Equal(["<|im_start|>", "<|im_end|>|_END|>", "<|im_end|>", " <|im_end|>|x<|im_end|>", "<|sep|>", "b"], segments.Select(s => s.Text));
        Assert.Equal([true, false, true, false, true, false], segments.Select(s => s.IsSpecial));
    }
}
