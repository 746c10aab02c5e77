package engine

import (
	"context"
	"io"
	"log"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countingRegistry is go-containerregistry's registry, counting manifest
// HEADs and GETs.
type countingRegistry struct {
	*httptest.Server
	heads, gets atomic.Int64
}

func newCountingRegistry(t *testing.T) *countingRegistry {
	r := &countingRegistry{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if strings.Contains(req.URL.Path, "/manifests/") {
			switch req.Method {
			case http.MethodHead:
				r.heads.Add(1)
			case http.MethodGet:
				r.gets.Add(1)
			}
		}
		reg.ServeHTTP(w, req)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *countingRegistry) push(t *testing.T, repoTag string, seed int64) string {
	img, err := random.Image(256, 1, random.WithSource(rand.NewSource(seed)))
	require.NoError(t, err)
	ref, err := name.ParseReference(strings.TrimPrefix(r.URL, "http://")+"/"+repoTag, name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.Write(ref, img))
	d, err := img.Digest()
	require.NoError(t, err)
	return d.String()
}

func newTestCache(t *testing.T, upstream string, cfg Config) *httptest.Server {
	t.Helper()
	remote, err := url.Parse(upstream)
	require.NoError(t, err)
	cfg.Host, cfg.Remote = "registry.test", remote
	if cfg.StorageDir == "" {
		cfg.StorageDir = t.TempDir()
	}
	c, err := New(context.Background(), cfg)
	require.NoError(t, err)
	srv := httptest.NewServer(c)
	t.Cleanup(func() { srv.Close(); c.Close() })
	return srv
}

func manifestDigest(t *testing.T, srv *httptest.Server, repo, ref string) string {
	t.Helper()
	resp, err := http.Get(srv.URL + "/v2/" + repo + "/manifests/" + ref)
	require.NoError(t, err)
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	return resp.Header.Get("Docker-Content-Digest")
}

// A tag past its TTL is confirmed with one HEAD, and no GET: revalidation
// costs Docker Hub nothing.
func TestTagPastItsTTLIsConfirmedByOneHEAD(t *testing.T) {
	up := newCountingRegistry(t)
	d := up.push(t, "lib/app:v1", 1)
	srv := newTestCache(t, up.URL, Config{TagTTL: -1})
	assert.Equal(t, d, manifestDigest(t, srv, "lib/app", "v1"))
	require.EqualValues(t, 1, up.gets.Load())
	up.heads.Store(0)
	for range 3 {
		assert.Equal(t, d, manifestDigest(t, srv, "lib/app", "v1"))
	}
	assert.EqualValues(t, 3, up.heads.Load(), "one HEAD per pull with the TTL at zero")
	assert.EqualValues(t, 1, up.gets.Load(), "a confirmed tag is never fetched again")
}

// A tag that moved upstream is fetched again, by its new digest, once.
func TestTagThatMovedIsFetchedAgain(t *testing.T) {
	up := newCountingRegistry(t)
	old := up.push(t, "lib/app:v1", 1)
	srv := newTestCache(t, up.URL, Config{TagTTL: -1})
	require.Equal(t, old, manifestDigest(t, srv, "lib/app", "v1"))
	moved := up.push(t, "lib/app:v1", 2)
	require.NotEqual(t, old, moved)
	assert.Equal(t, moved, manifestDigest(t, srv, "lib/app", "v1"))
	assert.EqualValues(t, 2, up.gets.Load(), "the moved tag's new manifest, once")
	assert.Equal(t, moved, manifestDigest(t, srv, "lib/app", "v1"))
	assert.EqualValues(t, 2, up.gets.Load())
}

// Within the TTL a tag is served with no upstream request at all.
func TestTagWithinItsTTLAsksNothing(t *testing.T) {
	up := newCountingRegistry(t)
	d := up.push(t, "lib/app:v1", 1)
	srv := newTestCache(t, up.URL, Config{TagTTL: time.Hour})
	require.Equal(t, d, manifestDigest(t, srv, "lib/app", "v1"))
	up.heads.Store(0)
	up.gets.Store(0)
	assert.Equal(t, d, manifestDigest(t, srv, "lib/app", "v1"))
	assert.Zero(t, up.heads.Load()+up.gets.Load())
}
