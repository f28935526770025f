using System.Text;
using IlgpuMedusa.Models;
using IlgpuMedusa.Scheduling;
using IlgpuMedusa.Tokenization;
using IlgpuMedusa.Transformer;

namespace IlgpuMedusa.Medusa.Training;

/// <summary>
/// Training text from a user's UTF-8 file: paragraphs (separated by blank lines) are tokenized, cut into chunks of at most
/// the model's context (each starting with BOS), and every chunk is run once through the model (one prefill forward)
/// to get the hidden state of each of its positions.
/// </summary>
public static class TextFileData
{
    /// <summary>
    /// Checks that <paramref name="path"/> exists and holds some text; throws <see cref="FileNotFoundException"/> or
    /// <see cref="InvalidDataException"/> naming the file. Cheap: used before the model loads.
    /// </summary>
    public static void CheckReadable(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"--data: training text file '{path}' not found.", path);
        if (string.IsNullOrWhiteSpace(File.ReadAllText(path, Encoding.UTF8)))
            throw new InvalidDataException($"--data: training text file '{path}' is empty.");
    }

    /// <summary>
    /// The chunks of token ids (a start token first, at most <paramref name="context"/> long) of a file, up to
    /// <paramref name="maxTokens"/> tokens. The start token is the tokenizer's BOS when it puts one first; for tokenizers
    /// without BOS (Qwen) it is <paramref name="documentStart"/> when given (the config's bos_token_id: Qwen's
    /// &lt;|endoftext|&gt;, which separates its pretraining documents), else the tokenizer's BOS stand-in.
    /// </summary>
    public static IReadOnlyList<int[]> Chunks(string path, ITextTokenizer tokenizer, int context, int? maxTokens, int? documentStart = null)
    {
        int start = tokenizer.AddsBos ? tokenizer.BosId : documentStart ?? tokenizer.BosId;
        CheckReadable(path);
        var text = File.ReadAllText(path, Encoding.UTF8).Replace("\r\n", "\n", StringComparison.Ordinal);
        var chunks = new List<int[]>();
        long total = 0;
        foreach (var paragraph in text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            // Encoding one paragraph at a time keeps each tokenizer call short (its cost grows with the length of a call).
            var ids = tokenizer.Encode(paragraph, addBos: false);
            for (int from = 0; from < ids.Count; from += context - 1)
            {
                int count = Math.Min(context - 1, ids.Count - from);
                if (maxTokens is int cap) count = (int)Math.Min(count, cap - total - 1);
                if (count <= 0) return chunks;
                var chunk = new int[count + 1];
                chunk[0] = start;
                for (int i = 0; i < count; i++) chunk[i + 1] = ids[from + i];
                chunks.Add(chunk);
                total += chunk.Length;
            }
        }
        return chunks;
    }

    /// <summary>
    /// Runs each chunk through <paramref name="model"/> and keeps its hidden states (and with <paramref name="lastLayerKv"/>
    /// the keys and values its last layer cached, for heads with context attention).
    /// </summary>
    public static IReadOnlyList<HiddenSequence> Prefill(LlamaModel model, IReadOnlyList<int[]> chunks, IProgress<double>? progress = null, bool lastLayerKv = false,
        CancellationToken cancellationToken = default)
    {
        var c = model.Config;
        var b = model.Backend;
        int longest = chunks.Count == 0 ? 1 : chunks.Max(x => x.Length);
        using var pool = KvBlockPool.FromBudget(b, c.Layers, c.KvHeads, c.HeadDim, 16, ((longest + 15) / 16) * 16L * 2 * c.Layers * c.KvDim * sizeof(float));
        using var workspace = new ForwardWorkspace(b, c, longest, 1);
        var positions = Enumerable.Range(0, longest).ToArray();
        var result = new List<HiddenSequence>(chunks.Count);
        long total = chunks.Sum(x => (long)x.Length), done = 0;
        foreach (var chunk in chunks)
        {
            cancellationToken.ThrowIfCancellationRequested();
            using var sequence = pool.CreateSequence(chunk.Length);
            var hidden = model.Forward(workspace, workspace.Prepare(chunk, positions.AsSpan(0, chunk.Length)), sequence, 0);
            var rows = new float[chunk.Length * c.Dim];
            b.Download(hidden, rows);
            float[]? keys = null, values = null;
            if (lastLayerKv)
            {
                keys = new float[chunk.Length * c.KvDim];
                values = new float[chunk.Length * c.KvDim];
                for (int p = 0; p < chunk.Length; p++)
                {
                    int slot = sequence.PhysicalSlot(p);
                    pool.Cache.ReadSlot(c.Layers - 1, 0, slot, keys.AsSpan(p * c.KvDim, c.KvDim));
                    pool.Cache.ReadSlot(c.Layers - 1, 1, slot, values.AsSpan(p * c.KvDim, c.KvDim));
                }
            }
            result.Add(new HiddenSequence(chunk, rows, null, keys, values));
            done += chunk.Length;
            progress?.Report((double)done / total);
        }
        return result;
    }
}
