package cachetest_test

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
	"github.com/pullthrough/pullthrough/internal/testnet"
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
	refused := "http://" + testnet.Refuse(t, "127.0.0.1").Addr
	c := cachetest.New(t, cache.WithUpstreams(tierUpstream(origin, refused))).Cache("registry.test")
	got, err := pull(testCtx(t), c, "app:v1")
	require.NoError(t, err, "a tier that refuses costs nothing but a failed connection")
	assert.Equal(t, digestOf(t, img), got)
	eps := c.Endpoints()
	assert.EqualValues(t, 1, eps[0].Requests, "the tier is skipped after its first failure")
	assert.Positive(t, eps[1].Bytes)
}

// A tier that accepts a request and never answers costs one tier timeout:
// the cache abandons that request (the tier sees it cancelled) and goes to
// the origin, and skips the tier after. The pull finishing at all is the
// bound: without one it would wait on the hung tier until the test's own
// deadline.
func TestChainBoundsAHungTier(t *testing.T) {
	origin := newTestUpstream(t)
	img := origin.push(t, "app:v1", 73)
	hang := make(chan struct{})
	var abandoned atomic.Int64
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
			abandoned.Add(1)
		}
	}))
	t.Cleanup(func() { close(hang); hung.Close() })
	c := cachetest.New(t, cache.WithUpstreams(tierUpstream(origin, hung.URL)), cache.WithTierTimeout(300*time.Millisecond)).Cache("registry.test")
	got, err := pull(testCtx(t), c, "app:v1")
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, img), got)
	assert.EqualValues(t, 1, c.Endpoints()[0].Requests, "a hung tier costs one timeout, then is skipped")
	require.Eventually(t, func() bool { return abandoned.Load() == 1 }, 10*time.Second, 5*time.Millisecond,
		"the request the tier never answered was abandoned")
}

// Credentials are the origin's: a tier never sees them, not on a request
// and not when it asks for them (a 401 with a Basic or Bearer challenge,
// which a cache must not answer with the origin's secret).
func TestChainNeverSendsTheOriginsCredentialsToATier(t *testing.T) {
	const user, password = "robot", "origin-only-s3cret"
	for _, challenge := range []string{"", `Basic realm="tier"`, `Bearer realm="%s/token",service="tier"`} {
		name := "healthy"
		if challenge != "" {
			name = strings.Fields(challenge)[0] + " challenge"
		}
		t.Run(name, func(t *testing.T) {
			origin := newTestUpstream(t)
			img := origin.push(t, "app:v1", 76)
			origin.set(func(u *testUpstream) { u.user, u.pass = user, password })
			// The tier: a cache of its own in front of the origin, with
			// the credentials of its own configuration.
			behind := cachetest.New(t, cache.WithUpstreams(cache.Upstream{Host: "registry.test", URL: origin.URL, Credentials: cache.BasicAuth(user, password)}))
			var mu sync.Mutex
			var seen []string
			var served atomic.Int64
			var tier *httptest.Server
			tier = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				seen = append(seen, r.Method+" "+r.URL.String()+" "+fmt.Sprint(r.Header))
				mu.Unlock()
				if challenge != "" {
					w.Header().Set("WWW-Authenticate", strings.ReplaceAll(challenge, "%s", tier.URL))
					w.WriteHeader(http.StatusUnauthorized)
					return
				}
				served.Add(1)
				behind.Cache("registry.test").Handler().ServeHTTP(w, r)
			}))
			t.Cleanup(tier.Close)
			u := tierUpstream(origin, tier.URL)
			u.Credentials = cache.BasicAuth(user, password)
			c := cachetest.New(t, cache.WithUpstreams(u)).Cache("registry.test")
			got, err := pull(testCtx(t), c, "app:v1")
			require.NoError(t, err)
			assert.Equal(t, digestOf(t, img), got)
			if challenge == "" {
				assert.Positive(t, served.Load(), "the tier served the pull")
			} else {
				assert.Positive(t, c.Endpoints()[1].Bytes, "the origin served the pull the tier refused")
			}
			mu.Lock()
			defer mu.Unlock()
			require.NotEmpty(t, seen, "the tier was asked")
			basic := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
			for _, req := range seen {
				assert.NotContains(t, req, "Authorization", "a request to the tier carried credentials")
				assert.NotContains(t, req, password)
				assert.NotContains(t, req, basic)
			}
		})
	}
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
	dir := t.TempDir()
	srv := testnet.StartServer(t, bin, func(port int) []string {
		cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%d\nproxy:\n  remoteurl: %s\n", filepath.Join(dir, "data"), port, origin.URL)
		path := filepath.Join(dir, fmt.Sprintf("config-%d.yml", port))
		require.NoError(t, os.WriteFile(path, []byte(cfg), 0o644))
		return []string{"serve", path}
	}, func(addr string) bool {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.Header.Get("Docker-Distribution-Api-Version") == "registry/2.0"
	})
	c := cachetest.New(t, cache.WithUpstreams(tierUpstream(origin, "http://"+srv.Addr))).Cache("registry.test")
	got, err := pull(testCtx(t), c, "app:v1")
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, img), got)
	assert.Positive(t, c.Endpoints()[0].Bytes, "registry:2 served as the tier")
}

// A tier that was down is tried again once its back-off has passed, and
// serves again when it is back: the runner does not stay on the origin.
func TestChainReturnsToATierThatCameBack(t *testing.T) {
	origin := newTestUpstream(t)
	const images = 40
	for i := range images {
		origin.push(t, fmt.Sprintf("app:v%d", i), int64(200+i))
	}
	down := testnet.Refuse(t, "127.0.0.1")
	c := cachetest.New(t, cache.WithUpstreams(tierUpstream(origin, "http://"+down.Addr))).Cache("registry.test")
	_, err := pull(testCtx(t), c, "app:v0")
	require.NoError(t, err)
	require.Zero(t, c.Endpoints()[0].Bytes, "a refusing tier served")

	// The tier comes back on the same address: a cache in front of the origin.
	tier := cachetest.New(t, cache.WithUpstreams(origin.upstream("registry.test"))).Cache("registry.test")
	l, err := down.Listen()
	require.NoError(t, err)
	srv := &http.Server{Handler: tier.Handler()}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	next := 1
	require.Eventually(t, func() bool {
		if next == images {
			return false
		}
		_, err := pull(testCtx(t), c, fmt.Sprintf("app:v%d", next))
		require.NoError(t, err)
		next++
		return c.Endpoints()[0].Bytes > 0
	}, 20*time.Second, 100*time.Millisecond, "the tier was not used again after it came back")
	t.Logf("the tier served again at pull %d", next-1)
	assert.Positive(t, tier.Stats().ServedBytes)
}
