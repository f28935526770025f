using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Hosting;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Tokenization;
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
/// Errors come in OpenAI's shape with a status that says whose fault it is (400 bad field, 401 key, 403 a web page of
/// another origin, 404 route or model, 405 method, 408 body too slow, 413 body too large, 429 too many requests in
/// flight, 500 the server's own, 503 shutting down); the message names the field. A streaming client that disconnects cancels its generation, which frees its KV
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

    /// <summary>After shutdown cancels the requests in flight, how long they may take to send their last event before their connections are closed.</summary>
    private static readonly TimeSpan CancelledRequestGrace = TimeSpan.FromSeconds(2);

    private readonly InferenceEngine _engine;
    private readonly IlgpuMedusaChatClient _chat;
    private readonly OpenAiServerOptions _options;
    private readonly ILogger _logger;
    private readonly HttpListener _listener = new();
    private readonly CancellationTokenSource _cancelRequests = new();
    private readonly SemaphoreSlim _slots;
    private readonly ConcurrentDictionary<long, Task> _inFlight = new();
    private readonly ConcurrentDictionary<long, Exchange> _exchanges = new();
    private readonly byte[]? _apiKeyHash;
    private readonly Lazy<long> _promptCharacterLimit;
    private readonly OpenAiLogprobs _logprobs;
    private readonly ServerMetrics _metrics = new();
    private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    private readonly object _lock = new();
    private Task? _acceptLoop;
    private long _nextRequest;
    private long _nextExchange;
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
        _apiKeyHash = _options.ApiKey is { } key ? SHA256.HashData(Encoding.UTF8.GetBytes(key)) : null;
        _promptCharacterLimit = new Lazy<long>(PromptCharacterLimit);
        _logprobs = new OpenAiLogprobs(_engine.Tokenizer);
        AllInterfaces = _options.Host is "0.0.0.0" or "*" or "+";
        string host = AllInterfaces ? "*" : _options.Host;
        // HttpListener matches a request's Host header against the prefixes: a loopback server answers both names.
        foreach (var name in host is "127.0.0.1" or "localhost" ? (string[])["127.0.0.1", "localhost"] : [host])
            _listener.Prefixes.Add($"http://{name}:{_options.Port}/");
        BaseAddress = new Uri($"http://{(AllInterfaces ? "127.0.0.1" : host)}:{_options.Port}/");
    }

    /// <summary>Whether the server listens on every IPv4 interface (<c>0.0.0.0</c>) rather than one address.</summary>
    public bool AllInterfaces { get; }

    /// <summary>The model id requests name and <c>GET /v1/models</c> lists.</summary>
    public string ModelId { get; }

    /// <summary>Where a client on this machine reaches the server (for every interface: through 127.0.0.1).</summary>
    public Uri BaseAddress { get; }

    /// <summary>HTTP requests being handled now, of every route (a completion request counts from its arrival to its last byte).</summary>
    public int RequestsInFlight => _inFlight.Count;

    /// <summary>Starts listening and accepting requests.</summary>
    /// <exception cref="IOException">The address cannot be listened on (in use, not this machine's, no permission); the message names it.</exception>
    public void Start()
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_stopping, this);
            if (_started) throw new InvalidOperationException("the server is already started.");
            // The defaults' tree (a file, perhaps) is resolved now, so that a bad one fails the start, not every request.
            _engine.CheckTree(_chat.Defaults);
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
        if (AllInterfaces && _options.ApiKey is null)
            _logger.LogWarning("listening on every interface without an API key: anyone who can reach port {Port} can use the model (--api-key)", _options.Port);
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
            // A cancelled request still writes its last event; one whose client neither sends nor reads is cut off,
            // again every half second for requests that arrive meanwhile (they are answered 503 at once, without
            // reading their bodies, and their connections closed).
            pending = Task.WhenAll(_inFlight.Values);
            if (await Task.WhenAny(pending, Task.Delay(CancelledRequestGrace)).ConfigureAwait(false) != pending)
            {
                _logger.LogInformation("closing {Count} connections that did not finish", _exchanges.Count);
                // At most ten rounds: a flood of new connections must not keep the listener open for ever.
                for (int round = 0; round < 10 && !_inFlight.IsEmpty; round++)
                {
                    foreach (var exchange in _exchanges.Values) exchange.Abort();
                    pending = Task.WhenAll(_inFlight.Values);
                    await Task.WhenAny(pending, Task.Delay(500)).ConfigureAwait(false);
                }
            }
            _listener.Stop(); // ends GetContextAsync
            await _acceptLoop!.ConfigureAwait(false);
            foreach (var exchange in _exchanges.Values) exchange.Abort(); // requests accepted in between
            await Task.WhenAll(_inFlight.Values).ConfigureAwait(false);
        }
        try
        {
            _listener.Close();
        }
        catch (HttpListenerException)
        {
            // A listener whose start failed (its port taken) throws that failure again from Close: the start already reported it.
        }
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
        long id = Interlocked.Increment(ref _nextExchange);
        var exchange = new Exchange(context);
        _exchanges[id] = exchange;
        var clock = Stopwatch.StartNew();
        string method = context.Request.HttpMethod, path = context.Request.Url?.AbsolutePath ?? "/";
        string route = path.Length > 1 ? path.TrimEnd('/') : path;
        string outcome = "";
        try
        {
            outcome = await RouteAsync(exchange, method, route).ConfigureAwait(false);
        }
        catch (ClientGoneException e)
        {
            outcome = e.Message;
            exchange.Abort();
        }
        catch (Exception e)
        {
            var error = ToError(e);
            outcome = error.Message;
            // Stack traces for the server's own failures only: an answered error (4xx, 503) is the request's story.
            if (e is not OpenAiErrorException and not OperationCanceledException) _logger.LogError(e, "{Method} {Path} failed", method, Printable(path));
            await TellErrorAsync(exchange, error).ConfigureAwait(false);
        }
        finally
        {
            exchange.Close();
            _exchanges.TryRemove(id, out _);
            _metrics.Request(route, exchange.Status, clock.Elapsed.TotalSeconds);
            _logger.LogInformation("{Method} {Path} {Status} {Seconds:0.000} s: {Outcome}", method, Printable(path), exchange.Status, clock.Elapsed.TotalSeconds,
                Printable(outcome));
        }
    }

    /// <summary>
    /// Answers with the error (or, once streaming, sends it as the last event). A client still sending its body gets the
    /// rest read first, so that it reads the answer rather than a broken connection; not while the server stops, when
    /// the answer goes at once and the connection is closed.
    /// </summary>
    private async Task TellErrorAsync(Exchange exchange, OpenAiErrorException error)
    {
        try
        {
            exchange.SetStatus(error.Status); // first: a connection closed while its body drains is logged with it
            if (Volatile.Read(ref _stopping)) exchange.Response.KeepAlive = false;
            else if (!exchange.BodyRead) await exchange.DrainAsync().ConfigureAwait(false);
            await exchange.WriteErrorAsync(error).ConfigureAwait(false);
        }
        catch (Exception e) when (e is ClientGoneException || IsConnectionError(e) || e is InvalidOperationException)
        {
            exchange.Abort();
        }
    }

    /// <summary>Text for a log line: control characters (a client's newline could forge a line) escaped, at most 300 characters.</summary>
    private static string Printable(string text)
    {
        var builder = new StringBuilder(Math.Min(text.Length, 300));
        foreach (char c in text)
        {
            if (builder.Length >= 300)
            {
                builder.Append('…');
                break;
            }
            if (char.IsControl(c)) builder.Append(CultureInfo.InvariantCulture, $"\\u{(int)c:x4}");
            else builder.Append(c);
        }
        return builder.ToString();
    }

    private async Task<string> RouteAsync(Exchange exchange, string method, string path)
    {
        if (Volatile.Read(ref _stopping))
            throw new OpenAiErrorException(HttpStatusCode.ServiceUnavailable, "the server is shutting down.", type: "server_error", code: "shutting_down");
        if (CheckOrigin(exchange) && method == "OPTIONS")
        {
            // A browser's preflight for an allowed origin.
            exchange.Response.AddHeader("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
            exchange.Response.AddHeader("Access-Control-Allow-Headers", "Authorization, Content-Type");
            exchange.Response.AddHeader("Access-Control-Max-Age", "600");
            exchange.WriteEmpty(HttpStatusCode.NoContent);
            return "preflight";
        }
        if (path == "/health")
        {
            RequireMethod(exchange, method, "GET");
            await exchange.WriteJsonAsync(HttpStatusCode.OK, Json(w => w.WriteString("status", "ok"))).ConfigureAwait(false);
            return "ok";
        }
        if (path == "/metrics")
        {
            RequireMethod(exchange, method, "GET");
            Authorize(exchange);
            var text = _metrics.Render(_engine.SchedulerStats, RequestsInFlight);
            await exchange.WriteBodyAsync(HttpStatusCode.OK, Encoding.UTF8.GetBytes(text), "text/plain; version=0.0.4; charset=utf-8").ConfigureAwait(false);
            return "metrics";
        }
        if (path is "/tokenize" or "/detokenize")
        {
            RequireMethod(exchange, method, "POST");
            Authorize(exchange);
            return path == "/tokenize" ? await TokenizeAsync(exchange).ConfigureAwait(false) : await DetokenizeAsync(exchange).ConfigureAwait(false);
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
                throw new OpenAiErrorException(HttpStatusCode.NotFound, $"model '{OpenAiRequests.Shorten(id)}' is not served here; this server serves '{ModelId}'.", "model", code: "model_not_found");
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

    /// <summary>
    /// Browsers send <c>Origin</c> on cross-site requests, and a page on any site may post a "simple" request (no
    /// preflight) to a server on this machine: such requests are refused unless their origin is allowed. Clients that
    /// are not browsers send no <c>Origin</c>. Returns whether the request came from an allowed origin.
    /// </summary>
    private bool CheckOrigin(Exchange exchange)
    {
        var origin = exchange.Request.Headers["Origin"];
        if (origin is null) return false;
        if (!_options.AllowedOrigins.Any(o => o == "*" || string.Equals(o, origin, StringComparison.OrdinalIgnoreCase)))
            throw new OpenAiErrorException(HttpStatusCode.Forbidden,
                $"cross-origin request from '{OpenAiRequests.Shorten(origin)}' refused; allow that origin with --allow-origin (OpenAiServerOptions.AllowedOrigins).", code: "origin_not_allowed");
        exchange.Response.AddHeader("Access-Control-Allow-Origin", origin);
        exchange.Response.AddHeader("Vary", "Origin");
        return true;
    }

    private void Authorize(Exchange exchange)
    {
        if (_apiKeyHash is null) return;
        var header = exchange.Request.Headers["Authorization"];
        var given = header is not null && header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) ? header["Bearer ".Length..].Trim() : "";
        // Hashes of equal length: the comparison's time tells nothing of the key, its length included.
        if (CryptographicOperations.FixedTimeEquals(SHA256.HashData(Encoding.UTF8.GetBytes(given)), _apiKeyHash)) return;
        exchange.Response.AddHeader("WWW-Authenticate", "Bearer");
        throw new OpenAiErrorException(HttpStatusCode.Unauthorized,
            header is null ? "this server needs an API key: send the header 'Authorization: Bearer <key>'." : "the API key is not valid.", code: "invalid_api_key");
    }

    private async Task<string> ChatAsync(Exchange exchange)
    {
        using var slot = TakeSlot(); // before the body: parsing and tokenizing cost memory and time too
        using var body = await ReadBodyAsync(exchange).ConfigureAwait(false);
        var request = Parse(() => OpenAiRequests.ParseChat(body.RootElement, ModelId, _engine.Tokenizer.VocabularySize));
        using var choiceSlots = TakeChoiceSlots(request.Choices);
        CheckPromptLength(request.Messages.Sum(m => (long)ToolCalls.TextOf(m).Length), "messages");
        string id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        int n = request.Choices;
        var texts = Enumerable.Range(0, n).Select(_ => new StringBuilder()).ToArray();
        var logprobs = Enumerable.Range(0, n).Select(_ => new List<TokenLogprob>()).ToArray();
        var finishes = new ChatFinishReason?[n];
        var usages = new UsageDetails?[n];
        var calls = Enumerable.Range(0, n).Select(_ => new List<FunctionCallContent>()).ToArray();
        AdditionalPropertiesDictionary? statistics = null; // the first choice's
        int ended = 0, last = 0; // choices ended so far, and the one that ended last
        bool firstToken = false;
        var updates = MergeAsync(n, (i, token) => _chat.GetStreamingResponseAsync(request.Messages, ChoiceOptions(request.Options, i), token), _cancelRequests.Token)
            .GetAsyncEnumerator();
        await using (updates.ConfigureAwait(false))
        {
            // The first update before the response starts: a request the engine refuses still gets its status code.
            bool more = await updates.MoveNextAsync().ConfigureAwait(false);
            if (request.Stream)
            {
                exchange.BeginEvents();
                for (int i = 0; i < n; i++)
                {
                    int index = i;
                    await exchange.WriteEventAsync(Json(w => WriteChatChunk(w, id, created, index, role: true, "", null, null))).ConfigureAwait(false);
                }
            }
            for (; more; more = await updates.MoveNextAsync().ConfigureAwait(false))
            {
                var (index, update, end) = updates.Current;
                if (end)
                {
                    last = index;
                    if (!request.Stream || ++ended == n) continue;
                    // A choice that ends before the others gets its finish chunk now (the last one's closes the stream).
                    await exchange.WriteEventAsync(Json(w => WriteChatChunk(w, id, created, index, role: false, null, FinishReasonName(finishes[index]), null))).ConfigureAwait(false);
                    continue;
                }
                if (!firstToken)
                {
                    firstToken = true;
                    _metrics.FirstToken(exchange.Clock.Elapsed.TotalSeconds);
                }
                var text = update!.Text;
                var pieceLogprobs = request.TopLogprobs is null ? null : (update.RawRepresentation as GeneratedPiece)?.Logprobs;
                texts[index].Append(text);
                if (pieceLogprobs is not null) logprobs[index].AddRange(pieceLogprobs);
                finishes[index] = update.FinishReason ?? finishes[index];
                usages[index] = update.Contents.OfType<UsageContent>().FirstOrDefault()?.Details ?? usages[index];
                var newCalls = update.Contents.OfType<FunctionCallContent>().ToList();
                calls[index].AddRange(newCalls);
                if (index == 0) statistics = update.AdditionalProperties ?? statistics;
                if (request.Stream && (text.Length > 0 || pieceLogprobs is { Count: > 0 } || newCalls.Count > 0))
                    await exchange.WriteEventAsync(Json(w => WriteChatChunk(w, id, created, index, role: false, text.Length > 0 || newCalls.Count == 0 ? text : null, null, pieceLogprobs,
                        newCalls))).ConfigureAwait(false);
            }
        }
        var usage = Total(usages);
        _metrics.Tokens(usage.InputTokenCount ?? 0, usage.OutputTokenCount ?? 0);
        var finish = string.Join(",", finishes.Select(FinishReasonName).Distinct());
        if (request.Stream)
        {
            // The stream's last finish chunk: the choice that ended last's.
            await EndStreamAsync(exchange, w => WriteChatChunk(w, id, created, last, role: false, null, FinishReasonName(finishes[last]), null), request.IncludeUsage,
                w => WriteUsageChunk(w, id, "chat.completion.chunk", created, usage, statistics), statistics).ConfigureAwait(false);
            return $"{usage.OutputTokenCount} tokens streamed, {finish}";
        }
        await exchange.WriteJsonAsync(HttpStatusCode.OK, Json(w =>
        {
            WriteHeader(w, id, "chat.completion", created);
            w.WriteStartArray("choices");
            for (int i = 0; i < n; i++)
            {
                w.WriteStartObject();
                w.WriteNumber("index", i);
                w.WriteStartObject("message");
                w.WriteString("role", "assistant");
                if (calls[i].Count > 0)
                {
                    w.WriteNull("content");
                    WriteToolCalls(w, calls[i], indexed: false);
                }
                else w.WriteString("content", texts[i].ToString());
                w.WriteEndObject();
                if (request.TopLogprobs is null) w.WriteNull("logprobs");
                else _logprobs.WriteChat(w, logprobs[i]);
                w.WriteString("finish_reason", FinishReasonName(finishes[i]));
                w.WriteEndObject();
            }
            w.WriteEndArray();
            WriteUsage(w, usage);
            WriteStatistics(w, statistics);
        })).ConfigureAwait(false);
        return $"{usage.OutputTokenCount} tokens, {finish}";
    }

    private async Task<string> CompletionAsync(Exchange exchange)
    {
        using var slot = TakeSlot();
        using var body = await ReadBodyAsync(exchange).ConfigureAwait(false);
        var request = Parse(() => OpenAiRequests.ParseCompletion(body.RootElement, ModelId, _engine.Tokenizer.VocabularySize));
        using var choiceSlots = TakeChoiceSlots(request.Choices);
        CheckPromptLength(request.Prompt.Length, "prompt");
        var options = _chat.ToGenerationOptions(request.Options) with
        {
            Logprobs = request.Logprobs,
            PromptLogprobs = request.Echo && request.Logprobs is not null,
        };
        if (request.ScoreOnly) options = options with { MaxTokens = 0 }; // the prompt only: it may fill the whole context
        var ids = request.PromptIds ?? _engine.EncodePrompt(request.Prompt, options);
        if (ids.Count > _engine.MaxPromptTokens(options))
            throw OpenAiErrorException.BadRequest("prompt", $"{ids.Count} tokens leave no room in the model's context of {_engine.Config.MaxSequenceLength}.");
        string id = "cmpl-" + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        int n = request.Choices;
        var stats = Enumerable.Range(0, n).Select(_ => new GenerationStats()).ToArray();
        // echo: each reply starts with the prompt as given (a token-id prompt as its decoded text) and, with logprobs, its tokens' scores.
        string echoed = !request.Echo ? "" : request.PromptIds is null ? request.Prompt : _engine.Tokenizer.Decode(ids);
        // text_offset: where each listed token starts in its choice's text. The echoed prompt is laid out as a text of its
        // own (its first word's dummy-prefix space dropped), the generated tokens as the engine decodes them after it.
        bool continues = IlgpuMedusa.Scheduling.Scheduler.GeneratedTextContinues(_engine.Tokenizer, ids, options);
        var positions = new int[n];
        var detokenizers = new IStreamingDetokenizer?[n];
        int[] PromptOffsets()
        {
            int position = 0;
            return OpenAiLogprobs.Offsets(_engine.Tokenizer.CreateStreamingDetokenizer(), ids, ref position);
        }
        int[] GeneratedOffsets(int choice, IReadOnlyList<int> tokenIds)
        {
            if (detokenizers[choice] is null) positions[choice] = echoed.Length;
            var detokenizer = detokenizers[choice] ??= _engine.Tokenizer.CreateStreamingDetokenizer(continues);
            return OpenAiLogprobs.Offsets(detokenizer, tokenIds, ref positions[choice]);
        }
        Action<Utf8JsonWriter>? Logprobs(IReadOnlyList<int> tokenIds, IReadOnlyList<TokenLogprob?> entries, int[] offsets) =>
            request.Logprobs is null ? null : w => _logprobs.WriteCompletion(w, tokenIds, entries, offsets);
        IReadOnlyList<TokenLogprob?> PromptEntries(int choice) =>
            request.Logprobs is null ? [] : stats[choice].PromptLogprobs ?? throw new InvalidOperationException("the engine returned no prompt scores");
        string FinishOf(int choice) => request.ScoreOnly ? "length" : FinishReasonName(IlgpuMedusaChatClient.FinishReasonOf(stats[choice]));

        var texts = Enumerable.Range(0, n).Select(_ => new StringBuilder(echoed)).ToArray();
        var tokenIds = Enumerable.Range(0, n).Select(_ => new List<int>()).ToArray(); // generated
        var entries = Enumerable.Range(0, n).Select(_ => new List<TokenLogprob?>()).ToArray();
        var echoSent = new bool[n];
        int ended = 0, last = 0;
        bool firstToken = false;
        var pieces = MergeAsync(n, (i, token) => _engine.GenerateAsync(ids, ChoiceOptions(options, i), stats[i], token), _cancelRequests.Token).GetAsyncEnumerator();
        await using (pieces.ConfigureAwait(false))
        {
            bool more = await pieces.MoveNextAsync().ConfigureAwait(false); // a prompt's scores are in once its first piece is
            if (request.Stream) exchange.BeginEvents();
            for (; more; more = await pieces.MoveNextAsync().ConfigureAwait(false))
            {
                var (index, piece, end) = pieces.Current;
                if (request.Echo && !echoSent[index] && (piece is not null || end))
                {
                    echoSent[index] = true;
                    if (request.Logprobs is not null) entries[index].AddRange(PromptEntries(index));
                    if (request.Stream)
                    {
                        var promptLogprobs = Logprobs(ids, PromptEntries(index), PromptOffsets());
                        await exchange.WriteEventAsync(Json(w => WriteCompletionChunk(w, id, created, () => WriteCompletionChoice(w, index, echoed, null, promptLogprobs)))).ConfigureAwait(false);
                    }
                }
                if (end)
                {
                    last = index;
                    if (!request.Stream || ++ended == n) continue;
                    await exchange.WriteEventAsync(Json(w => WriteCompletionChunk(w, id, created, () => WriteCompletionChoice(w, index, "", FinishOf(index), null)))).ConfigureAwait(false);
                    continue;
                }
                if (!firstToken)
                {
                    firstToken = true;
                    _metrics.FirstToken(exchange.Clock.Elapsed.TotalSeconds);
                }
                texts[index].Append(piece!.Text);
                tokenIds[index].AddRange(piece.TokenIds);
                if (piece.Logprobs is { } pieceLogprobs) entries[index].AddRange(pieceLogprobs);
                if (!request.Stream || (piece.Text.Length == 0 && !(request.Logprobs is not null && piece.TokenIds.Count > 0))) continue;
                var logprobsWriter = Logprobs(piece.TokenIds, piece.Logprobs ?? [], GeneratedOffsets(index, piece.TokenIds));
                await exchange.WriteEventAsync(Json(w => WriteCompletionChunk(w, id, created, () => WriteCompletionChoice(w, index, piece.Text, null, logprobsWriter)))).ConfigureAwait(false);
            }
        }
        var usage = Total(stats.Select(s => UsageOf(s, request.ScoreOnly)).ToArray());
        _metrics.Tokens(usage.InputTokenCount ?? 0, usage.OutputTokenCount ?? 0);
        var statistics = IlgpuMedusaChatClient.PropertiesOf(stats[0]);
        var finish = string.Join(",", Enumerable.Range(0, n).Select(FinishOf).Distinct());
        if (request.Stream)
        {
            await EndStreamAsync(exchange, w => WriteCompletionChunk(w, id, created, () => WriteCompletionChoice(w, last, "", FinishOf(last), null)),
                request.IncludeUsage, w => WriteUsageChunk(w, id, "text_completion", created, usage, statistics), statistics).ConfigureAwait(false);
            return $"{usage.OutputTokenCount} tokens streamed, {finish}";
        }
        var writers = Enumerable.Range(0, n).Select(i => Logprobs(
            [.. request.Echo ? ids : [], .. tokenIds[i]], entries[i], [.. request.Echo ? PromptOffsets() : [], .. GeneratedOffsets(i, tokenIds[i])])).ToArray();
        await exchange.WriteJsonAsync(HttpStatusCode.OK, Json(w =>
        {
            WriteHeader(w, id, "text_completion", created);
            w.WriteStartArray("choices");
            for (int i = 0; i < n; i++) WriteCompletionChoice(w, i, request.ScoreOnly ? echoed : texts[i].ToString(), FinishOf(i), writers[i]);
            w.WriteEndArray();
            WriteUsage(w, usage);
            WriteStatistics(w, statistics);
        })).ConfigureAwait(false);
        return $"{usage.OutputTokenCount} tokens, {finish}";
    }

    /// <summary>vLLM's <c>POST /tokenize</c>: the ids of a text (BOS first unless <c>add_special_tokens</c> is false) or of a conversation under the chat template.</summary>
    private async Task<string> TokenizeAsync(Exchange exchange)
    {
        using var slot = TakeSlot();
        using var body = await ReadBodyAsync(exchange).ConfigureAwait(false);
        var request = Parse(() => OpenAiRequests.ParseTokenize(body.RootElement, ModelId));
        CheckPromptLength(request.Prompt?.Length ?? request.Messages!.Sum(m => (long)m.Text.Length), request.Prompt is null ? "messages" : "prompt");
        var ids = request.Prompt is { } text
            ? _engine.Tokenizer.Encode(text, request.AddSpecialTokens)
            : ChatTemplate.Encode(_chat.Segments(request.Messages!), _engine.Tokenizer);
        await exchange.WriteJsonAsync(HttpStatusCode.OK, Json(w =>
        {
            w.WriteNumber("count", ids.Count);
            w.WriteNumber("max_model_len", _engine.Config.MaxSequenceLength);
            w.WriteStartArray("tokens");
            foreach (int id in ids) w.WriteNumberValue(id);
            w.WriteEndArray();
            if (request.ReturnTokenStrings)
            {
                w.WriteStartArray("token_strs");
                foreach (int id in ids) w.WriteStringValue(_logprobs.Token(id).Text);
                w.WriteEndArray();
            }
        })).ConfigureAwait(false);
        return $"{ids.Count} tokens";
    }

    /// <summary>vLLM's <c>POST /detokenize</c>: the text of token ids (special tokens give no text).</summary>
    private async Task<string> DetokenizeAsync(Exchange exchange)
    {
        using var slot = TakeSlot();
        using var body = await ReadBodyAsync(exchange).ConfigureAwait(false);
        var ids = Parse(() => OpenAiRequests.ParseDetokenize(body.RootElement, ModelId, _engine.Tokenizer.VocabularySize));
        var text = _engine.Tokenizer.Decode(ids);
        await exchange.WriteJsonAsync(HttpStatusCode.OK, Json(w => w.WriteString("prompt", text))).ConfigureAwait(false);
        return $"{ids.Length} tokens";
    }

    /// <summary>The options of choice <paramref name="index"/> of a request: choice 0 as asked, choice i with seed + i.</summary>
    private ChatOptions ChoiceOptions(ChatOptions options, int index)
    {
        if (index == 0) return options;
        var copy = options.Clone();
        copy.Seed = unchecked((options.Seed ?? (long)_chat.Defaults.Seed) + index);
        return copy;
    }

    private static GenerationOptions ChoiceOptions(GenerationOptions options, int index) =>
        index == 0 ? options : options with { Seed = unchecked(options.Seed + (ulong)index) };

    /// <summary>
    /// Runs <paramref name="count"/> streams at once (batched by the engine's scheduler) and yields their items as they
    /// come, tagged with the stream's index, and once per stream an end marker after its last item. The first failure
    /// stops the others and is thrown; leaving early stops them all, and every generation has ended (its KV blocks back
    /// in the pool) before the enumerator's disposal completes.
    /// </summary>
    private static async IAsyncEnumerable<(int Index, T? Item, bool End)> MergeAsync<T>(int count, Func<int, CancellationToken, IAsyncEnumerable<T>> start,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        if (count == 1)
        {
            await foreach (var item in start(0, cancellationToken).ConfigureAwait(false)) yield return (0, item, false);
            yield return (0, default, true);
            yield break;
        }
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var channel = System.Threading.Channels.Channel.CreateUnbounded<(int, T?, bool)>();
        int running = count;
        var producers = Enumerable.Range(0, count).Select(i => Task.Run(async () =>
        {
            try
            {
                await foreach (var item in start(i, stop.Token).ConfigureAwait(false)) channel.Writer.TryWrite((i, item, false));
                channel.Writer.TryWrite((i, default, true));
                if (Interlocked.Decrement(ref running) == 0) channel.Writer.TryComplete();
            }
            catch (Exception e)
            {
                channel.Writer.TryComplete(e);
                await stop.CancelAsync().ConfigureAwait(false);
            }
        })).ToArray();
        try
        {
            await foreach (var entry in channel.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false)) yield return entry;
        }
        finally
        {
            await stop.CancelAsync().ConfigureAwait(false);
            await Task.WhenAll(producers).ConfigureAwait(false); // they catch everything
        }
    }

    /// <summary>The usage of several choices of one prompt: the prompt counted once, the completions summed.</summary>
    private static UsageDetails Total(IReadOnlyList<UsageDetails?> usages)
    {
        var first = usages.FirstOrDefault(u => u is not null);
        long prompt = first?.InputTokenCount ?? 0;
        long completion = usages.Sum(u => u?.OutputTokenCount ?? 0);
        return new UsageDetails
        {
            InputTokenCount = prompt,
            CachedInputTokenCount = first?.CachedInputTokenCount ?? 0,
            OutputTokenCount = completion,
            TotalTokenCount = prompt + completion,
        };
    }

    private void WriteCompletionChunk(Utf8JsonWriter w, string id, long created, Action writeChoice)
    {
        WriteHeader(w, id, "text_completion", created);
        w.WriteStartArray("choices");
        writeChoice();
        w.WriteEndArray();
    }

    /// <summary>
    /// The end of a stream: the chunk with the finish reason (with the statistics, unless a usage chunk follows), the
    /// usage chunk when the request asked for it, then <c>data: [DONE]</c>.
    /// </summary>
    private static async Task EndStreamAsync(Exchange exchange, Action<Utf8JsonWriter> finishChunk, bool includeUsage, Action<Utf8JsonWriter> usageChunk,
        AdditionalPropertiesDictionary? statistics)
    {
        await exchange.WriteEventAsync(Json(w =>
        {
            finishChunk(w);
            if (!includeUsage) WriteStatistics(w, statistics);
        })).ConfigureAwait(false);
        if (includeUsage) await exchange.WriteEventAsync(Json(usageChunk)).ConfigureAwait(false);
        await exchange.WriteDoneAsync().ConfigureAwait(false);
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

    /// <summary>
    /// The places of a request's choices beyond its first (each is a sequence of its own in the batch): 429 when they are
    /// not free now, 400 when the server could never give them.
    /// </summary>
    private SemaphoreReleaser TakeChoiceSlots(int choices)
    {
        if (choices > _options.MaxConcurrentRequests)
            throw OpenAiErrorException.BadRequest("n", $"{choices} choices need {choices} of the server's {_options.MaxConcurrentRequests} request places (--max-concurrent-requests).");
        for (int taken = 0; taken < choices - 1; taken++)
        {
            if (_slots.Wait(0)) continue;
            if (taken > 0) _slots.Release(taken);
            throw new OpenAiErrorException(HttpStatusCode.TooManyRequests,
                $"{choices} choices need {choices} request places and fewer are free now (--max-concurrent-requests {_options.MaxConcurrentRequests}); try again shortly.",
                type: "rate_limit_error", code: "too_many_requests");
        }
        return new SemaphoreReleaser(_slots, choices - 1);
    }

    private async Task<JsonDocument> ReadBodyAsync(Exchange exchange)
    {
        var bytes = await exchange.ReadBodyAsync(_options.MaxRequestBytes).ConfigureAwait(false);
        if (bytes.Length == 0) throw new OpenAiErrorException(HttpStatusCode.BadRequest, "the request has no body; expected a JSON object.");
        // Checked up front: System.Text.Json reads invalid UTF-8 inside strings and fails only when one is decoded.
        if (!System.Text.Unicode.Utf8.IsValid(bytes))
            throw new OpenAiErrorException(HttpStatusCode.BadRequest, "the request body is not valid UTF-8.");
        try
        {
            return JsonDocument.Parse(bytes, JsonOptions);
        }
        catch (JsonException e)
        {
            throw new OpenAiErrorException(HttpStatusCode.BadRequest, $"the request body is not valid JSON: {e.Message}");
        }
    }

    /// <summary>
    /// Runs a request parser. Property names are decoded while the parser looks fields up, and one holding an unpaired
    /// surrogate escape (valid JSON, not text) throws there, outside the checks of the field values.
    /// </summary>
    private static T Parse<T>(Func<T> parse)
    {
        try
        {
            return parse();
        }
        catch (InvalidOperationException e)
        {
            throw new OpenAiErrorException(HttpStatusCode.BadRequest, $"the request body holds a name or string that is not valid Unicode text: {e.Message}");
        }
    }

    /// <summary>
    /// Refuses a prompt too long for the context before it is tokenized (which takes seconds for megabytes of text):
    /// no token covers more characters than the longest vocabulary piece, and normalisation may merge a few characters
    /// into one, hence the factor of 4. A prompt under this bound is tokenized and checked exactly.
    /// </summary>
    private void CheckPromptLength(long characters, string param)
    {
        long limit = _promptCharacterLimit.Value;
        if (characters > limit)
            throw OpenAiErrorException.BadRequest(param,
                $"{characters} characters cannot fit the model's context of {_engine.Config.MaxSequenceLength} tokens (at most {limit} characters).");
    }

    private long PromptCharacterLimit()
    {
        var tokenizer = _engine.Tokenizer;
        int longest = 1;
        for (int id = 0; id < tokenizer.VocabularySize; id++) longest = Math.Max(longest, tokenizer.Decode([id]).Length);
        return (long)_engine.Config.MaxSequenceLength * (longest + 1) * 4;
    }

    private OpenAiErrorException ToError(Exception e) => e switch
    {
        OpenAiErrorException o => o,
        OperationCanceledException when _cancelRequests.IsCancellationRequested =>
            new(HttpStatusCode.ServiceUnavailable, "the server is shutting down; the request was cancelled.", type: "server_error", code: "shutting_down"),
        KvPoolExhaustedException k => new(HttpStatusCode.BadRequest, $"the request does not fit the server's KV cache: {k.Message}", code: "kv_budget_exceeded"),
        // The chat client names its additional properties, which are this server's request fields (medusa_tree, logprobs, ...).
        ArgumentException a => new(HttpStatusCode.BadRequest, WithoutParameterSuffix(a.Message), RequestFields.Contains(a.ParamName) ? a.ParamName : null),
        _ => new(HttpStatusCode.InternalServerError, $"internal error: {e.GetType().Name}: {e.Message}", type: "server_error"),
    };

    /// <summary>.NET appends " (Parameter 'x')" to argument errors; a client does not know those names.</summary>
    private static readonly HashSet<string?> RequestFields =
    [
        IlgpuMedusaChatOptionKeys.Medusa, IlgpuMedusaChatOptionKeys.Tree, IlgpuMedusaChatOptionKeys.Acceptance, IlgpuMedusaChatOptionKeys.Logprobs,
        IlgpuMedusaChatOptionKeys.RepetitionPenalty, IlgpuMedusaChatOptionKeys.LogitBias,
    ];

    private static string WithoutParameterSuffix(string message)
    {
        int at = message.IndexOf(" (Parameter '", StringComparison.Ordinal);
        return at < 0 ? message : message[..at];
    }

    /// <summary>Errors of the connection's own reads and writes: the client is gone (or cut off), nothing more can be said to it.</summary>
    private static bool IsConnectionError(Exception e) => e is HttpListenerException or IOException or ObjectDisposedException or OperationCanceledException;

    /// <summary>The connection failed while reading the request or writing the response (not an error of the server's own).</summary>
    private sealed class ClientGoneException(string message, Exception inner) : Exception(message, inner);

    private static string FinishReasonName(ChatFinishReason? reason) =>
        reason == ChatFinishReason.Length ? "length" : reason == ChatFinishReason.ToolCalls ? "tool_calls" : "stop";

    /// <summary>OpenAI's <c>tool_calls</c> array (the arguments as a JSON string); in a stream each call carries its index.</summary>
    private static void WriteToolCalls(Utf8JsonWriter w, IReadOnlyList<FunctionCallContent> calls, bool indexed)
    {
        w.WriteStartArray("tool_calls");
        for (int i = 0; i < calls.Count; i++)
        {
            w.WriteStartObject();
            if (indexed) w.WriteNumber("index", i);
            w.WriteString("id", calls[i].CallId);
            w.WriteString("type", "function");
            w.WriteStartObject("function");
            w.WriteString("name", calls[i].Name);
            w.WriteString("arguments", JsonSerializer.Serialize(calls[i].Arguments ?? new Dictionary<string, object?>(), ToolCalls.JsonOptions));
            w.WriteEndObject();
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    /// <summary>The token counts of a reply; a prompt scored with <c>"max_tokens": 0</c> generated nothing the client sees.</summary>
    private static UsageDetails UsageOf(GenerationStats stats, bool scoreOnly = false)
    {
        int generated = scoreOnly ? 0 : stats.GeneratedTokens;
        return new UsageDetails
        {
            InputTokenCount = stats.PromptTokens,
            CachedInputTokenCount = stats.CachedPromptTokens,
            OutputTokenCount = generated,
            TotalTokenCount = stats.PromptTokens + generated,
        };
    }

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

    private void WriteChatChunk(Utf8JsonWriter w, string id, long created, int index, bool role, string? content, string? finish, IReadOnlyList<TokenLogprob>? logprobs,
        IReadOnlyList<FunctionCallContent>? calls = null)
    {
        WriteHeader(w, id, "chat.completion.chunk", created);
        w.WriteStartArray("choices");
        w.WriteStartObject();
        w.WriteNumber("index", index);
        w.WriteStartObject("delta");
        if (role) w.WriteString("role", "assistant");
        if (content is not null) w.WriteString("content", content);
        if (calls is { Count: > 0 }) WriteToolCalls(w, calls, indexed: true);
        w.WriteEndObject();
        if (logprobs is null) w.WriteNull("logprobs");
        else _logprobs.WriteChat(w, logprobs);
        if (finish is null) w.WriteNull("finish_reason");
        else w.WriteString("finish_reason", finish);
        w.WriteEndObject();
        w.WriteEndArray();
    }

    private static void WriteCompletionChoice(Utf8JsonWriter w, int index, string text, string? finish, Action<Utf8JsonWriter>? logprobs = null)
    {
        w.WriteStartObject();
        w.WriteNumber("index", index);
        w.WriteString("text", text);
        if (logprobs is null) w.WriteNull("logprobs");
        else logprobs(w);
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

    private static void WriteUsage(Utf8JsonWriter w, UsageDetails? usage)
    {
        w.WriteStartObject("usage");
        w.WriteNumber("prompt_tokens", usage?.InputTokenCount ?? 0);
        w.WriteNumber("completion_tokens", usage?.OutputTokenCount ?? 0);
        w.WriteNumber("total_tokens", usage?.TotalTokenCount ?? 0);
        w.WriteStartObject("prompt_tokens_details");
        w.WriteNumber("cached_tokens", usage?.CachedInputTokenCount ?? 0); // prompt tokens the prefix cache held
        w.WriteEndObject();
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
        // Relaxed escaping: quotes and non-ASCII text stay readable (these bodies are JSON for API clients, never HTML).
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            write(w);
            w.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    private readonly struct SemaphoreReleaser(SemaphoreSlim semaphore, int count = 1) : IDisposable
    {
        public void Dispose()
        {
            if (count > 0) semaphore.Release(count);
        }
    }

    /// <summary>
    /// One request and its response: what was sent so far decides how an error can still be told. Every read and write
    /// has a time limit (a client that neither sends nor reads cannot hold the server), after which, or on
    /// <see cref="Abort"/>, the connection is closed; a failed read or write is a <see cref="ClientGoneException"/>.
    /// </summary>
    private sealed class Exchange(HttpListenerContext context)
    {
        /// <summary>How long the whole request body may take to arrive (a request holds its place among the requests in flight meanwhile).</summary>
        private static readonly TimeSpan BodyTimeout = TimeSpan.FromSeconds(10);

        /// <summary>How long one write may wait for the client to take it.</summary>
        private static readonly TimeSpan WriteTimeout = TimeSpan.FromSeconds(30);

        private int _aborted;

        public HttpListenerRequest Request => context.Request;

        public HttpListenerResponse Response => context.Response;

        /// <summary>The status sent (0 until the response starts).</summary>
        public int Status { get; private set; }

        /// <summary>Whether the request body has been read (or drained) to its end.</summary>
        public bool BodyRead { get; private set; }

        private bool Streaming { get; set; }

        /// <summary>The body, at most <paramref name="max"/> bytes (413 beyond, after reading the rest up to a bound).</summary>
        public async Task<byte[]> ReadBodyAsync(int max)
        {
            long declared = Request.ContentLength64;
            if (declared > max) throw await TooLargeAsync(declared, max).ConfigureAwait(false);
            using var buffer = new MemoryStream();
            var chunk = new byte[16384];
            using var timeout = AbortAfter(BodyTimeout, HttpStatusCode.RequestTimeout);
            try
            {
                int read;
                while ((read = await Request.InputStream.ReadAsync(chunk, timeout.Token).ConfigureAwait(false)) > 0)
                {
                    if (buffer.Length + read > max) throw await TooLargeAsync(declared > 0 ? declared : -1, max).ConfigureAwait(false);
                    buffer.Write(chunk, 0, read);
                }
            }
            catch (Exception e) when (IsConnectionError(e))
            {
                if (timeout.IsCancellationRequested)
                    throw new ClientGoneException($"the request body did not arrive within {BodyTimeout.TotalSeconds} s; answered 408 and closed", e);
                if (Volatile.Read(ref _aborted) != 0) throw new ClientGoneException("the connection was closed while the request body was read", e);
                // HttpListener fails the read when the sender stops short of Content-Length: it may still read an answer.
                BodyRead = true;
                throw new OpenAiErrorException(HttpStatusCode.BadRequest, $"the request body ended after {buffer.Length} of its {declared} bytes (Content-Length).");
            }
            BodyRead = true;
            if (declared > 0 && buffer.Length < declared)
                throw new OpenAiErrorException(HttpStatusCode.BadRequest, $"the request body ended after {buffer.Length} of its {declared} bytes (Content-Length).");
            return buffer.ToArray();
        }

        private async Task<OpenAiErrorException> TooLargeAsync(long declared, int max)
        {
            await DrainAsync().ConfigureAwait(false);
            return new(HttpStatusCode.RequestEntityTooLarge,
                $"the request body is {(declared > 0 ? declared.ToString(CultureInfo.InvariantCulture) : $"more than {max}")} bytes; this server accepts at most {max}.",
                code: "request_too_large");
        }

        /// <summary>
        /// Reads what is left of the body, up to a bound, and drops it: a client still sending when the answer comes
        /// would otherwise see a broken connection instead of the answer.
        /// </summary>
        public async Task DrainAsync()
        {
            if (BodyRead) return;
            BodyRead = true;
            var chunk = new byte[16384];
            using var timeout = AbortAfter(BodyTimeout, HttpStatusCode.RequestTimeout);
            try
            {
                long drained = 0;
                int read;
                while (drained < DrainLimit && (read = await Request.InputStream.ReadAsync(chunk, timeout.Token).ConfigureAwait(false)) > 0) drained += read;
            }
            catch (Exception e) when (IsConnectionError(e))
            {
                throw new ClientGoneException($"the connection failed while the request body was read ({e.Message})", e);
            }
        }

        /// <summary>Sets the status the response will carry (and an abort before it starts).</summary>
        public void SetStatus(HttpStatusCode status) => Headers(() =>
        {
            Status = (int)status;
            Response.StatusCode = Status;
        });

        public Task WriteJsonAsync(HttpStatusCode status, byte[] json) => WriteBodyAsync(status, json, "application/json; charset=utf-8");

        public async Task WriteBodyAsync(HttpStatusCode status, byte[] body, string contentType)
        {
            Headers(() =>
            {
                Status = (int)status;
                Response.StatusCode = Status;
                Response.ContentType = contentType;
                Response.ContentLength64 = body.Length;
            });
            if (Request.HttpMethod != "HEAD") await WriteAsync(body, flush: false).ConfigureAwait(false);
        }

        /// <summary>Time since the request arrived.</summary>
        public Stopwatch Clock { get; } = Stopwatch.StartNew();

        public void WriteEmpty(HttpStatusCode status) => Headers(() =>
        {
            Status = (int)status;
            Response.StatusCode = Status;
            Response.ContentLength64 = 0;
        });

        public void BeginEvents() => Headers(() =>
        {
            Status = 200;
            Response.StatusCode = 200;
            Response.ContentType = "text/event-stream; charset=utf-8";
            Response.AddHeader("Cache-Control", "no-cache");
            Response.SendChunked = true;
            Streaming = true;
        });

        /// <summary>Sets response headers, unless the connection is closed (an abort from a timer or the shutdown may come at any time).</summary>
        private void Headers(Action set)
        {
            if (Volatile.Read(ref _aborted) != 0) throw new ClientGoneException("the connection was closed", new ObjectDisposedException(nameof(HttpListenerResponse)));
            try
            {
                set();
            }
            catch (Exception e) when (e is ObjectDisposedException or InvalidOperationException)
            {
                throw new ClientGoneException("the connection was closed", e);
            }
        }

        public Task WriteEventAsync(byte[] json)
        {
            var frame = new byte[DataPrefix.Length + json.Length + EventEnd.Length];
            DataPrefix.CopyTo(frame, 0);
            json.CopyTo(frame, DataPrefix.Length);
            EventEnd.CopyTo(frame, DataPrefix.Length + json.Length);
            return WriteAsync(frame, flush: true);
        }

        public Task WriteDoneAsync() => WriteAsync(DoneEvent, flush: true);

        private async Task WriteAsync(byte[] bytes, bool flush)
        {
            using var timeout = AbortAfter(WriteTimeout, HttpStatusCode.ServiceUnavailable);
            try
            {
                await Response.OutputStream.WriteAsync(bytes, timeout.Token).ConfigureAwait(false);
                if (flush) await Response.OutputStream.FlushAsync(timeout.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (IsConnectionError(e))
            {
                throw new ClientGoneException(timeout.IsCancellationRequested
                    ? $"the client took no data for {WriteTimeout.TotalSeconds} s; connection closed"
                    : Streaming ? "client disconnected; generation cancelled" : $"the connection failed while the response was written ({e.Message})", e);
            }
        }

        /// <summary>A token that fires after <paramref name="limit"/> and then closes the connection, ending any read or write stuck on it.</summary>
        private CancellationTokenSource AbortAfter(TimeSpan limit, HttpStatusCode unsentStatus)
        {
            var timeout = new CancellationTokenSource(limit);
            timeout.Token.Register(() => Abort(unsentStatus));
            return timeout;
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

        /// <summary>Ends the response normally, unless the connection was aborted.</summary>
        public void Close()
        {
            if (Volatile.Read(ref _aborted) != 0) return;
            try
            {
                Response.Close();
            }
            catch (Exception e) when (IsConnectionError(e) || e is InvalidOperationException)
            {
                Abort();
            }
        }

        /// <summary>
        /// Closes the connection at once; safe from any thread, more than once. HttpListener on Linux still sends the
        /// status line and an empty body when the response has not started: <paramref name="unsentStatus"/> is that status
        /// (without it, an empty 200).
        /// </summary>
        public void Abort(HttpStatusCode unsentStatus = HttpStatusCode.ServiceUnavailable)
        {
            if (Interlocked.Exchange(ref _aborted, 1) != 0) return;
            try
            {
                if (Status == 0)
                {
                    Status = (int)unsentStatus;
                    Response.StatusCode = Status;
                }
                Response.Abort();
            }
            catch (Exception e) when (IsConnectionError(e) || e is InvalidOperationException)
            {
                // already closed
            }
        }
    }
}
