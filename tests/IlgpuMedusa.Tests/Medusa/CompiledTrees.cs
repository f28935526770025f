using IlgpuMedusa.Compute;
using IlgpuMedusa.Medusa;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Tests.Medusa;

/// <summary>A tree by name as the engine prepares it for a decoder: a fixed tree with its mask on the backend, or a dynamic one (no mask).</summary>
public sealed class CompiledTrees(CandidateTree tree, DeviceTensor? mask) : IDisposable
{
    public CandidateTree Tree { get; } = tree;
    public DeviceTensor? Mask { get; } = mask;

    public static CompiledTrees Resolve(IComputeBackend backend, string name, int heads)
    {
        var tree = CandidateTree.Resolve(name, heads);
        DeviceTensor? mask = null;
        if (tree.Fixed is { } topology)
        {
            mask = backend.Allocate(DType.I32, topology.NodeCount, topology.NodeCount);
            backend.Upload(mask, topology.Mask);
        }
        return new CompiledTrees(tree, mask);
    }

    public void Dispose() => Mask?.Dispose();
}
