package provisioners_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pullthrough/pullthrough/internal/testnet"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/moby/moby/client"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
	"github.com/pullthrough/pullthrough/fixtures"
	"github.com/pullthrough/pullthrough/internal/dockerenv"
	"github.com/pullthrough/pullthrough/provisioners"
)

// logBuffer collects the provisioner's output for assertions and failures.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type standinWorld struct {
	cli       *client.Client
	upstreams *fixtures.Upstreams
	caches    *cache.Set
	image     string
}

func newStandinWorld(t *testing.T) standinWorld {
	t.Helper()
	cli := dockerenv.Require(t)
	ups := fixtures.NewTalosUpstreams(t, provisioners.DefaultTalosVersion, fixtures.WithScale(0.002), fixtures.Unthrottled())
	cu := cacheUpstreams(ups)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	img, err := fixtures.BuildStandinImage(ctx, cli, provisioners.DefaultTalosVersion, nil)
	require.NoError(t, err)
	return standinWorld{cli: cli, upstreams: ups, caches: cachetest.New(t, cache.WithUpstreams(cu...)), image: img}
}

// rejectTCPFrom makes this host refuse TCP from src (an address or CIDR),
// optionally only to some ports ("5000,5001"), with a reset, until the test
// ends: a host firewall as a user's might be. It needs iptables, which
// Docker's engine installs; without it the test skips (fails under CI=true).
func rejectTCPFrom(t *testing.T, src, ports string) {
	t.Helper()
	if _, err := exec.LookPath("iptables"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("iptables is missing (Docker's engine installs it)")
		}
		t.Skip("skipping: iptables is missing")
	}
	rule := []string{"INPUT", "-s", src, "-p", "tcp"}
	if ports != "" {
		rule = append(rule, "-m", "multiport", "--dports", ports)
	}
	rule = append(rule, "-j", "REJECT", "--reject-with", "tcp-reset")
	out, err := exec.Command("iptables", append([]string{"-I"}, rule...)...).CombinedOutput()
	require.NoError(t, err, string(out))
	t.Cleanup(func() { _ = exec.Command("iptables", append([]string{"-D"}, rule...)...).Run() })
}

// bridgeUpstreams are the Talos fixtures upstreams listening on docker0's
// address, where containers reach them (a cache container, or a node
// falling back to "the registry itself"), and the same as cache upstreams.
func bridgeUpstreams(t *testing.T) (*fixtures.Upstreams, []cache.Upstream) {
	t.Helper()
	bridge, err := cache.DockerBridgeIP()
	require.NoError(t, err)
	ups := fixtures.NewTalosUpstreams(t, provisioners.DefaultTalosVersion, fixtures.WithScale(0.002), fixtures.Unthrottled(),
		fixtures.WithListenAddress(net.JoinHostPort(bridge, "0")))
	return ups, cacheUpstreams(ups)
}

// cacheUpstreams are the fixtures upstreams as the caches' upstreams.
func cacheUpstreams(ups *fixtures.Upstreams) []cache.Upstream {
	var cu []cache.Upstream
	for _, u := range ups.Upstreams() {
		cu = append(cu, cache.Upstream{Host: u.Host(), URL: u.URL()})
	}
	return cu
}

// clusterSpec gives each test a name and a network of its own (a /24 no
// other test process holds, testnet.Subnet).
func clusterSpec(t *testing.T, suffix, image string) provisioners.Spec {
	return provisioners.Spec{
		Name:          fmt.Sprintf("pt-prov-%d-%s", os.Getpid(), suffix),
		ControlPlanes: 1, Workers: 1,
		Image:    image,
		CIDR:     testnet.Subnet(t, "10.79").String(),
		StateDir: t.TempDir(),
	}
}

func TestDockerClusterOfStandinsPullsThroughTheCaches(t *testing.T) {
	w := newStandinWorld(t)
	var log logBuffer
	spec := clusterSpec(t, "pull", w.image)
	ready := fixtures.StandinReady()
	c := provisioners.New(t, spec, provisioners.WithCaches(w.caches), provisioners.WithLogger(log.logger()), provisioners.WithReadiness(ready))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	require.NoError(t, c.Wait(ctx), "provisioner log:\n%s", log.String())

	// Every node pulled the whole set through the caches.
	sums := ready.Summaries()
	require.Len(t, sums, 2)
	var nodeBytes, nodeRequests int64
	for node, s := range sums {
		assert.Equal(t, s.Wanted, s.Images, node)
		assert.Equal(t, w.upstreams.PullSize(), s.Bytes, node)
		nodeBytes += s.Bytes
		nodeRequests += s.Requests
	}
	total := w.caches.Total()
	assert.Equal(t, nodeBytes, total.ServedBytes, "what nodes received is what the caches served")
	assert.Equal(t, nodeRequests, total.Requests)
	// Two nodes booting at once on cold caches: each blob went upstream once.
	up := w.upstreams.Total()
	assert.Equal(t, w.upstreams.UniquePullSize(), up.ContentBytes, "each blob once, shared layers once")
	assert.Equal(t, up.BytesSent, total.UpstreamBytes, "cache and upstream counters agree")
	assert.Equal(t, up.Requests(), total.UpstreamRequests, "cache and upstream counters agree")

	// The config each container got in USERDATA names every cache at docker0.
	bridge, err := cache.DockerBridgeIP()
	require.NoError(t, err)
	for _, n := range c.Nodes() {
		info, err := w.cli.ContainerInspect(ctx, n.ID, client.ContainerInspectOptions{})
		require.NoError(t, err)
		mirrors := userdataMirrors(t, info.Container.Config.Env)
		for _, cache := range w.caches.Caches() {
			assert.Equal(t, []string{fmt.Sprintf("http://%s:%d", bridge, cache.Port())}, mirrors[cache.Host()], "%s: %s", n.Name, cache.Host())
		}
	}
	tm := c.Timings()
	assert.Positive(t, tm.Create)
	assert.Positive(t, tm.Ready)

	// Destroy leaves no container, network or volume behind.
	require.NoError(t, c.Destroy(ctx))
	assertNothingLeft(t, w.cli, spec)
}

func userdataMirrors(t *testing.T, env []string) map[string][]string {
	t.Helper()
	for _, e := range env {
		v, ok := strings.CutPrefix(e, "USERDATA=")
		if !ok {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(v)
		require.NoError(t, err)
		cfg, err := configloader.NewFromBytes(raw)
		require.NoError(t, err)
		out := map[string][]string{}
		for host, m := range cfg.RegistryMirrorConfigs() {
			for _, ep := range m.Endpoints() {
				out[host] = append(out[host], ep.Endpoint())
			}
			sort.Strings(out[host])
		}
		return out
	}
	t.Fatal("node container has no USERDATA")
	return nil
}

func assertNothingLeft(t *testing.T, cli *client.Client, spec provisioners.Spec) {
	t.Helper()
	ctx := context.Background()
	ctrs, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true,
		Filters: make(client.Filters).Add("label", "talos.cluster.name="+spec.Name)})
	require.NoError(t, err)
	assert.Empty(t, ctrs.Items, "containers left")
	_, err = cli.NetworkInspect(ctx, spec.Name, client.NetworkInspectOptions{})
	assert.Error(t, err, "network %q left", spec.Name)
	vols, err := cli.VolumeList(ctx, client.VolumeListOptions{Filters: make(client.Filters).Add("dangling", "true")})
	require.NoError(t, err)
	for _, v := range vols.Items {
		assert.NotContains(t, v.Labels["talos.cluster.name"], spec.Name, "volume %s left", v.Name)
	}
	_, err = os.Stat(spec.StateDir + "/" + spec.Name)
	assert.True(t, os.IsNotExist(err), "state directory left")
}

func TestLeftoversOfACrashedRunAreRemoved(t *testing.T) {
	w := newStandinWorld(t)
	spec := clusterSpec(t, "crash", w.image)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// A run that "crashed": created, never destroyed.
	first, err := provisioners.Create(ctx, spec, provisioners.WithCaches(w.caches), provisioners.WithReadiness(fixtures.StandinReady()))
	require.NoError(t, err)
	require.NotNil(t, first)
	t.Cleanup(func() { // in case the test fails before the second run removes them
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		dockerenv.RemoveContainersByLabel(ctx, w.cli, "talos.cluster.name", spec.Name)
		dockerenv.RemoveNetworksByLabel(ctx, w.cli, "talos.cluster.name", spec.Name)
	})

	var log logBuffer
	printed := captureStdio(t) // Talos's docker Destroy would print "destroying network"
	second := provisioners.New(t, spec, provisioners.WithCaches(w.caches), provisioners.WithLogger(log.logger()), provisioners.WithReadiness(fixtures.StandinReady()))
	assert.Contains(t, log.String(), "left by an earlier run")
	require.NoError(t, second.Wait(ctx), log.String())
	require.NoError(t, second.Destroy(ctx))
	assert.Empty(t, printed(), "removing leftovers, creating and destroying wrote to stderr or stdout")
	assertNothingLeft(t, w.cli, spec)
}

func TestMissingStandinImageIsNamed(t *testing.T) {
	dockerenv.Require(t)
	spec := clusterSpec(t, "noimage", fixtures.StandinRepository+":v1.13.0-missing")
	spec.TalosVersion = provisioners.DefaultTalosVersion
	_, err := provisioners.Create(context.Background(), spec)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `node image "pullthrough.local/talos-standin:v1.13.0-missing" is not on the daemon`)
}

// A strict boot with one image missing from the caches fails, and names the
// image: provisioners gives a strict set's nodes skipFallback, so the node
// does not quietly pull what the cache refuses from the registry itself.
func TestStrictBootWithAnImageMissingNamesIt(t *testing.T) {
	w := newStandinWorld(t)
	storage := t.TempDir()
	cu := cacheUpstreams(w.upstreams)
	// Fill the storage with every image but one, through online caches.
	online := cachetest.New(t, cache.WithUpstreams(cu...), cache.WithStorageDir(storage))
	var missing fixtures.Image
	for _, img := range w.upstreams.Images() {
		if img.Repository == "pause" {
			missing = img
			continue
		}
		pullIndex(t, online.Cache(img.Registry).Addr()+"/"+img.Repository+":"+img.Tag)
	}
	require.NotEmpty(t, missing.Repository)
	require.NoError(t, online.Close())

	strict := cachetest.New(t, cache.WithUpstreams(cu...), cache.WithStorageDir(storage), cache.WithMode(cache.Strict))
	w.upstreams.ResetStats()
	var log logBuffer
	c := provisioners.New(t, clusterSpec(t, "strict", w.image), provisioners.WithCaches(strict), provisioners.WithLogger(log.logger()),
		provisioners.WithReadiness(fixtures.StandinReady()))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	err := c.Wait(ctx)
	require.Error(t, err, "a strict boot with %s missing", missing.Ref())
	assert.Contains(t, err.Error(), missing.Repository+":"+missing.Tag, "the failure names the missing image")
	assert.NotContains(t, err.Error(), "https://"+missing.Registry, "the node fell back to the registry itself")
	assert.Zero(t, w.upstreams.Total().Requests(), "nothing reached the upstreams: no fallback")
}

// pullIndex reads an image through a cache: its index, every platform's
// manifest that is linux/amd64, config and layers.
func pullIndex(t *testing.T, ref string) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	require.NoError(t, err)
	img, err := remote.Image(r, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	require.NoError(t, err)
	layers, err := img.Layers()
	require.NoError(t, err)
	for _, l := range layers {
		rc, err := l.Compressed()
		require.NoError(t, err)
		_, err = io.Copy(io.Discard, rc)
		require.NoError(t, err)
		rc.Close()
	}
	_, err = img.RawConfigFile()
	require.NoError(t, err)
}
