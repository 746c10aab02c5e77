package standin

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/version"
)

// EnvTalosVersion names the variable the stand-in image sets to the Talos
// version of its tag, which the summary reports.
const EnvTalosVersion = "PULLTHROUGH_STANDIN_TALOS_VERSION"

// EnvFallback names the variable that maps registry hosts to the URL a
// node reaches "the registry itself" at: "ghcr.io=http://172.17.0.1:40123,…".
// Tests set it to the fixtures upstreams; a real node reaches the real
// registry, which is what an unset variable means.
const EnvFallback = "PULLTHROUGH_STANDIN_FALLBACK"

// EnvPreloaded, set to 1, makes the stand-in a node that already holds
// every image: it pulls nothing and reports every image present. It is the
// floor of a boot that no cache can beat (benchmarks' of-preloaded).
const EnvPreloaded = "PULLTHROUGH_STANDIN_PRELOADED"

// ParseFallback reads EnvFallback's value.
func ParseFallback(v string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(v, ",") {
		if strings.TrimSpace(kv) == "" {
			continue
		}
		host, u, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || host == "" {
			return nil, fmt.Errorf("reading %s entry %q: want <registry host>=<url>", EnvFallback, kv)
		}
		if _, err := endpointBase(u, false); err != nil {
			return nil, fmt.Errorf("reading %s entry %q: %w", EnvFallback, kv, err)
		}
		out[host] = u
	}
	return out, nil
}

// CheckVersion accepts a Talos version the node's machinery speaks for: one
// of the same minor release as the Talos machinery it is built with, whose
// images.List is the one it runs.
func CheckVersion(v string) error {
	got, err := config.ParseContractFromVersion(v)
	if err != nil || !strings.HasPrefix(v, "v") {
		return fmt.Errorf("version %q: want a Talos version such as %s", v, version.Tag)
	}
	known, err := config.ParseContractFromVersion(version.Tag)
	if err != nil {
		return fmt.Errorf("parsing the Talos machinery version %q: %w", version.Tag, err)
	}
	if *got != *known {
		return fmt.Errorf("version %q: the stand-in is built with Talos machinery %s and knows only its image set", v, version.Tag)
	}
	return nil
}

// Defaults of Options.
const (
	DefaultParallel      = 3
	DefaultDirectTimeout = 10 * time.Second
	DefaultHeaderTimeout = 2 * time.Minute
	DefaultIdleTimeout   = 2 * time.Minute
	DefaultRetryDelay    = 500 * time.Millisecond
)

// Options tune Run. The zero value is what the talos-standin binary uses.
type Options struct {
	// Parallel is how many images are pulled at once (DefaultParallel).
	Parallel int
	// DirectTimeout bounds a whole pull from a registry that has no mirror
	// (DefaultDirectTimeout): offline, such a pull can only fail, and it
	// must fail fast rather than hold up the summary.
	DirectTimeout time.Duration
	// HeaderTimeout bounds the wait for a mirror's response headers
	// (DefaultHeaderTimeout). It is long because a cold cache answers
	// only once its upstream has.
	HeaderTimeout time.Duration
	// IdleTimeout abandons a body that sends nothing for this long
	// (DefaultIdleTimeout), so a hung mirror is a failure, not a hang.
	IdleTimeout time.Duration
	// Arch picks the manifest from an index: linux/Arch (runtime.GOARCH),
	// as a node picks its own platform.
	Arch string
	// Transport carries requests to mirrors; DirectTransport to registries
	// without one. nil means a transport of Run's own, which ignores proxy
	// variables: a node talks to its mirror directly.
	Transport, DirectTransport http.RoundTripper
	// Fallback maps registry hosts to where the registry itself is
	// reached (see EnvFallback); a host not in it is https://<host>.
	Fallback map[string]string
	// RetryDelay is the wait before retrying a host that answered 429 (or
	// a last host's 5xx), growing with each attempt (DefaultRetryDelay).
	RetryDelay time.Duration
	// Log receives one progress line per image; nil discards them.
	Log io.Writer
	// TalosVersion and Hostname go into the summary; Hostname is used when
	// the machine config sets none.
	TalosVersion, Hostname string
	// Preloaded: every image is already on the node; nothing is pulled.
	Preloaded bool
}

func (o Options) withDefaults() Options {
	if o.Parallel <= 0 {
		o.Parallel = DefaultParallel
	}
	if o.DirectTimeout <= 0 {
		o.DirectTimeout = DefaultDirectTimeout
	}
	if o.HeaderTimeout <= 0 {
		o.HeaderTimeout = DefaultHeaderTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = DefaultRetryDelay
	}
	if o.Arch == "" {
		o.Arch = runtime.GOARCH
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.TalosVersion == "" {
		o.TalosVersion = version.Tag
	}
	return o
}

// Main is the stand-in node's life: load the machine config from USERDATA,
// pull, write the summary to stdout, then stay up until ctx ends. It returns
// the exit code: 0 after a boot, whatever its pulls did (failures are in the
// summary, and a real node stays up too), 2 when the config is unusable, in
// which case an ErrorPrefix line on stderr says why.
func Main(ctx context.Context, getenv func(string) string, stdout, stderr io.Writer, opts Options) int {
	if v := getenv(EnvTalosVersion); v != "" && opts.TalosVersion == "" {
		opts.TalosVersion = v
	}
	n, err := LoadUserdata(getenv("USERDATA"))
	if err != nil {
		fmt.Fprintf(stderr, "%s%v\n", ErrorPrefix, err)
		return 2
	}
	if v := getenv(EnvFallback); v != "" && opts.Fallback == nil {
		if opts.Fallback, err = ParseFallback(v); err != nil {
			fmt.Fprintf(stderr, "%s%v\n", ErrorPrefix, err)
			return 2
		}
	}
	if opts.Log == nil {
		opts.Log = stdout
	}
	if getenv(EnvPreloaded) == "1" {
		opts.Preloaded = true
	}
	s := Run(ctx, n, opts)
	if err := WriteSummary(stdout, s); err != nil {
		fmt.Fprintf(stderr, "%s%v\n", ErrorPrefix, err)
		return 1
	}
	<-ctx.Done()
	return 0
}

// Run pulls every image of the node, a few at a time, and sums up. It never
// fails as a whole: each image that could not be pulled is a Failure.
func Run(ctx context.Context, n *Node, opts Options) Summary {
	o := opts.withDefaults()
	mirrorRT, directRT := o.Transport, o.DirectTransport
	if mirrorRT == nil {
		t := newTransport(o.HeaderTimeout)
		defer t.CloseIdleConnections()
		mirrorRT = t
	}
	if directRT == nil {
		t := newTransport(o.DirectTimeout)
		defer t.CloseIdleConnections()
		directRT = t
	}
	r := &runner{o: o, node: n,
		mirror: &http.Client{Transport: mirrorRT, CheckRedirect: stripAuthOnHostChange},
		direct: &http.Client{Transport: directRT, CheckRedirect: stripAuthOnHostChange}}

	start := time.Now()
	if o.Preloaded {
		results := make([]result, len(n.Images))
		for i, img := range n.Images {
			results[i] = result{img: img, t: &tally{}, pull: &Pull{Ref: img.Ref, Endpoint: "preloaded"}}
		}
		return r.summarize(results, time.Since(start))
	}
	results := make([]result, len(n.Images))
	sem := make(chan struct{}, o.Parallel)
	var wg sync.WaitGroup
	for i, img := range n.Images {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i] = r.pullImage(ctx, img)
		})
	}
	wg.Wait()
	return r.summarize(results, time.Since(start))
}

type runner struct {
	o              Options
	node           *Node
	mirror, direct *http.Client
}

type result struct {
	img       Image
	pull      *Pull
	failure   *Failure
	fallbacks []Fallback
	t         *tally
}

func (r *runner) pullImage(ctx context.Context, img Image) result {
	res := result{img: img, t: &tally{}}
	start := time.Now()
	h := &hosts{img: img, arch: r.o.Arch, t: res.t, retryDelay: r.o.RetryDelay}
	m, mirrored := r.node.MirrorFor(img.Registry)
	for _, ep := range m.Endpoints {
		f := &fetcher{client: r.mirror, idle: r.o.IdleTimeout, base: ep.base, ns: img.Registry, t: res.t}
		h.list = append(h.list, host{url: ep.URL, f: f})
	}
	if !mirrored || !m.SkipFallback {
		reg := registryURL(img.Registry, r.o.Fallback)
		base, err := endpointBase(reg, false)
		if err != nil {
			res.failure = &Failure{Ref: img.Ref, Registry: img.Registry, Endpoints: []string{reg},
				Error: fmt.Sprintf("pulling %s: the registry's own URL %q: %v", img.Ref, reg, err)}
			return res
		}
		f := &fetcher{client: r.direct, idle: r.o.DirectTimeout, base: base, t: res.t}
		h.list = append(h.list, host{url: reg, registry: true, f: f})
	}
	if !mirrored {
		// Offline, a registry without a mirror can only fail: bound it.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.o.DirectTimeout)
		defer cancel()
		fmt.Fprintf(r.o.Log, "pulling %s directly from %s: registry %s has no mirror\n", img.Ref, h.list[0].url, img.Registry)
	} else {
		fmt.Fprintf(r.o.Log, "pulling %s from mirror %s\n", img.Ref, m.Endpoints[0].URL)
	}
	digest, served, err := h.pull(ctx, img)
	res.fallbacks = h.fallbacks
	for _, fb := range h.fallbacks {
		fmt.Fprintf(r.o.Log, "FALLBACK %s: %s from the registry itself at %s after %d mirror endpoint(s) failed\n", fb.Ref, fb.Step, fb.Endpoint, len(fb.Failed))
	}
	if err == nil {
		t := snapshot(res.t)
		res.pull = &Pull{Ref: img.Ref, Digest: digest, Endpoint: served, Blobs: t.blobs,
			Requests: t.requests, Bytes: t.bytes, Seconds: time.Since(start).Seconds()}
		fmt.Fprintf(r.o.Log, "pulled %s %s: %d blobs, %d bytes, %.2fs\n", img.Ref, digest, t.blobs, t.bytes, res.pull.Seconds)
		return res
	}
	tried := make([]string, 0, len(h.list))
	for _, hh := range h.list {
		tried = append(tried, hh.url)
	}
	res.failure = &Failure{Ref: img.Ref, Registry: img.Registry, Endpoints: tried, Error: fmt.Sprintf("pulling %s: %v", img.Ref, err)}
	if !mirrored {
		res.failure.Error = fmt.Sprintf("pulling %s: registry %s has no mirror in the machine config, and pulling directly from %s failed after %.1fs (limit %s): %v",
			img.Ref, img.Registry, h.list[0].url, time.Since(start).Seconds(), r.o.DirectTimeout, err)
	}
	fmt.Fprintf(r.o.Log, "FAILED %s\n", res.failure.Error)
	return res
}

func snapshot(t *tally) *tally {
	t.mu.Lock()
	defer t.mu.Unlock()
	return &tally{requests: t.requests, bytes: t.bytes, blobs: t.blobs}
}

func (r *runner) summarize(results []result, took time.Duration) Summary {
	host := r.node.Hostname
	if host == "" {
		host = r.o.Hostname
	}
	s := Summary{
		TalosVersion: r.o.TalosVersion, Hostname: host, MachineType: r.node.MachineType,
		Wanted: len(results), Seconds: took.Seconds(),
		Registries: map[string]RegistrySummary{}, Pulls: []Pull{}, Failures: []Failure{}, Fallbacks: []Fallback{},
	}
	for _, res := range results {
		s.Fallbacks = append(s.Fallbacks, res.fallbacks...)
		t := snapshot(res.t)
		reg := s.Registries[res.img.Registry]
		if reg.Mirrors == nil {
			if m, ok := r.node.MirrorFor(res.img.Registry); ok {
				for _, ep := range m.Endpoints {
					reg.Mirrors = append(reg.Mirrors, ep.URL)
				}
			}
		}
		reg.Requests += t.requests
		reg.Bytes += t.bytes
		s.Requests += t.requests
		s.Bytes += t.bytes
		if res.pull != nil {
			reg.Images++
			s.Images++
			s.Pulls = append(s.Pulls, *res.pull)
		} else {
			reg.Failed++
			s.Failures = append(s.Failures, *res.failure)
		}
		s.Registries[res.img.Registry] = reg
	}
	return s
}

func newTransport(headerTimeout time.Duration) *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: headerTimeout,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
}
