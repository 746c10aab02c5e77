// Package benchmarks measures what the caches buy: cold against warm pulls of
// a Talos node's image set, and cold against warm cluster boots, through
// `go test -bench`, with units benchstat compares (pull-s/op, boot-s/op,
// upstream-MB/op, upstream-requests/op, speedup-x).
//
// The upstreams are package fixtures' local registries with a simulated WAN,
// and pulls are made the way a node makes them (internal/standin, the same
// code as the stand-in node: manifests by tag through the mirror with ?ns=,
// digests verified). Knobs are flags of the test binary, with environment
// defaults:
//
//	-pullthrough.bandwidth  PULLTHROUGH_BENCH_MBITS    WAN Mbit/s; 0 = unthrottled (default 100)
//	-pullthrough.latency    PULLTHROUGH_BENCH_LATENCY  WAN latency per request (default 30ms)
//	-pullthrough.scale      PULLTHROUGH_BENCH_SCALE    image sizes × scale; 1 = the real ~289 MB (default 1)
//	-pullthrough.cp         PULLTHROUGH_BENCH_CP       control planes for boots (default 1)
//	-pullthrough.workers    PULLTHROUGH_BENCH_WORKERS  workers for boots (default 1)
//	PULLTHROUGH_TALOS_IMAGE a real Talos image replaces the stand-in node
package benchmarks
