package standin_test

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
	"github.com/pullthrough/pullthrough/internal/standin"
)

// seedAll starts one upstream per registry of the boot images and stores
// each image there under its exact repository and tag. pause is an index,
// as it is on registry.k8s.io.
func seedAll(t *testing.T) (map[string]*upstream, map[string]expect) {
	t.Helper()
	ups := map[string]*upstream{}
	want := map[string]expect{}
	for i, img := range bootImages(t) {
		u := ups[img.Registry]
		if u == nil {
			u = newUpstream(t, img.Registry)
			ups[img.Registry] = u
		}
		want[img.Ref] = u.push(t, img, int64(i*10+1), img.Repository == "pause")
	}
	for _, u := range ups {
		u.bytes.Store(0) // count pulls only, not what the pushes were answered
	}
	return ups, want
}

func TestPullsTheBootSetThroughCachesAsServed(t *testing.T) {
	ups, want := seedAll(t)
	var cacheUps []cache.Upstream
	for host, u := range ups {
		cacheUps = append(cacheUps, cache.Upstream{Host: host, URL: u.URL})
	}
	set := cachetest.New(t, cache.WithUpstreams(cacheUps...), cache.WithListenAddrs("127.0.0.1"))
	mirrors := map[string][]string{}
	for _, c := range set.Caches() {
		mirrors[c.Host()] = []string{c.Endpoint()}
	}
	n, err := standin.LoadUserdata(userdata(genConfig(t, mirrors)))
	require.NoError(t, err)

	var log syncBuffer
	s := standin.Run(t.Context(), n, standin.Options{Log: &log, Arch: "amd64", TalosVersion: "v1.13.0", Hostname: "node-1"})

	require.Empty(t, s.Failures, "log:\n%s", log.String())
	assert.Equal(t, 10, s.Wanted)
	assert.Equal(t, 10, s.Images)
	assert.Equal(t, "v1.13.0", s.TalosVersion)
	assert.Equal(t, "node-1", s.Hostname)
	var wantBytes, wantRequests int64
	for _, e := range want {
		wantBytes += e.bytes
		wantRequests += e.requests
	}
	for _, p := range s.Pulls {
		e := want[p.Ref]
		assert.Equal(t, e.digest, p.Digest, p.Ref)
		assert.Equal(t, e.bytes, p.Bytes, p.Ref)
		assert.Equal(t, e.requests, p.Requests, p.Ref)
		assert.Equal(t, int(e.requests)-2-boolInt(p.Ref == "registry.k8s.io/pause:3.10.1"), p.Blobs, p.Ref)
	}
	assert.Equal(t, wantBytes, s.Bytes)
	assert.Equal(t, wantRequests, s.Requests)
	assert.Equal(t, 8, s.Registries["registry.k8s.io"].Images)
	assert.Equal(t, 2, s.Registries["ghcr.io"].Images)
	assert.Equal(t, []string{set.Cache("ghcr.io").Endpoint()}, s.Registries["ghcr.io"].Mirrors)

	// What the node counted is what the caches served, and on a cold cache
	// what the upstreams sent: each manifest and blob crossed once.
	total := set.Total()
	assert.Equal(t, s.Requests, total.Requests, "cache requests")
	assert.Equal(t, s.Bytes, total.ServedBytes, "cache served bytes")
	var upBytes int64
	for host, u := range ups {
		upBytes += u.bytes.Load()
		assert.Equal(t, s.Registries[host].Bytes, u.bytes.Load(), "upstream %s bytes", host)
	}
	assert.Equal(t, s.Bytes, upBytes)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestCorruptBlobIsDetectedAndNamed(t *testing.T) {
	ups, want := seedAll(t)
	k8s := ups["registry.k8s.io"]
	bad := want["registry.k8s.io/kube-proxy:v1.36.0"].layers[1]
	k8s.mu.Lock()
	k8s.corrupt[bad] = true
	k8s.mu.Unlock()

	n, err := standin.LoadUserdata(userdata(withSkipFallback(genConfig(t, map[string][]string{
		"registry.k8s.io": {k8s.URL}, "ghcr.io": {ups["ghcr.io"].URL},
	}))))
	require.NoError(t, err)
	s := standin.Run(t.Context(), n, standin.Options{Arch: "amd64"})

	assert.Equal(t, 9, s.Images)
	require.Len(t, s.Failures, 1)
	f := s.Failures[0]
	assert.Equal(t, "registry.k8s.io/kube-proxy:v1.36.0", f.Ref)
	assert.Equal(t, []string{k8s.URL}, f.Endpoints)
	assert.Contains(t, f.Error, standin.ErrDigestMismatch.Error())
	assert.Contains(t, f.Error, bad, "the error names the blob")
	assert.Contains(t, f.Error, k8s.URL, "the error names the endpoint")
	assert.Contains(t, f.Error, "ns=registry.k8s.io", "requests to a mirror carry ?ns=")
	assert.Equal(t, 1, s.Registries["registry.k8s.io"].Failed)
}

func TestRegistryWithoutMirrorFailsFast(t *testing.T) {
	ups, _ := seedAll(t)
	// A direct pull goes to https://ghcr.io. Nothing may leave this
	// machine, so the dialer sends it to a listener that accepts and never
	// answers: the worst case, a connection that hangs.
	hung := hungListener(t)
	var mu sync.Mutex
	var dialed []string
	direct := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, addr)
		mu.Unlock()
		return (&net.Dialer{}).DialContext(ctx, "tcp", hung)
	}}
	t.Cleanup(direct.CloseIdleConnections)

	n, err := standin.LoadUserdata(userdata(genConfig(t, map[string][]string{"registry.k8s.io": {ups["registry.k8s.io"].URL}})))
	require.NoError(t, err)
	start := time.Now()
	s := standin.Run(t.Context(), n, standin.Options{DirectTransport: direct, DirectTimeout: time.Second, Parallel: 10})
	took := time.Since(start)

	assert.Less(t, took, 5*time.Second, "a hung registry without mirror must not hold up the boot")
	assert.Equal(t, 8, s.Images)
	require.Len(t, s.Failures, 2)
	for _, f := range s.Failures {
		assert.Equal(t, "ghcr.io", f.Registry)
		assert.Equal(t, []string{"https://ghcr.io"}, f.Endpoints)
		assert.Contains(t, f.Error, "registry ghcr.io has no mirror")
		assert.Contains(t, f.Error, f.Ref)
	}
	mu.Lock()
	assert.Contains(t, dialed, "ghcr.io:443")
	mu.Unlock()
	assert.Empty(t, s.Registries["ghcr.io"].Mirrors)
}

func TestFailingMirrorEndpointIsNamedAndTheNextOneServes(t *testing.T) {
	ups, _ := seedAll(t)
	down := newUpstream(t, "down")
	down.mu.Lock()
	down.status = http.StatusServiceUnavailable
	down.mu.Unlock()

	n, err := standin.LoadUserdata(userdata(withSkipFallback(genConfig(t, map[string][]string{
		"registry.k8s.io": {down.URL, ups["registry.k8s.io"].URL},
		"ghcr.io":         {down.URL},
	}))))
	require.NoError(t, err)
	s := standin.Run(t.Context(), n, standin.Options{Arch: "amd64"})

	assert.Equal(t, 8, s.Images, "registry.k8s.io falls through to its second endpoint")
	for _, p := range s.Pulls {
		assert.Equal(t, ups["registry.k8s.io"].URL, p.Endpoint)
	}
	require.Len(t, s.Failures, 2)
	for _, f := range s.Failures {
		assert.Equal(t, []string{down.URL}, f.Endpoints)
		assert.Contains(t, f.Error, "mirror endpoint "+down.URL)
		assert.Contains(t, f.Error, "503")
		assert.NotContains(t, f.Error, "registry itself", "skipFallback: no fallback")
		assert.Contains(t, f.Error, strings.TrimPrefix(f.Ref, "ghcr.io/"))
	}
}

func TestHungMirrorIsAFailureNotAHang(t *testing.T) {
	hung := hungListener(t)
	ep := "http://" + hung
	n, err := standin.LoadUserdata(userdata(withSkipFallback(genConfig(t, map[string][]string{"*": {ep}}))))
	require.NoError(t, err)

	start := time.Now()
	s := standin.Run(t.Context(), n, standin.Options{HeaderTimeout: 500 * time.Millisecond, Parallel: 10})
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.Zero(t, s.Images)
	require.Len(t, s.Failures, 10)
	assert.Contains(t, s.Failures[0].Error, ep)
	assert.Contains(t, s.Failures[0].Error, "timeout")
}

// hungListener returns the address of a listener that accepts connections
// and never answers on them.
func hungListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

func TestMainWritesTheSummaryAndStaysUpUntilStopped(t *testing.T) {
	ups, _ := seedAll(t)
	env := map[string]string{
		"USERDATA": userdata(genConfig(t, map[string][]string{
			"registry.k8s.io": {ups["registry.k8s.io"].URL}, "ghcr.io": {ups["ghcr.io"].URL},
		})),
		standin.EnvTalosVersion: "v1.13.0",
	}
	ctx, stop := context.WithCancel(t.Context())
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- standin.Main(ctx, func(k string) string { return env[k] }, &stdout, &stderr, standin.Options{Hostname: "cp-1"})
	}()

	require.Eventually(t, func() bool {
		_, ok := standin.FindLine(stdout.String(), standin.SummaryPrefix)
		return ok
	}, 30*time.Second, 20*time.Millisecond)
	select {
	case code := <-done:
		t.Fatalf("Main returned %d before it was stopped", code)
	case <-time.After(100 * time.Millisecond):
	}
	stop()
	select {
	case code := <-done:
		assert.Zero(t, code)
	case <-time.After(10 * time.Second):
		t.Fatal("Main did not return after its context ended")
	}
	assert.Contains(t, stdout.String(), "pulled registry.k8s.io/pause:3.10.1 ")
	line, _ := standin.FindLine(stdout.String(), standin.SummaryPrefix)
	assert.Contains(t, line, `"talosVersion":"v1.13.0"`)
	assert.Contains(t, line, `"hostname":"cp-1"`)
	assert.Contains(t, line, `"images":10`)
	assert.Empty(t, stderr.String())
}
