using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Medusa;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Hosting;

/// <summary>
/// Settings of the engine registered by <see cref="IlgpuMedusaServiceCollectionExtensions.AddIlgpuMedusa(Microsoft.Extensions.DependencyInjection.IServiceCollection, Action{IlgpuMedusaOptions})"/>,
/// bindable from configuration (section <c>"IlgpuMedusa"</c> by convention). Settings left null take the defaults of
/// <see cref="EngineOptions"/>, <see cref="DeviceOptions"/> and <see cref="GenerationOptions"/>, which are defined there only.
/// </summary>
public sealed class IlgpuMedusaOptions
{
    /// <summary>The conventional configuration section name.</summary>
    public const string SectionName = "IlgpuMedusa";

    /// <summary>The model directory (Hugging Face or llama2.c layout). Required.</summary>
    public string? ModelPath { get; set; }

    /// <summary>Device kind; null = <see cref="DeviceKind.Auto"/> (CUDA, then an OpenCL GPU, then the host).</summary>
    public DeviceKind? Device { get; set; }

    /// <summary>Index among the devices of that kind.</summary>
    public int? DeviceIndex { get; set; }

    /// <summary>Allow a CPU OpenCL implementation (PoCL).</summary>
    public bool? AllowCpuOpenCL { get; set; }

    /// <summary>Host backend threads (default: all cores).</summary>
    public int? HostThreads { get; set; }

    /// <summary>Medusa heads: null or "auto" (the heads in the model directory, when present), "none", or a heads file or directory.</summary>
    public string? Heads { get; set; }

    /// <summary>Element type of the weights on the device: F32, F16 or BF16 (default: as in the checkpoint).</summary>
    public DType? WeightsType { get; set; }

    /// <summary>KV cache budget in MiB.</summary>
    public int? KvBudgetMb { get; set; }

    /// <summary>
    /// Element type of the KV cache, case-insensitive: "f32" (default when null) or "f16" (half the memory, so the same
    /// budget holds twice the tokens; keys and values are rounded to binary16 once, when written, saturating at ±65504, and
    /// attention is still computed in float32).
    /// </summary>
    public string? KvCacheType { get; set; }

    /// <summary>
    /// Automatic prefix caching (default true): sequences that start with the same tokens share the KV blocks of that
    /// prefix, and blocks stay cached after their sequence ends (see <see cref="EngineOptions.PrefixCaching"/>).
    /// </summary>
    public bool? PrefixCaching { get; set; }

    /// <summary>Token slots per KV block.</summary>
    public int? KvBlockSize { get; set; }

    /// <summary>Most tokens in one batched forward (prompt chunks, decoded tokens and trees of all running sequences).</summary>
    public int? MaxBatchTokens { get; set; }

    /// <summary>
    /// Running sequences up to which Medusa requests verify trees; beyond it they decode one token per step (default: the
    /// device's, 2 on the host, no limit on accelerators).
    /// </summary>
    public int? SpeculationBatchLimit { get; set; }

    /// <summary>Run one tiny generation right after loading, so kernels are compiled before the first request (default true).</summary>
    public bool WarmUp { get; set; } = true;

    /// <summary>How the chat client turns messages into a prompt (default: chosen from the model directory).</summary>
    public ChatTemplateKind ChatTemplate { get; set; } = ChatTemplateKind.Auto;

    /// <summary>Default most tokens per chat response (a request's <c>MaxOutputTokens</c> overrides it).</summary>
    public int? MaxTokens { get; set; }

    /// <summary>Decode with Medusa heads when the engine has them (a request's <c>"medusa"</c> property overrides it).</summary>
    public bool? UseMedusa { get; set; }

    /// <summary>Default Medusa tree: a preset name (see <see cref="TreePresets.Names"/>) or a JSON file of paths.</summary>
    public string? Tree { get; set; }

    /// <summary>Default Medusa acceptance: "greedy" (lossless) or "typical".</summary>
    public string? Acceptance { get; set; }

    /// <summary>The engine options these settings describe (defaults filled in by <see cref="EngineOptions"/>).</summary>
    public EngineOptions ToEngineOptions()
    {
        var device = new DeviceOptions();
        device = device with
        {
            Kind = Device ?? device.Kind,
            Index = DeviceIndex ?? device.Index,
            AllowCpuOpenCL = AllowCpuOpenCL ?? device.AllowCpuOpenCL,
            HostThreads = HostThreads ?? device.HostThreads,
        };
        var engine = new EngineOptions { ModelPath = ModelPath ?? "", Device = device, Heads = Heads, WeightsType = WeightsType, KvBudgetMb = KvBudgetMb };
        return engine with
        {
            KvCacheType = KvCacheType is null ? engine.KvCacheType : EngineOptions.ParseKvCacheType(KvCacheType, $"{SectionName}:{nameof(KvCacheType)}"),
            PrefixCaching = PrefixCaching ?? engine.PrefixCaching,
            KvBlockSize = KvBlockSize ?? engine.KvBlockSize,
            MaxBatchTokens = MaxBatchTokens ?? engine.MaxBatchTokens,
            SpeculationBatchLimit = SpeculationBatchLimit,
        };
    }

    /// <summary>The generation defaults of chat requests (defaults filled in by <see cref="GenerationOptions"/>).</summary>
    public GenerationOptions ToGenerationOptions()
    {
        var defaults = new GenerationOptions();
        return defaults with
        {
            MaxTokens = MaxTokens ?? defaults.MaxTokens,
            UseMedusa = UseMedusa ?? defaults.UseMedusa,
            Tree = Tree ?? defaults.Tree,
            Acceptance = Acceptance is null ? defaults.Acceptance : Medusa.Acceptance.Parse(Acceptance),
        };
    }
}
