using System.Runtime.InteropServices;
using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Medusa;
using IlgpuMedusa.Models;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Tests.Medusa;

/// <summary>The heads file: the vocabulary shortlist round-trips, and bad shortlists are refused naming the file and tensor.</summary>
public sealed class MedusaHeadsFileTests : IDisposable
{
    private const int D = 4, V = 50;
    private readonly string _directory = TestModels.TempDirectory("heads-file");

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private static ModelConfig Config => new() { Dim = D, HiddenDim = 8, Layers = 1, Heads = 1, KvHeads = 1, VocabSize = V, MaxSequenceLength = 16 };

    /// <summary>A signature whose shape says V = 50.</summary>
    private static ModelSignature Signature => new($"{D}/8/1/1/1/{V}", new float[32]);

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ShortlistRoundTripsThroughTheFile(bool sharedLmHead)
    {
        int[] shortlist = [0, 3, 4, 9, 17, 18, 30, 31, 40, 44, 49];
        var classifier = Enumerable.Range(0, V * D).Select(i => i * 0.01f).ToArray();
        var weights = MedusaHeadWeights.CreateRandom(Config, heads: 2, layers: 1, seed: 1, scale: 0.1f, baseClassifier: sharedLmHead ? null : classifier, shortlist: shortlist);
        var path = Path.Combine(_directory, "heads.safetensors");
        MedusaHeadsCheckpoint.Write(path, weights, Signature, storeAs: DType.F16);

        using var file = MedusaHeadsCheckpoint.Open(path);
        Assert.Equal(shortlist, file.Shortlist);
        Assert.Equal(sharedLmHead, file.SharedLmHead);
        Assert.Null(file.VocabSize); // no full-vocabulary lm_head
        Assert.Equal("11", file.Metadata["shortlist_size"]);
        Assert.Equal(DType.F16, file.Linear(1, 0).Type);
        if (sharedLmHead)
        {
            Assert.Null(file.LmHeadRows);
        }
        else
        {
            Assert.Equal(shortlist.Length, file.LmHeadRows);
            Assert.Equal([shortlist.Length, D], file.LmHead(1).Shape);
            // own lm_heads start as the base rows of the shortlisted tokens
            var row = file.LmHead(0).ToFloatArray().AsSpan(3 * D, D).ToArray();
            Assert.Equal(classifier.AsSpan(shortlist[3] * D, D).ToArray().Select(x => (float)(Half)x), row);
        }
    }

    [Fact]
    public void NextTokenInputsRoundTripAndNeedASharedLmHead()
    {
        var weights = MedusaHeadWeights.CreateRandom(Config, heads: 3, layers: 1, seed: 2, scale: 0.1f, shortlist: [1, 2, 3, 5, 8, 13, 21, 34, 40, 41, 49], nextToken: true);
        var path = Path.Combine(_directory, "next.safetensors");
        MedusaHeadsCheckpoint.Write(path, weights, Signature);
        using (var file = MedusaHeadsCheckpoint.Open(path))
        {
            Assert.True(file.HasNextTokenInput);
            Assert.Equal(weights.NextToken![2], file.NextToken(2).ToFloatArray());
        }
        Assert.Throws<ArgumentException>(() => MedusaHeadWeights.CreateRandom(Config, 1, 1, seed: 2, baseClassifier: new float[V * D], nextToken: true));

        // Written by hand with its own lm_head: refused, naming the file and tensor.
        var own = Path.Combine(_directory, "own-next.safetensors");
        var pins = new[] { new float[D * D], new float[D], new float[V * D], new float[D * D] }.Select(a => GCHandle.Alloc(a, GCHandleType.Pinned)).ToArray();
        try
        {
            SafetensorsWriter.Write(own,
            [
                new("0.0.linear.weight", DType.F32, [D, D], pins[0].AddrOfPinnedObject()),
                new("0.0.linear.bias", DType.F32, [D], pins[1].AddrOfPinnedObject()),
                new("0.1.weight", DType.F32, [V, D], pins[2].AddrOfPinnedObject()),
                new(MedusaHeadsCheckpoint.NextTokenTensor(0), DType.F32, [D, D], pins[3].AddrOfPinnedObject()),
            ]);
        }
        finally
        {
            foreach (var p in pins) p.Free();
        }
        var e = Assert.Throws<InvalidDataException>(() => MedusaHeadsCheckpoint.Open(own).Dispose());
        Assert.Contains(own, e.Message);
        Assert.Contains("'0.next_token.weight'", e.Message);
        Assert.Contains("only for heads sharing the base lm_head", e.Message);
    }

    [Fact]
    public void PreviousTokenInputsRoundTripForHeadsOneAndUp()
    {
        var weights = MedusaHeadWeights.CreateRandom(Config, heads: 3, layers: 1, seed: 2, scale: 0.1f, nextToken: true, previousToken: true);
        var path = Path.Combine(_directory, "previous.safetensors");
        MedusaHeadsCheckpoint.Write(path, weights, Signature);
        using (var raw = SafetensorsFile.Open(path, allowI32: true))
        {
            Assert.Equal("true", raw.Metadata["previous_token_input"]);
            Assert.False(raw.Tensors.ContainsKey(MedusaHeadsCheckpoint.PreviousTokenTensor(0))); // head 0 has no previous head
        }
        using (var file = MedusaHeadsCheckpoint.Open(path))
        {
            Assert.True(file.HasPreviousTokenInput);
            Assert.Equal(weights.PreviousToken![2], file.PreviousToken(2).ToFloatArray());
            Assert.Throws<InvalidOperationException>(() => file.PreviousToken(0));
        }
        Assert.Throws<ArgumentException>(() => MedusaHeadWeights.CreateRandom(Config, 1, 1, seed: 2, previousToken: true)); // needs next-token inputs
    }

    [Theory]
    [InlineData("missing-1", "missing Medusa tensor '1.previous_token.weight'")]
    [InlineData("missing-2", "missing Medusa tensor '2.previous_token.weight'")]
    [InlineData("head-0", "'0.previous_token.weight'")]
    [InlineData("shape", "'2.previous_token.weight' has shape [8, 2], expected [4, 4]")]
    [InlineData("no-next-token", "'1.previous_token.weight': previous-token inputs are only for heads with a next-token input")]
    public void MalformedPreviousTokenInputsAreRefusedNamingTheTensor(string fault, string expected)
    {
        var weights = MedusaHeadWeights.CreateRandom(Config, heads: 3, layers: 1, seed: 2, scale: 0.1f, nextToken: true, previousToken: true);
        var path = Path.Combine(_directory, $"previous-{fault}.safetensors");
        MedusaHeadsCheckpoint.Write(path, weights, Signature);
        // Rewrite the file by hand with the fault planted.
        var arrays = new List<(string Name, float[] Data, int[] Shape)>();
        using (var raw = SafetensorsFile.Open(path, allowI32: true))
            foreach (var tensor in raw.Tensors.Values)
                arrays.Add((tensor.Name, tensor.ToFloatArray(), tensor.Shape.ToArray()));
        string r1 = MedusaHeadsCheckpoint.PreviousTokenTensor(1), r2 = MedusaHeadsCheckpoint.PreviousTokenTensor(2);
        switch (fault)
        {
            case "missing-1": arrays.RemoveAll(a => a.Name == r1); break;
            case "missing-2": arrays.RemoveAll(a => a.Name == r2); break;
            case "head-0": arrays.Add((MedusaHeadsCheckpoint.PreviousTokenTensor(0), new float[D * D], [D, D])); break;
            case "shape": arrays[arrays.FindIndex(a => a.Name == r2)] = (r2, new float[D * D], [D * D / 2, 2]); break;
            case "no-next-token": arrays.RemoveAll(a => a.Name.EndsWith(".next_token.weight", StringComparison.Ordinal)); break;
        }
        var pins = arrays.Select(a => GCHandle.Alloc(a.Data, GCHandleType.Pinned)).ToList();
        try
        {
            SafetensorsWriter.Write(path, arrays.Select((a, i) => new TensorData(a.Name, DType.F32, a.Shape, pins[i].AddrOfPinnedObject())).ToList(), storeAs: null,
                metadata:
                    new Dictionary<string, string> { ["format"] = MedusaHeadsCheckpoint.CompactFormat, ["shared_lm_head"] = "true" });
        }
        finally
        {
            foreach (var p in pins) p.Free();
        }
        var e = Assert.Throws<InvalidDataException>(() => MedusaHeadsCheckpoint.Open(path).Dispose());
        Assert.Contains(path, e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void HeadsWithoutAShortlistHaveNone()
    {
        var path = Path.Combine(_directory, "full.safetensors");
        MedusaHeadsCheckpoint.Write(path, MedusaHeadWeights.CreateRandom(Config, 1, 1, seed: 1), Signature);
        using var file = MedusaHeadsCheckpoint.Open(path);
        Assert.Null(file.Shortlist);
        Assert.True(file.SharedLmHead);
    }

    /// <summary>Writes a compact heads file by hand: one head of one ResBlock, the given shortlist tensor, optionally own lm_heads.</summary>
    private string WriteRaw(string name, Array shortlist, DType shortlistType, int[] shortlistShape, int? ownLmHeadRows = null, bool signature = true, int d = D,
        string? signatureText = null, int[]? weightShape = null)
    {
        var path = Path.Combine(_directory, name);
        var pins = new List<GCHandle>();
        nint Pin(Array data)
        {
            var handle = GCHandle.Alloc(data, GCHandleType.Pinned);
            pins.Add(handle);
            return handle.AddrOfPinnedObject();
        }
        try
        {
            var tensors = new List<TensorData>
            {
                new("0.0.linear.weight", DType.F32, weightShape ?? [d, d], Pin(new float[weightShape is null ? d * d : Math.Max(1, weightShape.Aggregate(1, (a, b) => a * b))])),
                new("0.0.linear.bias", DType.F32, [d], Pin(new float[d])),
                new(MedusaHeadsCheckpoint.ShortlistTensor, shortlistType, shortlistShape, Pin(shortlist)),
            };
            if (ownLmHeadRows is int rows) tensors.Add(new("0.1.weight", DType.F32, [rows, d], Pin(new float[rows * d])));
            var metadata = new Dictionary<string, string>
            {
                ["format"] = MedusaHeadsCheckpoint.CompactFormat,
                ["shared_lm_head"] = ownLmHeadRows is null ? "true" : "false",
            };
            if (signature) metadata["base_model_signature"] = signatureText ?? Signature.ToString();
            SafetensorsWriter.Write(path, tensors, metadata: metadata);
        }
        finally
        {
            foreach (var p in pins) p.Free();
        }
        return path;
    }

    [Fact]
    public void AScalarResBlockWeightIsRefusedNamingTheTensor()
    {
        var path = WriteRaw("scalar-weight.safetensors", Ids(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11), DType.I32, [12], weightShape: []);
        var e = Assert.Throws<InvalidDataException>(() => MedusaHeadsCheckpoint.Open(path).Dispose());
        Assert.Contains(path, e.Message);
        Assert.Contains("'0.0.linear.weight' has shape [], expected [D, D]", e.Message);
    }

    [Fact]
    public void AnUnreadableModelSignatureIsRefusedNotIgnored()
    {
        var path = WriteRaw("garbage-signature.safetensors", Ids(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11), DType.I32, [12], signatureText: "garbage");
        using var heads = MedusaHeadsCheckpoint.Open(path);
        var e = Assert.Throws<InvalidDataException>(() => heads.BaseModel);
        Assert.Contains("'base_model_signature'", e.Message);
        Assert.Contains("garbage", e.Message);
    }

    private static int[] Ids(params int[] ids) => ids;

    private static float[] Floats(params float[] values) => values;

    private static void Refused(string path, params string[] phrases)
    {
        var e = Assert.Throws<InvalidDataException>(() => MedusaHeadsCheckpoint.Open(path).Dispose());
        Assert.Contains(path, e.Message);
        Assert.Contains($"'{MedusaHeadsCheckpoint.ShortlistTensor}'", e.Message);
        foreach (var phrase in phrases) Assert.Contains(phrase, e.Message);
    }

    [Fact]
    public void AWellFormedHandWrittenShortlistOpens()
    {
        var path = WriteRaw("good.safetensors", Ids(1, 5, 7), DType.I32, [3]);
        using var file = MedusaHeadsCheckpoint.Open(path);
        Assert.Equal([1, 5, 7], file.Shortlist!);
    }

    [Fact]
    public void UnsortedOrDuplicateShortlistsAreRefused()
    {
        Refused(WriteRaw("unsorted.safetensors", Ids(1, 7, 5), DType.I32, [3]), "entry 2 (token 5) does not follow entry 1 (token 7)", "strictly increasing");
        Refused(WriteRaw("duplicate.safetensors", Ids(1, 5, 5, 9), DType.I32, [4]), "entry 2 (token 5) does not follow entry 1 (token 5)", "no duplicates");
    }

    [Fact]
    public void OutOfRangeShortlistsAreRefused()
    {
        Refused(WriteRaw("negative.safetensors", Ids(-1, 5), DType.I32, [2]), "entry 0 is token -1, outside the vocabulary [0, 50)");
        // The file names its model (V = 50 in the signature), so a token past it is refused on open.
        Refused(WriteRaw("too-large.safetensors", Ids(3, 50), DType.I32, [2]), "entry 1 is token 50, outside the vocabulary [0, 50)");
    }

    [Fact]
    public void ShortlistsOfTheWrongLengthTypeOrShapeAreRefused()
    {
        Refused(WriteRaw("rows.safetensors", Ids(1, 2, 3), DType.I32, [3], ownLmHeadRows: 4), "'0.1.weight' has 4 rows", "lists 3 tokens", "one row per shortlisted token");
        Refused(WriteRaw("empty.safetensors", Array.Empty<int>(), DType.I32, [0]), "expected [N] with N >= 1");
        Refused(WriteRaw("matrix.safetensors", Ids(1, 2, 3, 4), DType.I32, [2, 2]), "has shape [2, 2], expected [N]");
        Refused(WriteRaw("float.safetensors", Floats(1f, 2f), DType.F32, [2]), "is F32; the shortlist must be I32 token ids");
    }

    [Fact]
    public void WeightsStoredAsIntegersAreRefused()
    {
        var path = Path.Combine(_directory, "int-weights.safetensors");
        var w = GCHandle.Alloc(new int[D * D], GCHandleType.Pinned);
        var b = GCHandle.Alloc(new float[D], GCHandleType.Pinned);
        try
        {
            SafetensorsWriter.Write(path,
                [new("0.0.linear.weight", DType.I32, [D, D], w.AddrOfPinnedObject()), new("0.0.linear.bias", DType.F32, [D], b.AddrOfPinnedObject())],
                metadata: new Dictionary<string, string> { ["format"] = MedusaHeadsCheckpoint.CompactFormat, ["shared_lm_head"] = "true" });
        }
        finally
        {
            w.Free();
            b.Free();
        }
        var e = Assert.Throws<InvalidDataException>(() => MedusaHeadsCheckpoint.Open(path).Dispose());
        Assert.Contains(path, e.Message);
        Assert.Contains("'0.0.linear.weight' is I32", e.Message);
    }

    [Fact]
    public void ModelCheckpointsStillRefuseIntegerTensors()
    {
        var path = Path.Combine(_directory, "model.safetensors");
        var data = GCHandle.Alloc(new int[4], GCHandleType.Pinned);
        try
        {
            SafetensorsWriter.Write(path, [new("ids", DType.I32, [4], data.AddrOfPinnedObject())]);
        }
        finally
        {
            data.Free();
        }
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.Contains("'ids' has unsupported dtype 'I32'", e.Message);
    }

    [Fact]
    public void LoadRefusesShortlistsTheModelCannotUse()
    {
        // A heads file without the model's signature cannot check V on open; loading against the model does.
        var directory = TinyRandomModel.Write();
        try
        {
            using var checkpoint = HuggingFaceCheckpoint.Open(directory);
            using var backend = new HostBackend(1);
            using var model = LlamaModel.Load(checkpoint, backend, DType.F32);
            int d = checkpoint.Config.Dim;
            var outside = WriteRaw("outside.safetensors", Enumerable.Range(0, 12).Select(i => i * 10).ToArray(), DType.I32, [12], signature: false, d: d); // V = 96
            using (var file = MedusaHeadsCheckpoint.Open(outside))
            {
                var e = Assert.Throws<InvalidDataException>(() => MedusaHeads.Load(file, model, checkpoint));
                Assert.Contains(outside, e.Message);
                Assert.Contains("'shortlist'", e.Message);
                Assert.Contains("entry 10 is token 100, outside the vocabulary [0, 96)", e.Message);
            }
            var tooShort = WriteRaw("short.safetensors", Ids(1, 2, 3), DType.I32, [3], signature: false, d: d);
            using (var file = MedusaHeadsCheckpoint.Open(tooShort))
            {
                var e = Assert.Throws<InvalidDataException>(() => MedusaHeads.Load(file, model, checkpoint));
                Assert.Contains(tooShort, e.Message);
                Assert.Contains($"lists 3 tokens, fewer than the {MedusaHeads.TopK} candidates", e.Message);
            }
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}
