namespace IlgpuMedusa.Models;

/// <summary>Placeholder: the Hugging Face reader (config.json + safetensors) is being written.</summary>
public static class HuggingFaceCheckpoint
{
    /// <summary>Opens a Hugging Face model directory.</summary>
    public static ICheckpoint Open(string directory) =>
        throw new NotSupportedException($"{directory}: Hugging Face layout not implemented yet");
}
