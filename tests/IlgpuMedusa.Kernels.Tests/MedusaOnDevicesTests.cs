using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Medusa;
using IlgpuMedusa.Models;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Kernels.Tests;

/// <summary>
/// The lossless invariant on the ILGPU backends: greedy Medusa (random heads, several trees, KV compaction on the device)
/// emits exactly the tokens of greedy autoregressive decoding. A tiny random Llama (GQA: 4 query heads, 2 KV heads)
/// written as a Hugging Face checkpoint keeps the CPU emulator fast.
/// </summary>
[Collection(AcceleratorCollection.Name)]
public sealed class MedusaOnDevicesTests(Accelerators accelerators) : IDisposable
{
    private readonly string _directory = CreateTinyModel();

    private static string CreateTinyModel() => global::IlgpuMedusa.Tests.Medusa.TinyRandomModel.Write(
        global::IlgpuMedusa.Tests.Medusa.TinyRandomModel.Config with { Dim = 64, HiddenDim = 96 }, seed: 5, projectionScale: 0.3f, outputScale: 0.2f);

    public static TheoryData<string, string> Cases() => new()
    {
        { "emulator", "chain-3" }, { "emulator", "tree-8" }, { "emulator", "dynamic-4" },
        { "opencl", "chain-3" }, { "opencl", "tree-16" }, { "opencl", "mc_sim_7b_63" }, { "opencl", "dynamic-8" }, { "opencl", "dynamic-8-10" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void GreedyMedusaEqualsGreedyDecoding(string device, string treeName) => CheckGreedyMedusa(device, treeName, DType.F32);

    /// <summary>
    /// The same invariant over a binary16 KV cache (--kv-dtype f16): tree attention reading halves (the emulator's warp and
    /// tile kernels with ILGPU's Half conversion, OpenCL's per-token and block kernels decoding bit by bit) and the
    /// compaction of 2-byte elements.
    /// </summary>
    [Theory]
    [InlineData("emulator", "tree-8")]
    [InlineData("opencl", "mc_sim_7b_63")]
    [InlineData("opencl", "dynamic-8")]
    public void GreedyMedusaEqualsGreedyDecodingOverAHalfCache(string device, string treeName) => CheckGreedyMedusa(device, treeName, DType.F16);

    /// <summary>
    /// The same invariant on the Qwen blocks: Qwen2's q/k/v biases (one more add per layer) and Qwen3's per-head q/k norms
    /// with a head dimension other than D / H (4 heads of 32 on D = 64, so queries are twice as wide as the model).
    /// </summary>
    [Theory]
    [InlineData(ModelArchitecture.Qwen2, "opencl", "tree-16")]
    [InlineData(ModelArchitecture.Qwen3, "opencl", "mc_sim_7b_63")] // (the emulator's kernels see Qwen3 in Qwen_reference_models_give_llama_cpps_logits: 50 s here)
    public void GreedyMedusaEqualsGreedyDecodingOnQwenBlocks(ModelArchitecture architecture, string device, string treeName)
    {
        var config = global::IlgpuMedusa.Tests.Medusa.TinyRandomModel.Config with { Dim = 64, HiddenDim = 96, Architecture = architecture };
        if (architecture == ModelArchitecture.Qwen3) config = config with { HeadDim = 32 };
        var directory = global::IlgpuMedusa.Tests.Medusa.TinyRandomModel.Write(config, seed: 6, projectionScale: 0.3f, outputScale: 0.2f);
        try
        {
            CheckGreedyMedusa(device, treeName, DType.F32, directory);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    /// <summary>
    /// Whole Qwen2 and Qwen3 forwards on the device (biases added after the fused projection; per-head norms with
    /// Dh = 32 on D = 64) against llama.cpp's logits for the reference files (see IlgpuMedusa.Tests' ReferenceFilesTests).
    /// </summary>
    [Theory]
    [InlineData("emulator", "tiny-qwen3")]
    [InlineData("opencl", "tiny-qwen2")]
    [InlineData("opencl", "tiny-qwen3")]
    public void Qwen_reference_models_give_llama_cpps_logits(string device, string model)
    {
        var backend = device == "emulator" ? accelerators.Emulator : accelerators.OpenCL;
        var (_, max, scale) = global::IlgpuMedusa.Tests.Models.ReferenceModels.Compare(backend, model);
        Assert.True(max <= 1e-4f, $"{model} on {device}: logits differ from llama.cpp's by {max} (max |logit| {scale})");
    }

    private void CheckGreedyMedusa(string device, string treeName, DType kv, string? directory = null)
    {
        var backend = device == "emulator" ? accelerators.Emulator : accelerators.OpenCL;
        using var rig = new Rig(backend, directory ?? _directory, kv);
        Assert.Equal(kv, rig.Pool.Layout.ElementType);
        var (model, heads, pool, workspace, c) = (rig.Model, rig.Heads, rig.Pool, rig.Workspace, rig.Model.Config);
        using var tree = global::IlgpuMedusa.Tests.Medusa.CompiledTrees.Resolve(backend, treeName, heads.HeadCount);
        int[] prompt = [1, 17, 42, 5, 63, 8];
        const int Count = 32;

        List<int> plain;
        using (var sequence = pool.CreateSequence(c.MaxSequenceLength))
        {
            var runner = new SingleSequenceRunner(model, workspace, new AutoregressiveDecoder(model, sequence, new Sampler(Sampling.Greedy, 1), prompt));
            plain = [];
            while (plain.Count < Count) runner.Advance(plain);
        }
        var stats = new MedusaStats(heads.HeadCount);
        List<int> medusa;
        using (var sequence = pool.CreateSequence(c.MaxSequenceLength))
        {
            var decoder = new MedusaDecoder(model, sequence, new Sampler(Sampling.Greedy, 1), prompt, null, heads, tree.Tree, tree.Mask, Acceptance.Greedy, stats);
            var runner = new SingleSequenceRunner(model, workspace, decoder);
            medusa = [];
            while (medusa.Count < Count) runner.Advance(medusa);
            decoder.Release();
        }
        Assert.Equal(plain.Take(Count), medusa.Take(Count));
        Assert.True(stats.Steps > 0);
        Assert.Equal(pool.BlockCount, pool.FreeBlocks);
    }

    /// <summary>
    /// How often the host waits for the device per decode step (<see cref="Compute.Ilgpu.IlgpuBackend.HostWaits"/>), and
    /// how many of those waits drain queued work (<see cref="Compute.Ilgpu.IlgpuBackend.HostDrains"/>): on a GPU a drain
    /// leaves the device idle until the host has decided and queued the next launches. An autoregressive step waits once,
    /// for its token; with copies for the small uploads (the step's token and position, a grown block table) it waited
    /// twice and more. A fixed-tree Medusa step drains once too: its node tokens are picked from the heads' guesses on the
    /// device, and the guesses are read after the step's argmax, without draining anything. A dynamic tree plans the next
    /// step from the guesses' scores on the host, so it drains for the guesses as well. Compaction sources, the heads' next
    /// token and a dynamic tree's mask go up by launches.
    /// </summary>
    [Theory]
    [InlineData("autoregressive", true, 1, 1)]
    [InlineData("autoregressive", false, 2, 1)]
    [InlineData("chain-3", true, 2, 1)]
    [InlineData("tree-8", true, 2, 1)]
    [InlineData("dynamic-4", true, 3, 2)]
    public void HostWaitsPerDecodeStep(string mode, bool launchedUploads, int waitsPerStep, int drainsPerStep)
    {
        var backend = accelerators.OpenCL;
        using var rig = new Rig(backend, _directory);
        var (model, heads, pool, workspace, c) = (rig.Model, rig.Heads, rig.Pool, rig.Workspace, rig.Model.Config);
        int[] prompt = [1, 17, 42, 5, 63, 8];
        bool wasLaunched = backend.LaunchedUploads;
        backend.LaunchedUploads = launchedUploads;
        try
        {
            using var sequence = pool.CreateSequence(c.MaxSequenceLength);
            var tokens = new List<int>();
            if (mode == "autoregressive")
            {
                var runner = new SingleSequenceRunner(model, workspace, new AutoregressiveDecoder(model, sequence, new Sampler(Sampling.Greedy, 1), prompt));
                runner.Advance(tokens); // prefill
                long waits = backend.HostWaits, drains = backend.HostDrains;
                const int Steps = 40; // crosses KV blocks: a grown block table goes up by a launch too
                for (int i = 0; i < Steps; i++) runner.Advance(tokens);
                if (launchedUploads) Assert.Equal(waitsPerStep * Steps, backend.HostWaits - waits);
                else Assert.InRange(backend.HostWaits - waits, waitsPerStep * Steps, waitsPerStep * Steps + Steps / 16 + 1); // + the block table's copies
                if (launchedUploads) Assert.Equal(drainsPerStep * Steps, backend.HostDrains - drains);
                else Assert.InRange(backend.HostDrains - drains, drainsPerStep * Steps, drainsPerStep * Steps + Steps / 16 + 1); // a copied block table can land mid-forward
                return;
            }
            using var tree = global::IlgpuMedusa.Tests.Medusa.CompiledTrees.Resolve(backend, mode, heads.HeadCount);
            var stats = new MedusaStats(heads.HeadCount);
            var decoder = new MedusaDecoder(model, sequence, new Sampler(Sampling.Greedy, 1), prompt, null, heads, tree.Tree, tree.Mask, Acceptance.Greedy, stats);
            try
            {
                var medusa = new SingleSequenceRunner(model, workspace, decoder);
                medusa.Advance(tokens); // prefill, and the heads' first guesses
                long before = backend.HostWaits, drainsBefore = backend.HostDrains, steps = stats.Steps;
                while (tokens.Count < 48) medusa.Advance(tokens);
                Assert.True(stats.Steps - steps >= 10, $"{stats.Steps - steps} steps");
                Assert.Equal(waitsPerStep * (stats.Steps - steps), backend.HostWaits - before);
                Assert.Equal(drainsPerStep * (stats.Steps - steps), backend.HostDrains - drainsBefore);
            }
            finally
            {
                decoder.Release();
            }
        }
        finally
        {
            backend.LaunchedUploads = wasLaunched;
        }
    }

    /// <summary>The tiny model on a backend with four random heads (one ResBlock each), a KV pool and a workspace.</summary>
    private sealed class Rig : IDisposable
    {
        private readonly HuggingFaceCheckpoint _checkpoint;
        private readonly MedusaHeadsCheckpoint _headsFile;

        public Rig(IComputeBackend backend, string directory, DType kv = DType.F32)
        {
            _checkpoint = HuggingFaceCheckpoint.Open(directory);
            var headsPath = Path.Combine(directory, "heads.safetensors");
            if (!File.Exists(headsPath))
                MedusaHeadsCheckpoint.Write(headsPath, MedusaHeadWeights.CreateRandom(_checkpoint.Config, heads: 4, layers: 1, seed: 3, scale: 0.05f), ModelSignature.Of(_checkpoint));
            _headsFile = MedusaHeadsCheckpoint.Open(headsPath);
            Model = LlamaModel.Load(_checkpoint, backend);
            Heads = MedusaHeads.Load(_headsFile, Model);
            var c = Model.Config;
            Pool = KvBlockPool.FromBudget(backend, c.Layers, c.KvHeads, c.HeadDim, 16, 2L * 160 * KvCacheLayout.BytesPerToken(c.Layers, c.KvDim, kv), kv);
            Workspace = new ForwardWorkspace(backend, c, 64, 64);
        }

        public LlamaModel Model { get; }
        public MedusaHeads Heads { get; }
        public KvBlockPool Pool { get; }
        public ForwardWorkspace Workspace { get; }

        public void Dispose()
        {
            Workspace.Dispose();
            Pool.Dispose();
            Heads.Dispose();
            Model.Dispose();
            _headsFile.Dispose();
            _checkpoint.Dispose();
        }
    }

    /// <summary>Head layouts: (shared lm_head, vocabulary shortlist, next-token input, ResBlocks).</summary>
    public static TheoryData<string, bool, bool, bool, int> HeadCases() => new()
    {
        { "opencl", true, true, true, 2 },   // the shipped heads' layout
        { "opencl", true, false, false, 1 }, // plain Medusa heads on the base lm_head
        { "opencl", false, true, false, 1 }, // own lm_heads
        { "opencl", true, true, false, 3 },
        { "emulator", true, true, true, 2 },
    };

    /// <summary>
    /// The heads on an ILGPU device run all together (stacked matrices, grouped GEMVs: a few launches per step instead of
    /// six per head) and must propose the same top-k tokens as the host, which ShortlistHeadsTests checks against a
    /// double-precision computation (the host groups them too where its packed panels allow, head by head elsewhere).
    /// </summary>
    [Theory]
    [MemberData(nameof(HeadCases))]
    public void GroupedHeadsPredictWhatTheHostPredicts(string device, bool sharedLmHead, bool shortlisted, bool nextToken, int layers)
    {
        var backend = device == "emulator" ? accelerators.Emulator : accelerators.OpenCL;
        using var checkpoint = HuggingFaceCheckpoint.Open(_directory);
        var c = checkpoint.Config;
        var classifier = checkpoint.GetTensor(LlamaTensorNames.Classifier, c.VocabSize, c.Dim).ToFloatArray();
        int[]? shortlist = shortlisted ? Enumerable.Range(0, 31).Select(i => 4 + 3 * i).ToArray() : null;
        var weights = MedusaHeadWeights.CreateRandom(c, heads: 4, layers, seed: 21, scale: 0.3f, baseClassifier: sharedLmHead ? null : classifier,
            shortlist: shortlist, nextToken: nextToken);
        var random = new Random(5);
        foreach (var head in weights.Bias)
            foreach (var bias in head)
                for (int i = 0; i < bias.Length; i++) bias[i] = (float)(random.NextDouble() - 0.5);
        var path = Path.Combine(_directory, $"heads-{sharedLmHead}-{shortlisted}-{nextToken}-{layers}.safetensors");
        MedusaHeadsCheckpoint.Write(path, weights, ModelSignature.Of(checkpoint));
        using var file = MedusaHeadsCheckpoint.Open(path);
        var h = Enumerable.Range(0, c.Dim).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();

        int[] Predict(IComputeBackend b, bool grouped)
        {
            using var model = LlamaModel.Load(checkpoint, b, DType.F32);
            using var heads = MedusaHeads.Load(file, model, checkpoint, DType.F32); // F32 everywhere: the same values
            Assert.Equal(grouped, heads.Grouped);
            using var hidden = b.Allocate(DType.F32, 1, c.Dim);
            b.Upload(hidden, h);
            var first = heads.Predict(hidden).ToArray();
            Assert.Equal(first, heads.Predict(hidden).ToArray()); // a second call starts from scratch too
            // the first heads alone (what a shallower tree runs: sliced stacks on the device) propose what they do among all
            var probabilities = heads.TopProbabilities().ToArray();
            foreach (int count in new[] { 1, 3 })
            {
                Assert.Equal(first.Take(count * MedusaHeads.TopK), heads.Predict(hidden, count).ToArray());
                // (the logits of fewer rows may come from another matmul kernel: the same up to rounding)
                var fewer = heads.TopProbabilities().ToArray();
                Assert.Equal(count * MedusaHeads.TopK, fewer.Length);
                for (int i = 0; i < fewer.Length; i++) Assert.Equal(probabilities[i], fewer[i], 1e-5f);
            }
            // a given next token (the decoder's pending token), in the shortlist (4) and out of it (5)
            foreach (int token in new[] { 4, 5 }) first = [.. first, .. heads.Predict(hidden, heads.HeadCount, token).ToArray()];
            return first;
        }
        var expected = Predict(accelerators.Host, grouped: accelerators.Host.CanGroupMatMul(c.Dim));
        var actual = Predict(backend, grouped: true);
        Assert.Equal(expected, actual);
    }

    /// <summary>
    /// Heads with a previous-token input run one after another (head i adds R_i·e of head i − 1's best guess, found by an
    /// argmax on the device): an ILGPU device proposes what the host proposes (ShortlistHeadsTests checks the host against
    /// the trainer's own forward), for two and four heads, for a found or a given next token, with a vocabulary shortlist
    /// (the argmax is a shortlist column) and without one (a token id).
    /// </summary>
    [Theory]
    [InlineData("opencl", true)]
    [InlineData("opencl", false)]
    [InlineData("emulator", true)]
    public void ChainedHeadsPredictWhatTheHostPredicts(string device, bool shortlisted)
    {
        var backend = device == "emulator" ? accelerators.Emulator : accelerators.OpenCL;
        using var checkpoint = HuggingFaceCheckpoint.Open(_directory);
        var c = checkpoint.Config;
        int[]? shortlist = shortlisted ? Enumerable.Range(0, 31).Select(i => 4 + 3 * i).ToArray() : null;
        var weights = MedusaHeadWeights.CreateRandom(c, heads: 4, layers: 2, seed: 29, scale: 0.4f, shortlist: shortlist, nextToken: true, previousToken: true);
        var path = Path.Combine(_directory, $"chained-heads-{shortlisted}.safetensors");
        MedusaHeadsCheckpoint.Write(path, weights, ModelSignature.Of(checkpoint));
        using var file = MedusaHeadsCheckpoint.Open(path);
        var random = new Random(7);
        var h = Enumerable.Range(0, c.Dim).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();

        int[] Predict(IComputeBackend b)
        {
            using var model = LlamaModel.Load(checkpoint, b, DType.F32);
            using var heads = MedusaHeads.Load(file, model, checkpoint, DType.F32);
            Assert.True(heads.HasPreviousTokenInput);
            Assert.False(heads.Grouped);
            using var hidden = b.Allocate(DType.F32, 1, c.Dim);
            b.Upload(hidden, h);
            int[] all = heads.Predict(hidden).ToArray();
            Assert.Equal(all.Take(2 * MedusaHeads.TopK), heads.Predict(hidden, 2).ToArray()); // the first heads alone
            foreach (int token in new[] { 4, 5 }) all = [.. all, .. heads.Predict(hidden, heads.HeadCount, token).ToArray()];
            return all;
        }
        var expected = Predict(accelerators.Host);
        Assert.Equal(expected, Predict(backend));
        // The chain matters: with R zeroed, the later heads propose something else.
        Assert.NotEqual(expected.Skip(MedusaHeads.TopK).Take(3 * MedusaHeads.TopK), PredictWithout());

        int[] PredictWithout()
        {
            foreach (var r in weights.PreviousToken!.Skip(1)) Array.Clear(r);
            var zeroed = Path.Combine(_directory, $"chained-heads-zero-{shortlisted}.safetensors");
            MedusaHeadsCheckpoint.Write(zeroed, weights, ModelSignature.Of(checkpoint));
            using var zeroFile = MedusaHeadsCheckpoint.Open(zeroed);
            using var model = LlamaModel.Load(checkpoint, accelerators.Host, DType.F32);
            using var heads = MedusaHeads.Load(zeroFile, model, checkpoint, DType.F32);
            using var hidden = accelerators.Host.Allocate(DType.F32, 1, c.Dim);
            accelerators.Host.Upload(hidden, h);
            return heads.Predict(hidden).ToArray().Skip(MedusaHeads.TopK).ToArray();
        }
    }

    /// <summary>
    /// Heads with context attention on an ILGPU device (grouped: stacked W_q and W_o, one attention op per head over the
    /// last layer's cache) propose what the host proposes, which ContextAttentionHeadsTests checks against double
    /// precision: each backend prefills the same tokens into its own cache, then the heads run at two committed lengths.
    /// </summary>
    [Theory]
    [InlineData("opencl")]
    [InlineData("emulator")]
    public void ContextHeadsPredictWhatTheHostPredicts(string device)
    {
        var backend = device == "emulator" ? accelerators.Emulator : accelerators.OpenCL;
        using var checkpoint = HuggingFaceCheckpoint.Open(_directory);
        var c = checkpoint.Config;
        var weights = MedusaHeadWeights.CreateRandom(c, heads: 3, layers: 1, seed: 23, scale: 0.2f, nextToken: true, context: true);
        var path = Path.Combine(_directory, "context-heads.safetensors");
        MedusaHeadsCheckpoint.Write(path, weights, ModelSignature.Of(checkpoint));
        using var file = MedusaHeadsCheckpoint.Open(path);
        int[] tokens = [1, 17, 42, 5, 63, 8, 30, 31, 9, 70, 4, 4, 12, 88, 3, 50, 21, 19];

        int[] Predict(IComputeBackend b)
        {
            using var model = LlamaModel.Load(checkpoint, b, DType.F32);
            using var heads = MedusaHeads.Load(file, model, checkpoint, DType.F32);
            Assert.True(heads.HasContextAttention);
            using var pool = KvBlockPool.FromBudget(b, c.Layers, c.KvHeads, c.HeadDim, 16, 2L * 16 * 2 * c.Layers * c.KvDim * sizeof(float));
            using var sequence = pool.CreateSequence(32);
            using var workspace = new ForwardWorkspace(b, c, tokens.Length, 1);
            var hidden = model.Forward(workspace, workspace.Prepare(tokens, Enumerable.Range(0, tokens.Length).ToArray()), sequence, 0);
            int[] all = [];
            foreach (int committed in new[] { tokens.Length, 7 })
                all = [.. all, .. heads.Predict(hidden.Slice(committed - 1, 1), heads.HeadCount, tokens[Math.Min(committed, tokens.Length - 1)], sequence, committed).ToArray()];
            return all;
        }
        Assert.Equal(Predict(accelerators.Host), Predict(backend));
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
            // a leftover temp folder is harmless
        }
    }
}
