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
            // The same rule as the backend's: CUDA, then an OpenCL GPU; a CPU OpenCL is never chosen automatically.
            var auto = devices.FirstOrDefault(d => d.Usable && d.Kind == DeviceKind.Cuda)
                ?? devices.FirstOrDefault(d => d.Usable && d.Kind == DeviceKind.OpenCL && !d.IsCpu);
            if (parse.GetValue(json))
            {
                // One key style (snake_case); kind as --device spells it; the host backend first, as in the text listing.
                var rows = new List<Dictionary<string, object?>>
                {
                    new() { ["kind"] = "host", ["index"] = 0, ["name"] = "CPU backend", ["details"] = "System.Numerics.Tensors SIMD, all cores", ["is_cpu"] = true,
                        ["memory_bytes"] = null, ["warp_size"] = null, ["max_group_size"] = null, ["multiprocessors"] = Environment.ProcessorCount, ["usable"] = true, ["reason"] = null },
                };
                rows.AddRange(devices.Select(d => new Dictionary<string, object?>
                {
                    ["kind"] = IlgpuDeviceInfo.KindText(d.Kind), ["index"] = d.Index, ["name"] = d.Name, ["details"] = d.Details, ["is_cpu"] = d.IsCpu,
                    ["memory_bytes"] = d.MemoryBytes > 0 ? d.MemoryBytes : null, ["warp_size"] = d.WarpSize > 0 ? d.WarpSize : null,
                    ["max_group_size"] = d.MaxGroupSize, ["multiprocessors"] = d.Multiprocessors, ["usable"] = d.Usable, ["reason"] = d.Reason,
                }));
                Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object?>
                {
                    ["devices"] = rows,
                    ["auto"] = auto is null ? "host #0" : $"{IlgpuDeviceInfo.KindText(auto.Kind)} #{auto.Index}",
                }));
                return 0;
            }
            Console.WriteLine("host #0 (CPU backend: System.Numerics.Tensors SIMD, all cores): usable");
            foreach (var d in devices) Console.WriteLine(d.Summary);
            Console.WriteLine($"--device auto picks: {(auto is null ? "host" : auto.Summary)}");
            return 0;
        });
        return command;
    }
}
