using IlgpuMedusa.Generation;
using IlgpuMedusa.Hosting;
using Microsoft.Extensions.AI;

namespace IlgpuMedusa.Tests.Hosting;

/// <summary>
/// GenerateAsync and the chat client's streaming give every KV block back to the pool however the stream ends:
/// completion, a break out of await foreach, a cancelled token, an exception in the caller's loop.
/// </summary>
public class StreamingCancellationTests(DemoEngineFixture fixture) : IClassFixture<DemoEngineFixture>
{
    private readonly InferenceEngine _engine = fixture.Engine;
    private static readonly GenerationOptions Long = new() { MaxTokens = 200 };

    [Fact]
    public async Task Completed_StreamsTheReferenceAndReturnsEveryBlock()
    {
        int free = _engine.Pool.FreeBlocks;
        var text = "";
        var tokens = 0;
        await foreach (var piece in _engine.GenerateAsync(HostingTestSupport.Prompt, new GenerationOptions { MaxTokens = 30 }))
        {
            text += piece.Text;
            tokens += piece.TokenIds.Count;
        }
        Assert.Equal(30, tokens);
        Assert.StartsWith(HostingTestSupport.Prompt + text, HostingTestSupport.Reference, StringComparison.Ordinal);
        Assert.Equal(free, _engine.Pool.FreeBlocks);
    }

    [Fact]
    public async Task BreakingOutOfAwaitForeach_ReturnsEveryBlock_AndTheEngineServesTheNextRequest()
    {
        int free = _engine.Pool.FreeBlocks;
        int pieces = 0;
        bool sawBlocksHeld = false;
        await foreach (var piece in _engine.GenerateAsync(HostingTestSupport.Prompt, Long))
        {
            sawBlocksHeld |= _engine.Pool.FreeBlocks < free;
            if (++pieces == 3) break;
        }
        Assert.True(sawBlocksHeld, "the generation never held a KV block while streaming");
        Assert.Equal(free, _engine.Pool.FreeBlocks);

        // The gate was released: the next request runs (and gives the reference again).
        var text = "";
        await foreach (var piece in _engine.GenerateAsync(HostingTestSupport.Prompt, new GenerationOptions { MaxTokens = 10 }))
            text += piece.Text;
        Assert.StartsWith(HostingTestSupport.Prompt + text, HostingTestSupport.Reference, StringComparison.Ordinal);
        Assert.Equal(free, _engine.Pool.FreeBlocks);
    }

    [Fact]
    public async Task CancellingTheToken_Throws_AndReturnsEveryBlock()
    {
        int free = _engine.Pool.FreeBlocks;
        using var cancellation = new CancellationTokenSource();
        int pieces = 0;
        bool sawBlocksHeld = false;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var piece in _engine.GenerateAsync(HostingTestSupport.Prompt, Long, cancellation.Token))
            {
                sawBlocksHeld |= _engine.Pool.FreeBlocks < free;
                if (++pieces == 3) await cancellation.CancelAsync();
            }
        });
        Assert.True(sawBlocksHeld, "the generation never held a KV block while streaming");
        Assert.InRange(pieces, 3, 199);
        Assert.Equal(free, _engine.Pool.FreeBlocks);
    }

    [Fact]
    public async Task ExceptionInTheCallersLoop_ReturnsEveryBlock()
    {
        int free = _engine.Pool.FreeBlocks;
        await Assert.ThrowsAsync<InvalidOperationException>(async () =>
        {
            await foreach (var _ in _engine.GenerateAsync(HostingTestSupport.Prompt, Long))
                throw new InvalidOperationException("the caller failed");
        });
        Assert.Equal(free, _engine.Pool.FreeBlocks);
    }

    [Fact]
    public async Task TokenCancelledBeforeStart_ThrowsWithoutTakingBlocks()
    {
        int free = _engine.Pool.FreeBlocks;
        using var cancellation = new CancellationTokenSource();
        await cancellation.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var _ in _engine.GenerateAsync(HostingTestSupport.Prompt, Long, cancellation.Token))
            {
            }
        });
        Assert.Equal(free, _engine.Pool.FreeBlocks);
    }

    [Fact]
    public async Task StatsOverload_FillsStatsByTheEndOfTheStream()
    {
        var options = new GenerationOptions { MaxTokens = 12 };
        var ids = _engine.EncodePrompt(HostingTestSupport.Prompt, options);
        var stats = new GenerationStats();
        int tokens = 0;
        await foreach (var piece in _engine.GenerateAsync(ids, options, stats))
        {
            Assert.NotEmpty(piece.TokenIds); // every step accepted at least one token
            tokens += piece.TokenIds.Count;
        }
        Assert.Equal(12, tokens);
        Assert.Equal(12, stats.GeneratedTokens);
        Assert.Equal(ids.Count, stats.PromptTokens);
        Assert.Equal(FinishReason.MaxTokens, stats.FinishReason);
    }

    [Fact]
    public async Task ChatStreaming_CancelledMidway_ReturnsEveryBlock()
    {
        int free = _engine.Pool.FreeBlocks;
        var client = new IlgpuMedusaChatClient(_engine);
        using var cancellation = new CancellationTokenSource();
        int updates = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var _ in client.GetStreamingResponseAsync(HostingTestSupport.Prompt, new ChatOptions { MaxOutputTokens = 200 }, cancellation.Token))
                if (++updates == 2) await cancellation.CancelAsync();
        });
        Assert.Equal(free, _engine.Pool.FreeBlocks);

        // and a break
        await foreach (var _ in client.GetStreamingResponseAsync(HostingTestSupport.Prompt, new ChatOptions { MaxOutputTokens = 200 }))
            break;
        Assert.Equal(free, _engine.Pool.FreeBlocks);
    }
}
