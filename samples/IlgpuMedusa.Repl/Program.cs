using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Models;

// A minimal REPL on the library: read a line, stream its continuation, repeat. Works on a terminal and on piped input.
// Ctrl+C stops the running generation and keeps the REPL alive.
// Usage: dotnet run --project samples/IlgpuMedusa.Repl -c Release -- [model directory] [device]
var modelPath = args.Length > 0 ? args[0] : DemoModel.DefaultDirectory;
try
{
    var device = args.Length > 1 ? DeviceOptions.ParseKind(args[1]) : DeviceKind.Auto;
    if (modelPath == DemoModel.DefaultDirectory && await DemoModel.EnsureAsync(modelPath))
        Console.Error.WriteLine($"Fetched the demo model into {modelPath}.");
    using var engine = InferenceEngine.Load(new EngineOptions { ModelPath = modelPath, Device = new DeviceOptions { Kind = device } });
    Console.Error.WriteLine($"IlgpuMedusa REPL: {modelPath} on {engine.DeviceName}. Type a prompt; an empty line or /quit exits.");
    var options = new GenerationOptions { MaxTokens = 200 };
    CancellationTokenSource? running = null;
    Console.CancelKeyPress += (_, e) =>
    {
        e.Cancel = true;
        running?.Cancel();
    };
    while (true)
    {
        Console.Write("> ");
        var line = Console.ReadLine();
        if (line is null || line.Trim() is "" or "/quit") break;
        using (running = new CancellationTokenSource())
        {
            var stats = new GenerationStats();
            Console.Write(line);
            foreach (var piece in engine.Generate(engine.EncodePrompt(line, options), options, stats, running.Token))
                Console.Write(piece.Text);
            Console.WriteLine();
            Console.Error.WriteLine($"[{stats.GeneratedTokens} tokens, {stats.DecodeTokensPerSecond:0.0} tok/s, {stats.FinishReason}]");
        }
        running = null;
    }
    return 0;
}
catch (Exception e) when (e is ArgumentException or IOException or InvalidDataException or InvalidOperationException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}
