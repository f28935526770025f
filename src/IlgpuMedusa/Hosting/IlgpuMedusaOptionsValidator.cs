using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Medusa;
using IlgpuMedusa.Models;
using Microsoft.Extensions.Options;

namespace IlgpuMedusa.Hosting;

/// <summary>
/// Checks <see cref="IlgpuMedusaOptions"/> when the options are first used (at host start with ValidateOnStart). Every
/// failure names the option, so a bad configuration reads like "IlgpuMedusa:ModelPath ...".
/// </summary>
public sealed class IlgpuMedusaOptionsValidator : IValidateOptions<IlgpuMedusaOptions>
{
    private const string Prefix = IlgpuMedusaOptions.SectionName + ":";

    /// <inheritdoc />
    public ValidateOptionsResult Validate(string? name, IlgpuMedusaOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var failures = Check(options).ToList();
        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }

    private static IEnumerable<string> Check(IlgpuMedusaOptions o)
    {
        if (string.IsNullOrWhiteSpace(o.ModelPath))
            yield return $"{Prefix}ModelPath is not set: it must name a model directory (Hugging Face or llama2.c layout), e.g. models/stories15M.";
        else if (!Directory.Exists(o.ModelPath))
            yield return $"{Prefix}ModelPath '{o.ModelPath}' does not exist. For the demo model run: ilgpu-medusa fetch-demo --dir {o.ModelPath}";
        if (o.Device is { } device && !Enum.IsDefined(device))
            yield return $"{Prefix}Device {(int)device} is not a device kind; expected one of {string.Join(", ", Enum.GetNames<DeviceKind>())}.";
        if (o.DeviceIndex is < 0)
            yield return $"{Prefix}DeviceIndex must be 0 or more, got {o.DeviceIndex}.";
        if (o.HostThreads is <= 0)
            yield return $"{Prefix}HostThreads must be positive, got {o.HostThreads}.";
        if (o.WeightsType is { } weights && weights is not (DType.F32 or DType.F16 or DType.BF16))
            yield return $"{Prefix}WeightsType must be F32, F16 or BF16, got {weights}.";
        if (o.KvCacheType is { } kvType && !EngineOptions.TryParseKvCacheType(kvType, out _))
            yield return $"{Prefix}KvCacheType must be f32 or f16, got '{kvType}'.";
        if (o.KvBudgetMb is <= 0)
            yield return $"{Prefix}KvBudgetMb must be a positive number of MiB, got {o.KvBudgetMb}.";
        if (o.KvBlockSize is <= 0)
            yield return $"{Prefix}KvBlockSize must be positive, got {o.KvBlockSize}.";
        if (o.MaxBatchTokens is <= 0)
            yield return $"{Prefix}MaxBatchTokens must be positive, got {o.MaxBatchTokens}.";
        if (o.SpeculationBatchLimit is <= 0)
            yield return $"{Prefix}SpeculationBatchLimit must be at least 1 sequence, got {o.SpeculationBatchLimit}.";
        if (o.Heads is { } heads && !IsKeyword(heads) && !File.Exists(heads) && !Directory.Exists(heads))
            yield return $"{Prefix}Heads '{heads}' is neither auto, none, nor an existing heads file or directory.";
        if (!Enum.IsDefined(o.ChatTemplate))
            yield return $"{Prefix}ChatTemplate {(int)o.ChatTemplate} is not a template; expected one of {string.Join(", ", Enum.GetNames<ChatTemplateKind>())}.";
        if (o.MaxTokens is <= 0)
            yield return $"{Prefix}MaxTokens must be a positive number of tokens, got {o.MaxTokens}.";
        if (o.Tree is { } tree && !TreePresets.IsKnown(tree) && !File.Exists(tree))
            yield return $"{Prefix}Tree: unknown tree '{tree}'; {TreePresets.Choices}; or give an existing JSON file of paths.";
        if (o.Acceptance is { } acceptance && !acceptance.Equals("greedy", StringComparison.OrdinalIgnoreCase) && !acceptance.Equals("typical", StringComparison.OrdinalIgnoreCase))
            yield return $"{Prefix}Acceptance '{acceptance}' is unknown; expected greedy or typical.";
    }

    private static bool IsKeyword(string heads) => heads.Equals("auto", StringComparison.OrdinalIgnoreCase) || heads.Equals("none", StringComparison.OrdinalIgnoreCase);
}
