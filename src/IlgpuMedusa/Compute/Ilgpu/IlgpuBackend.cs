using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;
using IlgpuMedusa.Kernels;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Compute.Ilgpu;

/// <summary>
/// The accelerator backend: the op set as ILGPU kernels (kernels/IlgpuMedusa.Kernels) on one CUDA, OpenCL or emulated
/// device. It owns the ILGPU context, the accelerator, one stream and the loaded kernels (all compiled when the backend
/// is created). Ops only queue work on the stream; <see cref="Download(DeviceTensor, Span{float})"/> and
/// <see cref="Synchronize"/> wait. Nothing is allocated per op and nothing crosses to the host outside Upload/Download
/// (the RoPE frequency table is uploaded once per distinct (Dh, θ)).
/// </summary>
public sealed class IlgpuBackend : IComputeBackend, IDeviceDiagnostics
{
    private readonly Context _context;
    private readonly Accelerator _accelerator;
    private readonly AcceleratorStream _stream;
    private readonly KernelSet _kernels;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> _noMask;
    private readonly Dictionary<(int HeadDim, RopeParameters Rope), MemoryBuffer1D<float, Stride1D.Dense>> _ropeFrequencies = [];
    private bool _disposed;
    private OpTimer? _timer; // set while op timings are recorded

    private IlgpuBackend(Context context, Accelerator accelerator, DeviceKind kind, int? groupSize, bool fusedOps)
    {
        FusedOps = fusedOps;
        LaunchedUploads = Environment.GetEnvironmentVariable(SmallUploadsVariable)?.Trim() is not "0";
        _context = context;
        _accelerator = accelerator;
        Kind = kind;
        _stream = accelerator.CreateStream();
        _kernels = new KernelSet(accelerator, groupSize ?? KernelSet.DefaultGroupSize(accelerator));
        _noMask = accelerator.Allocate1D<int>(1);
        _noMask.MemSetToZero(_stream);
        var matmul = _kernels.MatMul;
        string tensor = matmul.TensorCoreError is { } error ? $", tensor cores failed to load ({error[..Math.Min(error.Length, 300)]}): float32 cores"
            : matmul.Tuning.TensorCores != TensorCoreMode.Off ? $", tensor cores {matmul.Tuning.TensorCores.ToString().ToLowerInvariant()}" : "";
        if (matmul.Tuning.TensorCores != TensorCoreMode.Off && matmul.TensorCoreError is null)
            tensor += $" (prefetch {matmul.Tuning.TensorPrefetch}, {(matmul.Tuning.TensorWaveSplits ? "wave" : "fixed")} splits)";
        var attention = _kernels.Attention;
        string kernels = $", attention {(attention.UsesWarpDecode(1) ? "warp" : attention.UsesBlocks(1) ? "blocks" : "per-token")}/"
            + $"{(attention.UsesTiles(2, AttentionKernel.TileMaxHeadDim) ? "tiles" : attention.UsesBlocks(2) ? "blocks" : "per-token")}"
            + (matmul.Tuning.WideVector ? $", GEMV {(!matmul.UsesOneRowGemv(1, 0) ? "2 rows/warp" : matmul.Tuning.WideSingleRowMaxRows == int.MaxValue ? "1 row/warp" : $"1 row/warp up to {matmul.Tuning.WideSingleRowMaxRows} rows")}" : "");
        DeviceName = $"{accelerator.Name} ({IlgpuDeviceInfo.KindText(kind)}, {MemoryText(accelerator)}, warp {accelerator.WarpSize}, group {_kernels.GroupSize}{(fusedOps ? "" : ", unfused")}{tensor}{kernels})";
    }

    /// <inheritdoc />
    public DeviceKind Kind { get; }

    /// <inheritdoc />
    public string DeviceName { get; }

    /// <summary>Whether the fused kernels run where they apply (<see cref="DeviceOptions.FusedOps"/>).</summary>
    public bool FusedOps { get; }

    /// <summary>Environment variable: 0 makes every upload a copy (to time what launched uploads buy).</summary>
    public const string SmallUploadsVariable = "ILGPU_MEDUSA_SMALL_UPLOADS";

    /// <summary>
    /// Whether int uploads of up to <see cref="SmallInts.Capacity"/> values (a step's tokens and positions, a small tree
    /// mask, compaction sources, a head's next token) are written by a kernel launch instead of a copy. ILGPU's copy
    /// from the host waits for the stream, so each copy in the middle of a step left the device idle until the host had
    /// queued the next launches; a launch carries the values by value and is queued like any other op. Default on;
    /// <see cref="SmallUploadsVariable"/>=0 turns it off.
    /// </summary>
    public bool LaunchedUploads { get; set; }

    /// <summary>
    /// Times the host waited for the device since the backend was created: copies to or from the device (ILGPU's copies
    /// wait for the stream) and explicit synchronizations. A step that waits once (for its tokens) keeps the device busy
    /// from one step to the next as far as the host's launches allow.
    /// </summary>
    public long HostWaits { get; private set; }

    /// <summary>
    /// Those of <see cref="HostWaits"/> that found work queued since the previous wait: each one drains the stream, and
    /// the device then idles until the host has decided what to do and queued the next launches. A wait right after
    /// another (a second download) costs only the copy.
    /// </summary>
    public long HostDrains { get; private set; }

    private bool _queued; // work was queued since the last wait

    /// <summary>Threads per group of the grouped kernels on this device.</summary>
    public int GroupSize => _kernels.GroupSize;

    /// <summary>The ILGPU accelerator (for diagnostics and benchmarks).</summary>
    public Accelerator Accelerator => _accelerator;

    /// <summary>The loaded launchers (tests, tuning).</summary>
    internal KernelSet Kernels => _kernels;

    private static string MemoryText(Accelerator accelerator) =>
        accelerator is CPUAccelerator ? "host memory" : $"{accelerator.MemorySize / (1024.0 * 1024 * 1024):0.#} GiB";

    /// <summary>
    /// Creates the backend <paramref name="options"/> ask for, or returns null when the host backend should be used:
    /// for <see cref="DeviceKind.Host"/>, and for <see cref="DeviceKind.Auto"/> when no CUDA GPU or OpenCL GPU works.
    /// Throws <see cref="ArgumentException"/> listing what is available when a requested device cannot be used.
    /// </summary>
    public static IlgpuBackend? TryCreate(DeviceOptions options) => TryCreate(options, groupSize: null);

    /// <summary><see cref="TryCreate(DeviceOptions)"/> with a forced group size (a power of two ≤ 256; tests and tuning).</summary>
    internal static IlgpuBackend? TryCreate(DeviceOptions options, int? groupSize)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.Kind == DeviceKind.Host) return null;
        var context = IlgpuDevices.CreateContext(out var cudaError, options.OpTimings);
        try
        {
            var devices = IlgpuDevices.Enumerate(context).ToList();
            if (options.Kind == DeviceKind.Auto)
            {
                foreach (var (kind, _, device) in devices)
                {
                    bool gpu = kind == DeviceKind.Cuda || (device is CLDevice cl && cl.DeviceType.HasFlag(CLDeviceType.CL_DEVICE_TYPE_GPU));
                    if (!gpu || IlgpuDevices.StaticReason(device, options) is not null) continue;
                    try
                    {
                        return Start(context, device, kind, groupSize, options.FusedOpsEnabled);
                    }
                    catch (Exception e) when (e is not KernelLoadException)
                    {
                        // Not usable after all (driver, memory, ...): try the next one, then the host.
                    }
                }
                context.Dispose();
                return null;
            }

            var match = devices.FirstOrDefault(d => d.Kind == options.Kind && d.Index == options.Index);
            if (match.Device is null)
                throw Unavailable(options, $"there is no {IlgpuDeviceInfo.KindText(options.Kind)} device #{options.Index}" +
                    (options.Kind == DeviceKind.Cuda && cudaError is not null ? $" (CUDA could not be initialised: {cudaError})" : ""));
            if (IlgpuDevices.StaticReason(match.Device, options) is { } reason)
                throw Unavailable(options, $"{IlgpuDeviceInfo.KindText(match.Kind)} #{match.Index} '{match.Device.Name}' cannot be used: {reason}");
            try
            {
                return Start(context, match.Device, match.Kind, groupSize, options.FusedOpsEnabled);
            }
            catch (Exception e) when (e is not KernelLoadException and not ArgumentException)
            {
                throw Unavailable(options, $"{IlgpuDeviceInfo.KindText(match.Kind)} #{match.Index} '{match.Device.Name}' failed to start: {e.GetType().Name}: {e.Message}", e);
            }
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    private static IlgpuBackend Start(Context context, Device device, DeviceKind kind, int? groupSize, bool fusedOps)
    {
        var accelerator = IlgpuDevices.CreateAccelerator(context, device);
        try
        {
            return new IlgpuBackend(context, accelerator, kind, groupSize, fusedOps);
        }
        catch
        {
            accelerator.Dispose();
            throw;
        }
    }

    private static ArgumentException Unavailable(DeviceOptions options, string what, Exception? inner = null)
    {
        string available;
        try
        {
            available = IlgpuDevices.AvailableText(IlgpuDevices.Describe(options));
        }
        catch (Exception e)
        {
            available = $"host (listing accelerators failed: {e.Message})";
        }
        return new ArgumentException($"--device {IlgpuDeviceInfo.KindText(options.Kind)}: {what}. Available: {available}", nameof(options), inner);
    }

    // ---------------------------------------------------------------- memory

    /// <inheritdoc />
    public DeviceTensor Allocate(DType type, int rows, int columns)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(columns);
        int stride = IlgpuTensor.StrideFor(type, columns);
        long bytes = (long)rows * stride * DTypeInfo.SizeOf(type);
        MemoryBuffer1D<byte, Stride1D.Dense> buffer;
        try
        {
            buffer = _accelerator.Allocate1D<byte>(Math.Max(bytes, 4));
        }
        catch (Exception e) when (e is not ArgumentException)
        {
            throw new InvalidOperationException(
                $"cannot allocate {type}[{rows}, {columns}] ({bytes / (1024.0 * 1024):0.##} MiB) on {DeviceName}: {e.Message}", e);
        }
        buffer.MemSetToZero(_stream);
        _queued = true;
        return new IlgpuTensor(this, type, rows, columns, stride, buffer.View.SubView(0, bytes), buffer);
    }

    /// <inheritdoc />
    public DeviceTensor UploadWeight(IReadOnlyList<TensorData> parts, DType storeAs)
    {
        ArgumentNullException.ThrowIfNull(parts);
        if (parts.Count == 0) throw new ArgumentException("no weight parts", nameof(parts));
        if (storeAs is not (DType.F32 or DType.F16 or DType.BF16))
            throw new ArgumentException($"weights are stored as F32, F16 or BF16, not {storeAs}", nameof(storeAs));
        int columns = Columns(parts[0]);
        int rows = 0;
        foreach (var p in parts)
        {
            if (Columns(p) != columns)
                throw new ArgumentException($"weight parts have different widths: '{parts[0].Name}' {parts[0].ShapeText} vs '{p.Name}' {p.ShapeText}", nameof(parts));
            rows += checked((int)(p.ElementCount / columns));
        }
        var tensor = (IlgpuTensor)Allocate(storeAs, rows, columns);
        try
        {
            int row = 0;
            foreach (var p in parts)
            {
                int partRows = (int)(p.ElementCount / columns);
                CopyRows(tensor, row, p, partRows);
                row += partRows;
            }
            _stream.Synchronize();
            return tensor;
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
    }

    private static int Columns(TensorData t) => t.Shape.Length == 1 ? t.Shape[0] : t.Shape[^1];

    /// <summary>
    /// The gate and up matrices interleaved row by row (gate i at row 2i, up i at row 2i + 1,
    /// <see cref="MatMulLauncher.InterleaveGateUp"/>): each group of the fused kernel then holds two (gate, up) pairs.
    /// </summary>
    public DeviceTensor UploadGateUp(TensorData gate, TensorData up, DType storeAs)
    {
        if (storeAs is not (DType.F32 or DType.F16 or DType.BF16))
            throw new ArgumentException($"weights are stored as F32, F16 or BF16, not {storeAs}", nameof(storeAs));
        int columns = Columns(gate);
        if (Columns(up) != columns || up.ElementCount != gate.ElementCount)
            throw new ArgumentException($"gate '{gate.Name}' {gate.ShapeText} and up '{up.Name}' {up.ShapeText} must have one shape", nameof(up));
        int rows = checked((int)(gate.ElementCount / columns));
        var tensor = (IlgpuTensor)Allocate(storeAs, 2 * rows, columns);
        try
        {
            int size = DTypeInfo.SizeOf(storeAs);
            long rowBytes = (long)tensor.RowStride * size;
            int pairsPerChunk = (int)Math.Clamp((4L << 20) / Math.Max(1, 2 * rowBytes), 1, Math.Max(1, rows));
            var bytes = new byte[2 * pairsPerChunk * rowBytes];
            var floats = new float[columns];
            for (int start = 0; start < rows; start += pairsPerChunk)
            {
                int count = Math.Min(pairsPerChunk, rows - start);
                Array.Clear(bytes);
                for (int r = 0; r < count; r++)
                {
                    EncodeRow(gate, start + r, columns, storeAs, floats, bytes.AsSpan((int)(2 * r * rowBytes), columns * size));
                    EncodeRow(up, start + r, columns, storeAs, floats, bytes.AsSpan((int)((2 * r + 1) * rowBytes), columns * size));
                }
                tensor.Raw.SubView(2L * start * rowBytes, 2L * count * rowBytes).CopyFromCPU(_stream, bytes.AsSpan(0, (int)(2 * count * rowBytes)));
            }
            _stream.Synchronize();
            return tensor;
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
    }

    /// <summary>Row <paramref name="row"/> of <paramref name="part"/> encoded as <paramref name="type"/> into <paramref name="destination"/>.</summary>
    private static unsafe void EncodeRow(TensorData part, int row, int columns, DType type, float[] floats, Span<byte> destination)
    {
        int sourceSize = DTypeInfo.SizeOf(part.Type);
        var source = new ReadOnlySpan<byte>((byte*)part.Pointer + (long)row * columns * sourceSize, columns * sourceSize);
        if (part.Type == type)
        {
            source.CopyTo(destination);
            return;
        }
        HalfConversions.ToSingle(part.Type, source, floats);
        HalfConversions.FromSingle(type, floats, destination);
    }

    /// <summary>Converts a part on the host (in chunks of rows, to bound the temporary memory) and copies it into its rows.</summary>
    private unsafe void CopyRows(IlgpuTensor tensor, int firstRow, TensorData part, int rows)
    {
        int columns = tensor.Columns, stride = tensor.RowStride, size = DTypeInfo.SizeOf(tensor.Type);
        long rowBytes = (long)stride * size;
        if (part.Type == tensor.Type && stride == columns)
        {
            // Same encoding, no padding: straight from the (memory-mapped) checkpoint, in pieces that fit a span.
            long total = (long)rows * rowBytes, done = 0;
            while (done < total)
            {
                int piece = (int)Math.Min(total - done, 1L << 30);
                var source = new ReadOnlySpan<byte>((byte*)part.Pointer + done, piece);
                tensor.Raw.SubView(firstRow * rowBytes + done, piece).CopyFromCPU(_stream, source);
                done += piece;
            }
            return;
        }
        int chunkRows = (int)Math.Clamp((4L << 20) / Math.Max(1, rowBytes), 1, Math.Max(1, rows));
        var floats = new float[(long)chunkRows * columns];
        var bytes = new byte[chunkRows * rowBytes];
        int sourceSize = DTypeInfo.SizeOf(part.Type);
        for (int start = 0; start < rows; start += chunkRows)
        {
            int count = Math.Min(chunkRows, rows - start);
            var source = new ReadOnlySpan<byte>((byte*)part.Pointer + (long)start * columns * sourceSize, count * columns * sourceSize);
            HalfConversions.ToSingle(part.Type, source, floats.AsSpan(0, count * columns));
            Array.Clear(bytes);
            for (int r = 0; r < count; r++)
                HalfConversions.FromSingle(tensor.Type, floats.AsSpan(r * columns, columns), bytes.AsSpan((int)(r * rowBytes), columns * size));
            tensor.Raw.SubView((firstRow + start) * rowBytes, count * rowBytes).CopyFromCPU(_stream, bytes.AsSpan(0, (int)(count * rowBytes)));
        }
    }

    /// <inheritdoc />
    public void Upload(DeviceTensor destination, ReadOnlySpan<float> source) =>
        Waiting(Check(destination, DType.F32, source.Length)).Raw.CopyFromCPU(_stream, MemoryMarshal.AsBytes(source));

    /// <inheritdoc />
    public void Upload(DeviceTensor destination, ReadOnlySpan<int> source)
    {
        var t = Check(destination, DType.I32, source.Length);
        if (LaunchedUploads && source.Length <= SmallInts.Capacity)
        {
            int op = Begin("upload", 1, source.Length);
            _kernels.SmallWrite.Launch(_stream, t.Ints, source);
            End(op);
            return;
        }
        Waiting(t).Raw.CopyFromCPU(_stream, MemoryMarshal.AsBytes(source));
    }

    /// <inheritdoc />
    public void Download(DeviceTensor source, Span<float> destination) =>
        Waiting(Check(source, DType.F32, destination.Length)).Raw.CopyToCPU(_stream, MemoryMarshal.AsBytes(destination));

    /// <inheritdoc />
    public void Download(DeviceTensor source, Span<int> destination) =>
        Waiting(Check(source, DType.I32, destination.Length)).Raw.CopyToCPU(_stream, MemoryMarshal.AsBytes(destination));

    /// <summary>Counts a copy that makes the host wait for the stream (<see cref="HostWaits"/>).</summary>
    private IlgpuTensor Waiting(IlgpuTensor tensor)
    {
        Waited();
        return tensor;
    }

    private void Waited()
    {
        HostWaits++;
        if (_queued) HostDrains++;
        _queued = false;
    }

    private IlgpuTensor Check(DeviceTensor tensor, DType type, int length)
    {
        var t = Own(tensor);
        if (t.Type != type || t.Length != length)
            throw new ArgumentException($"copy of {length} {type} values does not fit tensor {t.ShapeText}");
        return t;
    }

    /// <inheritdoc />
    public KvCache AllocateKvCache(KvCacheLayout layout)
    {
        ArgumentNullException.ThrowIfNull(layout);
        ObjectDisposedException.ThrowIf(_disposed, this);
        KvCacheLayout.CheckElementType(layout.ElementType, "AllocateKvCache");
        if (layout.ElementType == DType.F16)
        {
            // The binary16 kernels compile now, so that a failure shows at load and the first step does not pay for them.
            _kernels.Attention.Prepare(KvElement.F16);
            _kernels.KvWrite.Prepare(KvElement.F16);
            _kernels.RopeKvWrite.Prepare(KvElement.F16);
            _kernels.KvCompact.Prepare(KvElement.F16);
        }
        MemoryBuffer1D<byte, Stride1D.Dense> buffer;
        try
        {
            buffer = _accelerator.Allocate1D<byte>(Math.Max(4, layout.TotalBytes));
        }
        catch (Exception e) when (e is not ArgumentException)
        {
            throw new InvalidOperationException(
                $"the KV cache ({layout.BlockCount} blocks of {layout.BlockSize} tokens, {layout.TotalBytes / (1024.0 * 1024):0.##} MiB) does not fit on " +
                $"{DeviceName}: {e.Message}. Lower the KV budget.", e);
        }
        buffer.MemSetToZero(_stream);
        _queued = true;
        return new IlgpuKvCache(this, layout, buffer, _stream);
    }

    /// <inheritdoc />
    public void Synchronize()
    {
        Waited();
        _stream.Synchronize();
    }

    // ---------------------------------------------------------------- ops

    /// <inheritdoc />
    public void Embedding(DeviceTensor output, DeviceTensor tokens, DeviceTensor table)
    {
        var o = Own(output);
        var ids = Own(tokens);
        var w = Own(table);
        Shapes.Embedding(o, ids, w);
        int op = Begin("embedding", o.Rows, o.Columns);
        _kernels.Embedding.Launch(_stream, o.Floats, ids.Ints, w.AsWeight(), o.Rows);
        End(op);
    }

    /// <inheritdoc />
    public void RmsNorm(DeviceTensor output, DeviceTensor input, DeviceTensor weight, float eps)
    {
        var o = Own(output);
        var x = Own(input);
        var w = Own(weight);
        Shapes.RmsNorm(o, x, w);
        int op = Begin("rmsnorm", x.Rows, x.Columns);
        _kernels.RmsNorm.Launch(_stream, o.Floats, x.Floats, w.AsWeight(), x.Rows, eps);
        End(op);
    }

    /// <inheritdoc />
    public void HeadRmsNorm(DeviceTensor qkv, int queryHeads, int kvHeads, int headDim, DeviceTensor queryWeight, DeviceTensor keyWeight, float eps)
    {
        var x = Own(qkv);
        var qw = Own(queryWeight);
        var kw = Own(keyWeight);
        Shapes.HeadRmsNorm(x, queryHeads, kvHeads, headDim, qw, kw);
        int op = Begin("headnorm", x.Rows, (queryHeads + kvHeads) * headDim);
        _kernels.HeadRmsNorm.Launch(_stream, x.Floats, x.Rows, x.Columns, queryHeads, kvHeads, headDim, qw.Floats, kw.Floats, eps);
        End(op);
    }

    /// <inheritdoc />
    public void MatMul(DeviceTensor output, DeviceTensor input, DeviceTensor weight, bool accumulate) =>
        MatMul(output, input, weight, accumulate, MatMulPath.Auto);

    /// <summary><see cref="MatMul(DeviceTensor, DeviceTensor, DeviceTensor, bool)"/> on a chosen kernel path (tests, tuning).</summary>
    internal void MatMul(DeviceTensor output, DeviceTensor input, DeviceTensor weight, bool accumulate, MatMulPath path)
    {
        var o = Own(output);
        var x = Own(input);
        var w = Own(weight);
        Shapes.MatMul(o, x, w);
        int op = BeginMatMul("matmul", w, x.Rows);
        _kernels.MatMul.Launch(_stream, o.Floats, x.Floats, w.AsWeight(), x.Rows, accumulate, path);
        End(op);
    }

    /// <inheritdoc />
    public void NormMatMul(DeviceTensor output, DeviceTensor input, DeviceTensor normWeight, float eps, DeviceTensor weight, DeviceTensor normed, bool accumulate)
    {
        var o = Own(output);
        var x = Own(input);
        var g = Own(normWeight);
        var w = Own(weight);
        var n = Own(normed);
        Shapes.RmsNorm(n, x, g);
        Shapes.MatMul(o, n, w);
        if (FusesNormOnTensorCores(g, w, x.Rows))
        {
            // Tensor cores: the norm is applied as the inputs are rounded to fp16 (the normalised copy is not written).
            int fused = BeginMatMul("norm+matmul", w, x.Rows);
            _kernels.MatMul.LaunchNormedTensor(_stream, o.Floats, x.Floats, g.Floats, w.AsWeight(), x.Rows, eps, accumulate);
            End(fused);
            return;
        }
        if (!CanFuseNorm(g, w, x.Rows))
        {
            // Prefill-sized T (the tiled kernel) or 16-bit norm weights: the two ops one after the other.
            RmsNorm(n, x, g, eps);
            MatMul(o, n, w, accumulate);
            return;
        }
        int op = BeginMatMul("norm+matmul", w, x.Rows);
        _kernels.MatMul.LaunchNormed(_stream, o.Floats, x.Floats, g.Floats, w.AsWeight(), x.Rows, eps, accumulate);
        End(op);
    }

    /// <summary>
    /// The tensor-core path applies the norm while it rounds the inputs to fp16 (F32 norm weights, fused ops on), wherever
    /// the matmul runs on tensor cores.
    /// </summary>
    private bool FusesNormOnTensorCores(IlgpuTensor normWeight, IlgpuTensor weight, int rows) =>
        FusedOps && normWeight.Type == DType.F32 && _kernels.MatMul.Choose(weight.AsWeight(), rows) == MatMulPath.TensorCore;

    /// <summary>
    /// True when <see cref="NormMatMul"/> of T rows leaves its normed scratch untouched: the norm fused into the vector or
    /// small-T kernel, or into the tensor-core kernel's input preparation (tests).
    /// </summary>
    internal bool FusesNorm(DeviceTensor normWeight, DeviceTensor weight, int rows) =>
        CanFuseNorm(Own(normWeight), Own(weight), rows) || FusesNormOnTensorCores(Own(normWeight), Own(weight), rows);

    /// <summary>
    /// The fused norm kernels (vector, small-T) take F32 norm weights and T up to the small-T matmul's limit, and are not
    /// used where the matmul runs on tensor cores.
    /// </summary>
    private bool CanFuseNorm(IlgpuTensor normWeight, IlgpuTensor weight, int rows) =>
        FusedOps && normWeight.Type == DType.F32 && _kernels.MatMul.ShouldNormalize(weight.AsWeight(), rows);

    /// <inheritdoc />
    public void FfnGateUp(DeviceTensor ffn, DeviceTensor input, DeviceTensor normWeight, float eps, DeviceTensor gateUp, DeviceTensor normed, DeviceTensor gateUpOut)
    {
        var f = Own(ffn);
        var x = Own(input);
        var g = Own(normWeight);
        var w = Own(gateUp);
        var n = Own(normed);
        var u = Own(gateUpOut);
        Shapes.RmsNorm(n, x, g);
        Shapes.MatMul(u, n, w);
        Shapes.SwiGlu(f, u);
        if (CanFuseNorm(g, w, x.Rows))
        {
            int op = BeginMatMul("norm+matmul+swiglu", w, x.Rows);
            _kernels.MatMul.LaunchNormedSwiGlu(_stream, f.Floats, x.Floats, g.Floats, w.AsWeight(), x.Rows, eps);
            End(op);
            return;
        }
        // Prefill-sized T: the matmul writes the interleaved (gate, up) pairs, then SwiGLU reads them as pairs.
        NormMatMul(u, x, g, eps, w, n, accumulate: false);
        int swiglu = Begin("swiglu", f.Rows, f.Columns);
        _kernels.SwiGlu.Launch(_stream, f.Floats, u.Floats, f.Rows, f.Columns, interleaved: true);
        End(swiglu);
    }

    /// <inheritdoc />
    public bool CanGroupMatMul(int rowsPerGroup) => rowsPerGroup > 0 && rowsPerGroup % MatMulKernels.RowsPerGroup == 0;

    /// <inheritdoc />
    public void GroupedMatMul(DeviceTensor output, DeviceTensor input, DeviceTensor weight)
    {
        var o = Own(output);
        var x = Own(input);
        var w = Own(weight);
        Shapes.GroupedMatMul(o, x, w);
        if (!CanGroupMatMul(o.Columns))
            throw new ArgumentException($"GroupedMatMul: groups of {o.Columns} rows; this backend needs a multiple of {MatMulKernels.RowsPerGroup} (check CanGroupMatMul)");
        _queued = true;
        int op = _timer is null ? -1 : _timer.Begin("grouped-matmul", $"{o.Rows}x[{o.Columns}x{w.Columns}] {w.Type}", w.Length * DTypeInfo.SizeOf(w.Type));
        _kernels.MatMul.LaunchGrouped(_stream, o.Floats, x.Floats, w.AsWeight(), o.Columns, sharedInput: x.Rows == 1 && o.Rows > 1);
        End(op);
    }

    /// <inheritdoc />
    public void Rope(DeviceTensor x, DeviceTensor positions, int heads, int headDim, RopeParameters rope)
    {
        var t = Own(x);
        var p = Own(positions);
        Shapes.Rope(t, p, heads, headDim);
        int op = Begin("rope", t.Rows, t.Columns);
        _kernels.Rope.Launch(_stream, t.Floats, p.Ints, RopeFrequencies(headDim, rope), t.Rows, t.Columns, heads, headDim);
        End(op);
    }

    private ArrayView<float> RopeFrequencies(int headDim, RopeParameters rope)
    {
        ArgumentNullException.ThrowIfNull(rope);
        if (!_ropeFrequencies.TryGetValue((headDim, rope), out var buffer))
        {
            buffer = _accelerator.Allocate1D(rope.Frequencies(headDim));
            _ropeFrequencies[(headDim, rope)] = buffer;
        }
        return buffer.View;
    }

    /// <inheritdoc />
    public void KvWrite(KvCache cache, int layer, DeviceTensor qkv, int queryHeads, DeviceTensor blockTable, int startPosition)
    {
        var c = OwnCache(cache);
        var q = Own(qkv);
        var table = Own(blockTable);
        var l = c.Layout;
        Shapes.KvWrite(l, layer, q, queryHeads, table, startPosition);
        var args = new KvWriteArgs(q.Rows, l.KvDim, q.Columns, queryHeads * l.HeadDim, l.BlockSize, startPosition);
        int op = Begin("kvwrite", q.Rows, l.KvDim);
        _kernels.KvWrite.Launch(_stream, c.Planes(layer), q.Floats, table.Ints, args);
        End(op);
    }

    /// <inheritdoc />
    public void RopeKvWrite(DeviceTensor qkv, DeviceTensor positions, int queryHeads, int headDim, RopeParameters rope, KvCache cache, int layer, DeviceTensor blockTable, int startPosition)
    {
        var c = OwnCache(cache);
        var q = Own(qkv);
        var p = Own(positions);
        var table = Own(blockTable);
        var l = c.Layout;
        if (headDim != l.HeadDim)
            throw new ArgumentException($"RopeKvWrite: head dim {headDim} differs from the KV cache's {l.HeadDim}", nameof(headDim));
        Shapes.Rope(q, p, queryHeads + l.KvHeads, headDim);
        Shapes.KvWrite(l, layer, q, queryHeads, table, startPosition);
        if (!FusedOps)
        {
            Rope(q, p, queryHeads + l.KvHeads, headDim, rope);
            KvWrite(c, layer, q, queryHeads, table, startPosition);
            return;
        }
        var args = new RopeKvWriteArgs(q.Rows, queryHeads, l.KvHeads, headDim, q.Columns, l.BlockSize, startPosition);
        int op = Begin("rope+kvwrite", q.Rows, q.Columns);
        _kernels.RopeKvWrite.Launch(_stream, c.Planes(layer), q.Floats, p.Ints, RopeFrequencies(headDim, rope), table.Ints, args);
        End(op);
    }

    /// <inheritdoc />
    public void Attention(DeviceTensor output, DeviceTensor qkv, KvCache cache, int layer, DeviceTensor blockTable, int committed, DeviceTensor? mask) =>
        Attention(output, qkv, cache, layer, blockTable, committed, mask, splits: null);

    /// <summary>
    /// <see cref="Attention(DeviceTensor, DeviceTensor, KvCache, int, DeviceTensor, int, DeviceTensor?)"/> with a forced
    /// number of key splits (tests; null: the launcher chooses from the device size).
    /// </summary>
    internal void Attention(DeviceTensor output, DeviceTensor qkv, KvCache cache, int layer, DeviceTensor blockTable, int committed, DeviceTensor? mask, int? splits,
        AttentionLauncher? launcher = null)
    {
        var o = Own(output);
        var q = Own(qkv);
        var c = OwnCache(cache);
        var table = Own(blockTable);
        var m = mask is null ? null : Own(mask);
        var l = c.Layout;
        Shapes.Attention(o, q, l, table, committed, m);
        if ((uint)layer >= (uint)l.Layers) throw new ArgumentException($"Attention: layer {layer} outside [0, {l.Layers})");
        var args = new AttentionArgs(q.Rows, o.Columns / l.HeadDim, l.KvHeads, l.HeadDim, q.Columns, committed, l.BlockSize, m is not null);
        _queued = true;
        int op = _timer is null ? -1 : _timer.Begin("attention", $"T={q.Rows} H={o.Columns / l.HeadDim} Hkv={l.KvHeads} Dh={l.HeadDim}", 0);
        (launcher ?? _kernels.Attention).Launch(_stream, o.Floats, q.Floats, c.Planes(layer), table.Ints, m?.Ints ?? _noMask.View, args, splits);
        End(op);
    }

    /// <inheritdoc />
    public void SwiGlu(DeviceTensor output, DeviceTensor gateUp)
    {
        var o = Own(output);
        var g = Own(gateUp);
        Shapes.SwiGlu(o, g);
        int op = Begin("swiglu", o.Rows, o.Columns);
        _kernels.SwiGlu.Launch(_stream, o.Floats, g.Floats, o.Rows, o.Columns);
        End(op);
    }

    /// <inheritdoc />
    public void SiluResidual(DeviceTensor output, DeviceTensor input, DeviceTensor linear, DeviceTensor bias)
    {
        var o = Own(output);
        var x = Own(input);
        var lin = Own(linear);
        var b = Own(bias);
        Shapes.SiluResidual(o, x, lin, b);
        if (b.Type != DType.F32) throw new ArgumentException($"SiluResidual: the bias must be F32 on {DeviceName}, got {b.ShapeText}", nameof(bias));
        int op = Begin("silu-residual", o.Rows, o.Columns);
        _kernels.SiluResidual.Launch(_stream, o.Floats, x.Floats, lin.Floats, b.Floats, o.Rows, o.Columns, biasPerRow: b.Rows > 1);
        End(op);
    }

    /// <inheritdoc />
    public void Add(DeviceTensor output, DeviceTensor a, DeviceTensor b)
    {
        var o = Own(output);
        var x = Own(a);
        var y = Own(b);
        Shapes.Add(o, x, y);
        int op = Begin("add", o.Rows, o.Columns);
        _kernels.Add.Launch(_stream, o.Floats, x.Floats, y.Floats, checked((int)o.Length), checked((int)y.Length));
        End(op);
    }

    /// <inheritdoc />
    public void ArgMax(DeviceTensor output, DeviceTensor logits)
    {
        var o = Own(output);
        var x = Own(logits);
        Shapes.ArgMax(o, x);
        int op = Begin("argmax", x.Rows, x.Columns);
        _kernels.ArgMax.Launch(_stream, o.Ints, x.Floats, x.Rows, x.Columns);
        End(op);
    }

    /// <inheritdoc />
    public void TopK(DeviceTensor indices, DeviceTensor values, DeviceTensor logits)
    {
        var i = Own(indices);
        var v = Own(values);
        var x = Own(logits);
        Shapes.TopK(i, v, x);
        int op = Begin("topk", x.Rows, x.Columns);
        _kernels.TopK.Launch(_stream, i.Ints, v.Floats, x.Floats, x.Rows, x.Columns, i.Columns);
        End(op);
    }

    /// <inheritdoc />
    public void SoftmaxStats(DeviceTensor output, DeviceTensor logits)
    {
        var o = Own(output);
        var x = Own(logits);
        Shapes.SoftmaxStats(o, x);
        int op = Begin("softmax-stats", x.Rows, x.Columns);
        _kernels.SoftmaxStats.Launch(_stream, o.Floats, x.Floats, x.Rows, x.Columns);
        End(op);
    }

    /// <inheritdoc />
    public void GatherInts(DeviceTensor output, DeviceTensor source, ReadOnlySpan<int> indices, DeviceTensor? map)
    {
        var o = Own(output);
        var s = Own(source);
        var m = map is null ? null : Own(map);
        Shapes.GatherInts(o, s, indices, m);
        int op = Begin("gatherints", 1, indices.Length);
        _kernels.GatherInts.Launch(_stream, o.Ints, s.Ints, m?.Ints, indices);
        End(op);
    }

    /// <inheritdoc />
    public void KvCompact(KvCache cache, DeviceTensor blockTable, DeviceTensor sources, int destinationStart)
    {
        var c = OwnCache(cache);
        var table = Own(blockTable);
        var s = Own(sources);
        var l = c.Layout;
        Shapes.KvCompact(l, table, s, destinationStart);
        var args = new KvCompactArgs(2 * l.Layers, l.ElementsPerLayerPart, l.KvDim, l.BlockSize, s.Rows, destinationStart);
        int op = Begin("kvcompact", s.Rows, l.KvDim);
        _kernels.KvCompact.Launch(_stream, c.Element, c.All, table.Ints, s.Ints, args);
        End(op);
    }

    /// <summary>Starts an op's timing when recording: its name and [rows x columns] (formatted only then).</summary>
    private int Begin(string op, long rows, long columns)
    {
        _queued = true;
        return _timer is null ? -1 : _timer.Begin(op, $"{rows}x{columns}", 0);
    }

    /// <summary>Starts a matmul-like op's timing when recording: the weight's shape and type, T, and the weight bytes one call streams.</summary>
    private int BeginMatMul(string op, IlgpuTensor weight, int tokens)
    {
        _queued = true;
        return _timer is null ? -1 : _timer.Begin(op, $"{weight.Rows}x{weight.Columns} {weight.Type} T={tokens}", weight.Length * DTypeInfo.SizeOf(weight.Type));
    }

    private void End(int op)
    {
        if (op >= 0) _timer?.End(op);
    }

    /// <inheritdoc />
    public bool CanTimeOps => _context.Properties.EnableProfiling;

    /// <inheritdoc />
    public void StartOpTimings()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!CanTimeOps) throw new InvalidOperationException($"op timings need a backend created with DeviceOptions.OpTimings ({DeviceName})");
        _timer?.Dispose();
        _timer = new OpTimer(_stream);
    }

    /// <inheritdoc />
    public OpTimingReport StopOpTimings(int steps)
    {
        var timer = _timer ?? throw new InvalidOperationException("StopOpTimings without StartOpTimings");
        _timer = null;
        using (timer) return timer.Finish(steps);
    }

    private IlgpuTensor Own(DeviceTensor tensor)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return tensor as IlgpuTensor is { } t && ReferenceEquals(t.Backend, this)
            ? t
            : throw new ArgumentException($"tensor {tensor.ShapeText} does not belong to this ILGPU backend ({DeviceName})");
    }

    private IlgpuKvCache OwnCache(KvCache cache) =>
        cache as IlgpuKvCache is { } c && ReferenceEquals(c.Backend, this)
            ? c
            : throw new ArgumentException($"KV cache does not belong to this ILGPU backend ({DeviceName})");

    /// <inheritdoc />
    public double MeasureCopyBandwidth(long bytes, int repeats)
    {
        long floats = Math.Max(1, bytes / sizeof(float));
        using var source = _accelerator.Allocate1D<float>(floats);
        using var destination = _accelerator.Allocate1D<float>(floats);
        source.View.MemSetToZero(_stream);
        source.View.CopyTo(_stream, destination.View); // warm-up
        _stream.Synchronize();
        var seconds = new List<double>();
        for (int r = 0; r < Math.Max(1, repeats); r++)
        {
            long start = System.Diagnostics.Stopwatch.GetTimestamp();
            source.View.CopyTo(_stream, destination.View);
            _stream.Synchronize();
            seconds.Add(System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalSeconds);
        }
        seconds.Sort();
        // bytes read plus bytes written, as the benchmark kit counts them
        return 2.0 * floats * sizeof(float) / seconds[seconds.Count / 2] / 1e9;
    }

    /// <summary>Waits for queued work, then frees the stream, the accelerator (with every buffer still on it) and the context.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        try
        {
            _stream.Synchronize();
        }
        finally
        {
            _timer?.Dispose();
            foreach (var buffer in _ropeFrequencies.Values) buffer.Dispose();
            _kernels.Dispose();
            _noMask.Dispose();
            _stream.Dispose();
            _accelerator.Dispose();
            _context.Dispose();
        }
    }
}
