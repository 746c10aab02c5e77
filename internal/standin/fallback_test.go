package standin_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
	"github.com/pullthrough/pullthrough/fixtures"
	"github.com/pullthrough/pullthrough/internal/standin"
)

const missingRef = "registry.k8s.io/kube-proxy:v1.36.0"

// strictCachesMissingOne starts fixtures upstreams (registry profiles: token
// dance, CDN, indexes) and strict caches holding every boot image but
// kube-proxy, warmed through online caches on the same storage.
func strictCachesMissingOne(t *testing.T) (*fixtures.Upstreams, *cache.Set) {
	t.Helper()
	ups := fixtures.NewTalosUpstreams(t, "v1.13.0", fixtures.WithScale(0.002), fixtures.Unthrottled())
	var cu []cache.Upstream
	for _, u := range ups.Upstreams() {
		cu = append(cu, cache.Upstream{Host: u.Host(), URL: u.URL()})
	}
	dir := t.TempDir()
	online := cachetest.New(t, cache.WithUpstreams(cu...), cache.WithListenAddrs("127.0.0.1"), cache.WithStorageDir(dir))
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	for _, img := range ups.Images() {
		if img.Ref() == missingRef {
			continue
		}
		ref, err := name.ParseReference(online.Cache(img.Registry).Addr()+"/"+img.Repository+":"+img.Tag, name.Insecure)
		require.NoError(t, err)
		ri, err := remote.Image(ref, remote.WithTransport(tr), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
		require.NoError(t, err)
		_, err = ri.RawConfigFile()
		require.NoError(t, err)
		layers, err := ri.Layers()
		require.NoError(t, err)
		for _, l := range layers {
			rc, err := l.Compressed()
			require.NoError(t, err)
			_, err = io.Copy(io.Discard, rc)
			rc.Close()
			require.NoError(t, err)
		}
	}
	require.NoError(t, online.Close())
	return ups, cachetest.New(t, cache.WithUpstreams(cu...), cache.WithListenAddrs("127.0.0.1"),
		cache.WithStorageDir(dir), cache.WithMode(cache.Strict))
}

func mirrorsOf(set *cache.Set) map[string][]string {
	m := map[string][]string{}
	for _, c := range set.Caches() {
		m[c.Host()] = []string{c.Endpoint()}
	}
	return m
}

// TestStrictBootWithAMissingImageFailsAndNamesIt: with skipFallback, as
// provisioners sets it for strict caches, the image the cache lacks fails
// the boot, by name, and nothing reaches the registry itself.
func TestStrictBootWithAMissingImageFailsAndNamesIt(t *testing.T) {
	ups, set := strictCachesMissingOne(t)
	ups.ResetStats()
	n, err := standin.LoadUserdata(userdata(withSkipFallback(genConfig(t, mirrorsOf(set)))))
	require.NoError(t, err)

	s := standin.Run(t.Context(), n, standin.Options{Arch: "amd64", Fallback: ups.Origins()})

	assert.Equal(t, 9, s.Images)
	require.Len(t, s.Failures, 1)
	assert.Equal(t, missingRef, s.Failures[0].Ref)
	assert.Contains(t, s.Failures[0].Error, missingRef)
	assert.Equal(t, []string{set.Cache("registry.k8s.io").Endpoint()}, s.Failures[0].Endpoints)
	assert.Empty(t, s.Fallbacks)
	assert.Zero(t, ups.Total().Requests(), "skipFallback: the registry itself is never asked")
}

// TestWithoutSkipFallbackTheNodePullsFromTheRegistryAndSaysSo: the same
// boot without skipFallback succeeds, as a real node's would, by going to
// the registry itself, and the summary says which image, which step and
// why the mirror failed it.
func TestWithoutSkipFallbackTheNodePullsFromTheRegistryAndSaysSo(t *testing.T) {
	ups, set := strictCachesMissingOne(t)
	ups.ResetStats()
	n, err := standin.LoadUserdata(userdata(genConfig(t, mirrorsOf(set))))
	require.NoError(t, err)

	var log syncBuffer
	s := standin.Run(t.Context(), n, standin.Options{Arch: "amd64", Fallback: ups.Origins(), Log: &log})

	require.Empty(t, s.Failures, "log:\n%s", log.String())
	assert.Equal(t, 10, s.Images)
	require.NotEmpty(t, s.Fallbacks)
	reg := ups.Upstream("registry.k8s.io").URL()
	for _, fb := range s.Fallbacks {
		assert.Equal(t, missingRef, fb.Ref, "only the missing image falls back")
		assert.Equal(t, reg, fb.Endpoint)
		require.Len(t, fb.Failed, 1)
		assert.Equal(t, set.Cache("registry.k8s.io").Endpoint(), fb.Failed[0].Endpoint)
		assert.NotEmpty(t, fb.Failed[0].Error)
	}
	assert.Equal(t, "resolve v1.36.0", s.Fallbacks[0].Step)
	for _, p := range s.Pulls {
		if p.Ref == missingRef {
			assert.Equal(t, reg, p.Endpoint)
		}
	}
	assert.Contains(t, log.String(), "FALLBACK "+missingRef)

	// The registry itself did the token dance and sent blobs through its
	// CDN, which never saw the token.
	c := ups.Total()
	assert.Positive(t, c.TokenGET)
	assert.Positive(t, c.Redirects)
	assert.Zero(t, c.CDNAuthorization)
}

// TestRetriesFollowContainerd: 429 is retried on the same host up to five
// times, then the next host is tried; a 503 from a mirror that is not the
// last host moves on at once.
func TestRetriesFollowContainerd(t *testing.T) {
	ups, _ := seedAll(t)
	var tooMany, unavailable atomic.Int64
	limited := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tooMany.Add(1)
		http.Error(w, "slow down", http.StatusTooManyRequests)
	}))
	t.Cleanup(limited.Close)
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		unavailable.Add(1)
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	t.Cleanup(down.Close)

	cfg := genConfig(t, map[string][]string{
		"registry.k8s.io": {limited.URL, ups["registry.k8s.io"].URL},
		"ghcr.io":         {down.URL, ups["ghcr.io"].URL},
	})
	n, err := standin.LoadUserdata(userdata(withSkipFallback(cfg)))
	require.NoError(t, err)
	s := standin.Run(t.Context(), n, standin.Options{Arch: "amd64", RetryDelay: 1, Parallel: 1})

	require.Empty(t, s.Failures)
	// Every step of every registry.k8s.io image asked the limited mirror
	// six times (one try, five retries) before the next endpoint.
	var steps int64
	for _, p := range s.Pulls {
		if strings.HasPrefix(p.Ref, "registry.k8s.io/") {
			steps += int64(p.Blobs) + 2 // resolve, manifest, blobs
			if strings.Contains(p.Ref, "pause") {
				steps++ // the index, then the platform manifest
			}
		}
	}
	assert.Equal(t, 6*steps, tooMany.Load())
	var ghcrSteps int64
	for _, p := range s.Pulls {
		if strings.HasPrefix(p.Ref, "ghcr.io/") {
			ghcrSteps += int64(p.Blobs) + 2
		}
	}
	assert.Equal(t, ghcrSteps, unavailable.Load(), "a 503 from a mirror that is not the last host is not retried")
}
