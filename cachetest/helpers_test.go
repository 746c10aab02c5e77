package cachetest_test

import (
	"context"
	"io"
	"log"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
)

// testUpstream is go-containerregistry's in-memory registry behind a handler
// that counts what reaches it and can misbehave on request.
type testUpstream struct {
	*httptest.Server
	blobGETs, manifestReqs, total atomic.Int64
	manifestGETs                  atomic.Int64

	mu        sync.Mutex
	blobDelay time.Duration // before each blob GET
	cutAfter  int64         // >0: abort blob bodies after this many bytes
	hang      chan struct{} // non-nil: requests wait until it closes
	user      string
	pass      string
	// pauseAfter > 0: the next blob GET sends this many bytes, then waits
	// for pause to close (one blob GET only: the field is cleared).
	pauseAfter   int64
	pause        chan struct{}
	stallAfter   int64        // > 0: blob GETs send this much, then stall until the client leaves
	manifestGate func()       // non-nil: called before answering a manifest GET
	manifestFail int          // non-zero: manifest GETs are answered with this status
	sent         atomic.Int64 // body bytes written to clients
}

func newTestUpstream(tb testing.TB) *testUpstream {
	tb.Helper()
	u := &testUpstream{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		delay, cut, hang, user, pass := u.blobDelay, u.cutAfter, u.hang, u.user, u.pass
		u.mu.Unlock()
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			u.total.Add(1)
		}
		if hang != nil {
			select {
			case <-hang:
			case <-r.Context().Done():
				return
			}
		}
		if user != "" {
			if gu, gp, ok := r.BasicAuth(); !ok || gu != user || gp != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
		}
		isBlob := strings.Contains(r.URL.Path, "/blobs/sha256:")
		if strings.Contains(r.URL.Path, "/manifests/") {
			u.manifestReqs.Add(1)
			u.mu.Lock()
			gate := u.manifestGate
			u.mu.Unlock()
			if gate != nil && r.Method == http.MethodGet {
				u.manifestGETs.Add(1)
				gate()
			} else if r.Method == http.MethodGet {
				u.manifestGETs.Add(1)
			}
			u.mu.Lock()
			fail := u.manifestFail
			u.mu.Unlock()
			if fail != 0 && r.Method == http.MethodGet {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(fail)
				_, _ = io.WriteString(w, `{"errors":[{"code":"UNAVAILABLE","message":"the test upstream fails"}]}`)
				return
			}
		}
		w = &sentCounter{ResponseWriter: w, n: &u.sent}
		if isBlob && r.Method == http.MethodGet {
			u.blobGETs.Add(1)
			if delay > 0 {
				time.Sleep(delay) // simulated slow link for overlap, not a test wait
			}
			if cut > 0 {
				w = &cuttingWriter{ResponseWriter: w, left: cut}
			}
			u.mu.Lock()
			pauseAfter, pause, stall := u.pauseAfter, u.pause, u.stallAfter
			u.pauseAfter = 0
			u.mu.Unlock()
			switch {
			case pauseAfter > 0:
				w = &pausingWriter{ResponseWriter: w, left: pauseAfter, wait: func() {
					select {
					case <-pause:
					case <-r.Context().Done():
					}
				}}
			case stall > 0:
				w = &pausingWriter{ResponseWriter: w, left: stall, wait: func() {
					<-r.Context().Done()
					panic(http.ErrAbortHandler)
				}}
			}
		}
		reg.ServeHTTP(w, r)
	}))
	tb.Cleanup(u.Close)
	return u
}

type cuttingWriter struct {
	http.ResponseWriter
	left int64
}

func (c *cuttingWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > c.left {
		c.ResponseWriter.Write(p[:c.left])
		c.ResponseWriter.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	c.left -= int64(len(p))
	return c.ResponseWriter.Write(p)
}

// sentCounter counts body bytes as the fixtures' upstreams do.
type sentCounter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (s *sentCounter) Write(p []byte) (int, error) {
	s.n.Add(int64(len(p))) // before the client can have read it
	n, err := s.ResponseWriter.Write(p)
	s.n.Add(int64(n - len(p)))
	return n, err
}

func (s *sentCounter) Flush() { s.ResponseWriter.(http.Flusher).Flush() }

// pausingWriter sends left bytes, flushes them, calls wait once, then
// sends the rest.
type pausingWriter struct {
	http.ResponseWriter
	left   int64
	wait   func()
	waited bool
}

func (p *pausingWriter) Write(b []byte) (int, error) {
	if p.waited || int64(len(b)) <= p.left {
		p.left -= int64(len(b))
		return p.ResponseWriter.Write(b)
	}
	n, err := p.ResponseWriter.Write(b[:p.left])
	if err != nil {
		return n, err
	}
	p.ResponseWriter.(http.Flusher).Flush()
	p.waited = true
	p.wait()
	m, err := p.ResponseWriter.Write(b[p.left:])
	return n + m, err
}

func (p *pausingWriter) Flush() { p.ResponseWriter.(http.Flusher).Flush() }

func (u *testUpstream) set(f func(u *testUpstream)) {
	u.mu.Lock()
	defer u.mu.Unlock()
	f(u)
}

func (u *testUpstream) host() string { return strings.TrimPrefix(u.URL, "http://") }

// push writes a seeded random image to the upstream and returns it.
func (u *testUpstream) push(tb testing.TB, repoTag string, seed int64) v1.Image {
	tb.Helper()
	img, err := random.Image(64<<10, 3, random.WithSource(rand.NewSource(seed)))
	require.NoError(tb, err)
	ref, err := name.ParseReference(u.host()+"/"+repoTag, name.Insecure)
	require.NoError(tb, err)
	require.NoError(tb, remote.Write(ref, img))
	u.blobGETs.Store(0)
	u.manifestReqs.Store(0)
	u.total.Store(0)
	u.manifestGETs.Store(0)
	u.sent.Store(0)
	return img
}

// pushImage writes a given image to the upstream.
func (u *testUpstream) pushImage(tb testing.TB, repoTag string, img v1.Image) {
	tb.Helper()
	ref, err := name.ParseReference(u.host()+"/"+repoTag, name.Insecure)
	require.NoError(tb, err)
	require.NoError(tb, remote.Write(ref, img))
	u.blobGETs.Store(0)
	u.manifestReqs.Store(0)
	u.manifestGETs.Store(0)
	u.total.Store(0)
	u.sent.Store(0)
}

func (u *testUpstream) upstream(host string) cache.Upstream {
	return cache.Upstream{Host: host, URL: u.URL}
}

// pull reads a whole image, every layer, through a cache.
func pull(ctx context.Context, c *cache.Cache, repoTag string) (v1.Hash, error) {
	ref, err := name.ParseReference(c.Addr()+"/"+repoTag, name.Insecure)
	if err != nil {
		return v1.Hash{}, err
	}
	img, err := remote.Image(ref, remote.WithContext(ctx))
	if err != nil {
		return v1.Hash{}, err
	}
	layers, err := img.Layers()
	if err != nil {
		return v1.Hash{}, err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return v1.Hash{}, err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return v1.Hash{}, err
		}
	}
	if _, err := img.RawConfigFile(); err != nil {
		return v1.Hash{}, err
	}
	return img.Digest()
}

func digestOf(tb testing.TB, img v1.Image) v1.Hash {
	tb.Helper()
	d, err := img.Digest()
	require.NoError(tb, err)
	return d
}

func testCtx(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	tb.Cleanup(cancel)
	return ctx
}
