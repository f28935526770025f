using System.CommandLine;
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using IlgpuMedusa.Generation;

namespace IlgpuMedusa.Cli.Commands;

/// <summary><c>generate --model DIR --prompt TEXT ...</c>: streams a continuation, or prints one JSON object with --json.</summary>
internal static class GenerateCommand
{
    public static Command Create()
    {
        var common = new CommonOptions();
        var prompt = new Option<string>("--prompt", "-p") { Description = "The prompt.", Required = true };
        var maxTokens = new Option<int>("--max-tokens", "-n") { Description = "Most tokens to generate.", DefaultValueFactory = _ => 256 };
        var temperature = new Option<float>("--temperature", "-t") { Description = "Sampling temperature; 0 is greedy.", DefaultValueFactory = _ => 0f };
        var topP = new Option<float>("--top-p") { Description = "Nucleus sampling mass in (0, 1].", DefaultValueFactory = _ => 1f };
        var frequencyPenalty = new Option<float>("--frequency-penalty") { Description = "OpenAI's frequency penalty, -2 to 2: a token loses this much per time it was generated." };
        var presencePenalty = new Option<float>("--presence-penalty") { Description = "OpenAI's presence penalty, -2 to 2: a token loses this much once generated." };
        var repetitionPenalty = new Option<float>("--repetition-penalty")
        {
            Description = "Divide (multiply when negative) the logits of tokens already in the prompt or text by this; 1 is none.",
            DefaultValueFactory = _ => 1f,
        };
        var logitBias = new Option<string[]>("--logit-bias") { Description = "ID=BIAS: add BIAS (-100..100) to token ID's logit (repeatable).", AllowMultipleArgumentsPerToken = false };
        var topK = new Option<int>("--top-k") { Description = "Sample among the K most likely tokens only; 0 keeps every token.", DefaultValueFactory = _ => 0 };
        var seed = new Option<ulong>("--seed") { Description = "Random seed for sampling.", DefaultValueFactory = _ => 42UL };
        var stop = new Option<string[]>("--stop") { Description = "Stop sequence (repeatable).", AllowMultipleArgumentsPerToken = false };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of streaming text." };
        var tree = new Option<string?>("--tree") { Description = $"Medusa tree: a preset ({string.Join(", ", IlgpuMedusa.Medusa.TreePresets.Names)}) or a JSON file of paths." };
        var acceptance = new Option<string>("--acceptance") { Description = "Medusa acceptance: greedy (lossless) or typical.", DefaultValueFactory = _ => "greedy" };
        var logprobs = new Option<int?>("--logprobs")
        {
            Description = $"With --json: each generated token's log-probability and its N most likely alternatives (0..{GenerationOptions.MaxTopLogprobs}), as \"logprobs\".",
        };
        var responseFormat = new Option<string>("--response-format")
        {
            Description = "text; json: JSON mode, the continuation is one JSON object (tokens that would break it are never chosen); json_schema: an object following --json-schema.",
            DefaultValueFactory = _ => "text",
        };
        var jsonSchema = new Option<FileInfo?>("--json-schema") { Description = "A JSON schema file: the continuation is an object following it (implies --response-format json_schema)." };
        var command = new Command("generate", "Generate a continuation of a prompt.") { prompt, maxTokens, temperature, topP, topK, seed, stop, json, tree, acceptance, logprobs, frequencyPenalty, presencePenalty, repetitionPenalty, logitBias, responseFormat, jsonSchema };
        common.AddTo(command);
        command.SetAction((parse, cancellationToken) =>
        {
            // The library's MaxTokens 0 (the prompt only) is no continuation: generate asks for at least one token.
            if (parse.GetValue(maxTokens) < 1)
                throw new ArgumentOutOfRangeException(nameof(maxTokens), parse.GetValue(maxTokens), "--max-tokens must be a positive number of tokens.");
            var options = new GenerationOptions
            {
                MaxTokens = parse.GetValue(maxTokens),
                Sampling = Sampling.From(parse.GetValue(temperature), parse.GetValue(topP), parse.GetValue(topK)),
                Seed = parse.GetValue(seed),
                StopSequences = parse.GetValue(stop) ?? [],
                Tree = parse.GetValue(tree),
                Acceptance = IlgpuMedusa.Medusa.Acceptance.Parse(parse.GetValue(acceptance)!),
                Logprobs = parse.GetValue(logprobs),
                FrequencyPenalty = parse.GetValue(frequencyPenalty),
                PresencePenalty = parse.GetValue(presencePenalty),
                RepetitionPenalty = parse.GetValue(repetitionPenalty),
                LogitBias = ParseLogitBias(parse.GetValue(logitBias) ?? []),
            }.WithResponseFormat(parse.GetValue(responseFormat)!, parse.GetValue(jsonSchema)).Validate();
            if (options.Logprobs is not null && !parse.GetValue(json))
                throw new ArgumentException("--logprobs: log-probabilities are printed in the JSON object; add --json.");
            var engineOptions = common.ToEngineOptions(parse);
            using var engine = CommonOptions.LoadEngine(engineOptions);
            Run(engine, parse.GetValue(prompt)!, options, parse.GetValue(json), cancellationToken);
            return Task.FromResult(0);
        });
        return command;
    }

    /// <summary>
    /// --response-format (text; json, or json_object as OpenAI names it; json_schema) and --json-schema FILE, which implies
    /// json_schema.
    /// </summary>
    internal static GenerationOptions WithResponseFormat(this GenerationOptions options, string format, FileInfo? schemaFile)
    {
        var kind = format.ToLowerInvariant() switch
        {
            "text" => ResponseFormat.Text,
            "json" or "json_object" => ResponseFormat.JsonObject,
            "json_schema" => ResponseFormat.JsonSchema,
            _ => throw new ArgumentException($"--response-format: unknown format '{format}'; expected text, json or json_schema."),
        };
        if (schemaFile is null)
        {
            if (kind == ResponseFormat.JsonSchema) throw new ArgumentException("--response-format json_schema needs --json-schema FILE.");
            return options with { ResponseFormat = kind };
        }
        if (kind == ResponseFormat.JsonObject) throw new ArgumentException("--json-schema: a schema is followed with --response-format json_schema (or none), not json.");
        string text;
        try
        {
            text = GenerationOptions.ReadJsonSchemaFile(schemaFile.FullName);
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"--json-schema: {e.Message}", e);
        }
        try
        {
            return (options with { ResponseFormat = ResponseFormat.JsonSchema, JsonSchema = text }).Validate();
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"--json-schema {schemaFile.Name}: {e.Message}", e);
        }
    }

    /// <summary>"ID=BIAS" pairs, as --logit-bias gives them.</summary>
    private static Dictionary<int, float> ParseLogitBias(string[] pairs)
    {
        var biases = new Dictionary<int, float>();
        foreach (var pair in pairs)
        {
            int at = pair.IndexOf('=', StringComparison.Ordinal);
            if (at <= 0 || !int.TryParse(pair.AsSpan(0, at), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int token) ||
                !float.TryParse(pair.AsSpan(at + 1), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out float bias))
                throw new ArgumentException($"--logit-bias: expected ID=BIAS (a token id, a number from -100 to 100), got '{pair}'.");
            biases[token] = bias;
        }
        return biases;
    }

    private static void Run(InferenceEngine engine, string prompt, GenerationOptions options, bool json, CancellationToken cancellationToken)
    {
        var ids = engine.EncodePrompt(prompt, options);
        var stats = new GenerationStats();
        var text = new StringBuilder();
        var tokens = new List<int>();
        var logprobs = new List<TokenLogprob>();
        var clock = Stopwatch.StartNew();
        if (!json) Console.Write(prompt);
        foreach (var piece in engine.Generate(ids, options, stats, cancellationToken))
        {
            text.Append(piece.Text);
            tokens.AddRange(piece.TokenIds);
            if (piece.Logprobs is not null) logprobs.AddRange(piece.Logprobs);
            if (!json)
            {
                Console.Write(piece.Text);
                Console.Out.Flush();
            }
        }
        double seconds = clock.Elapsed.TotalSeconds;
        if (json)
        {
            var result = new Dictionary<string, object>
            {
                ["text"] = text.ToString(),
                ["tokens"] = tokens,
                ["prompt_tokens"] = stats.PromptTokens,
                ["cached_prompt_tokens"] = stats.CachedPromptTokens,
                ["generated_tokens"] = stats.GeneratedTokens,
                ["seconds"] = Math.Round(seconds, 4),
                ["tokens_per_second"] = Math.Round(stats.GeneratedTokens / Math.Max(seconds, 1e-9), 2),
                ["decode_tokens_per_second"] = Math.Round(stats.DecodeTokensPerSecond, 2),
                ["finish_reason"] = stats.FinishReason.ToString(),
                ["device"] = engine.DeviceName,
                ["kv_dtype"] = engine.Pool.Layout.ElementType.ToString().ToLowerInvariant(),
                ["medusa"] = stats.Medusa is not null,
                ["steps"] = stats.Medusa?.Steps ?? stats.Steps + 1,
                ["mean_accepted"] = Math.Round(stats.Medusa?.MeanAccepted ?? 1.0, 3),
                ["accept_histogram"] = stats.Medusa?.AcceptHistogram ?? [],
                ["forced_tokens"] = stats.Medusa?.ForcedTokens ?? 0,
                ["head_hit_rates"] = stats.Medusa?.HeadHitRates().Select(r => Math.Round(r, 3)).ToArray() ?? [],
                ["tree"] = stats.Tree ?? "",
            };
            if (options.Logprobs is not null)
            {
                string Piece(int id) => Encoding.UTF8.GetString(engine.Tokenizer.TokenBytes(id)); // with its leading space
                result["logprobs"] = logprobs.Select(l => new Dictionary<string, object>
                {
                    ["id"] = l.TokenId,
                    ["token"] = Piece(l.TokenId),
                    ["logprob"] = Math.Round(l.Logprob, 5),
                    ["top"] = l.Top.Select(t => new Dictionary<string, object> { ["id"] = t.TokenId, ["token"] = Piece(t.TokenId), ["logprob"] = Math.Round(t.Logprob, 5) }).ToArray(),
                }).ToArray();
            }
            Console.WriteLine(JsonSerializer.Serialize(result));
        }
        else
        {
            Console.WriteLine();
            var medusa = stats.Medusa is { } m
                ? $", Medusa {stats.Tree}: {m.MeanAccepted:0.00} tokens/step{(m.ForcedTokens > 0 ? $" ({m.ForcedTokens} of forced text)" : "")}"
                : ", no Medusa";
            Console.Error.WriteLine(
                $"[{stats.GeneratedTokens} tokens, {stats.DecodeTokensPerSecond:0.0} tok/s decode{medusa}, prefill {stats.PromptTokens} tokens in {stats.PrefillSeconds * 1000:0} ms, {stats.FinishReason}, {engine.DeviceName}]");
        }
    }
}
