namespace IlgpuMedusa.Serving;

/// <summary>Settings of <see cref="OpenAiServer"/>.</summary>
public sealed record OpenAiServerOptions
{
    /// <summary>
    /// Address to listen on: <c>127.0.0.1</c> or <c>localhost</c> (the default: this machine only), <c>0.0.0.0</c> or
    /// <c>*</c> (every IPv4 interface), or another host name or IPv4 address of this machine (IPv6 addresses are refused:
    /// <see cref="System.Net.HttpListener"/> on Linux cannot listen on them). Requests must name that host in their
    /// <c>Host</c> header (for the loopback default, <c>127.0.0.1</c> or <c>localhost</c>); others get HttpListener's 404.
    /// </summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>TCP port, 1 to 65535 (default 8080).</summary>
    public int Port { get; init; } = 8080;

    /// <summary>The model id clients name and <c>GET /v1/models</c> lists; default: the model directory's name.</summary>
    public string? ModelName { get; init; }

    /// <summary>When set, every request must carry <c>Authorization: Bearer</c> this key (else 401).</summary>
    public string? ApiKey { get; init; }

    /// <summary>Completion requests in flight at once; one more is answered 429 (default 64). They share the device through the scheduler's batching.</summary>
    public int MaxConcurrentRequests { get; init; } = 64;

    /// <summary>Largest request body accepted, in bytes (default 1 MiB); a larger one is answered 413.</summary>
    public int MaxRequestBytes { get; init; } = 1 << 20;

    /// <summary>
    /// Web origins (<c>https://app.example</c>, or <c>*</c> for any) whose browser requests are served, with CORS headers.
    /// Default none: a request that carries an <c>Origin</c> header (a browser's, from a web page) is refused with 403,
    /// so that pages on other sites cannot use a server on this machine. Clients that are not browsers send no Origin.
    /// </summary>
    public IReadOnlyList<string> AllowedOrigins { get; init; } = [];

    /// <summary>On shutdown, how long requests in flight may go on before they are cancelled (default 5 s).</summary>
    public TimeSpan ShutdownGrace { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Checks every setting; the message names the setting (and its command-line option).</summary>
    /// <exception cref="ArgumentException">A setting is out of range.</exception>
    public OpenAiServerOptions Validate()
    {
        if (string.IsNullOrWhiteSpace(Host) || Host.Any(c => char.IsWhiteSpace(c) || c is '/' or '?' or '#'))
            throw new ArgumentException($"Host (--host): '{Host}' is not a host name or IP address.", nameof(Host));
        if (Host.Contains(':', StringComparison.Ordinal) || Host.StartsWith('['))
            throw new ArgumentException($"Host (--host): '{Host}' is an IPv6 address, which this server cannot listen on; use 127.0.0.1, 0.0.0.0 or a host name.", nameof(Host));
        if (Port is < 1 or > 65535) throw new ArgumentOutOfRangeException(nameof(Port), Port, "Port (--port) must be from 1 to 65535.");
        if (ModelName is not null && (string.IsNullOrWhiteSpace(ModelName) || ModelName.Any(char.IsControl)))
            throw new ArgumentException($"ModelName (--model-name): '{ModelName}' must be a non-empty name without control characters.", nameof(ModelName));
        if (ApiKey is not null && (ApiKey.Length == 0 || ApiKey.Any(c => char.IsWhiteSpace(c) || char.IsControl(c))))
            throw new ArgumentException("ApiKey (--api-key) must be non-empty, without spaces or control characters.", nameof(ApiKey));
        if (MaxConcurrentRequests is < 1 or > 100_000)
            throw new ArgumentOutOfRangeException(nameof(MaxConcurrentRequests), MaxConcurrentRequests, "MaxConcurrentRequests (--max-concurrent-requests) must be from 1 to 100000.");
        if (MaxRequestBytes is < 1024)
            throw new ArgumentOutOfRangeException(nameof(MaxRequestBytes), MaxRequestBytes, "MaxRequestBytes must be at least 1024.");
        ArgumentNullException.ThrowIfNull(AllowedOrigins, nameof(AllowedOrigins));
        foreach (var origin in AllowedOrigins)
            if (origin != "*" && !(Uri.TryCreate(origin, UriKind.Absolute, out var uri) && uri.Scheme is "http" or "https" && uri.AbsolutePath == "/" && !origin.EndsWith('/')))
                throw new ArgumentException($"AllowedOrigins (--allow-origin): '{origin}' is not an origin such as https://app.example or http://localhost:3000 (or *).", nameof(AllowedOrigins));
        if (ShutdownGrace < TimeSpan.Zero || ShutdownGrace > TimeSpan.FromHours(1))
            throw new ArgumentOutOfRangeException(nameof(ShutdownGrace), ShutdownGrace, "ShutdownGrace must be from 0 to 1 hour.");
        return this;
    }
}
