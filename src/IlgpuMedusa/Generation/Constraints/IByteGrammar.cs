namespace IlgpuMedusa.Generation.Constraints;

/// <summary>
/// A recognizer of the texts a constraint allows, read one byte at a time. Implemented by small value types
/// (<see cref="JsonGrammar"/>, <see cref="JsonSchemaGrammar"/>): a candidate token's state is a copy, and the vocabulary
/// mask calls these members through a generic parameter, without boxing.
/// </summary>
internal interface IByteGrammar
{
    /// <summary>
    /// Reads one more byte; false when no allowed text continues so (the state is then to be discarded). Every state it
    /// accepts can still be completed, so generation under the constraint never reaches a dead end.
    /// </summary>
    bool Advance(byte b);

    /// <summary>The text is complete: only an end token may follow.</summary>
    bool IsComplete { get; }

    /// <summary>
    /// Inside free string content, between characters: every token of plain string text
    /// (<see cref="JsonStringScanner.IsPlainText"/>) is allowed and leaves the state as it is.
    /// </summary>
    bool InStringText { get; }
}
