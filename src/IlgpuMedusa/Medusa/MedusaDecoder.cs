using IlgpuMedusa.Compute;
using IlgpuMedusa.Generation;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Medusa;

/// <summary>
/// Medusa decoding of one sequence. Each step:
/// <list type="number">
/// <item>candidates: the pending base token at the root, and for node n at depth d the (TopKIndices[n])-th best token
/// of head d − 1, predicted from the hidden state of the last accepted position;</item>
/// <item>one forward of the N tree tokens at positions S + depth under the tree mask (their KV goes to slots S..S+N−1);</item>
/// <item>the posterior evaluator picks the path with the most accepted nodes;</item>
/// <item>the accepted nodes' KV entries are compacted to slots S, S+1, ...; the rest is dropped by moving S;</item>
/// <item>the last accepted node's logits give the next pending token ("bonus") and its hidden state feeds the heads:
/// no extra forward pass (with greedy verification leaves get no logits in the forward; an accepted leaf's bonus token
/// comes from its hidden row afterwards).</item>
/// </list>
/// With greedy acceptance and greedy sampling every emitted token is the base model's argmax given the tokens before it,
/// so the output equals plain greedy decoding; with greedy acceptance and temperature sampling each emitted token is one
/// seeded draw from the base model's distribution, as in plain sampling (<see cref="SampleAlongTree"/>).
/// With a fixed tree (up to <see cref="IComputeBackend.MaxGatherInts"/> + 1 nodes) the heads' guesses stay on the device:
/// the next step's node tokens are gathered there (<see cref="WritePlanTokens"/>) and read back after its argmax, when
/// nothing is queued, so a step makes the host drain the device once, as a decode step does.
/// Under a constraint (JSON mode, a JSON schema) each step's tree is made on the host: nodes whose path the grammar
/// rules out are left out, and text the grammar forces (a schema's next key) is added as a chain of up to
/// <see cref="MaxForcedTokens"/> nodes under the first node of the tree's main path after which it is forced, spelled as
/// <see cref="LogitProcessor.ForcedTokens"/> spells it; the walk verifies those nodes as any other.
/// </summary>
internal sealed class MedusaDecoder : SequenceDecoder
{
    private readonly MedusaHeads _heads;
    private readonly CandidateTree _candidates;
    private readonly DynamicTreePlanner? _planner; // dynamic trees: plans each step's tree
    private readonly Dictionary<int, DeviceTensor>? _ownMasks; // dynamic trees: this decoder's I32[n, n] per node count n
    private TreeTopology _planned = null!;    // the tree planned for the next step (fixed, or from the planner)
    private DeviceTensor _plannedMask = null!; // its mask I32[n, n] (a fixed tree's is owned by the engine's tree cache)
    private TreeTopology _tree = null!;       // the tree of the next step: the planned one, or one made under a constraint
    private DeviceTensor _mask = null!;       // its mask
    private Dictionary<int, DeviceTensor>? _stepMasks; // masks of trees made under a constraint, per node count
    private readonly Acceptance _acceptance;
    private readonly MedusaStats _stats;
    private readonly int[] _topK;             // [heads · TopK] latest head predictions (token ids)
    private readonly DeviceTensor? _deviceTop; // fixed trees: the heads' top-k columns [depth, TopK], left on the device
    private readonly int[] _nodeSources = []; // fixed trees: node n ≥ 1 takes element (depth − 1) · TopK + rank of _deviceTop
    private bool _onDevice;                   // the guesses are on the device only (not yet in _topK)
    private bool _planOnDevice;               // the planned step's node tokens are written on the device
    private readonly int[] _sources;          // compaction sources
    private readonly DeviceTensor _deviceSources;
    private int _forcedRoom = MaxForcedTokens; // rows the next step may give forced text (fewer when the batch is short)
    private readonly int[] _forced = new int[MaxForcedTokens];
    private int[] _tokens = [];               // node tokens of the planned tree
    private bool _fallback;                   // the planned step is a single token (end of context, or no guesses)
    private readonly bool[] _leaf;            // nodes without children
    private int _leafCount;
    private readonly int[] _nodeArgMax;       // argmax of each node's logits (−1: a leaf, not computed)
    private DeviceTensor? _leafIds, _leafScratch; // for the bonus token of an accepted leaf
    private readonly int[] _leafId = new int[1];
    private float[] _logits = [];             // [N · V] for typical acceptance
    private float[] _probability = [];
    private float[] _entropy = [];

    /// <summary>
    /// A Medusa decoder verifying <paramref name="tree"/> each step: a fixed tree with its <paramref name="mask"/> on the
    /// device, or a dynamic one (mask null: the decoder plans each step's tree and keeps its own mask).
    /// </summary>
    public MedusaDecoder(LlamaModel model, KvSequence sequence, Sampler sampler, int[] prompt, int? resumePending,
        MedusaHeads heads, CandidateTree tree, DeviceTensor? mask, Acceptance acceptance, MedusaStats stats)
        : base(model, sequence, sampler, prompt, resumePending)
    {
        if (tree.MaxDepth > heads.HeadCount)
            throw new ArgumentException($"tree '{tree.Name}' has depth {tree.MaxDepth} but only {heads.HeadCount} Medusa heads are loaded.");
        if (tree.Fixed is { } fixedTree && fixedTree.TopKPerDepth.Any(k => k > MedusaHeads.TopK))
            throw new ArgumentException($"tree '{tree.Name}' uses top-k indices beyond the {MedusaHeads.TopK} each head provides.");
        if (tree.IsDynamic == mask is not null)
            throw new ArgumentException(tree.IsDynamic ? $"tree '{tree.Name}' is dynamic: the decoder keeps its own mask" : $"tree '{tree.Name}' needs its mask on the device", nameof(mask));
        _heads = heads;
        _candidates = tree;
        _acceptance = acceptance;
        _stats = stats;
        _topK = new int[heads.HeadCount * MedusaHeads.TopK];
        _sources = new int[tree.MaxDepth + 1 + MaxForcedTokens];
        _leaf = new bool[tree.NodeCount + MaxForcedTokens];
        _nodeArgMax = new int[tree.NodeCount + MaxForcedTokens];
        _deviceSources = Backend.Allocate(Models.DType.I32, tree.MaxDepth + 1 + MaxForcedTokens, 1);
        if (tree.Fixed is { } fixedNodes && fixedNodes.NodeCount - 1 <= IComputeBackend.MaxGatherInts && DeviceGuesses)
        {
            // A fixed tree's node tokens are picked from the heads' top-k on the device: the step after the heads queues
            // its forward without waiting for their guesses, and reads them back after its own argmax.
            _deviceTop = Backend.Allocate(Models.DType.I32, tree.MaxDepth, MedusaHeads.TopK);
            _nodeSources = new int[fixedNodes.NodeCount - 1];
            for (int node = 1; node < fixedNodes.NodeCount; node++)
                _nodeSources[node - 1] = (fixedNodes.Depths[node] - 1) * MedusaHeads.TopK + fixedNodes.TopKIndices[node];
        }
        if (tree.Fixed is { } topology) UseTree(topology, mask!);
        else
        {
            _planner = new DynamicTreePlanner(tree.Name, tree.NodeCount, tree.MaxDepth, MedusaHeads.TopK, tree.MinProbability);
            _ownMasks = [];
        }
    }

    /// <summary>Environment variable: 0 reads a fixed tree's guesses right after the heads, as dynamic trees do (to time what keeping them on the device buys).</summary>
    public const string DeviceGuessesVariable = "ILGPU_MEDUSA_DEVICE_GUESSES";

    private static readonly bool DeviceGuesses = Environment.GetEnvironmentVariable(DeviceGuessesVariable)?.Trim() is not "0";

    /// <summary>Most tokens of forced text a step under a constraint verifies beyond its tree.</summary>
    public const int MaxForcedTokens = 8;

    /// <summary>Environment variable: 0 adds no forced text to the trees of constrained requests (to time what it buys).</summary>
    public const string ForcedTextVariable = "ILGPU_MEDUSA_FORCED_TEXT";

    private static readonly bool ForcedText = Environment.GetEnvironmentVariable(ForcedTextVariable)?.Trim() is not "0";

    /// <summary>Makes <paramref name="topology"/> the tree of the next step (its mask already on the device, or uploaded into this decoder's).</summary>
    private void UseTree(TreeTopology topology, DeviceTensor? mask)
    {
        if (ReferenceEquals(topology, _planned)) return;
        int n = topology.NodeCount;
        if (n > _candidates.NodeCount)
            throw new InvalidOperationException($"tree '{topology.Name}' has {n} nodes, more than the {_candidates.NodeCount} planned for");
        _planned = topology;
        _plannedMask = mask ?? OwnMask(_ownMasks!, topology);
        SetStepTree(_planned, _plannedMask);
    }

    /// <summary>A mask of this decoder's for <paramref name="topology"/>, uploaded (one buffer per node count in <paramref name="masks"/>).</summary>
    private DeviceTensor OwnMask(Dictionary<int, DeviceTensor> masks, TreeTopology topology)
    {
        int n = topology.NodeCount;
        if (!masks.TryGetValue(n, out var mask)) masks[n] = mask = Backend.Allocate(Models.DType.I32, n, n);
        Backend.Upload(mask, topology.Mask);
        return mask;
    }

    /// <summary>Makes <paramref name="topology"/> the tree of the next step and finds its leaves.</summary>
    private void SetStepTree(TreeTopology topology, DeviceTensor mask)
    {
        _tree = topology;
        _mask = mask;
        int n = topology.NodeCount;
        Array.Fill(_leaf, true, 0, n);
        foreach (int parent in topology.Parents)
            if (parent >= 0) _leaf[parent] = false;
        _leafCount = 0;
        for (int node = 0; node < n; node++)
            if (_leaf[node]) _leafCount++;
    }

    /// <summary>
    /// Runs the heads the tree reaches (heads 0..depth − 1) on one hidden row, given the pending token (the one their
    /// guesses follow); with a dynamic tree, plans the next step's tree from their confidence.
    /// </summary>
    private void Predict(DeviceTensor hidden)
    {
        _guessed = SpeculateNext;
        _onDevice = false;
        if (!_guessed) return; // the next step decodes one token: no guesses needed
        if (_deviceTop is not null)
        {
            _heads.PredictOnDevice(hidden, _candidates.MaxDepth, Pending, Sequence, Committed, _deviceTop);
            _onDevice = true;
            return;
        }
        _heads.Predict(hidden, _candidates.MaxDepth, Pending, Sequence, Committed).CopyTo(_topK);
        if (_planner is not null) UseTree(_planner.Plan(_heads.TopProbabilities()), null);
    }

    /// <summary>Reads the guesses that <see cref="Predict"/> left on the device into <see cref="_topK"/> (token ids).</summary>
    private void ReadGuesses()
    {
        if (!_onDevice) return;
        var top = _topK.AsSpan(0, _candidates.MaxDepth * MedusaHeads.TopK);
        Backend.Download(_deviceTop!, top);
        _heads.ToTokenIds(top);
        _onDevice = false;
    }

    /// <summary>The node tokens of the planned tree, from the guesses in <see cref="_topK"/>.</summary>
    private void FillNodeTokens(Span<int> tokens)
    {
        for (int node = 1; node < _tree.NodeCount; node++)
            tokens[node] = _topK[(_tree.Depths[node] - 1) * MedusaHeads.TopK + _tree.TopKIndices[node]];
    }

    /// <inheritdoc />
    public override bool WritesPlanTokens => _planOnDevice;

    /// <inheritdoc />
    public override void WritePlanTokens(DeviceTensor tokens)
    {
        if (!_planOnDevice) return;
        Backend.GatherInts(tokens.Slice(1, _nodeSources.Length), _deviceTop!, _nodeSources, _heads.DeviceShortlist);
    }

    private bool _guessed; // _topK holds the heads' guesses after the pending token
    private readonly List<int> _walked = []; // tokens SampleAlongTree accepted so far in this step

    /// <summary>
    /// Whether the next step verifies a tree (set by the scheduler before each step completes; default true). When false
    /// the heads are skipped and the next step decodes one token, as autoregressive decoding does: in a batch that
    /// already fills the device, tree rows cost more than they return.
    /// </summary>
    public bool SpeculateNext { get; set; } = true;

    /// <inheritdoc />
    public override void Release()
    {
        base.Release();
        _deviceSources.Dispose();
        _deviceTop?.Dispose();
        foreach (var masks in (Dictionary<int, DeviceTensor>?[])[_ownMasks, _stepMasks])
            if (masks is not null)
                foreach (var mask in masks.Values) mask.Dispose();
        _leafIds?.Dispose();
        _leafScratch?.Dispose();
    }

    /// <summary>
    /// Greedy verification needs the argmax of every node that has children; a leaf's argmax is only the bonus token when
    /// the accepted path ends there. So in trees of more than <see cref="IComputeBackend.EagerLeafRows"/> leaves, leaves
    /// get no logits in the tree forward (the base classifier is most of a tree step's work on a CPU), and an accepted
    /// leaf's bonus token is computed afterwards from its hidden row alone. Smaller trees take every node's token in the
    /// one classifier pass: their accepted path ends at a leaf in most steps, and a second pass costs more than the extra
    /// rows. Sampling and typical acceptance read whole logits rows and keep every row; so does a constraint, whose walk
    /// along the tree chooses each node's token (<see cref="SampleAlongTree"/>).
    /// </summary>
    private bool LazyLeaves => !NeedsLogitRows && Processor is null && _leafCount > Backend.EagerLeafRows;

    /// <inheritdoc />
    protected override bool SkipsLogits(int row) => !_fallback && LazyLeaves && _leaf[row];

    /// <inheritdoc />
    public override bool NeedsLogitRows => base.NeedsLogitRows || _acceptance is Acceptance.TypicalAcceptance;

    protected override int StepSize => _shrunk || !_guessed || Committed + _candidates.NodeCount > Sequence.MaxTokens ? 1
        : _candidates.NodeCount + (Processor is { Constrains: true } && ForcedText ? _forcedRoom : 0);

    private bool _shrunk; // the planned step is one token because the tree did not fit the batch

    /// <inheritdoc />
    protected override bool ShrinkStep(int budget)
    {
        // Less forced text first; then no tree.
        if (budget >= _candidates.NodeCount && Processor is { Constrains: true })
        {
            _forcedRoom = budget - _candidates.NodeCount;
            _stats.ForcedTextCuts++;
            return true;
        }
        _shrunk = true;
        return true;
    }

    protected override void AfterPrefill(DeviceTensor lastHidden) => Predict(lastHidden);

    protected override int PlanStep(int[] tokens, int[] positions, out DeviceTensor? mask, out int logitsFrom)
    {
        logitsFrom = 0;
        int s = Committed;
        tokens[0] = Pending;
        positions[0] = s;
        _fallback = StepSize == 1;
        _planOnDevice = false;
        if (_fallback)
        {
            // Near the end of the context the whole tree no longer fits, or the scheduler asked for a plain step: one token.
            mask = null;
            return 1;
        }
        if (!ReferenceEquals(_tree, _planned)) SetStepTree(_planned, _plannedMask);
        int n = _tree.NodeCount;
        // Under a constraint the guesses are filtered by it on the host: they come back from the device first.
        if (_onDevice && Processor is { Constrains: true }) ReadGuesses();
        if (_tokens.Length < n) _tokens = new int[n];
        if (_onDevice)
        {
            // Placeholders: WritePlanTokens picks the node tokens from the guesses on the device; CompleteStep reads them.
            Array.Fill(tokens, 0, 1, n - 1);
            _planOnDevice = true;
        }
        else
        {
            FillNodeTokens(tokens);
            if (Processor is { Constrains: true } processor) n = ConstrainTree(processor, tokens, Math.Min(_forcedRoom, Sequence.MaxTokens - s - n));
            if (_tokens.Length < n) _tokens = new int[n];
            tokens.AsSpan(0, n).CopyTo(_tokens);
        }
        for (int node = 1; node < n; node++) positions[node] = s + _tree.Depths[node];
        mask = _mask;
        return n;
    }

    /// <summary>
    /// The tree of a step under a constraint, from the planned one whose guesses are in <paramref name="tokens"/>: a guess
    /// the constraint rules out takes the next allowed guess of its head (<see cref="LogitProcessor.ConstrainGuesses"/>);
    /// nodes whose paths are still ruled out are left out (they could never be accepted), and so are nodes repeating a
    /// sibling's token, with their subtrees; then, walking the main path
    /// (the root, its first child, that node's first child, ...), the first node after which the grammar forces text
    /// gets that text's tokens (at most <paramref name="room"/>) as a chain, continuing along children that already
    /// carry them. Makes it the step's tree and returns its node count.
    /// </summary>
    private int ConstrainTree(LogitProcessor processor, int[] tokens, int room)
    {
        var planned = _tree;
        int n = planned.NodeCount;
        Span<bool> allowed = stackalloc bool[n];
        processor.ConstrainGuesses(planned.Parents, planned.Depths, planned.TopKIndices, tokens.AsSpan(0, n), _topK, MedusaHeads.TopK, allowed);
        Span<int> index = stackalloc int[n];   // planned node → node of the step's tree (−1: left out)
        var parents = new int[n + Math.Max(room, 0)];
        var ranks = new int[parents.Length];
        int count = 0;
        for (int node = 0; node < n; node++)
        {
            index[node] = -1;
            // Left out: a path the constraint rules out, a child of a node left out, and a second child with its
            // sibling's token (a head with too few allowed guesses keeps its own; the walk follows the first only).
            if (node > 0 && (!allowed[node] || index[planned.Parents[node]] < 0 ||
                FirstChild(parents, count, index[planned.Parents[node]], tokens[node], tokens) >= 0)) continue;
            index[node] = count;
            parents[count] = node == 0 ? -1 : index[planned.Parents[node]];
            ranks[count] = planned.TopKIndices[node];
            tokens[count++] = tokens[node];
        }
        int kept = count;
        if (ForcedText && room > 0)
        {
            // The main path's tokens after the root are the pending ones of each node on it.
            Span<int> path = stackalloc int[n];
            int at = 0, depth = 0, forced = 0;
            while (true)
            {
                forced = processor.ForcedTokens(path[..depth], _forced.AsSpan(0, room));
                if (forced > 0) break;
                int child = FirstChild(parents, count, at);
                if (child < 0) break;
                path[depth++] = tokens[child];
                at = child;
            }
            for (int i = 0; i < forced; i++)
            {
                int child = FirstChild(parents, count, at, _forced[i], tokens);
                if (child < 0)
                {
                    parents[count] = at;
                    ranks[count] = -1;
                    tokens[count] = _forced[i];
                    child = count++;
                }
                at = child;
            }
        }
        if (count == n && kept == n) return n; // nothing ruled out, nothing forced: the planned tree
        var tree = TreeTopology.FromParents(planned.Name, parents[..count], ranks[..count]);
        SetStepTree(tree, OwnMask(_stepMasks ??= [], tree));
        return count;
    }

    /// <summary>The first node after <paramref name="node"/> among the first <paramref name="count"/> whose parent it is (and whose token is <paramref name="token"/>, unless −1); −1 if none.</summary>
    private static int FirstChild(int[] parents, int count, int node, int token = -1, int[]? tokens = null)
    {
        for (int child = node + 1; child < count; child++)
            if (parents[child] == node && (token < 0 || tokens![child] == token)) return child;
        return -1;
    }

    protected override void CompleteStep(DeviceTensor hidden, StepLogits logits, List<int> accepted)
    {
        _shrunk = false;
        _forcedRoom = MaxForcedTokens;
        int s = Committed;
        if (_fallback)
        {
            Committed = s + 1;
            Accept(accepted, Pending = Choose(logits, 0), 0);
            Predict(hidden.Slice(0, 1));
            _stats.Record(1);
            return;
        }
        if (_planOnDevice)
        {
            // The forward is done (its argmax has been read): the guesses it was given come back without another wait.
            ReadGuesses();
            _tokens[0] = Pending;
            FillNodeTokens(_tokens);
            _planOnDevice = false;
        }
        bool lazy = LazyLeaves;
        if (lazy)
        {
            Array.Fill(_nodeArgMax, -1);
            var rows = PlanLogitRows;
            for (int i = 0; i < rows.Length; i++) _nodeArgMax[rows[i]] = logits.ArgMax[i];
        }
        int sampled = -1;
        var path = _acceptance is Acceptance.TypicalAcceptance typical
            ? PosteriorEvaluator.Typical(_tree, typical, Posteriors(logits.Rows, out var entropy), entropy)
            : !Sampler.IsGreedy || Processor is not null ? SampleAlongTree(logits, out sampled)
            : PosteriorEvaluator.Greedy(_tree, _tokens, lazy ? _nodeArgMax : logits.ArgMax);
        var nodes = _tree.Paths[path.Path];
        int length = path.Length;

        // Move the accepted nodes' KV entries from slots S + node to S, S+1, ... (no-op when they are already there).
        bool moved = false;
        for (int i = 0; i < length; i++)
        {
            _sources[i] = s + nodes[i];
            moved |= nodes[i] != i;
        }
        if (moved)
        {
            var sources = _deviceSources.Slice(0, length);
            Backend.Upload(sources, _sources.AsSpan(0, length));
            Backend.KvCompact(Sequence.Cache, Sequence.DeviceBlockTable, sources, s);
        }
        Committed = s + length;

        // Node i of the path is the token its parent's row chose; the rows are the plan's nodes unless leaves were skipped.
        int forced = 0;
        for (int i = 1; i < length; i++)
        {
            Accept(accepted, _tokens[nodes[i]], lazy ? -1 : nodes[i - 1]);
            if (_tree.TopKIndices[nodes[i]] < 0) forced++; // forced text, not a guess
        }
        int last = nodes[length - 1];
        Pending = sampled >= 0 ? sampled : !lazy ? Choose(logits, last) : _nodeArgMax[last] >= 0 ? _nodeArgMax[last] : LeafToken(hidden, last);
        Accept(accepted, Pending, lazy ? -1 : last);
        Predict(hidden.Slice(last, 1));
        _stats.Record(length, length - 1 - forced, forced);
    }

    /// <summary>
    /// Greedy acceptance under a sampling sampler (temperature, top-p): from the root, draw the token after the current
    /// node from that node's distribution (one draw of the sampler); when a child of the node carries the drawn token the
    /// child is accepted and the walk goes on from it, otherwise the draw is the next pending token. Every emitted token
    /// is then one draw from the base model's distribution given the tokens before it, made with the same random stream
    /// as autoregressive sampling makes it (one draw per token), so a seed gives the same text with or without Medusa,
    /// whatever the tree and however many steps fall back to one token, up to the rounding by which a tree's rows, from
    /// multi-token kernels, differ from one-token steps (a draw within that distance of a token boundary can differ).
    /// (Accepting a guess only when it is the argmax would make every accepted token a greedy one.) Greedy decoding with
    /// penalties, a logit bias or a constraint (JSON mode) walks the same way: each node's row is adjusted for the tokens
    /// accepted before it (<see cref="_walked"/>), then its argmax is taken.
    /// </summary>
    private AcceptedPath SampleAlongTree(StepLogits logits, out int drawn)
    {
        int node = 0, length = 1;
        _walked.Clear();
        while (true)
        {
            int token = Choose(logits, node, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_walked));
            int next = -1;
            for (int child = 1; child < _tree.NodeCount && next < 0; child++)
                if (_tree.Parents[child] == node && _tokens[child] == token) next = child;
            if (next < 0)
            {
                drawn = token;
                break;
            }
            _walked.Add(token);
            node = next;
            length++;
        }
        for (int p = 0; p < _tree.Paths.Length; p++)
        {
            var path = _tree.Paths[p];
            if (path.Length >= length && path[length - 1] == node) return new AcceptedPath(p, length);
        }
        throw new InvalidOperationException($"tree '{_tree.Name}': node {node} is on none of its root-to-leaf paths");
    }

    /// <summary>The greedy token after tree node <paramref name="node"/>, from its final hidden state.</summary>
    private int LeafToken(DeviceTensor hidden, int node)
    {
        _leafIds ??= Backend.Allocate(Models.DType.I32, 1, 1);
        _leafScratch ??= Backend.Allocate(Models.DType.F32, 1, Model.Config.VocabSize);
        Model.GreedyTokens(hidden.Slice(node, 1), _leafIds, _leafScratch);
        Backend.Download(_leafIds, _leafId);
        return _leafId[0];
    }

    /// <summary>
    /// For typical acceptance: p(token of n | parent of n) and the parent's entropy, from softmax(logits / τ) with τ the
    /// sampling temperature (1 for greedy sampling).
    /// </summary>
    private float[] Posteriors(DeviceTensor logits, out float[] parentEntropy)
    {
        int n = _tree.NodeCount, v = logits.Columns;
        if (_logits.Length != n * v)
        {
            _logits = new float[n * v];
            _probability = new float[n];
            _entropy = new float[n];
        }
        Backend.Download(logits, _logits);
        float temperature = Sampler.Temperature;
        Span<float> logSumExp = stackalloc float[n];
        Span<float> entropy = stackalloc float[n];
        for (int row = 0; row < n; row++)
        {
            var x = _logits.AsSpan(row * v, v);
            float max = System.Numerics.Tensors.TensorPrimitives.Max(x) / temperature;
            double sum = 0, weighted = 0;
            foreach (float raw in x)
            {
                float z = raw / temperature - max;
                double e = Math.Exp(z);
                sum += e;
                weighted += e * z;
            }
            logSumExp[row] = (float)(max + Math.Log(sum));
            entropy[row] = (float)(Math.Log(sum) - weighted / sum); // H = ln Z − E[z]
        }
        for (int node = 1; node < n; node++)
        {
            int parent = _tree.Parents[node];
            _probability[node] = MathF.Exp(_logits[parent * v + _tokens[node]] / temperature - logSumExp[parent]);
            _entropy[node] = entropy[parent];
        }
        parentEntropy = _entropy;
        return _probability;
    }
}

/// <summary>Acceptance statistics of Medusa decoding.</summary>
public sealed class MedusaStats
{
    private readonly long[] _histogram;

    /// <summary>
    /// Creates counters for heads of the given count (emitted lengths 1..heads + 1, and up to
    /// <see cref="MedusaDecoder.MaxForcedTokens"/> more with a constraint's forced text).
    /// </summary>
    public MedusaStats(int heads)
    {
        _histogram = new long[heads + 2 + MedusaDecoder.MaxForcedTokens];
        _guesses = new long[heads + 1];
    }

    private readonly long[] _guesses;

    /// <summary>Verification steps.</summary>
    public long Steps { get; private set; }
    /// <summary>Tokens emitted by those steps (accepted tree nodes plus the bonus token).</summary>
    public long Tokens { get; private set; }
    /// <summary>
    /// Tokens that were not the heads' guesses but text a constraint forced (a JSON schema's next key), verified in the
    /// tree and accepted; counted in <see cref="Tokens"/> too.
    /// </summary>
    public long ForcedTokens { get; private set; }
    /// <summary>Steps whose forced text was cut to fit a batch short of rows (a tree without it still fitted).</summary>
    internal long ForcedTextCuts { get; set; }
    /// <summary>Mean tokens per step.</summary>
    public double MeanAccepted => Steps == 0 ? 0 : (double)Tokens / Steps;
    /// <summary>Histogram: index k = steps that emitted k tokens.</summary>
    public IReadOnlyList<long> AcceptHistogram => _histogram;
    /// <summary>Histogram: index g = steps whose accepted path held g of the heads' guesses (forced text not counted).</summary>
    public IReadOnlyList<long> GuessHistogram => _guesses;

    /// <summary>
    /// Hit rate of head i: the fraction of steps whose accepted path held a guess of head i, i.e. head i's candidate was
    /// kept (it needs every head before it to have been kept too; forced text is not a guess).
    /// </summary>
    public double[] HeadHitRates() => HitRates(_guesses);

    /// <summary>Head hit rates from a <see cref="GuessHistogram"/> (one rate per head: its length − 1).</summary>
    public static double[] HitRates(IReadOnlyList<long> guessHistogram)
    {
        ArgumentNullException.ThrowIfNull(guessHistogram);
        long steps = guessHistogram.Sum();
        var rates = new double[Math.Max(0, guessHistogram.Count - 1)];
        for (int head = 0; head < rates.Length; head++)
        {
            long hits = 0;
            for (int g = head + 1; g < guessHistogram.Count; g++) hits += guessHistogram[g];
            rates[head] = steps == 0 ? 0 : (double)hits / steps;
        }
        return rates;
    }

    internal void Record(int emitted, int guesses = -1, int forced = 0)
    {
        Steps++;
        Tokens += emitted;
        ForcedTokens += forced;
        _histogram[Math.Min(emitted, _histogram.Length - 1)]++;
        _guesses[Math.Clamp(guesses < 0 ? emitted - 1 : guesses, 0, _guesses.Length - 1)]++;
    }
}
