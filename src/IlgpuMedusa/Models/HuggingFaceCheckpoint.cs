namespace IlgpuMedusa.Models;

/// <summary>
/// A Hugging Face model directory: <c>config.json</c> plus either one <c>model.safetensors</c> or shards listed in
/// <c>model.safetensors.index.json</c>. Tensor names in these files are already the canonical Llama names and q/k rows
/// are already in rotate-half order, so tensors are handed out as views of the memory-mapped files, unchanged.
/// Dtypes are checked when the files are opened; presence and shapes are checked by whoever asks for a tensor
/// (<see cref="CheckpointExtensions.GetTensor"/>).
/// </summary>
public sealed class HuggingFaceCheckpoint : ICheckpoint
{
    /// <summary>The file name of a single-file checkpoint.</summary>
    public const string SingleFileName = "model.safetensors";

    private readonly List<SafetensorsFile> _files;
    private readonly Dictionary<string, TensorData> _tensors;

    private HuggingFaceCheckpoint(string directory, ModelConfig config, List<SafetensorsFile> files, Dictionary<string, TensorData> tensors)
    {
        Location = directory;
        Config = config;
        _files = files;
        _tensors = tensors;
    }

    /// <inheritdoc />
    public ModelConfig Config { get; }
    /// <inheritdoc />
    public string Location { get; }
    /// <inheritdoc />
    public IReadOnlyCollection<string> TensorNames => _tensors.Keys;
    /// <summary>The safetensors files that are open (one, or every shard).</summary>
    public IReadOnlyList<SafetensorsFile> Files => _files;

    /// <summary>
    /// Opens <paramref name="directory"/>. Throws <see cref="DirectoryNotFoundException"/> or
    /// <see cref="FileNotFoundException"/> when something is missing and <see cref="InvalidDataException"/> naming the
    /// file and tensor or field when something is malformed.
    /// </summary>
    public static HuggingFaceCheckpoint Open(string directory)
    {
        if (!Directory.Exists(directory))
            throw new DirectoryNotFoundException($"model directory '{directory}' does not exist.");
        var config = HuggingFaceConfig.Load(directory);
        var single = Path.Combine(directory, SingleFileName);
        var index = Path.Combine(directory, SafetensorsIndex.FileName);
        var files = new List<SafetensorsFile>();
        try
        {
            Dictionary<string, TensorData> tensors;
            if (File.Exists(single))
            {
                var file = SafetensorsFile.Open(single);
                files.Add(file);
                tensors = new Dictionary<string, TensorData>(file.Tensors, StringComparer.Ordinal);
            }
            else if (File.Exists(index))
            {
                tensors = OpenShards(directory, index, files);
            }
            else
            {
                throw new FileNotFoundException(
                    $"{directory}: no weights found: expected {SingleFileName} or {SafetensorsIndex.FileName} beside {HuggingFaceConfig.FileName}.",
                    single);
            }
            return new HuggingFaceCheckpoint(directory, config, files, tensors);
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    /// <summary>Opens each shard named in the index once and takes from it the tensors the index assigns to it.</summary>
    private static Dictionary<string, TensorData> OpenShards(string directory, string indexPath, List<SafetensorsFile> files)
    {
        var weightMap = SafetensorsIndex.ReadWeightMap(indexPath);
        var shards = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        var tensors = new Dictionary<string, TensorData>(weightMap.Count, StringComparer.Ordinal);
        foreach (var (name, shardName) in weightMap)
        {
            if (!shards.TryGetValue(shardName, out var shard))
            {
                var shardPath = Path.Combine(directory, shardName);
                if (!File.Exists(shardPath))
                    throw new FileNotFoundException($"{indexPath}: shard '{shardName}' (holding tensor '{name}') not found at {shardPath}.", shardPath);
                shard = SafetensorsFile.Open(shardPath);
                files.Add(shard);
                shards.Add(shardName, shard);
            }
            if (!shard.TryGetTensor(name, out var tensor))
                throw new InvalidDataException($"{indexPath}: tensor '{name}' is listed in shard '{shardName}', but {shard.Path} does not contain it.");
            tensors.Add(name, tensor);
        }
        return tensors;
    }

    /// <inheritdoc />
    public bool TryGetTensor(string name, out TensorData tensor) => _tensors.TryGetValue(name, out tensor);

    /// <summary>Unmaps every file.</summary>
    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
        _files.Clear();
    }
}
