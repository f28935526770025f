using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Hosting;
using IlgpuMedusa.Scheduling;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace IlgpuMedusa.Serving;

/// <summary>
/// An HTTP server that answers the OpenAI API's completion routes on one loaded model, so that OpenAI clients and
/// tools work against this runtime unchanged:
/// <list type="bullet">
/// <item><c>POST /v1/chat/completions</c>: a conversation, through <see cref="IlgpuMedusaChatClient"/> (its chat template).</item>
/// <item><c>POST /v1/completions</c>: a plain prompt continued as it is (BOS first).</item>
/// <item><c>GET /v1/models</c>, <c>GET /v1/models/{id}</c>: the one model served.</item>
/// <item><c>GET /health</c>: <c>{"status": "ok"}</c> (no API key needed).</item>
/// </list>
/// Both completion routes stream as server-sent events with <c>"stream": true</c> (chunks, then <c>data: [DONE]</c>).
/// Concurrent requests are generated together by the engine's scheduler (continuous batching, Medusa per sequence).
/// Errors come in OpenAI's shape with a status that says whose fault it is (400 bad field, 401 key, 404 route or
/// model, 405 method, 413 body too large, 429 too many requests in flight, 500 the server's own, 503 shutting down);
/// the message names the field. A streaming client that disconnects cancels its generation, which frees its KV
/// blocks at once. Built on <see cref="HttpListener"/>, part of .NET itself, so the library needs no web framework.
/// </summary>
public sealed class OpenAiServer : IAsyncDisposable
{
    private static readonly JsonDocumentOptions JsonOptions = new() { MaxDepth = 32 };
    private static readonly byte[] DataPrefix = "data: "u8.ToArray();
    private static readonly byte[] EventEnd = "\n\n"u8.ToArray();
    private static readonly byte[] DoneEvent = "data: [DONE]\n\n"u8.ToArray();

    /// <summary>Most bytes of a too-large body read (and dropped) so that its sender still gets the 413.</summary>
    private const long DrainLimit = 64L << 20;

    private readonly InferenceEngine _engine;
    private readonly IlgpuMedusaChatClient _chat;
    private readonly OpenAiServerOptions _options;
    private readonly ILogger _logger;
    private readonly HttpListener _listener = new();
    private readonly CancellationTokenSource _cancelRequests = new();
    private readonly SemaphoreSlim _slots;
    private readonly ConcurrentDictionary<long, Task> _inFlight = new();
    private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    private readonly object _lock = new();
    private Task? _acceptLoop;
    private long _nextRequest;
    private bool _started;
    private bool _stopping;
    private Task? _stopped;

    /// <summary>Creates a server for <paramref name="chat"/>'s engine; nothing listens until <see cref="Start"/>.</summary>
    /// <param name="chat">The chat client: its engine generates, its template lays out conversations, its defaults apply to fields a request leaves out.</param>
    /// <param name="options">Address, limits, API key; null for the defaults (127.0.0.1:8080).</param>
    /// <param name="logger">One line per request (method, route, status, tokens, time) and server errors; null for none.</param>
    public OpenAiServer(IlgpuMedusaChatClient chat, OpenAiServerOptions? options = null, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(chat);
        _chat = chat;
        _engine = chat.GetService(typeof(InferenceEngine)) as InferenceEngine
            ?? throw new ArgumentException("the chat client has no InferenceEngine.", nameof(chat));
        _options = (options ?? new OpenAiServerOptions()).Validate();
        _logger = logger ?? NullLogger.Instance;
        _slots = new SemaphoreSlim(_options.MaxConcurrentRequests, _options.MaxConcurrentRequests);
        ModelId = _options.ModelName ?? chat.ModelId;
        bool anyInterface = _options.Host is "0.0.0.0" or "*" or "+" or "::" or "[::]";
        string host = anyInterface ? "*" : _options.Host.Contains(':', StringComparison.Ordinal) && !_options.Host.StartsWith('[') ? $"[{_options.Host}]" : _options.Host;
        // HttpListener matches a request's Host header against the prefixes: a loopback server answers both names.
        foreach (var name in host is "127.0.0.1" or "localhost" ? (string[])["127.0.0.1", "localhost"] : [host])
            _listener.Prefixes.Add($"http://{name}:{_options.Port}/");
        BaseAddress = new Uri($"http://{(anyInterface ? "127.0.0.1" : host)}:{_options.Port}/");
    }

    /// <summary>The model id requests name and <c>GET /v1/models</c> lists.</summary>
    public string ModelId { get; }

    /// <summary>Where a client on this machine reaches the server (for every interface: through 127.0.0.1).</summary>
    public Uri BaseAddress { get; }

    /// <summary>Requests being answered now.</summary>
    public int RequestsInFlight => _inFlight.Count;

    /// <summary>Starts listening and accepting requests.</summary>
    /// <exception cref="IOException">The address cannot be listened on (in use, not this machine's, no permission); the message names it.</exception>
    public void Start()
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_stopping, this);
            if (_started) throw new InvalidOperationException("the server is already started.");
            try
            {
                _listener.Start();
            }
            catch (HttpListenerException e)
            {
                throw new IOException($"cannot listen on http://{_options.Host}:{_options.Port}/ (--host, --port): {e.Message}", e);
            }
            _started = true;
            _acceptLoop = Task.Run(AcceptLoopAsync);
        }
        _logger.LogInformation("serving {Model} at {Address} (OpenAI API: /v1/chat/completions, /v1/completions, /v1/models)", ModelId, BaseAddress);
    }

    /// <summary>Starts (unless started) and serves until <paramref name="cancellationToken"/> is cancelled, then stops as <see cref="StopAsync"/> does.</summary>
    public async Task RunAsync(CancellationToken cancellationToken)
    {
        if (!_started) Start();
        try
        {
            await Task.Delay(Timeout.Infinite, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
        await StopAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// Stops accepting connections, lets requests in flight go on for <see cref="OpenAiServerOptions.ShutdownGrace"/>,
    /// cancels those still running (a streaming client sees an error event, a waiting one a 503) and waits for them.
    /// Safe to call more than once. The engine is not disposed: it belongs to the caller.
    /// </summary>
    public Task StopAsync()
    {
        lock (_lock)
        {
            _stopping = true;
            return _stopped ??= StopCoreAsync();
        }
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync() => await StopAsync().ConfigureAwait(false);

    private async Task StopCoreAsync()
    {
        if (_started)
        {
            // The listener stays open while requests in flight finish (stopping it would drop their connections);
            // requests that arrive meanwhile are answered 503.
            var pending = Task.WhenAll(_inFlight.Values);
            if (await Task.WhenAny(pending, Task.Delay(_options.ShutdownGrace)).ConfigureAwait(false) != pending)
            {
                _logger.LogInformation("cancelling {Count} requests still running after {Grace} s", _inFlight.Count, _options.ShutdownGrace.TotalSeconds);
                await _cancelRequests.CancelAsync().ConfigureAwait(false);
            }
            await Task.WhenAll(_inFlight.Values).ConfigureAwait(false);
            _listener.Stop(); // ends GetContextAsync
            await _acceptLoop!.ConfigureAwait(false);
            await Task.WhenAll(_inFlight.Values).ConfigureAwait(false); // the 503s of requests accepted in between
        }
        _listener.Close();
        _cancelRequests.Dispose();
    }

    private async Task AcceptLoopAsync()
    {
        while (true)
        {
            HttpListenerContext context;
            try
            {
                context = await _listener.GetContextAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException)
            {
                if (Volatile.Read(ref _stopping)) return;
                _logger.LogWarning("accepting a connection failed: {Message}", e.Message);
                continue;
            }
            long id = Interlocked.Increment(ref _nextRequest);
            // Tracked until done, so that a stop waits for it; the task removes itself.
            var task = new Task<Task>(() => HandleAsync(context));
            _inFlight[id] = task.Unwrap().ContinueWith(_ => _inFlight.TryRemove(id, out Task? _), TaskScheduler.Default);
            task.Start(TaskScheduler.Default);
        }
    }

    private async Task HandleAsync(HttpListenerContext context)
    {
        var exchange = new Exchange(context);
        var clock = Stopwatch.StartNew();
        string method = context.Request.HttpMethod, path = context.Request.Url?.AbsolutePath ?? "/";
        string outcome;
        try
        {
            outcome = await RouteAsync(exchange, method, path.Length > 1 ? path.TrimEnd('/') : path).ConfigureAwait(false);
        }
        catch (Exception e) when (IsClientGone(e))
        {
            outcome = "client disconnected; generation cancelled";
            exchange.Abort();
        }
        catch (Exception e)
        {
            var error = ToError(e);
            outcome = error.Message;
            if ((int)error.Status >= 500 && e is not OperationCanceledException) _logger.LogError(e, "{Method} {Path} failed", method, path);
            try
            {
                await exchange.WriteErrorAsync(error).ConfigureAwait(false);
            }
            catch (Exception w) when (IsClientGone(w))
            {
                exchange.Abort();
            }
        }
        exchange.Close();
        _logger.LogInformation("{Method} {Path} {Status} {Seconds:0.000} s: {Outcome}", method, path, exchange.Status, clock.Elapsed.TotalSeconds, outcome);
    }

    private async Task<string> RouteAsync(Exchange exchange, string method, string path)
    {
        if (Volatile.Read(ref _stopping))
            throw new OpenAiErrorException(HttpStatusCode.ServiceUnavailable, "the server is shutting down.", type: "server_error", code: "shutting_down");
        if (path == "/health")
        {
            RequireMethod(exchange, method, "GET");
            await exchange.WriteJsonAsync(HttpStatusCode.OK, Json(w => w.WriteString("status", "ok"))).ConfigureAwait(false);
            return "ok";
        }
        if (!path.StartsWith("/v1/", StringComparison.Ordinal)) throw NoRoute(method, path);
        Authorize(exchange);
        switch (path)
        {
            case "/v1/models":
                RequireMethod(exchange, method, "GET");
                await exchange.WriteJsonAsync(HttpStatusCode.OK, Json(w =>
                {
                    w.WriteString("object", "list");
                    w.WriteStartArray("data");
                    WriteModel(w);
                    w.WriteEndArray();
                })).ConfigureAwait(false);
                return "1 model";
            case "/v1/chat/completions":
                RequireMethod(exchange, method, "POST");
                return await ChatAsync(exchange).ConfigureAwait(false);
            case "/v1/completions":
                RequireMethod(exchange, method, "POST");
                return await CompletionAsync(exchange).ConfigureAwait(false);
        }
        if (path.StartsWith("/v1/models/", StringComparison.Ordinal))
        {
            RequireMethod(exchange, method, "GET");
            var id = Uri.UnescapeDataString(path["/v1/models/".Length..]);
            if (id != ModelId)
                throw new OpenAiErrorException(HttpStatusCode.NotFound, $"model '{id}' is not served here; this server serves '{ModelId}'.", "model", code: "model_not_found");
            await exchange.WriteJsonAsync(HttpStatusCode.OK, Json(WriteModelFields)).ConfigureAwait(false);
            return ModelId;
        }
        throw NoRoute(method, path);
    }

    private static OpenAiErrorException NoRoute(string method, string path) => new(HttpStatusCode.NotFound,
        $"no route {method} {path}; this server answers POST /v1/chat/completions, POST /v1/completions, GET /v1/models and GET /health.", code: "unknown_url");

    private static void RequireMethod(Exchange exchange, string method, string allowed)
    {
        if (method == allowed || (allowed == "GET" && method == "HEAD")) return;
        exchange.Response.AddHeader("Allow", allowed);
        throw new OpenAiErrorException(HttpStatusCode.MethodNotAllowed, $"{method} is not allowed here; use {allowed}.", code: "method_not_allowed");
    }

    private void Authorize(Exchange exchange)
    {
        if (_options.ApiKey is not { } key) return;
        var header = exchange.Request.Headers["Authorization"];
        var given = header is not null && header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) ? header["Bearer ".Length..].Trim() : "";
        if (CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(given), Encoding.UTF8.GetBytes(key))) return;
        exchange.Response.AddHeader("WWW-Authenticate", "Bearer");
        throw new OpenAiErrorException(HttpStatusCode.Unauthorized,
            header is null ? "this server needs an API key: send the header 'Authorization: Bearer <key>'." : "the API key is not valid.", code: "invalid_api_key");
    }

    private async Task<string> ChatAsync(Exchange exchange)
    {
        using var body = await ReadBodyAsync(exchange).ConfigureAwait(false);
        var request = OpenAiRequests.ParseChat(body.RootElement, ModelId);
        using var slot = TakeSlot();
        string id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        if (!request.Stream)
        {
            var response = await _chat.GetResponseAsync(request.Messages, request.Options, _cancelRequests.Token).ConfigureAwait(false);
            await exchange.WriteJsonAsync(HttpStatusCode.OK, Json(w =>
            {
                WriteHeader(w, id, "chat.completion", created);
                w.WriteStartArray("choices");
                w.WriteStartObject();
                w.WriteNumber("index", 0);
                w.WriteStartObject("message");
                w.WriteString("role", "assistant");
                w.WriteString("content", response.Text);
                w.WriteEndObject();
                w.WriteNull("logprobs");
                w.WriteString("finish_reason", FinishReasonName(response.FinishReason));
                w.WriteEndObject();
                w.WriteEndArray();
                WriteUsage(w, response.Usage);
                WriteStatistics(w, response.AdditionalProperties);
            })).ConfigureAwait(false);
            return $"{response.Usage?.OutputTokenCount} tokens, {FinishReasonName(response.FinishReason)}";
        }

        var updates = _chat.GetStreamingResponseAsync(request.Messages, request.Options, _cancelRequests.Token).GetAsyncEnumerator();
        await using (updates.ConfigureAwait(false))
        {
            // The first update before the response starts: a request the engine refuses still gets its status code.
            bool more = await updates.MoveNextAsync().ConfigureAwait(false);
            exchange.BeginEvents();
            await exchange.WriteEventAsync(Json(w => WriteChatChunk(w, id, created, role: true, "", null))).ConfigureAwait(false);
            ChatFinishReason? finish = null;
            UsageDetails? usage = null;
            AdditionalPropertiesDictionary? statistics = null;
            for (; more; more = await updates.MoveNextAsync().ConfigureAwait(false))
            {
                var update = updates.Current;
                var text = update.Text;
                if (text.Length > 0) await exchange.WriteEventAsync(Json(w => WriteChatChunk(w, id, created, role: false, text, null))).ConfigureAwait(false);
                finish = update.FinishReason ?? finish;
                usage = update.Contents.OfType<UsageContent>().FirstOrDefault()?.Details ?? usage;
                statistics = update.AdditionalProperties ?? statistics;
            }
            await exchange.WriteEventAsync(Json(w =>
            {
                WriteChatChunk(w, id, created, role: false, null, FinishReasonName(finish));
                if (!request.IncludeUsage) WriteStatistics(w, statistics);
            })).ConfigureAwait(false);
            if (request.IncludeUsage) await exchange.WriteEventAsync(Json(w => WriteUsageChunk(w, id, "chat.completion.chunk", created, usage, statistics))).ConfigureAwait(false);
            await exchange.WriteDoneAsync().ConfigureAwait(false);
            return $"{usage?.OutputTokenCount} tokens streamed, {FinishReasonName(finish)}";
        }
    }

    private async Task<string> CompletionAsync(Exchange exchange)
    {
        using var body = await ReadBodyAsync(exchange).ConfigureAwait(false);
        var request = OpenAiRequests.ParseCompletion(body.RootElement, ModelId);
        var options = _chat.ToGenerationOptions(request.Options);
        var ids = _engine.EncodePrompt(request.Prompt, options);
        using var slot = TakeSlot();
        string id = "cmpl-" + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var stats = new GenerationStats();
        var pieces = _engine.GenerateAsync(ids, options, stats, _cancelRequests.Token).GetAsyncEnumerator();
        await using (pieces.ConfigureAwait(false))
        {
            bool more = await pieces.MoveNextAsync().ConfigureAwait(false);
            if (!request.Stream)
            {
                var text = new StringBuilder();
                for (; more; more = await pieces.MoveNextAsync().ConfigureAwait(false)) text.Append(pieces.Current.Text);
                await exchange.WriteJsonAsync(HttpStatusCode.OK, Json(w =>
                {
                    WriteHeader(w, id, "text_completion", created);
                    w.WriteStartArray("choices");
                    WriteCompletionChoice(w, text.ToString(), FinishReasonName(IlgpuMedusaChatClient.FinishReasonOf(stats)));
                    w.WriteEndArray();
                    WriteUsage(w, stats);
                    WriteStatistics(w, IlgpuMedusaChatClient.PropertiesOf(stats));
                })).ConfigureAwait(false);
                return $"{stats.GeneratedTokens} tokens, {FinishReasonName(IlgpuMedusaChatClient.FinishReasonOf(stats))}";
            }
            exchange.BeginEvents();
            for (; more; more = await pieces.MoveNextAsync().ConfigureAwait(false))
            {
                var text = pieces.Current.Text;
                if (text.Length == 0) continue;
                await exchange.WriteEventAsync(Json(w =>
                {
                    WriteHeader(w, id, "text_completion", created);
                    w.WriteStartArray("choices");
                    WriteCompletionChoice(w, text, null);
                    w.WriteEndArray();
                })).ConfigureAwait(false);
            }
            var finish = FinishReasonName(IlgpuMedusaChatClient.FinishReasonOf(stats));
            var statistics = IlgpuMedusaChatClient.PropertiesOf(stats);
            await exchange.WriteEventAsync(Json(w =>
            {
                WriteHeader(w, id, "text_completion", created);
                w.WriteStartArray("choices");
                WriteCompletionChoice(w, "", finish);
                w.WriteEndArray();
                if (!request.IncludeUsage) WriteStatistics(w, statistics);
            })).ConfigureAwait(false);
            if (request.IncludeUsage) await exchange.WriteEventAsync(Json(w => WriteUsageChunk(w, id, "text_completion", created, UsageOf(stats), statistics))).ConfigureAwait(false);
            await exchange.WriteDoneAsync().ConfigureAwait(false);
            return $"{stats.GeneratedTokens} tokens streamed, {finish}";
        }
    }

    /// <summary>A place among the requests in flight, or 429 when all are taken.</summary>
    private SemaphoreReleaser TakeSlot()
    {
        if (!_slots.Wait(0))
            throw new OpenAiErrorException(HttpStatusCode.TooManyRequests,
                $"the server is already answering {_options.MaxConcurrentRequests} requests (--max-concurrent-requests); try again shortly.",
                type: "rate_limit_error", code: "too_many_requests");
        return new SemaphoreReleaser(_slots);
    }

    private async Task<JsonDocument> ReadBodyAsync(Exchange exchange)
    {
        var request = exchange.Request;
        int max = _options.MaxRequestBytes;
        var chunk = new byte[16384];
        int read;
        if (request.ContentLength64 > max) throw await TooLarge(request.ContentLength64).ConfigureAwait(false);
        using var buffer = new MemoryStream();
        while ((read = await request.InputStream.ReadAsync(chunk).ConfigureAwait(false)) > 0)
        {
            if (buffer.Length + read > max) throw await TooLarge(buffer.Length + read).ConfigureAwait(false);
            buffer.Write(chunk, 0, read);
        }
        if (buffer.Length == 0) throw new OpenAiErrorException(HttpStatusCode.BadRequest, "the request has no body; expected a JSON object.");
        try
        {
            return JsonDocument.Parse(buffer.GetBuffer().AsMemory(0, (int)buffer.Length), JsonOptions);
        }
        catch (JsonException e)
        {
            throw new OpenAiErrorException(HttpStatusCode.BadRequest, $"the request body is not valid JSON: {e.Message}");
        }

        async Task<OpenAiErrorException> TooLarge(long bytes)
        {
            // Read the rest (up to a bound) before answering: a client still sending would otherwise see a broken
            // connection instead of the 413.
            long drained = 0;
            while (drained < DrainLimit && (read = await request.InputStream.ReadAsync(chunk).ConfigureAwait(false)) > 0) drained += read;
            return new(HttpStatusCode.RequestEntityTooLarge,
                $"the request body is {(request.ContentLength64 > 0 ? bytes.ToString(System.Globalization.CultureInfo.InvariantCulture) : "more than " + max)} bytes; this server accepts at most {max}.",
                code: "request_too_large");
        }
    }

    private OpenAiErrorException ToError(Exception e) => e switch
    {
        OpenAiErrorException o => o,
        OperationCanceledException when _cancelRequests.IsCancellationRequested =>
            new(HttpStatusCode.ServiceUnavailable, "the server is shutting down; the request was cancelled.", type: "server_error", code: "shutting_down"),
        KvPoolExhaustedException k => new(HttpStatusCode.BadRequest, $"the request does not fit the server's KV cache: {k.Message}", "max_tokens", code: "kv_budget_exceeded"),
        ArgumentException a => new(HttpStatusCode.BadRequest, WithoutParameterSuffix(a.Message)),
        _ => new(HttpStatusCode.InternalServerError, $"internal error: {e.GetType().Name}: {e.Message}", type: "server_error"),
    };

    /// <summary>.NET appends " (Parameter 'x')" to argument errors; a client does not know those names.</summary>
    private static string WithoutParameterSuffix(string message)
    {
        int at = message.IndexOf(" (Parameter '", StringComparison.Ordinal);
        return at < 0 ? message : message[..at];
    }

    /// <summary>Errors that mean the client closed the connection: nothing more can be said to it.</summary>
    private static bool IsClientGone(Exception e) => e is HttpListenerException or IOException or ObjectDisposedException;

    private static string FinishReasonName(ChatFinishReason? reason) => reason == ChatFinishReason.Length ? "length" : "stop";

    private static UsageDetails UsageOf(GenerationStats stats) => new()
    {
        InputTokenCount = stats.PromptTokens,
        OutputTokenCount = stats.GeneratedTokens,
        TotalTokenCount = stats.PromptTokens + stats.GeneratedTokens,
    };

    private void WriteModel(Utf8JsonWriter w)
    {
        w.WriteStartObject();
        WriteModelFields(w);
        w.WriteEndObject();
    }

    private void WriteModelFields(Utf8JsonWriter w)
    {
        w.WriteString("id", ModelId);
        w.WriteString("object", "model");
        w.WriteNumber("created", _created);
        w.WriteString("owned_by", "ilgpu-medusa");
        w.WriteNumber("max_model_len", _engine.Config.MaxSequenceLength);
        w.WriteString("device", _engine.DeviceName);
        w.WriteBoolean("medusa", _engine.Heads is not null);
    }

    private void WriteHeader(Utf8JsonWriter w, string id, string kind, long created)
    {
        w.WriteString("id", id);
        w.WriteString("object", kind);
        w.WriteNumber("created", created);
        w.WriteString("model", ModelId);
    }

    private void WriteChatChunk(Utf8JsonWriter w, string id, long created, bool role, string? content, string? finish)
    {
        WriteHeader(w, id, "chat.completion.chunk", created);
        w.WriteStartArray("choices");
        w.WriteStartObject();
        w.WriteNumber("index", 0);
        w.WriteStartObject("delta");
        if (role) w.WriteString("role", "assistant");
        if (content is not null) w.WriteString("content", content);
        w.WriteEndObject();
        w.WriteNull("logprobs");
        if (finish is null) w.WriteNull("finish_reason");
        else w.WriteString("finish_reason", finish);
        w.WriteEndObject();
        w.WriteEndArray();
    }

    private static void WriteCompletionChoice(Utf8JsonWriter w, string text, string? finish)
    {
        w.WriteStartObject();
        w.WriteNumber("index", 0);
        w.WriteString("text", text);
        w.WriteNull("logprobs");
        if (finish is null) w.WriteNull("finish_reason");
        else w.WriteString("finish_reason", finish);
        w.WriteEndObject();
    }

    /// <summary>OpenAI's last streamed chunk when <c>stream_options.include_usage</c> is set: no choices, the usage.</summary>
    private void WriteUsageChunk(Utf8JsonWriter w, string id, string kind, long created, UsageDetails? usage, AdditionalPropertiesDictionary? statistics)
    {
        WriteHeader(w, id, kind, created);
        w.WriteStartArray("choices");
        w.WriteEndArray();
        WriteUsage(w, usage);
        WriteStatistics(w, statistics);
    }

    private static void WriteUsage(Utf8JsonWriter w, GenerationStats stats) => WriteUsage(w, UsageOf(stats));

    private static void WriteUsage(Utf8JsonWriter w, UsageDetails? usage)
    {
        w.WriteStartObject("usage");
        w.WriteNumber("prompt_tokens", usage?.InputTokenCount ?? 0);
        w.WriteNumber("completion_tokens", usage?.OutputTokenCount ?? 0);
        w.WriteNumber("total_tokens", usage?.TotalTokenCount ?? 0);
        w.WriteEndObject();
    }

    /// <summary>This runtime's decoding statistics (tokens/s, Medusa steps and mean accepted tokens) as <c>"ilgpu_medusa"</c>; clients ignore fields they do not know.</summary>
    private static void WriteStatistics(Utf8JsonWriter w, AdditionalPropertiesDictionary? statistics)
    {
        if (statistics is null) return;
        w.WriteStartObject("ilgpu_medusa");
        foreach (var (key, value) in statistics)
        {
            switch (value)
            {
                case null: w.WriteNull(key); break;
                case bool b: w.WriteBoolean(key, b); break;
                case int i: w.WriteNumber(key, i); break;
                case long l: w.WriteNumber(key, l); break;
                case double d when double.IsFinite(d): w.WriteNumber(key, d); break;
                case double: w.WriteNull(key); break;
                default: w.WriteString(key, value.ToString()); break;
            }
        }
        w.WriteEndObject();
    }

    private static byte[] Json(Action<Utf8JsonWriter> write)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(512);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            write(w);
            w.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    private readonly struct SemaphoreReleaser(SemaphoreSlim semaphore) : IDisposable
    {
        public void Dispose() => semaphore.Release();
    }

    /// <summary>One request and its response: what was sent so far decides how an error can still be told.</summary>
    private sealed class Exchange(HttpListenerContext context)
    {
        public HttpListenerRequest Request => context.Request;

        public HttpListenerResponse Response => context.Response;

        /// <summary>The status sent (0 until the response starts).</summary>
        public int Status { get; private set; }

        private bool Streaming { get; set; }

        public async Task WriteJsonAsync(HttpStatusCode status, byte[] json)
        {
            Status = (int)status;
            Response.StatusCode = Status;
            Response.ContentType = "application/json; charset=utf-8";
            Response.ContentLength64 = json.Length;
            if (Request.HttpMethod != "HEAD") await Response.OutputStream.WriteAsync(json).ConfigureAwait(false);
        }

        public void BeginEvents()
        {
            Status = 200;
            Response.StatusCode = 200;
            Response.ContentType = "text/event-stream; charset=utf-8";
            Response.AddHeader("Cache-Control", "no-cache");
            Response.SendChunked = true;
            Streaming = true;
        }

        public async Task WriteEventAsync(byte[] json)
        {
            var output = Response.OutputStream;
            await output.WriteAsync(DataPrefix).ConfigureAwait(false);
            await output.WriteAsync(json).ConfigureAwait(false);
            await output.WriteAsync(EventEnd).ConfigureAwait(false);
            await output.FlushAsync().ConfigureAwait(false);
        }

        public async Task WriteDoneAsync()
        {
            await Response.OutputStream.WriteAsync(DoneEvent).ConfigureAwait(false);
            await Response.OutputStream.FlushAsync().ConfigureAwait(false);
        }

        /// <summary>As a JSON response, or, once events are streaming, as a last event (the status is already sent).</summary>
        public async Task WriteErrorAsync(OpenAiErrorException error)
        {
            var json = Json(w =>
            {
                w.WriteStartObject("error");
                w.WriteString("message", error.Message);
                w.WriteString("type", error.Type);
                if (error.Param is null) w.WriteNull("param");
                else w.WriteString("param", error.Param);
                if (error.Code is null) w.WriteNull("code");
                else w.WriteString("code", error.Code);
                w.WriteEndObject();
            });
            if (!Streaming)
            {
                if (error.Status == HttpStatusCode.TooManyRequests) Response.AddHeader("Retry-After", "1");
                await WriteJsonAsync(error.Status, json).ConfigureAwait(false);
                return;
            }
            await WriteEventAsync(json).ConfigureAwait(false);
            await WriteDoneAsync().ConfigureAwait(false);
        }

        public void Close()
        {
            try
            {
                Response.Close();
            }
            catch (Exception e) when (IsClientGone(e) || e is InvalidOperationException)
            {
                Abort();
            }
        }

        public void Abort()
        {
            try
            {
                Response.Abort();
            }
            catch (Exception e) when (IsClientGone(e) || e is InvalidOperationException)
            {
                // already closed
            }
        }
    }
}
