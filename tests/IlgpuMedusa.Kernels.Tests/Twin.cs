using System.Runtime.InteropServices;
using IlgpuMedusa.Compute;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Kernels.Tests;

/// <summary>A tensor with the same contents on the reference (host) backend and on the device under test.</summary>
/// <param name="Host">On the host backend.</param>
/// <param name="Device">On the device under test.</param>
public readonly record struct TensorPair(DeviceTensor Host, DeviceTensor Device);

/// <summary>A KV cache on both backends.</summary>
/// <param name="Host">On the host backend.</param>
/// <param name="Device">On the device under test.</param>
public readonly record struct CachePair(KvCache Host, KvCache Device);

/// <summary>
/// Builds identical inputs on the host backend (the reference) and a device, and compares outputs. Everything it creates
/// is freed on Dispose.
/// </summary>
public sealed unsafe class Twin : IDisposable
{
    private readonly List<IDisposable> _owned = [];
    private readonly List<nint> _native = [];

    /// <summary>Creates the helper with a fixed random seed.</summary>
    public Twin(IComputeBackend host, IComputeBackend device, int seed)
    {
        HostBackend = host;
        Device = device;
        Random = new Random(seed);
    }

    /// <summary>The reference backend.</summary>
    public IComputeBackend HostBackend { get; }
    /// <summary>The backend under test.</summary>
    public IComputeBackend Device { get; }
    /// <summary>Random source for inputs.</summary>
    public Random Random { get; }

    /// <summary>Uniform floats in [−scale, scale).</summary>
    public float[] RandomFloats(int count, float scale = 1f)
    {
        var data = new float[count];
        for (int i = 0; i < count; i++) data[i] = (float)(Random.NextDouble() * 2 - 1) * scale;
        return data;
    }

    /// <summary>An F32 tensor with <paramref name="data"/> on both backends.</summary>
    public TensorPair Floats(int rows, int columns, float[] data)
    {
        var pair = new TensorPair(Keep(HostBackend.Allocate(DType.F32, rows, columns)), Keep(Device.Allocate(DType.F32, rows, columns)));
        HostBackend.Upload(pair.Host, data);
        Device.Upload(pair.Device, data);
        return pair;
    }

    /// <summary>An F32 tensor of random values in [−scale, scale).</summary>
    public TensorPair RandomTensor(int rows, int columns, float scale = 1f) => Floats(rows, columns, RandomFloats(rows * columns, scale));

    /// <summary>An I32 tensor with <paramref name="data"/>.</summary>
    public TensorPair Ints(int rows, int columns, int[] data)
    {
        var pair = new TensorPair(Keep(HostBackend.Allocate(DType.I32, rows, columns)), Keep(Device.Allocate(DType.I32, rows, columns)));
        HostBackend.Upload(pair.Host, data);
        Device.Upload(pair.Device, data);
        return pair;
    }

    /// <summary>A zero-filled tensor.</summary>
    public TensorPair Zeros(DType type, int rows, int columns) =>
        new(Keep(HostBackend.Allocate(type, rows, columns)), Keep(Device.Allocate(type, rows, columns)));

    /// <summary>A weight [rows, columns] stored as <paramref name="type"/>, uploaded from float32 values as in a checkpoint.</summary>
    public TensorPair Weight(DType type, int rows, int columns, float[] values)
    {
        var data = Data("test.weight", rows, columns, values);
        return new TensorPair(Keep(HostBackend.UploadWeight([data], type)), Keep(Device.UploadWeight([data], type)));
    }

    /// <summary>
    /// Random gate and up matrices [rows, columns] uploaded by each backend's <see cref="IComputeBackend.UploadGateUp"/>
    /// (stacked on the host, in the device's own order there).
    /// </summary>
    public TensorPair GateUp(DType type, int rows, int columns, float scale)
    {
        var gate = Data("test.gate", rows, columns, RandomFloats(rows * columns, scale));
        var up = Data("test.up", rows, columns, RandomFloats(rows * columns, scale));
        return new TensorPair(Keep(((IComputeBackend)HostBackend).UploadGateUp(gate, up, type)), Keep(((IComputeBackend)Device).UploadGateUp(gate, up, type)));
    }

    /// <summary>Float32 values in native memory that lives as long as the twin, as a checkpoint tensor.</summary>
    private TensorData Data(string name, int rows, int columns, float[] values)
    {
        long bytes = (long)values.Length * sizeof(float);
        nint pointer = (nint)NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 4), 64);
        _native.Add(pointer); // the host backend may keep pointing at it (zero-copy F32)
        values.AsSpan().CopyTo(new Span<float>((void*)pointer, values.Length));
        return new TensorData(name, DType.F32, rows == 1 ? [columns] : [rows, columns], pointer);
    }

    /// <summary>A random weight.</summary>
    public TensorPair RandomWeight(DType type, int rows, int columns, float scale = 1f) => Weight(type, rows, columns, RandomFloats(rows * columns, scale));

    /// <summary>A zero KV cache on both backends.</summary>
    public CachePair Cache(KvCacheLayout layout) => new(Keep(HostBackend.AllocateKvCache(layout)), Keep(Device.AllocateKvCache(layout)));

    /// <summary>Downloads an F32 tensor from one backend.</summary>
    public static float[] Read(DeviceTensor tensor)
    {
        var data = new float[tensor.Length];
        tensor.Backend.Download(tensor, data);
        return data;
    }

    /// <summary>Downloads an I32 tensor.</summary>
    public static int[] ReadInts(DeviceTensor tensor)
    {
        var data = new int[tensor.Length];
        tensor.Backend.Download(tensor, data);
        return data;
    }

    /// <summary>Asserts |device − host| ≤ atol + rtol·|host| element-wise (NaN must match NaN).</summary>
    public static void AssertClose(TensorPair pair, Tolerance tolerance, string what)
    {
        AssertClose(Read(pair.Host), Read(pair.Device), tolerance, what);
    }

    /// <summary>Asserts two float arrays agree within <paramref name="tolerance"/>.</summary>
    public static void AssertClose(float[] expected, float[] actual, Tolerance tolerance, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        int bad = -1;
        double worst = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            float e = expected[i], a = actual[i];
            if ((float.IsNaN(e) && float.IsNaN(a)) || e == a) continue; // e == a also covers equal infinities
            double error = Math.Abs((double)e - a);
            double allowed = tolerance.Absolute + tolerance.Relative * Math.Abs(e);
            if (!(error <= allowed) && (bad < 0 || error - allowed > worst))
            {
                bad = i;
                worst = error - allowed;
            }
        }
        if (bad >= 0)
            Assert.Fail($"{what}: element {bad} is {actual[bad]:R}, host says {expected[bad]:R} (|diff| {Math.Abs((double)expected[bad] - actual[bad]):g3} > {tolerance}); " +
                $"{expected.Length} elements");
    }

    /// <summary>Asserts an I32 tensor is identical on both backends.</summary>
    public static void AssertSame(TensorPair pair, string what)
    {
        var expected = ReadInts(pair.Host);
        var actual = ReadInts(pair.Device);
        for (int i = 0; i < expected.Length; i++)
            if (expected[i] != actual[i])
                Assert.Fail($"{what}: element {i} is {actual[i]}, host says {expected[i]} (host [{string.Join(", ", expected)}], device [{string.Join(", ", actual)}])");
    }

    /// <summary>Asserts every slot of every layer, keys and values, agrees.</summary>
    public static void AssertCachesClose(CachePair caches, Tolerance tolerance, string what)
    {
        var l = caches.Host.Layout;
        var h = new float[l.KvDim];
        var d = new float[l.KvDim];
        for (int layer = 0; layer < l.Layers; layer++)
        {
            for (int part = 0; part < 2; part++)
            {
                for (int slot = 0; slot < l.SlotCount; slot++)
                {
                    caches.Host.ReadSlot(layer, part, slot, h);
                    caches.Device.ReadSlot(layer, part, slot, d);
                    AssertClose(h, d, tolerance, $"{what}, layer {layer} {(part == 0 ? "keys" : "values")} slot {slot}");
                }
            }
        }
    }

    private T Keep<T>(T item) where T : IDisposable
    {
        _owned.Add(item);
        return item;
    }

    /// <summary>Frees the tensors, caches and native buffers.</summary>
    public void Dispose()
    {
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
        foreach (var p in _native) NativeMemory.AlignedFree((void*)p);
    }
}

/// <summary>An element-wise tolerance |device − host| ≤ Absolute + Relative·|host|.</summary>
/// <param name="Absolute">Absolute part.</param>
/// <param name="Relative">Relative part.</param>
public readonly record struct Tolerance(double Absolute, double Relative)
{
    /// <summary>Bit-exact.</summary>
    public static Tolerance Exact { get; } = new(0, 0);

    /// <summary>
    /// Matmul-like sums of <paramref name="terms"/> products of values ≤ 1 in magnitude, per weight dtype. The 16-bit
    /// dtypes get the same bound as F32 on purpose: the host decodes the same stored bits exactly as the kernels do, so the
    /// only difference is float32 summation order (tree reductions versus SIMD lanes), whose error grows with the number
    /// of terms: about √n·ε·Σ|terms| typically, n·ε at worst; 2e-6 per term covers the worst case with margin.
    /// </summary>
    public static Tolerance ForSum(DType weights, int terms) => weights switch
    {
        DType.F32 => new(1e-6 + 2e-6 * terms, 1e-5),
        DType.F16 => new(1e-6 + 2e-6 * terms, 1e-5),
        DType.BF16 => new(1e-6 + 2e-6 * terms, 1e-5),
        _ => throw new ArgumentOutOfRangeException(nameof(weights)),
    };

    /// <summary>Elementwise float math with exp/sin/cos/sqrt: device libraries differ from .NET's by a few ulp.</summary>
    public static Tolerance Transcendental { get; } = new(2e-6, 2e-5);

    /// <inheritdoc />
    public override string ToString() => $"{Absolute:g3} + {Relative:g3}·|host|";
}
