using System.CommandLine;
using System.Text.Json;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Compute.Ilgpu;

namespace IlgpuMedusa.Cli.Commands;

/// <summary><c>devices</c>: lists every accelerator with kind, memory, warp size and whether it is usable (and why not).</summary>
internal static class DevicesCommand
{
    public static Command Create()
    {
        var allowCpuOpenCL = new Option<bool>("--allow-cpu-opencl") { Description = "Count a CPU OpenCL implementation (PoCL) as usable (also ILGPU_MEDUSA_ALLOW_CPU_OPENCL=1)." };
        var json = new Option<bool>("--json") { Description = "Print a JSON array." };
        var command = new Command("devices", "List the devices ILGPU can see, with kind, memory, warp size and whether each is usable.") { allowCpuOpenCL, json };
        command.SetAction(parse =>
        {
            var options = new DeviceOptions { AllowCpuOpenCL = parse.GetValue(allowCpuOpenCL) };
            var devices = IlgpuDevices.Describe(options);
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(devices.Select(d => new
                {
                    kind = d.Kind.ToString(), d.Index, d.Name, d.Details, d.IsCpu, memory_bytes = d.MemoryBytes, warp_size = d.WarpSize,
                    max_group_size = d.MaxGroupSize, d.Multiprocessors, d.Usable, d.Reason,
                })));
                return 0;
            }
            Console.WriteLine("host #0 (CPU backend: System.Numerics.Tensors SIMD, all cores): usable");
            foreach (var d in devices) Console.WriteLine(d.Summary);
            // The same rule as the backend's: CUDA, then an OpenCL GPU; a CPU OpenCL is never chosen automatically.
            var auto = devices.FirstOrDefault(d => d.Usable && d.Kind == DeviceKind.Cuda)
                ?? devices.FirstOrDefault(d => d.Usable && d.Kind == DeviceKind.OpenCL && !d.IsCpu);
            Console.WriteLine($"--device auto picks: {(auto is null ? "host" : auto.Summary)}");
            return 0;
        });
        return command;
    }
}
