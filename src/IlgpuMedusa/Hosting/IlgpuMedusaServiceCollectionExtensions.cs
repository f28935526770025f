using IlgpuMedusa.Generation;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace IlgpuMedusa.Hosting;

/// <summary>Registers IlgpuMedusa with Microsoft.Extensions.DependencyInjection.</summary>
public static class IlgpuMedusaServiceCollectionExtensions
{
    /// <summary>
    /// Registers one engine (singleton <see cref="InferenceEngine"/> and <see cref="IInferenceEngine"/>, loaded on first
    /// resolve and disposed with the container, which frees the device) and an <see cref="IChatClient"/> on it.
    /// The options are validated when first used, and at host start (ValidateOnStart): a missing or bad setting fails
    /// with <see cref="OptionsValidationException"/> naming it.
    /// </summary>
    /// <example><c>services.AddIlgpuMedusa(o => { o.ModelPath = "models/stories15M"; o.Device = DeviceKind.Auto; });</c></example>
    public static IServiceCollection AddIlgpuMedusa(this IServiceCollection services, Action<IlgpuMedusaOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        services.AddOptions<IlgpuMedusaOptions>().Configure(configure).ValidateOnStart();
        return AddEngine(services);
    }

    /// <summary>
    /// As <see cref="AddIlgpuMedusa(IServiceCollection, Action{IlgpuMedusaOptions})"/>, with the options bound from a
    /// configuration section (e.g. <c>configuration.GetSection("IlgpuMedusa")</c>), then adjusted by <paramref name="configure"/>.
    /// </summary>
    public static IServiceCollection AddIlgpuMedusa(this IServiceCollection services, IConfiguration configuration, Action<IlgpuMedusaOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configuration);
        var builder = services.AddOptions<IlgpuMedusaOptions>().Bind(configuration).ValidateOnStart();
        if (configure is not null) builder.Configure(configure);
        return AddEngine(services);
    }

    private static IServiceCollection AddEngine(IServiceCollection services)
    {
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<IlgpuMedusaOptions>, IlgpuMedusaOptionsValidator>());
        services.TryAddSingleton(provider =>
        {
            var options = provider.GetRequiredService<IOptions<IlgpuMedusaOptions>>().Value;
            var logger = (provider.GetService<ILoggerFactory>() ?? NullLoggerFactory.Instance).CreateLogger("IlgpuMedusa");
            return EngineStartup.Load(options, logger);
        });
        // The same instance under its interface; InferenceEngine.Dispose tolerates the container disposing it twice.
        services.TryAddSingleton<IInferenceEngine>(provider => provider.GetRequiredService<InferenceEngine>());
        services.TryAddSingleton<IChatClient>(provider =>
        {
            var options = provider.GetRequiredService<IOptions<IlgpuMedusaOptions>>().Value;
            return new IlgpuMedusaChatClient(provider.GetRequiredService<InferenceEngine>(), options.ChatTemplate, options.ToGenerationOptions());
        });
        return services;
    }
}
