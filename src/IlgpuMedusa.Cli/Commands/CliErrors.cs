using IlgpuMedusa.Scheduling;

namespace IlgpuMedusa.Cli.Commands;

/// <summary>Which exceptions are the user's input (printed as one line, exit 1) rather than bugs.</summary>
internal static class CliErrors
{
    public static bool IsUserError(Exception e) => e is ArgumentException or InvalidDataException or IOException
        or KvPoolExhaustedException or InvalidOperationException or NotSupportedException or UnauthorizedAccessException
        or OperationCanceledException
        || (e is AggregateException a && a.InnerExceptions.Count > 0 && a.InnerExceptions.All(IsUserError));

    public static string Describe(Exception e) => e switch
    {
        ArgumentOutOfRangeException a when a.Message.Contains(" (Parameter", StringComparison.Ordinal) =>
            a.Message[..a.Message.IndexOf(" (Parameter", StringComparison.Ordinal)] + (a.ActualValue is null ? "" : $" Got {a.ActualValue}."),
        ArgumentException a when a.Message.Contains(" (Parameter", StringComparison.Ordinal) =>
            a.Message[..a.Message.IndexOf(" (Parameter", StringComparison.Ordinal)],
        OperationCanceledException => "cancelled.",
        AggregateException a when a.InnerExceptions.Count > 0 => Describe(a.InnerExceptions[0]), // the first of the failed workers' errors
        _ => e.Message,
    };
}
