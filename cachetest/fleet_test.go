package cachetest_test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
)

// tierUpstream is the upstream as a fleet member sees it: the fleet tier
// first, the origin last.
func tierUpstream(origin *testUpstream, tiers ...string) cache.Upstream {
	u := origin.upstream("registry.test")
	u.Tiers = tiers
	return u
}

func TestChainThroughAFleetTier(t *testing.T) {
	origin := newTestUpstream(t)
	img := origin.push(t, "app:v1", 71)
	// The fleet tier: a pullthrough cache in front of the origin.
	tier := cachetest.New(t, cache.WithUpstreams(origin.upstream("registry.test")))
	runner1 := cachetest.New(t, cache.WithUpstreams(tierUpstream(origin, tier.Cache("registry.test").Endpoint())))
	got, err := pull(testCtx(t), runner1.Cache("registry.test"), "app:v1")
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, img), got)
	eps := runner1.Cache("registry.test").Endpoints()
	require.Len(t, eps, 2)
	assert.Positive(t, eps[0].Bytes, "the tier served the pull")
	assert.Zero(t, eps[1].Bytes, "the origin was not asked")

	// A second runner, cold: the tier is warm, the origin sees nothing.
	origin.blobGETs.Store(0)
	origin.total.Store(0)
	runner2 := cachetest.New(t, cache.WithUpstreams(tierUpstream(origin, tier.Cache("registry.test").Endpoint())))
	_, err = pull(testCtx(t), runner2.Cache("registry.test"), "app:v1")
	require.NoError(t, err)
	assert.Zero(t, origin.total.Load(), "the origin was asked although the tier held everything")
}

func TestChainSkipsATierThatIsDown(t *testing.T) {
	origin := newTestUpstream(t)
	img := origin.push(t, "app:v1", 72)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	refused := "http://" + l.Addr().String()
	l.Close()
	c := cachetest.New(t, cache.WithUpstreams(tierUpstream(origin, refused))).Cache("registry.test")
	got, err := pull(testCtx(t), c, "app:v1")
	require.NoError(t, err, "a tier that refuses costs nothing but a failed connection")
	assert.Equal(t, digestOf(t, img), got)
	eps := c.Endpoints()
	assert.EqualValues(t, 1, eps[0].Requests, "the tier is skipped after its first failure")
	assert.Positive(t, eps[1].Bytes)
}

func TestChainBoundsAHungTier(t *testing.T) {
	origin := newTestUpstream(t)
	img := origin.push(t, "app:v1", 73)
	hang := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(hang); hung.Close() })
	const tierTimeout = 300 * time.Millisecond
	c := cachetest.New(t, cache.WithUpstreams(tierUpstream(origin, hung.URL)), cache.WithTierTimeout(tierTimeout)).Cache("registry.test")
	start := time.Now()
	got, err := pull(testCtx(t), c, "app:v1")
	took := time.Since(start)
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, img), got)
	assert.EqualValues(t, 1, c.Endpoints()[0].Requests, "a hung tier costs one timeout, then is skipped")
	assert.Less(t, took, 20*tierTimeout, "a hung tier's cost is bounded by the tier timeout")
}

func TestChainWithARepositoryPrefix(t *testing.T) {
	origin := newTestUpstream(t)
	img := origin.push(t, "library/app:v1", 74)
	tier := cachetest.New(t, cache.WithUpstreams(origin.upstream("registry.test")))
	// A Harbor-shaped tier: the proxy project is a path prefix.
	var sawPrefix bool
	harbor := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, ok := strings.CutPrefix(r.URL.Path, "/v2/dockerhub-proxy/")
		if !ok {
			http.NotFound(w, r)
			return
		}
		sawPrefix = true
		r.URL.Path = "/v2/" + rest
		tier.Cache("registry.test").Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(harbor.Close)
	c := cachetest.New(t, cache.WithUpstreams(tierUpstream(origin, harbor.URL+"/v2/dockerhub-proxy"))).Cache("registry.test")
	got, err := pull(testCtx(t), c, "library/app:v1")
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, img), got)
	assert.True(t, sawPrefix)
	assert.Positive(t, c.Endpoints()[0].Bytes, "the prefixed tier served")
	assert.Equal(t, strings.TrimPrefix(harbor.URL, "")+"/dockerhub-proxy", c.Endpoints()[0].Endpoint)
}

// TestChainToRegistry2 uses distribution's own registry binary, Debian's
// docker-registry (the registry:2 image's program), as the fleet tier, in
// proxy mode in front of the origin.
func TestChainToRegistry2(t *testing.T) {
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		skipUnlessCI(t, "Debian's docker-registry is not installed (scripts/fleet-up installs it): %v", err)
	}
	origin := newTestUpstream(t)
	img := origin.push(t, "app:v1", 75)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\nproxy:\n  remoteurl: %s\n", filepath.Join(dir, "data"), addr, origin.URL)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.yml"), []byte(cfg), 0o644))
	cmd := exec.Command(bin, "serve", filepath.Join(dir, "config.yml"))
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}, 10*time.Second, 20*time.Millisecond)
	c := cachetest.New(t, cache.WithUpstreams(tierUpstream(origin, "http://"+addr))).Cache("registry.test")
	got, err := pull(testCtx(t), c, "app:v1")
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, img), got)
	assert.Positive(t, c.Endpoints()[0].Bytes, "registry:2 served as the tier")
}
