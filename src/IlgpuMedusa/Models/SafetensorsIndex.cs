using System.Text.Json;

namespace IlgpuMedusa.Models;

/// <summary>
/// The index of a sharded safetensors checkpoint, <c>model.safetensors.index.json</c>:
/// <c>{"metadata": {...}, "weight_map": {tensor name: shard file name}}</c>. Shard names must be plain file names in
/// the index's own directory (no folders, so an index cannot point outside the model directory).
/// </summary>
public static class SafetensorsIndex
{
    /// <summary>The file name Hugging Face gives the index.</summary>
    public const string FileName = "model.safetensors.index.json";

    /// <summary>Reads the weight map: tensor name to shard file name. Throws <see cref="InvalidDataException"/> naming the file and entry.</summary>
    public static IReadOnlyDictionary<string, string> ReadWeightMap(string indexPath)
    {
        if (!File.Exists(indexPath)) throw new FileNotFoundException($"{indexPath}: file not found.", indexPath);
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(File.ReadAllBytes(indexPath));
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{indexPath}: not valid JSON: {e.Message}", e);
        }
        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{indexPath}: missing required field 'weight_map' (an object of tensor name -> shard file).");
            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var entry in map.EnumerateObject())
            {
                string? shard = entry.Value.ValueKind == JsonValueKind.String ? entry.Value.GetString() : null;
                if (string.IsNullOrEmpty(shard) || shard != Path.GetFileName(shard) || shard is "." or "..")
                    throw new InvalidDataException(
                        $"{indexPath}: weight_map entry '{entry.Name}' is {entry.Value.GetRawText()}, expected the file name of a shard in the same directory.");
                if (!result.TryAdd(entry.Name, shard))
                    throw new InvalidDataException($"{indexPath}: weight_map lists tensor '{entry.Name}' twice.");
            }
            if (result.Count == 0)
                throw new InvalidDataException($"{indexPath}: weight_map is empty.");
            return result;
        }
    }
}
