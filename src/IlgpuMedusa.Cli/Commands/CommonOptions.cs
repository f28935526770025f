using System.CommandLine;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Cli.Commands;

/// <summary>Options shared by the commands that load a model.</summary>
internal sealed class CommonOptions
{
    public Option<string> Model { get; } = new("--model", "-m")
    {
        Description = $"Model directory (Hugging Face or llama2.c layout). The demo model at {DemoModel.DefaultDirectory} is fetched when missing.",
        DefaultValueFactory = _ => DemoModel.DefaultDirectory,
    };

    public Option<string> Device { get; } = new("--device")
    {
        Description = "auto | cuda | opencl | host | cpu-emulator (auto: CUDA, then an OpenCL GPU, then host).",
        DefaultValueFactory = _ => "auto",
    };

    public Option<bool> AllowCpuOpenCL { get; } = new("--allow-cpu-opencl")
    {
        Description = "Allow a CPU OpenCL implementation such as PoCL (also ILGPU_MEDUSA_ALLOW_CPU_OPENCL=1).",
    };

    public Option<string?> WeightsDtype { get; } = new("--weights-dtype")
    {
        Description = "Store weight matrices on the device as f32, f16 or bf16 (default: as in the checkpoint).",
    };

    public Option<int?> KvBudgetMb { get; } = new("--kv-budget-mb")
    {
        Description = "KV cache budget in MiB (default: room for 4 full-context sequences).",
    };

    public Option<DType?> KvDtype { get; } = new("--kv-dtype")
    {
        Description = "KV cache elements: f32 (default) or f16 (half the memory, so the same budget holds twice the tokens; " +
            "keys and values are rounded to binary16 when written, saturating at ±65504; attention is still computed in float32).",
        HelpName = "f32|f16",
        CustomParser = result =>
        {
            // A bad value is a usage error (exit code 2), like a malformed number.
            var text = result.Tokens.Count == 0 ? "" : result.Tokens[0].Value;
            if (EngineOptions.TryParseKvCacheType(text, out var type)) return type;
            result.AddError($"--kv-dtype: '{text}' is not a KV cache element type; expected f32 or f16.");
            return null;
        },
    };

    public Option<bool> NoPrefixCache { get; } = new("--no-prefix-cache")
    {
        Description = "Turn automatic prefix caching off: every prompt is computed whole, and KV blocks are not kept after their sequence ends.",
    };

    public Option<string> Heads { get; } = new("--heads")
    {
        Description = "Medusa heads: auto (medusa_lm_head.safetensors in the model directory when present), none, or a heads file.",
        DefaultValueFactory = _ => "auto",
    };

    public Option<int?> Threads { get; } = new("--threads")
    {
        Description = "Threads of the host backend (default: all cores).",
    };

    public void AddTo(Command command)
    {
        command.Options.Add(Model);
        command.Options.Add(Device);
        command.Options.Add(AllowCpuOpenCL);
        command.Options.Add(WeightsDtype);
        command.Options.Add(KvBudgetMb);
        command.Options.Add(KvDtype);
        command.Options.Add(NoPrefixCache);
        command.Options.Add(Threads);
        command.Options.Add(Heads);
    }

    public EngineOptions ToEngineOptions(ParseResult parse)
    {
        var dtype = parse.GetValue(WeightsDtype);
        return new EngineOptions
        {
            ModelPath = parse.GetValue(Model)!,
            Device = new DeviceOptions
            {
                Kind = DeviceOptions.ParseKind(parse.GetValue(Device)!),
                AllowCpuOpenCL = parse.GetValue(AllowCpuOpenCL),
                HostThreads = parse.GetValue(Threads),
            },
            WeightsType = dtype is null ? null : DTypeInfo.ParseFloat(dtype, "--weights-dtype"),
            KvBudgetMb = parse.GetValue(KvBudgetMb),
            KvCacheType = parse.GetValue(KvDtype) ?? DType.F32,
            PrefixCaching = !parse.GetValue(NoPrefixCache),
            Heads = parse.GetValue(Heads),
        }.Validate();
    }

    /// <summary>Loads the engine, fetching the demo model first when the default directory is asked for and missing.</summary>
    public static InferenceEngine LoadEngine(EngineOptions options)
    {
        EnsureDemoIfDefault(options.ModelPath);
        using var progress = new ConsoleProgress("loading model");
        return InferenceEngine.Load(options, progress);
    }

    public static void EnsureDemoIfDefault(string modelPath)
    {
        if (Path.GetFullPath(modelPath) != Path.GetFullPath(DemoModel.DefaultDirectory)) return;
        if (Directory.Exists(modelPath) && DemoModel.IsValid(modelPath))
        {
            DemoModel.InstallShippedHeads(modelPath); // the demo's Medusa heads, when missing
            return;
        }
        Console.Error.WriteLine($"The demo model is not in {modelPath}; fetching it.");
        FetchDemoCommand.Fetch(modelPath);
    }
}
