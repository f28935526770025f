using System.Runtime.InteropServices;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Kernels.GpuCheck;

/// <summary>A checkpoint of random fp16 weights with the given shape; all layers share one set of buffers (timing only).</summary>
internal sealed unsafe class RandomCheckpoint : ICheckpoint
{
    private readonly Dictionary<string, TensorData> _tensors = [];
    private readonly List<nint> _buffers = [];
    private readonly Random _random = new(7);

    public RandomCheckpoint(ModelConfig config)
    {
        Config = config;
        int d = config.Dim, f = config.HiddenDim, dh = config.HeadDim;
        var q = Half("q", config.Heads * dh, d);
        var k = Half("k", config.KvHeads * dh, d);
        var v = Half("v", config.KvHeads * dh, d);
        var o = Half("o", d, config.Heads * dh);
        var gate = Half("gate", f, d);
        var up = Half("up", f, d);
        var down = Half("down", d, f);
        var norm = Ones("norm", d);
        _tensors[LlamaTensorNames.Embedding] = Half(LlamaTensorNames.Embedding, config.VocabSize, d);
        _tensors[LlamaTensorNames.FinalNorm] = norm;
        for (int l = 0; l < config.Layers; l++)
        {
            _tensors[LlamaTensorNames.AttentionNorm(l)] = norm;
            _tensors[LlamaTensorNames.FfnNorm(l)] = norm;
            _tensors[LlamaTensorNames.Query(l)] = q;
            _tensors[LlamaTensorNames.Key(l)] = k;
            _tensors[LlamaTensorNames.Value(l)] = v;
            _tensors[LlamaTensorNames.Output(l)] = o;
            _tensors[LlamaTensorNames.Gate(l)] = gate;
            _tensors[LlamaTensorNames.Up(l)] = up;
            _tensors[LlamaTensorNames.Down(l)] = down;
        }
    }

    public ModelConfig Config { get; }
    public string Location => "random";
    public IReadOnlyCollection<string> TensorNames => _tensors.Keys;

    public bool TryGetTensor(string name, out TensorData tensor) => _tensors.TryGetValue(name, out tensor);

    private TensorData Half(string name, int rows, int columns)
    {
        long n = (long)rows * columns;
        var p = (ushort*)NativeMemory.AlignedAlloc((nuint)(n * 2), 64);
        _buffers.Add((nint)p);
        float scale = 1f / MathF.Sqrt(columns);
        for (long i = 0; i < n; i++) p[i] = BitConverter.HalfToUInt16Bits((System.Half)((_random.NextSingle() * 2 - 1) * scale));
        return new TensorData(name, DType.F16, [rows, columns], (nint)p);
    }

    private TensorData Ones(string name, int n)
    {
        var p = (float*)NativeMemory.AlignedAlloc((nuint)(n * 4), 64);
        _buffers.Add((nint)p);
        new Span<float>(p, n).Fill(1f);
        return new TensorData(name, DType.F32, [n], (nint)p);
    }

    public void Dispose()
    {
        foreach (var p in _buffers) NativeMemory.AlignedFree((void*)p);
    }
}
