using System.Diagnostics;
using System.Reflection;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Compute.Ilgpu;
using IlgpuMedusa.Kernels;
using IlgpuMedusa.Kernels.GpuCheck;
using IlgpuMedusa.Kernels.Tests;
using IlgpuMedusa.Models;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Transformer;

// Usage: IlgpuMedusa.Kernels.GpuCheck [cuda|opencl|cpu-emulator] [--quick] [--conformance-only] [--kernels-only]
// 1. lists the devices; 2. runs the kernel conformance suite on the device against the host backend (GPU-sized shapes);
// 3. times the matmul paths, attention with and without key splits; 4. decodes with a random-weight model of
// TinyLlama-1.1B's shape in fp16. Exit code 1 when a conformance check fails. --quick: tiny shapes (to try it on a CPU).
// --conformance-only: stops after step 2 (the GPU benchmark kit's demo stage, scripts/gpu-bench/run.sh).
// --kernels-only: steps 1-3 (conformance, matmul and attention timings), no end-to-end decode.
// --dump-ptx DIR: writes the PTX (SM_90) of the tensor-core kernels, the wide GEMV and the CUDA attention kernels to DIR and exits (no device needed), for `ptxas -v`.
int dumpAt = Array.IndexOf(args, "--dump-ptx");
if (dumpAt >= 0)
{
    if (dumpAt + 1 >= args.Length) { Console.Error.WriteLine("--dump-ptx needs a folder"); return 2; }
    Directory.CreateDirectory(args[dumpAt + 1]);
    using var ptxContext = Context.Create(b => b.EnableAlgorithms().Optimize(OptimizationLevel.O2));
    using var ptx = new ILGPU.Backends.PTX.PTXBackend(ptxContext, new ILGPU.Runtime.Cuda.CudaCapabilityContext(ILGPU.Runtime.Cuda.CudaArchitecture.SM_90),
        ILGPU.Runtime.Cuda.CudaArchitecture.SM_90, ILGPU.Runtime.Cuda.CudaInstructionSet.ISA_80, null);
    foreach (var entry in KernelCatalog.All.Where(e => e.Name.Contains("TensorCore", StringComparison.Ordinal) || e.Name.Contains("TensorStaged", StringComparison.Ordinal)
        || e.Method.Name is nameof(AttentionKernel.Tiles) or nameof(AttentionKernel.Block) or nameof(AttentionKernel.Decode) || e.Method.Name is nameof(MatMulKernels.VectorWide)))
    {
        var compiled = (ILGPU.Backends.PTX.PTXCompiledKernel)ptx.Compile(
            ILGPU.Backends.EntryPoints.EntryPointDescription.FromExplicitlyGroupedKernel(entry.Method), ILGPU.Runtime.KernelSpecialization.Empty);
        var file = Path.Combine(args[dumpAt + 1], new string(entry.Name.Select(c => char.IsLetterOrDigit(c) ? c : '_').ToArray()) + ".ptx");
        File.WriteAllText(file, compiled.PTXAssembly);
        Console.WriteLine(file);
    }
    return 0;
}
// --ptxas [PTXAS]: assembles every kernel's PTX offline for sm_90 with NVIDIA's ptxas (scripts/get-ptxas.sh; no device
// needed) and prints registers, shared memory, local memory and the resident warps per multiprocessor of an H100/H200 at
// groups of 128 and 256 threads. Exit code 1 when a kernel fails to assemble or uses local memory.
int ptxasAt = Array.IndexOf(args, "--ptxas");
if (ptxasAt >= 0)
{
    string? ptxas = ptxasAt + 1 < args.Length && !args[ptxasAt + 1].StartsWith("--", StringComparison.Ordinal) ? args[ptxasAt + 1]
        : IlgpuMedusa.Kernels.Tests.Ptxas.Locate(Directory.GetCurrentDirectory());
    if (ptxas is null || !File.Exists(ptxas)) { Console.Error.WriteLine("--ptxas: ptxas not found; get it with: bash scripts/get-ptxas.sh (from the repository root), or name it: --ptxas PATH"); return 2; }
    using var ptxContext = Context.Create(b => b.EnableAlgorithms().Optimize(OptimizationLevel.O2));
    int bad = 0;
    Console.WriteLine($"{"kernel",-72} {"regs",4} {"smem B",7} {"local B",7}  warps/SM at 128 / 256 threads");
    foreach (var entry in KernelCatalog.All)
    {
        var arch = ILGPU.Runtime.Cuda.CudaArchitecture.SM_90;
        var r = IlgpuMedusa.Kernels.Tests.Ptxas.Assemble(ptxas, IlgpuMedusa.Kernels.Tests.Ptxas.Compile(ptxContext, entry, arch), arch);
        int local = r.StackBytes + r.SpillStoreBytes + r.SpillLoadBytes;
        if (!r.Succeeded || local > 0) bad++;
        Console.WriteLine(r.Succeeded
            ? $"{entry.Name,-72} {r.Registers,4} {r.SharedBytes,7} {local,7}  {IlgpuMedusa.Kernels.Tests.Ptxas.ResidentWarps(r, 128),2} / {IlgpuMedusa.Kernels.Tests.Ptxas.ResidentWarps(r, 256),2}"
            : $"{entry.Name,-72} FAILED: {r.Output.Trim()}");
    }
    Console.WriteLine(bad == 0 ? "all kernels assemble for sm_90 without local memory" : $"{bad} kernels failed to assemble or use local memory");
    return bad == 0 ? 0 : 1;
}
var kind = DeviceOptions.ParseKind(args.FirstOrDefault(a => !a.StartsWith("--", StringComparison.Ordinal)) ?? "cuda");
bool quick = args.Contains("--quick");
bool conformanceOnly = args.Contains("--conformance-only");
bool kernelsOnly = args.Contains("--kernels-only");
var clock = Stopwatch.StartNew();
void Log(string text) => Console.WriteLine($"[{clock.Elapsed.TotalSeconds,6:F1}s] {text}");

Log("devices:");
foreach (var d in IlgpuDevices.Describe(new DeviceOptions { AllowCpuOpenCL = true })) Log($"  {d.Summary} | {d.Details}");
IlgpuBackend? created;
try
{
    created = IlgpuBackend.TryCreate(new DeviceOptions { Kind = kind, AllowCpuOpenCL = true });
}
catch (ArgumentException e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}
if (created is null)
{
    Console.Error.WriteLine($"error: no {kind} backend (see the device list above)");
    return 1;
}
using var backend = created;
Log($"backend: {backend.DeviceName}; matmul {backend.Kernels.MatMul.Tuning}, tensor cores {backend.Kernels.MatMul.Tuning.TensorCores}");
if (backend.Kernels.MatMul.TensorCoreError is { } tensorError) Log($"tensor cores FAILED to load: {tensorError}");

int failed = Conformance(backend, quick, Log);
if (conformanceOnly)
{
    Log(failed == 0 ? "done (--conformance-only)" : $"done (--conformance-only): {failed} conformance checks FAILED");
    return failed == 0 ? 0 : 1;
}
var bench = new Bench(backend.Accelerator, quick, Log);
bench.LaunchOverhead();
bench.MatMul();
bench.Attention();
if (kernelsOnly)
{
    Log(failed == 0 ? "done (--kernels-only)" : $"done (--kernels-only): {failed} conformance checks FAILED");
    return failed == 0 ? 0 : 1;
}
EndToEnd(backend, quick, Log);
Log(failed == 0 ? "done" : $"done: {failed} conformance checks FAILED");
return failed == 0 ? 0 : 1;

static int Conformance(IlgpuBackend backend, bool quick, Action<string> log)
{
    using var accelerators = new Accelerators();
    var suite = new DeviceSuite(accelerators, backend, quick);
    int pass = 0, fail = 0;
    var tests = typeof(ConformanceTests).GetMethods(BindingFlags.Public | BindingFlags.Instance).Where(m => m.GetCustomAttributes<FactAttribute>().Any());
    foreach (var method in tests)
    {
        var cases = method.GetCustomAttributes<InlineDataAttribute>().SelectMany(a => a.GetData(method)).ToList();
        if (cases.Count == 0) cases.Add([]);
        foreach (var arguments in cases)
        {
            var name = $"{method.Name}({string.Join(", ", arguments.Select(a => a is Array array ? "[" + string.Join(",", array.Cast<object>()) + "]" : a))})";
            try
            {
                method.Invoke(suite, arguments);
                pass++;
            }
            catch (TargetInvocationException e)
            {
                fail++;
                var message = e.InnerException?.Message ?? e.Message;
                log($"  FAIL {name}: {message[..Math.Min(message.Length, 600)]}");
            }
        }
    }
    log($"conformance: {pass} passed, {fail} failed");
    return fail;
}

static void EndToEnd(IlgpuBackend backend, bool quick, Action<string> log)
{
    var config = quick
        ? new ModelConfig { Dim = 64, HiddenDim = 172, Layers = 2, Heads = 4, KvHeads = 2, VocabSize = 300, MaxSequenceLength = 512, TiedEmbeddings = true, Source = "random" }
        : new ModelConfig { Dim = 2048, HiddenDim = 5632, Layers = 22, Heads = 32, KvHeads = 4, VocabSize = 32000, MaxSequenceLength = 2048, TiedEmbeddings = true, Source = "random" };
    using var checkpoint = new RandomCheckpoint(config);
    using var model = LlamaModel.Load(checkpoint, backend, DType.F16);
    using var pool = KvBlockPool.FromBudget(backend, config.Layers, config.KvHeads, config.HeadDim, 16, 2L * config.MaxSequenceLength * 2 * config.Layers * config.KvDim * 4);
    using var workspace = new ForwardWorkspace(backend, config, 256, 1);
    int prompt = quick ? 16 : 128, steps = quick ? 8 : 128;
    var ids = Enumerable.Range(0, prompt).Select(i => i * 37 % config.VocabSize).ToArray();
    var positions = Enumerable.Range(0, prompt).ToArray();
    var argMax = new int[1];
    int Next(DeviceTensor hidden)
    {
        var logits = model.Logits(workspace, hidden.Slice(hidden.Rows - 1, 1));
        var result = workspace.ArgMax.Slice(0, 1);
        backend.ArgMax(result, logits);
        backend.Download(result, argMax);
        return argMax[0];
    }
    double weightBytes = (config.Layers * ((double)config.QkvDim * config.Dim + (double)config.Dim * config.Dim + 3.0 * config.HiddenDim * config.Dim)
        + (double)config.VocabSize * config.Dim) * 2;
    for (int round = 0; round < 2; round++)
    {
        using var sequence = pool.CreateSequence(config.MaxSequenceLength);
        var sw = Stopwatch.StartNew();
        int next = Next(model.Forward(workspace, workspace.Prepare(ids, positions), sequence, 0));
        double prefillMs = sw.Elapsed.TotalMilliseconds;
        sw.Restart();
        int[] token = new int[1], position = new int[1];
        for (int i = 0; i < steps; i++)
        {
            token[0] = next;
            position[0] = prompt + i;
            next = Next(model.Forward(workspace, workspace.Prepare(token, position), sequence, prompt + i));
        }
        double perToken = sw.Elapsed.TotalSeconds / steps;
        log($"e2e {config.Layers}-layer D={config.Dim} F={config.HiddenDim} V={config.VocabSize} fp16, round {round}: prefill {prompt} tokens {prefillMs:F1} ms; " +
            $"decode {1 / perToken:F1} tok/s ({perToken * 1000:F2} ms/token, {weightBytes / 1e9 / perToken:F0} GB/s of weights)");
    }
}

/// <summary>The conformance suite on the device under test, with GPU-sized shapes.</summary>
internal sealed class DeviceSuite(Accelerators accelerators, IlgpuBackend device, bool quick) : ConformanceTests(accelerators)
{
    protected override IlgpuBackend Device => device;

    protected override bool TensorCoresAvailable =>
        device.Accelerator is ILGPU.Runtime.Cuda.CudaAccelerator { Architecture: { Major: >= 8 } } || device.Accelerator is ILGPU.Runtime.CPU.CPUAccelerator;

    protected override (int T, int N, int K)[] TensorMatMuls { get; } = quick
        ? [(3, 33, 256), (17, 31, 64)]
        : [(2, 5, 32), (5, 100, 288), (13, 64, 96), (17, 300, 1024), (64, 1000, 4096), (100, 257, 512), (512, 96, 256)];

    protected override TestSizes Sizes { get; } = quick
        ? new([1, 31, 33], [(1, 33, 31), (17, 33, 31)], [8, 40], 70, 300)
        : new([1, 31, 32, 33, 257, 1000, 4096],
            [(1, 1, 1), (1, 33, 31), (1, 4096, 4096), (1, 11008, 4096), (3, 257, 33), (5, 100, 288), (16, 65, 129), (17, 33, 31), (64, 1000, 4096), (65, 300, 1000), (256, 300, 1000)],
            [8, 64, 128, 256], 5000, 32000);
}
