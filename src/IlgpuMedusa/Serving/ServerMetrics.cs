using System.Collections.Concurrent;
using System.Globalization;
using System.Text;
using IlgpuMedusa.Scheduling;

namespace IlgpuMedusa.Serving;

/// <summary>
/// The server's counters, and <c>GET /metrics</c> in Prometheus' text format (version 0.0.4): requests by route and
/// status, token counts, request duration and time to first token (histograms), and the scheduler's state (sequences
/// running and waiting, KV blocks, preemptions, forward passes, tokens, Medusa's tokens per sequence step). Routes
/// are a fixed set of labels (anything else is "other"), so a client cannot grow the label space.
/// </summary>
internal sealed class ServerMetrics
{
    private const string Prefix = "ilgpu_medusa_";
    private static readonly double[] Buckets = [0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
    private static readonly string[] Routes = ["/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/tokenize", "/detokenize"];

    private readonly ConcurrentDictionary<(string Route, int Status), long> _requests = new();
    private readonly Histogram _duration = new(), _firstToken = new();
    private long _promptTokens, _completionTokens;

    /// <summary>The label of a request path: a known route, <c>/v1/models/{id}</c> as <c>/v1/models</c>, or "other".</summary>
    public static string RouteOf(string path) =>
        path.StartsWith("/v1/models/", StringComparison.Ordinal) ? "/v1/models" : Array.IndexOf(Routes, path) >= 0 ? path : "other";

    /// <summary>Counts an answered request; completion routes also go into the duration histogram.</summary>
    public void Request(string path, int status, double seconds)
    {
        var route = RouteOf(path);
        _requests.AddOrUpdate((route, status), 1, (_, n) => n + 1);
        if (route is "/v1/chat/completions" or "/v1/completions" && status == 200) _duration.Observe(seconds);
    }

    /// <summary>Counts the tokens of a reply (all its choices).</summary>
    public void Tokens(long prompt, long completion)
    {
        Interlocked.Add(ref _promptTokens, prompt);
        Interlocked.Add(ref _completionTokens, completion);
    }

    /// <summary>Seconds from a completion request's arrival to its first generated token.</summary>
    public void FirstToken(double seconds) => _firstToken.Observe(seconds);

    /// <summary>The exposition text.</summary>
    public string Render(SchedulerStats scheduler, int inFlight)
    {
        var text = new StringBuilder();
        void Metric(string name, string type, string help, double value)
        {
            text.Append("# HELP ").Append(Prefix).Append(name).Append(' ').Append(help).Append('\n');
            text.Append("# TYPE ").Append(Prefix).Append(name).Append(' ').Append(type).Append('\n');
            text.Append(Prefix).Append(name).Append(' ').Append(Number(value)).Append('\n');
        }
        text.Append("# HELP ").Append(Prefix).Append("http_requests_total HTTP requests answered, by route and status.\n");
        text.Append("# TYPE ").Append(Prefix).Append("http_requests_total counter\n");
        foreach (var ((route, status), count) in _requests.OrderBy(e => e.Key.Route, StringComparer.Ordinal).ThenBy(e => e.Key.Status))
            text.Append(Prefix).Append("http_requests_total{route=\"").Append(route).Append("\",status=\"").Append(status.ToString(CultureInfo.InvariantCulture))
                .Append("\"} ").Append(count.ToString(CultureInfo.InvariantCulture)).Append('\n');
        Metric("http_requests_in_flight", "gauge", "HTTP requests being answered now.", inFlight);
        Metric("prompt_tokens_total", "counter", "Prompt tokens of answered completion requests (once per request).", Interlocked.Read(ref _promptTokens));
        Metric("completion_tokens_total", "counter", "Tokens generated for answered completion requests (every choice).", Interlocked.Read(ref _completionTokens));
        _duration.Render(text, Prefix + "request_duration_seconds", "Seconds to answer a completion request (status 200), streamed or not.");
        _firstToken.Render(text, Prefix + "time_to_first_token_seconds", "Seconds from a completion request's arrival to its first generated token.");
        Metric("sequences_running", "gauge", "Sequences the scheduler is decoding.", scheduler.Running);
        Metric("sequences_waiting", "gauge", "Sequences waiting for KV blocks.", scheduler.Waiting);
        Metric("kv_blocks_used", "gauge", "KV cache blocks held by sequences.", scheduler.BlocksUsed);
        Metric("kv_blocks_free", "gauge", "KV cache blocks free.", scheduler.BlocksFree);
        Metric("kv_blocks_cached", "gauge", "Of the free KV blocks, those keeping a cached prefix (taken back when the pool needs room).", scheduler.BlocksCached);
        Metric("prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache (every admission, recomputations included).", scheduler.PrefixQueryTokens);
        Metric("prefix_cache_hits_total", "counter", "Of those, tokens found cached: their KV was not computed again.", scheduler.PrefixHitTokens);
        Metric("preemptions_total", "counter", "Sequences preempted to free KV blocks (recomputed later).", scheduler.Preemptions);
        Metric("forward_passes_total", "counter", "Batched forward passes run by the scheduler.", scheduler.Steps);
        Metric("generated_tokens_total", "counter", "Tokens the scheduler emitted (every request, HTTP or not).", scheduler.GeneratedTokens);
        Metric("tokens_per_sequence_step", "gauge", "Tokens emitted per sequence per forward pass (Medusa's mean accepted; 1 without it).", scheduler.MeanAcceptedPerStep);
        return text.ToString();
    }

    private static string Number(double value) => value.ToString("R", CultureInfo.InvariantCulture);

    /// <summary>A cumulative histogram over <see cref="Buckets"/>.</summary>
    private sealed class Histogram
    {
        private readonly long[] _counts = new long[Buckets.Length + 1];
        private double _sum;
        private long _count;

        public void Observe(double seconds)
        {
            lock (_counts)
            {
                int bucket = 0;
                while (bucket < Buckets.Length && seconds > Buckets[bucket]) bucket++;
                _counts[bucket]++;
                _sum += seconds;
                _count++;
            }
        }

        public void Render(StringBuilder text, string name, string help)
        {
            text.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n');
            text.Append("# TYPE ").Append(name).Append(" histogram\n");
            lock (_counts)
            {
                long cumulative = 0;
                for (int i = 0; i <= Buckets.Length; i++)
                {
                    cumulative += _counts[i];
                    string le = i < Buckets.Length ? Number(Buckets[i]) : "+Inf";
                    text.Append(name).Append("_bucket{le=\"").Append(le).Append("\"} ").Append(cumulative.ToString(CultureInfo.InvariantCulture)).Append('\n');
                }
                text.Append(name).Append("_sum ").Append(Number(_sum)).Append('\n');
                text.Append(name).Append("_count ").Append(_count.ToString(CultureInfo.InvariantCulture)).Append('\n');
            }
        }
    }
}
