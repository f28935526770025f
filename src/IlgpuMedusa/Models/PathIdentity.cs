namespace IlgpuMedusa.Models;

/// <summary>Whether two paths name one file or directory, symbolic links followed (guards against writing over an input).</summary>
internal static class PathIdentity
{
    /// <summary>True when both paths name one file or directory, through symbolic links too (each link followed to its end).</summary>
    public static bool Same(string a, string b) =>
        string.Equals(RealPath(a), RealPath(b), OperatingSystem.IsWindows() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal);

    /// <summary>The absolute path with every link along it followed; parts that do not exist yet are kept as written.</summary>
    public static string RealPath(string path)
    {
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        string root = Path.GetPathRoot(full) ?? "";
        string walked = root;
        foreach (var part in full[root.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries))
        {
            walked = Path.Combine(walked, part);
            try
            {
                FileSystemInfo info = Directory.Exists(walked) ? new DirectoryInfo(walked) : new FileInfo(walked);
                if (info.Exists && info.LinkTarget is not null) walked = info.ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? walked;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Unreadable link: compare the path as written.
            }
        }
        return Path.TrimEndingDirectorySeparator(walked);
    }
}
