using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Models;
using IlgpuMedusa.Repl;
using IlgpuMedusa.Scheduling;

// The sample REPL: streams continuations of the demo model (or --model) as Medusa accepts tokens, with /commands.
// On a terminal it draws progress bars and colours; with redirected input or output it reads and writes plain lines,
// so it can be scripted:  printf 'Once upon a time\n/stats\n/quit\n' | dotnet run --project samples/IlgpuMedusa.Repl -c Release
// Numbers print the same whatever the machine's locale (ICU stays on for the tokenizers' Unicode normalization).
System.Globalization.CultureInfo.DefaultThreadCurrentCulture = System.Globalization.CultureInfo.InvariantCulture;
System.Globalization.CultureInfo.CurrentCulture = System.Globalization.CultureInfo.InvariantCulture;
ReplArguments arguments;
try
{
    arguments = ReplArguments.Parse(args);
}
catch (ArgumentException e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    Console.Error.WriteLine(ReplArguments.Usage);
    return 2;
}
if (arguments.Help)
{
    Console.WriteLine(ReplArguments.Usage);
    return 0;
}

bool ansi = !Console.IsOutputRedirected;
bool interactive = ansi && !Console.IsInputRedirected && !Console.IsErrorRedirected;
var console = Startup.CreateConsole(ansi);
try
{
    var modelPath = arguments.ModelPath ?? DemoModel.DefaultDirectory;
    if (arguments.ModelPath is null) await Startup.FetchDemoAsync(modelPath, console, interactive);
    var options = new EngineOptions { ModelPath = modelPath, Device = new DeviceOptions { Kind = arguments.Device }, Heads = arguments.Heads, KvCacheType = arguments.KvCacheType, PrefixCaching = arguments.PrefixCaching };
    using var engine = Startup.LoadEngine(options, console, interactive);
    var session = new ReplSession(engine, console, promptVisible: !Console.IsInputRedirected, arguments.Template, arguments.MaxTokens);
    // Ctrl+C while a reply runs stops that reply; at the prompt it ends the REPL as usual.
    Console.CancelKeyPress += (_, e) => e.Cancel = session.CancelRunning();
    return await session.RunAsync(Console.In);
}
catch (Exception e) when (e is ArgumentException or IOException or InvalidDataException or InvalidOperationException or KvPoolExhaustedException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}
