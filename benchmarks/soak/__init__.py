"""``ise bench soak``: thousands of requests, a fifth of them abandoned, and the server must come back clean.

Closed-loop load (``concurrency`` requests in flight) of short requests on loopback: chat and text
completions, streamed and whole, greedy and sampled, one choice or several. Every request has a
planned behaviour (its *kind*), drawn in exact proportions and shuffled with a seed:

- ``complete``: reads the whole response and checks it is well formed.
- ``slow_reader``: reads a stream in small pieces with a pause before each, to the end.
- ``abort_before_headers``: sends the request (a quarter of these only half its body) and closes
  the connection without reading a byte.
- ``abort_mid_stream``: reads some events of a stream, then closes.
- ``abort_non_stream``: a non-streamed request closed at a random point while it is generated.
- ``stalled_reader``: reads nothing at all; the server must drop it after ``--stream-send-timeout``.
  A server only notices once its socket buffers are full, so this client shrinks them (a small
  receive buffer, and a small MSS, which keeps the server's send buffer from growing to
  megabytes on loopback) and asks for a large output (16 choices of 64 tokens: more events than
  the two kernels' socket buffers and uvloop hold). It stays silent until the server's
  ``ise_requests_aborted_total{reason="send_timeout"}`` rises (stalled readers take turns in a
  lane of their own, so the rise is this one's), then reads what is left: a stream cut short
  without ``[DONE]`` is what should happen.

Half of the aborts close with a reset (SO_LINGER 0), the others with an orderly FIN. Each request
is its own connection (``Connection: close``) on a raw socket, so the client reads exactly when and
as much as its kind says: an HTTP library would read ahead into its own buffers.

Checks, each in the report: every response read to its end is well formed (status 200, valid
JSON, or SSE chunks of one id ending in ``[DONE]``, a finish_reason for every choice, usage that
adds up and matches the request: fixed-length outputs are exactly max_tokens, the same prompt
always counts the same prompt tokens); no request outlives its bound (none hangs); the server's
``/metrics`` return to idle (no request running, waiting or in flight, and no KV cache block held:
the CPU engine keeps prefix-cached blocks nobody holds on its free list, so idle is 0 blocks used);
its abort counters agree with what the clients did; the KV blocks of aborted requests are freed
promptly; the server's resident memory after the run is within ``--rss-growth`` of what it was
after the warm-up phase; its log has no unhandled exception; and it still answers ``/health``.

The modules, in the order a request meets them: ``plans`` (what each request is and how its
client behaves), ``http1`` (HTTP/1.1 on a raw socket), ``checks`` (whether a response is well
formed), ``client`` (one request run as planned), ``observe`` (the server's metrics, memory and
log), ``run`` (the phases), ``verdict`` (the checks on the whole run), ``report`` (its files), and
``command`` (the flags of ``ise bench soak``).
"""
