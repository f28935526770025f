using System.Text.Json;

namespace IlgpuMedusa.Tests.Cli;

/// <summary>`devices`: the JSON listing uses one key style and the names --device accepts; the opt-in is named as the CLI spells it.</summary>
public class DevicesCommandTests
{
    private static readonly string[] DeviceNames = ["host", "cuda", "opencl", "cpu-emulator"];

    [Fact]
    public void JsonListsTheHostFirstWithSnakeCaseKeysAndDeviceNames()
    {
        var result = CliRunner.Run("devices", "--json");
        Assert.True(result.ExitCode == 0, result.StandardError);
        using var json = JsonDocument.Parse(result.StandardOutput);
        var devices = json.RootElement.GetProperty("devices").EnumerateArray().ToArray();
        Assert.Equal("host", devices[0].GetProperty("kind").GetString());
        Assert.True(devices[0].GetProperty("usable").GetBoolean());
        foreach (var device in devices)
        {
            Assert.Contains(device.GetProperty("kind").GetString(), DeviceNames);
            foreach (var property in device.EnumerateObject())
                Assert.Matches("^[a-z_]+$", property.Name);
            // A warp size is a positive number, or null where the device does not say (an OpenCL device not opened).
            var warp = device.GetProperty("warp_size");
            Assert.True(warp.ValueKind == JsonValueKind.Null || warp.GetInt32() > 0, warp.ToString());
        }
        // This machine has no GPU: auto picks the host (a CPU OpenCL is never picked automatically).
        Assert.Equal("host #0", json.RootElement.GetProperty("auto").GetString());
    }

    [Fact]
    public void ACpuOpenCLNamesTheCliOptInAndHasNoBogusWarpSize()
    {
        var result = CliRunner.Run("devices");
        Assert.True(result.ExitCode == 0, result.StandardError);
        var openCL = result.StandardOutput.Split('\n').Where(l => l.StartsWith("opencl #", StringComparison.Ordinal)).ToArray();
        Assert.True(openCL.Length > 0, $"no OpenCL device listed (the tests install PoCL):\n{result.StandardOutput}");
        Assert.All(openCL, line =>
        {
            Assert.Contains("--allow-cpu-opencl", line, StringComparison.Ordinal);
            Assert.DoesNotContain("warp 0", line, StringComparison.Ordinal);
        });
    }
}
