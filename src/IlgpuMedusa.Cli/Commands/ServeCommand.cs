using System.CommandLine;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Hosting;
using IlgpuMedusa.Serving;
using Microsoft.Extensions.Logging;

namespace IlgpuMedusa.Cli.Commands;

/// <summary><c>serve --model DIR [--host H] [--port N] ...</c>: the OpenAI-compatible HTTP server until Ctrl+C or SIGTERM.</summary>
internal static class ServeCommand
{
    public static Command Create()
    {
        var common = new CommonOptions();
        var host = new Option<string>("--host")
        {
            Description = "Address to listen on: 127.0.0.1 (this machine only), 0.0.0.0 (every interface) or a host name.",
            DefaultValueFactory = _ => "127.0.0.1",
        };
        var port = new Option<int>("--port") { Description = "TCP port.", DefaultValueFactory = _ => 8080 };
        var modelName = new Option<string?>("--model-name") { Description = "Model id clients name (default: the model directory's name)." };
        var apiKey = new Option<string?>("--api-key")
        {
            Description = "Require 'Authorization: Bearer KEY' on /v1 routes (also ILGPU_MEDUSA_API_KEY).",
        };
        var maxRequests = new Option<int>("--max-concurrent-requests")
        {
            Description = "Completion requests in flight at once (they are batched on the device); one more gets 429.",
            DefaultValueFactory = _ => 64,
        };
        var allowOrigin = new Option<string[]>("--allow-origin")
        {
            Description = "A web origin (https://app.example, or *) whose browser requests are served with CORS headers; repeatable. " +
                "By default requests from web pages (with an Origin header) are refused.",
        };
        var maxTokens = new Option<int>("--max-tokens", "-n") { Description = "Most tokens per reply when a request gives no max_tokens.", DefaultValueFactory = _ => 256 };
        var tree = new Option<string?>("--tree") { Description = $"Medusa tree for requests that name none: a preset ({string.Join(", ", IlgpuMedusa.Medusa.TreePresets.Names)}) or a JSON file of paths." };
        var acceptance = new Option<string>("--acceptance") { Description = "Medusa acceptance for requests that name none: greedy (lossless) or typical.", DefaultValueFactory = _ => "greedy" };
        var template = new Option<string>("--template")
        {
            Description = "Chat template: auto (from the model directory: its own chat template when it has a tokenizer.json; plain for base models such as the demo), model (its own), plain, llama2-chat, vicuna, llama3 or chatml.",
            DefaultValueFactory = _ => "auto",
        };
        var command = new Command("serve", "Serve the model over HTTP with the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models) until Ctrl+C.")
        {
            host, port, modelName, apiKey, allowOrigin, maxRequests, maxTokens, tree, acceptance, template,
        };
        common.AddTo(command);
        command.SetAction(async (parse, cancellationToken) =>
        {
            var defaults = new GenerationOptions
            {
                MaxTokens = parse.GetValue(maxTokens),
                Tree = parse.GetValue(tree),
                Acceptance = IlgpuMedusa.Medusa.Acceptance.Parse(parse.GetValue(acceptance)!),
            }.Validate();
            var serverOptions = new OpenAiServerOptions
            {
                Host = parse.GetValue(host)!,
                Port = parse.GetValue(port),
                ModelName = parse.GetValue(modelName),
                ApiKey = parse.GetValue(apiKey) ?? NonEmpty(Environment.GetEnvironmentVariable("ILGPU_MEDUSA_API_KEY")),
                MaxConcurrentRequests = parse.GetValue(maxRequests),
                AllowedOrigins = parse.GetValue(allowOrigin) ?? [],
                // Program gives this command ShutdownSeconds after Ctrl+C or SIGTERM before it ends the process.
                ShutdownGrace = TimeSpan.FromSeconds(2),
            }.Validate();
            var kind = ParseTemplate(parse.GetValue(template)!);
            using var engine = CommonOptions.LoadEngine(common.ToEngineOptions(parse));
            using var chat = new IlgpuMedusaChatClient(engine, kind, defaults);
            using var logging = new StderrLoggerProvider();
            await using var server = new OpenAiServer(chat, serverOptions, logging.CreateLogger("serve"));
            server.Start();
            Console.Error.WriteLine(
                $"Serving '{server.ModelId}' ({(chat.ModelTemplate is { } own ? $"its own chat template from {Path.GetFileName(own.Origin)}" : $"{chat.Template} chat template")}, {engine.DeviceName}, " +
                $"{(engine.Heads is null ? "no Medusa heads" : $"Medusa tree {defaults.Tree ?? engine.DefaultTree}")}) at {server.BaseAddress}v1" +
                $"{(server.AllInterfaces ? $" (listening on every IPv4 interface, port {serverOptions.Port})" : "")} " +
                $"{(serverOptions.ApiKey is null ? "" : "(API key required) ")}- Ctrl+C stops.");
            await server.RunAsync(cancellationToken);
            Console.Error.WriteLine("Stopped.");
            return 0;
        });
        return command;
    }

    /// <summary>
    /// How long the process may take to stop after Ctrl+C or SIGTERM: two seconds of grace for requests in flight, two
    /// for cancelled ones to send their last event, up to five of closing connections that neither send nor read, then
    /// the engine's disposal.
    /// </summary>
    public const int ShutdownSeconds = 15;

    private static string? NonEmpty(string? value) => string.IsNullOrEmpty(value) ? null : value;

    private static ChatTemplateKind ParseTemplate(string text) => text.ToLowerInvariant() switch
    {
        "auto" => ChatTemplateKind.Auto,
        "plain" => ChatTemplateKind.Plain,
        "llama2-chat" or "llama2chat" => ChatTemplateKind.Llama2Chat,
        "vicuna" => ChatTemplateKind.Vicuna,
        "llama3" or "llama-3" => ChatTemplateKind.Llama3,
        "chatml" => ChatTemplateKind.ChatML,
        "model" => ChatTemplateKind.Model,
        _ => throw new ArgumentException($"--template: unknown chat template '{text}'; expected auto, model, plain, llama2-chat, vicuna, llama3 or chatml.", nameof(text)),
    };

    /// <summary>Request lines and server errors on standard error, one line each with the time.</summary>
    private sealed class StderrLoggerProvider : ILoggerProvider
    {
        private readonly object _lock = new();

        public ILogger CreateLogger(string categoryName) => new Logger(this);

        public void Dispose()
        {
        }

        private sealed class Logger(StderrLoggerProvider owner) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                if (!IsEnabled(logLevel)) return;
                var level = logLevel >= LogLevel.Error ? "error: " : logLevel == LogLevel.Warning ? "warning: " : "";
                var line = $"[{DateTime.Now:HH:mm:ss}] {level}{formatter(state, exception)}";
                if (exception is not null && logLevel >= LogLevel.Error) line += Environment.NewLine + exception;
                lock (owner._lock) Console.Error.WriteLine(line);
            }
        }
    }
}
