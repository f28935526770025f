namespace IlgpuMedusa.Tests.Tokenization;

/// <summary>Tricky strings for the Llama tokenizer: whitespace runs, digits, accents, CJK, byte fallback, control characters.</summary>
public static class TokenizerTestStrings
{
    /// <summary>The first sentence of llama2.c's reference story.</summary>
    public const string Lily = "Once upon a time, there was a little girl named Lily.";

    /// <summary>Every test string (each is its own theory case).</summary>
    public static IReadOnlyList<string> All { get; } =
    [
        Lily,
        "Hello world!",
        " leading space",
        "trailing space ",
        "multiple   spaces   inside",
        "    four leading spaces and two trailing  ",
        " ",
        "   ",
        "a",
        "digits 1234567890, 3.14159 and 2024-11-27",
        "Accents: café, naïve, résumé, Ångström, Straße, ñandú",
        "Combining: e\u0301 vs \u00e9",
        "CJK: 你好，世界。日本語のテキスト。한국어",
        "Emoji 😀🦙 need byte fallback",
        "Rare CJK \U00020BB7 outside the BMP",
        "line one\nline two\n\nline four\n",
        "tab\tseparated\tvalues\t",
        "windows\r\nline end",
        "<s> is literal text, not BOS </s> <unk> <0x41>",
        "Symbols: ©®™ ∑∫√ ←→ €£¥ \u00a0nbsp \u200bzwsp",
        "Mixed: naïve 日本 😀\t42  !!\n  end",
        "\n",
        "",
    ];

    /// <summary><see cref="All"/> as xunit theory data.</summary>
    public static TheoryData<string> Theory { get; } = [.. All];
}
