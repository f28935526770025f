using IlgpuMedusa.Compute.Host;
using IlgpuMedusa.Models;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Tests.Transformer;

/// <summary>The workspace's gather rows are uploaded only when they change (an upload stalls an accelerator's queue).</summary>
public class ForwardWorkspaceTests
{
    [Fact]
    public void GatherRowsAreUploadedOnlyWhenTheyChange()
    {
        var config = new ModelConfig { Dim = 8, HiddenDim = 16, Layers = 1, Heads = 2, KvHeads = 2, VocabSize = 10, MaxSequenceLength = 16 };
        using var backend = new HostBackend(1);
        using var workspace = new ForwardWorkspace(backend, config, 8, 4);
        int[] Read(int count)
        {
            var values = new int[count];
            backend.Download(workspace.GatherRows.Slice(0, count), values);
            return values;
        }
        Assert.Equal([0, 2, 3], Read(workspace.GatherRowsFor([0, 2, 3]).Rows));
        // Scribble on the tensor behind the workspace's back: asking for the same rows (or a prefix) must not upload again...
        backend.Upload(workspace.GatherRows.Slice(0, 3), [7, 7, 7]);
        Assert.Equal([7, 7, 7], Read(workspace.GatherRowsFor([0, 2, 3]).Rows));
        Assert.Equal([7], Read(workspace.GatherRowsFor([0]).Rows));
        // ...and other rows must.
        Assert.Equal([1, 2], Read(workspace.GatherRowsFor([1, 2]).Rows));
        Assert.Equal([1, 2, 3, 0], Read(workspace.GatherRowsFor([1, 2, 3, 0]).Rows));
        Assert.Equal([1, 2, 3], Read(workspace.GatherRowsFor([1, 2, 3]).Rows)); // a prefix of what it holds
        Assert.Throws<ArgumentException>(() => workspace.GatherRowsFor([0, 1, 2, 3, 4]));
        Assert.Throws<ArgumentException>(() => workspace.GatherRowsFor([]));
    }
}
