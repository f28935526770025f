namespace IlgpuMedusa.Tokenization;

/// <summary>
/// GPT-2's byte-level alphabet, used by byte-level BPE vocabularies (GPT-2, Llama 3, Qwen, SmolLM): every byte is spelled
/// as one printable character. Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
/// themselves; the other 68 bytes (controls, space, DEL, NBSP, soft hyphen), in increasing order, take the characters
/// U+0100, U+0101, ... So a space is 'Ġ' (U+0120) and a newline 'Ċ' (U+010A) in vocabulary entries.
/// </summary>
internal static class ByteLevelAlphabet
{
    private static readonly char[] ByteToChar = BuildByteToChar();
    private static readonly Dictionary<char, byte> CharToByte = BuildCharToByte();

    private static char[] BuildByteToChar()
    {
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
            map[b] = StandsForItself(b) ? (char)b : (char)next++;
        return map;
    }

    private static Dictionary<char, byte> BuildCharToByte()
    {
        var map = new Dictionary<char, byte>(256);
        for (int b = 0; b < 256; b++) map[ByteToChar[b]] = (byte)b;
        return map;
    }

    private static bool StandsForItself(int b) => b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;

    /// <summary>The character that spells <paramref name="value"/>.</summary>
    public static char Spell(byte value) => ByteToChar[value];

    /// <summary>The vocabulary spelling of <paramref name="text"/>'s UTF-8 bytes.</summary>
    public static string Spell(string text)
    {
        var bytes = System.Text.Encoding.UTF8.GetBytes(text);
        return string.Create(bytes.Length, bytes, static (chars, b) =>
        {
            for (int i = 0; i < b.Length; i++) chars[i] = ByteToChar[b[i]];
        });
    }

    /// <summary>
    /// The bytes a vocabulary entry spells; false when a character is outside the alphabet (the entry is then not a
    /// byte-level spelling).
    /// </summary>
    public static bool TryRead(string spelling, out byte[] bytes)
    {
        bytes = new byte[spelling.Length];
        for (int i = 0; i < spelling.Length; i++)
        {
            if (!CharToByte.TryGetValue(spelling[i], out bytes[i])) return false;
        }
        return true;
    }
}
