using System.Net;

namespace IlgpuMedusa.Serving;

/// <summary>
/// A request the server answers with an error in OpenAI's shape
/// (<c>{"error": {"message", "type", "param", "code"}}</c>) and the HTTP status given here.
/// </summary>
public sealed class OpenAiErrorException : Exception
{
    /// <summary>Creates the error.</summary>
    /// <param name="status">HTTP status of the response.</param>
    /// <param name="message">What was wrong and what was expected; names the field when one is at fault.</param>
    /// <param name="param">The request field at fault (OpenAI's <c>param</c>), or null.</param>
    /// <param name="type">OpenAI's error type; <c>invalid_request_error</c> unless the server is at fault.</param>
    /// <param name="code">A short machine-readable code (e.g. <c>model_not_found</c>), or null.</param>
    public OpenAiErrorException(HttpStatusCode status, string message, string? param = null, string type = "invalid_request_error", string? code = null)
        : base(message)
    {
        Status = status;
        Param = param;
        Type = type;
        Code = code;
    }

    /// <summary>HTTP status of the response.</summary>
    public HttpStatusCode Status { get; }

    /// <summary>The request field at fault, or null.</summary>
    public string? Param { get; }

    /// <summary>OpenAI's error type.</summary>
    public string Type { get; }

    /// <summary>A short machine-readable code, or null.</summary>
    public string? Code { get; }

    /// <summary>A 400 naming <paramref name="param"/>.</summary>
    internal static OpenAiErrorException BadRequest(string param, string message) => new(HttpStatusCode.BadRequest, $"{param}: {message}", param);
}
