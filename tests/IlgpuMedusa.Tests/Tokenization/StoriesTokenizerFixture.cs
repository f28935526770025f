using IlgpuMedusa.Tokenization;

namespace IlgpuMedusa.Tests.Tokenization;

/// <summary>The demo model's tokenizer (built once from tokenizer.bin) and the independent reference ids for the test strings.</summary>
public sealed class StoriesTokenizerFixture
{
    private readonly Lazy<IReadOnlyDictionary<string, int[]>> _referenceIds;

    /// <summary>Loads models/stories15M/tokenizer.bin.</summary>
    public StoriesTokenizerFixture()
    {
        Tokenizer = (LlamaTextTokenizer)TokenizerLoader.Load(TestModels.Stories15MDirectory);
        _referenceIds = new Lazy<IReadOnlyDictionary<string, int[]>>(() =>
        {
            var ids = LlamaReferenceTokenizer.Encode(TokenizerTestStrings.All);
            return TokenizerTestStrings.All.Select((text, i) => (text, i)).ToDictionary(p => p.text, p => ids[p.i], StringComparer.Ordinal);
        });
    }

    /// <summary>The tokenizer under test.</summary>
    public LlamaTextTokenizer Tokenizer { get; }

    /// <summary>llama-tokenizer-js's ids (no BOS, dummy prefix) for each of <see cref="TokenizerTestStrings.All"/>; node runs once.</summary>
    public IReadOnlyDictionary<string, int[]> ReferenceIds => _referenceIds.Value;
}
