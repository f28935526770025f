using System.Globalization;
using System.Runtime.CompilerServices;

namespace IlgpuMedusa.Tests;

/// <summary>
/// The tests run with ICU (the tokenizer.json tests need Unicode normalization) but in the invariant culture, as the
/// command line does, so that formatted numbers are the same on every machine whatever its locale.
/// </summary>
internal static class InvariantCultureSetup
{
    [ModuleInitializer]
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Usage", "CA2255", Justification = "process-wide culture for the test assembly")]
    internal static void Initialize()
    {
        CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
        CultureInfo.DefaultThreadCurrentUICulture = CultureInfo.InvariantCulture;
        CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
        CultureInfo.CurrentUICulture = CultureInfo.InvariantCulture;
    }
}
