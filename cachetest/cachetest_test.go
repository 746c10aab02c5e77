package cachetest_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pullthrough/pullthrough/internal/testnet"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		runCacheHelper()
		return
	}
	// Idle client connections are the clients' (these tests' and
	// distribution's, both on http.DefaultTransport), not a cache's: drop
	// them before counting goroutines, so that what is left would be a
	// cache's server, fetch or gateway.
	code := m.Run()
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func TestPullThroughServesUpstreamDigestsAndWarmPullFetchesNothing(t *testing.T) {
	up := newTestUpstream(t)
	img := up.push(t, "library/app:v1", 1)
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")))
	c := set.Cache("registry.test")
	ctx := testCtx(t)

	got, err := pull(ctx, c, "library/app:v1")
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, img), got)
	assert.EqualValues(t, 4, up.blobGETs.Load(), "cold pull: 3 layers and a config from upstream")
	assert.EqualValues(t, 1, up.manifestReqs.Load(), "cold pull: one manifest GET, no HEAD before it")
	cold := c.Stats()
	assert.EqualValues(t, 5, cold.Misses, "manifest, config and three layers")
	assert.Positive(t, cold.UpstreamBytes)

	c.ResetStats()
	up.blobGETs.Store(0)
	up.total.Store(0)
	up.manifestReqs.Store(0)
	got, err = pull(ctx, c, "library/app:v1")
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, img), got)
	assert.Zero(t, up.blobGETs.Load(), "warm pull made blob requests upstream")
	assert.Zero(t, up.total.Load(), "warm pull within the tag TTL asked upstream")
	assert.Zero(t, up.manifestReqs.Load(), "warm pull within the tag TTL asked for the manifest")
	warm := c.Stats()
	assert.Zero(t, warm.UpstreamRequests)
	assert.Zero(t, warm.Misses)
	assert.EqualValues(t, 5, warm.Hits, "manifest, config and three layers")
	assert.Positive(t, warm.ServedBytes)
}

func TestCloseThenStartOnSameStorageServesWarm(t *testing.T) {
	up := newTestUpstream(t)
	img := up.push(t, "app:v1", 2)
	dir := t.TempDir()
	ctx := testCtx(t)
	opts := []cache.Option{cache.WithUpstreams(up.upstream("registry.test")), cache.WithStorageDir(dir)}

	first, err := cache.Start(ctx, opts...)
	require.NoError(t, err)
	_, err = pull(ctx, first.Cache("registry.test"), "app:v1")
	require.NoError(t, err)
	require.NoError(t, first.Close())

	up.blobGETs.Store(0)
	up.total.Store(0)
	second, err := cache.Start(ctx, opts...)
	require.NoError(t, err)
	defer second.Close()
	got, err := pull(ctx, second.Cache("registry.test"), "app:v1")
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, img), got)
	assert.Zero(t, up.total.Load(), "a restarted cache asked upstream (tag TTL is kept in storage)")
}

func TestSevenCachesStartInParallel(t *testing.T) {
	up := newTestUpstream(t)
	up.push(t, "app:v1", 3)
	var ups []cache.Upstream
	for _, d := range cache.DefaultUpstreams() {
		ups = append(ups, up.upstream(d.Host))
	}
	set := cachetest.New(t, cache.WithUpstreams(ups...))
	require.Len(t, set.Caches(), 7)
	ctx := testCtx(t)
	var g errgroup.Group
	for _, c := range set.Caches() {
		g.Go(func() error { _, err := pull(ctx, c, "app:v1"); return err })
	}
	require.NoError(t, g.Wait())
	ports := map[int]bool{}
	for _, c := range set.Caches() {
		ports[c.Port()] = true
		assert.EqualValues(t, 5, c.Stats().Misses, c.Host())
	}
	assert.Len(t, ports, 7, "each cache has its own port")
}

// A start that fails on one taken port releases the others it bound. The
// taken port is held by this test; the others are drawn, and drawn again
// when one of them turns out to be taken too.
func TestFailingStartLeavesNothingRunning(t *testing.T) {
	up := newTestUpstream(t)
	for range 10 {
		var ports []int
		for range 7 {
			ports = append(ports, testnet.DrawBase(1))
		}
		held, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(ports[3]))
		if err != nil {
			continue
		}
		var ups []cache.Upstream
		for i, d := range cache.DefaultUpstreams() {
			u := up.upstream(d.Host)
			u.Port = ports[i]
			ups = append(ups, u)
		}
		_, err = cache.Start(testCtx(t), cache.WithUpstreams(ups...), cache.WithFixedPorts(),
			cache.WithListenAddrs("127.0.0.1"), cache.WithStorageDir(t.TempDir()))
		if errors.Is(err, cache.ErrPortInUse) && !strings.Contains(err.Error(), strconv.Itoa(ports[3])) {
			held.Close() // another port of the draw was taken: draw again
			continue
		}
		require.ErrorIs(t, err, cache.ErrPortInUse)
		assert.ErrorContains(t, err, "gcr.io")
		assert.ErrorContains(t, err, strconv.Itoa(ports[3]))
		held.Close()
		for i, p := range ports {
			if i == 3 {
				continue
			}
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			require.NoError(t, err, "port %d is still held after a failed start", p)
			l.Close()
		}
		// goleak in TestMain proves no cache goroutine is left.
		return
	}
	t.Fatal("no draw of seven free ports in ten")
}

func TestFixedPortHeldByOwnCacheIsReused(t *testing.T) {
	up := newTestUpstream(t)
	img := up.push(t, "app:v1", 4)
	u := up.upstream("registry.test")
	first := startFixedPort(t, u, cache.WithStorageDir(t.TempDir()))
	u.Port = first.Cache("registry.test").Port()
	second := cachetest.New(t, cache.WithUpstreams(u), cache.WithFixedPorts(), cache.WithListenAddrs("127.0.0.1"))
	assert.False(t, first.Cache("registry.test").Reused())
	assert.True(t, second.Cache("registry.test").Reused())
	got, err := pull(testCtx(t), second.Cache("registry.test"), "app:v1")
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, img), got)
	assert.Equal(t, first.Cache("registry.test").StorageDir(), second.Cache("registry.test").StorageDir(),
		"the reused cache reports the storage actually in use")
	assert.EqualValues(t, 5, second.Cache("registry.test").Stats().Misses, "the reused cache reports what the serving one did")

	// The owner goes away: the second set takes its port over, warm.
	require.NoError(t, first.Close())
	require.Eventually(t, func() bool { return !second.Cache("registry.test").Reused() }, 10*time.Second, 20*time.Millisecond)
	up.blobGETs.Store(0)
	got, err = pull(testCtx(t), second.Cache("registry.test"), "app:v1")
	require.NoError(t, err, "pulls keep working after the owner exits")
	assert.Equal(t, digestOf(t, img), got)
	assert.Zero(t, up.blobGETs.Load(), "the taken-over cache serves the shared storage warm")

	other := up.upstream("other.test")
	other.Port = u.Port
	_, err = cache.Start(testCtx(t), cache.WithUpstreams(other), cache.WithFixedPorts(),
		cache.WithListenAddrs("127.0.0.1"), cache.WithStorageDir(t.TempDir()))
	require.ErrorIs(t, err, cache.ErrPortInUse)
	assert.ErrorContains(t, err, "pullthrough cache for registry.test")
}

func TestWarmBlobRangeAndHead(t *testing.T) {
	up := newTestUpstream(t)
	img := up.push(t, "app:v1", 16)
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")))
	c := set.Cache("registry.test")
	_, err := pull(testCtx(t), c, "app:v1")
	require.NoError(t, err)
	layers, err := img.Layers()
	require.NoError(t, err)
	d, err := layers[0].Digest()
	require.NoError(t, err)
	rc, err := layers[0].Compressed()
	require.NoError(t, err)
	whole, err := io.ReadAll(rc)
	require.NoError(t, err)
	url := c.Endpoint() + "/v2/app/blobs/" + d.String()

	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Range", "bytes=10-19")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	part, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusPartialContent, resp.StatusCode)
	assert.Equal(t, whole[10:20], part)

	resp, err = http.Head(url)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, int64(len(whole)), resp.ContentLength)
	assert.Equal(t, d.String(), resp.Header.Get("Docker-Content-Digest"))
}
