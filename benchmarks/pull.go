package benchmarks

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/constants"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
	"github.com/pullthrough/pullthrough/fixtures"
	"github.com/pullthrough/pullthrough/internal/standin"
)

// benchEnv is a benchmark's world: the fixture upstreams, started once.
type benchEnv struct {
	benchKnobs benchKnobs
	Upstreams  *fixtures.Upstreams

	mu    sync.Mutex
	nodes map[string]*standin.Node // by mirrors: making a config makes RSA keys
}

// newBenchEnv starts the upstreams for k and closes them when tb ends.
func newBenchEnv(tb testing.TB, k benchKnobs) *benchEnv {
	tb.Helper()
	if err := k.validate(); err != nil {
		tb.Fatal(err)
	}
	return &benchEnv{benchKnobs: k, Upstreams: fixtures.NewTalosUpstreams(tb, k.TalosVersion, k.upstreamOptions()...)}
}

// CacheUpstreams are cachetest upstreams for the fixture registries.
func (e *benchEnv) CacheUpstreams() []cache.Upstream {
	var out []cache.Upstream
	for _, u := range e.Upstreams.Upstreams() {
		out = append(out, cache.Upstream{Host: u.Host(), URL: u.URL()})
	}
	return out
}

// NewCaches starts an empty cache set in front of the upstreams.
func (e *benchEnv) NewCaches(tb testing.TB, opts ...cache.Option) *cache.Set {
	tb.Helper()
	return cachetest.New(tb, append([]cache.Option{cache.WithUpstreams(e.CacheUpstreams()...)}, opts...)...)
}

// StartCaches starts an empty cache set in its own temporary directory, for
// loops where a test's TempDir would keep every iteration's content until
// the end; stop closes the set and removes the directory.
func (e *benchEnv) StartCaches(ctx context.Context, opts ...cache.Option) (set *cache.Set, stop func(), err error) {
	dir, err := os.MkdirTemp("", "pullthrough-bench-")
	if err != nil {
		return nil, nil, err
	}
	set, err = cache.Start(ctx, append([]cache.Option{cache.WithUpstreams(e.CacheUpstreams()...), cache.WithStorageDir(dir)}, opts...)...)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	// The node's config is made now, outside any timing: it makes RSA keys.
	if m, merr := set.Mirrors("127.0.0.1"); merr == nil {
		_, err = e.node(m)
	}
	return set, func() { set.Close(); os.RemoveAll(dir) }, err
}

// result is one measured pull or boot.
type result struct {
	Seconds          float64
	UpstreamBytes    int64
	UpstreamRequests int64
	// UpstreamContentBytes is the manifest and blob bytes among
	// UpstreamBytes (no tokens, no error bodies).
	UpstreamContentBytes int64
	// UpstreamManifestGETs is what Docker Hub counts against its pull limit.
	UpstreamManifestGETs int64
	Images               int
	// A boot's phases (provisioners.Timings), in seconds, and the CPU this
	// process (the caches serving the nodes) used while the nodes pulled.
	ConfigS, CreateS, ReadyS, ReadyCPUS float64
}

// PullThrough pulls the node image set as a node would, through the caches
// at their loopback endpoints, and counts what reached the upstreams.
func (e *benchEnv) PullThrough(ctx context.Context, set *cache.Set) (result, error) {
	mirrors, err := set.Mirrors("127.0.0.1")
	if err != nil {
		return result{}, err
	}
	return e.pull(ctx, mirrors)
}

// PullDirect pulls the same set straight from the upstreams, the baseline.
func (e *benchEnv) PullDirect(ctx context.Context) (result, error) {
	return e.pull(ctx, e.Upstreams.Origins())
}

// PullMirrors pulls the node image set through the given mirrors.
func (e *benchEnv) PullMirrors(ctx context.Context, mirrors map[string]string) (result, error) {
	return e.pull(ctx, mirrors)
}

func (e *benchEnv) pull(ctx context.Context, mirrors map[string]string) (result, error) {
	node, err := e.node(mirrors)
	if err != nil {
		return result{}, err
	}
	before := e.Upstreams.Total()
	s := standin.Run(ctx, node, standin.Options{TalosVersion: e.benchKnobs.TalosVersion, Log: io.Discard})
	d := e.Upstreams.Total().Sub(before)
	r := result{Seconds: s.Seconds, UpstreamBytes: d.BytesSent, UpstreamRequests: d.Requests(), UpstreamContentBytes: d.ContentBytes,
		UpstreamManifestGETs: d.ManifestGET, Images: s.Images}
	if len(s.Failures) > 0 {
		return r, fmt.Errorf("pulling %s: %s", s.Failures[0].Ref, s.Failures[0].Error)
	}
	if s.Images != s.Wanted {
		return r, fmt.Errorf("pulled %d of %d images", s.Images, s.Wanted)
	}
	return r, nil
}

func (e *benchEnv) node(mirrors map[string]string) (*standin.Node, error) {
	key := fmt.Sprint(mirrors) // fmt sorts map keys
	e.mu.Lock()
	defer e.mu.Unlock()
	if n, ok := e.nodes[key]; ok {
		return n, nil
	}
	n, err := nodeFor(e.benchKnobs.TalosVersion, mirrors)
	if err != nil {
		return nil, err
	}
	if e.nodes == nil {
		e.nodes = map[string]*standin.Node{}
	}
	e.nodes[key] = n
	return n, nil
}

var (
	secretsOnce sync.Once
	secretsB    *secrets.Bundle
	secretsErr  error
)

// benchSecrets is one secrets bundle for every config the benchmarks make:
// its RSA and Ed25519 keys take seconds on 2 cores, and would otherwise be
// made again for each new set of mirrors, inside what a benchmark times.
func benchSecrets(contract *config.VersionContract) (*secrets.Bundle, error) {
	secretsOnce.Do(func() {
		secretsB, secretsErr = secrets.NewBundle(secrets.NewFixedClock(time.Now()), contract)
	})
	return secretsB, secretsErr
}

// nodeFor makes a control plane's machine config with these mirrors, with
// Talos's generator, and loads it as the stand-in node does.
func nodeFor(version string, mirrors map[string]string) (*standin.Node, error) {
	contract, err := config.ParseContractFromVersion(version)
	if err != nil {
		return nil, fmt.Errorf("talos version %q: %w", version, err)
	}
	bundle, err := benchSecrets(contract)
	if err != nil {
		return nil, err
	}
	opts := []generate.Option{generate.WithVersionContract(contract), generate.WithSecretsBundle(bundle)}
	hosts := make([]string, 0, len(mirrors))
	for h := range mirrors {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	for _, h := range hosts {
		opts = append(opts, generate.WithRegistryMirror(h, mirrors[h]))
	}
	in, err := generate.NewInput("bench", "https://10.5.0.2:6443", constants.DefaultKubernetesVersion, opts...)
	if err != nil {
		return nil, fmt.Errorf("generating a node config: %w", err)
	}
	cfg, err := in.Config(machine.TypeControlPlane)
	if err != nil {
		return nil, fmt.Errorf("generating a node config: %w", err)
	}
	b, err := cfg.EncodeBytes()
	if err != nil {
		return nil, err
	}
	return standin.Load(b)
}
