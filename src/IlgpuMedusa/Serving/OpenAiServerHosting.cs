using IlgpuMedusa.Hosting;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace IlgpuMedusa.Serving;

/// <summary>Registers <see cref="OpenAiServer"/> with a .NET generic host, next to <see cref="IlgpuMedusaServiceCollectionExtensions.AddIlgpuMedusa(IServiceCollection, Action{IlgpuMedusaOptions})"/>.</summary>
public static class OpenAiServerServiceCollectionExtensions
{
    /// <summary>
    /// Serves the registered model over HTTP while the host runs: the server starts (listening) when the host starts,
    /// after the engine has loaded, and stops with the host (requests in flight get <see cref="OpenAiServerOptions.ShutdownGrace"/>).
    /// Needs <c>AddIlgpuMedusa</c> (the server uses its <see cref="IChatClient"/>, an <see cref="IlgpuMedusaChatClient"/>).
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="options">Address, limits, API key; null for the defaults (127.0.0.1:8080). Checked here.</param>
    public static IServiceCollection AddIlgpuMedusaServer(this IServiceCollection services, OpenAiServerOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        var checkedOptions = (options ?? new OpenAiServerOptions()).Validate();
        services.TryAddSingleton(provider =>
        {
            var chat = provider.GetRequiredService<IChatClient>() as IlgpuMedusaChatClient
                ?? throw new InvalidOperationException("AddIlgpuMedusaServer needs the IChatClient of AddIlgpuMedusa (an IlgpuMedusaChatClient); call AddIlgpuMedusa first.");
            var logger = (provider.GetService<ILoggerFactory>() ?? NullLoggerFactory.Instance).CreateLogger("IlgpuMedusa.Serving");
            return new OpenAiServer(chat, checkedOptions, logger);
        });
        services.AddHostedService<OpenAiServerHostedService>();
        return services;
    }
}

/// <summary>Starts <see cref="OpenAiServer"/> with the host and stops it with the host.</summary>
internal sealed class OpenAiServerHostedService(OpenAiServer server) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        server.Start();
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => server.StopAsync().WaitAsync(cancellationToken);
}
