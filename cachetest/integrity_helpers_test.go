package cachetest_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pullthrough/pullthrough/internal/testnet"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/internal/fleettest"
)

// faultyUpstream is an in-memory registry whose blob bodies can be damaged
// (one byte flipped, same length) or trickled (one byte a second).
type faultyUpstream struct {
	*httptest.Server
	flipAt       atomic.Int64 // >= 0: the blob body byte at this offset is flipped
	trickle      atomic.Bool
	blobGETs     atomic.Int64
	manifestGETs atomic.Int64
	gate         atomic.Pointer[func()] // called before a blob GET is answered
	// pauseAt > 0: the next blob GET sends this many bytes, then waits for
	// pause to close (one GET only).
	pauseAt atomic.Int64
	pause   chan struct{}
}

func newFaultyUpstream(tb testing.TB) *faultyUpstream {
	tb.Helper()
	u := &faultyUpstream{}
	u.flipAt.Store(-1)
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			reg.ServeHTTP(w, r)
			return
		}
		if strings.Contains(r.URL.Path, "/manifests/") {
			u.manifestGETs.Add(1)
		}
		if strings.Contains(r.URL.Path, "/blobs/sha256:") {
			u.blobGETs.Add(1)
			if g := u.gate.Load(); g != nil {
				(*g)()
			}
			if at := u.flipAt.Load(); at >= 0 {
				w = &flipWriter{ResponseWriter: w, at: at}
			}
			if u.trickle.Load() {
				w = &trickleWriter{ResponseWriter: w, ctx: r.Context()}
			}
			if at := u.pauseAt.Swap(0); at > 0 {
				w = &pausingWriter{ResponseWriter: w, left: at, wait: func() {
					select {
					case <-u.pause:
					case <-r.Context().Done():
					}
				}}
			}
		}
		reg.ServeHTTP(w, r)
	}))
	tb.Cleanup(u.Close)
	return u
}

func (u *faultyUpstream) upstream(host string) cache.Upstream {
	return cache.Upstream{Host: host, URL: u.URL}
}

func (u *faultyUpstream) pushImage(tb testing.TB, repoTag string, img v1.Image) {
	tb.Helper()
	ref, err := name.ParseReference(strings.TrimPrefix(u.URL, "http://")+"/"+repoTag, name.Insecure)
	require.NoError(tb, err)
	require.NoError(tb, remote.Write(ref, img))
	u.blobGETs.Store(0)
	u.manifestGETs.Store(0)
}

// waitForRequests holds each blob GET until the cache has counted n client
// requests (or 10s have passed), so that n clients share one download.
func (u *faultyUpstream) waitForRequests(c *cache.Cache, n int64) {
	g := func() {
		for end := time.Now().Add(10 * time.Second); c.Stats().Requests < n && time.Now().Before(end); {
			time.Sleep(2 * time.Millisecond) // the upstream's polling of a condition
		}
	}
	u.gate.Store(&g)
}

// flipWriter inverts the body byte at offset at.
type flipWriter struct {
	http.ResponseWriter
	at, off int64
}

func (f *flipWriter) Write(p []byte) (int, error) {
	if i := f.at - f.off; i >= 0 && i < int64(len(p)) {
		q := append([]byte(nil), p...)
		q[i] ^= 0xff
		p = q
	}
	n, err := f.ResponseWriter.Write(p)
	f.off += int64(n)
	return n, err
}

// trickleWriter sends one byte a second, flushed, until the client leaves.
type trickleWriter struct {
	http.ResponseWriter
	ctx context.Context
}

func (t *trickleWriter) Write(p []byte) (int, error) {
	for i := range p {
		if _, err := t.ResponseWriter.Write(p[i : i+1]); err != nil {
			return i, err
		}
		t.ResponseWriter.(http.Flusher).Flush()
		select {
		case <-t.ctx.Done():
			return i + 1, t.ctx.Err()
		case <-time.After(time.Second): // the upstream's rate, not a test wait
		}
	}
	return len(p), nil
}

// outcome is what one client saw of a blob GET.
type outcome struct {
	status int
	length int64 // Content-Length, -1 if none
	n      int64 // body bytes read
	digest string
	err    error // from the request or the body
}

// complete says the client read a whole body: every byte Content-Length
// announced, without an error. A client takes such a body as the blob.
func (o outcome) complete() bool {
	return o.err == nil && (o.status == http.StatusOK || o.status == http.StatusPartialContent) && o.length >= 0 && o.n == o.length
}

func (o outcome) String() string {
	return fmt.Sprintf("status %d, %d of %d bytes, %s, err %v", o.status, o.n, o.length, o.digest, o.err)
}

func fetchBlob(ctx context.Context, addr, repo string, d v1.Hash, header http.Header) outcome {
	return fetchBlobWith(ctx, http.DefaultClient, addr, repo, d, header)
}

func fetchBlobWith(ctx context.Context, client *http.Client, addr, repo string, d v1.Hash, header http.Header) outcome {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/"+repo+"/blobs/"+d.String(), nil)
	if err != nil {
		return outcome{err: err}
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		return outcome{err: err, length: -1}
	}
	defer resp.Body.Close()
	o := outcome{status: resp.StatusCode, length: resp.ContentLength}
	o.digest, o.n, o.err = readAllDigest(resp.Body)
	return o
}

// startSet starts a set that the test can close before its end (close is
// idempotent, and the test's cleanup calls it too).
func startSet(tb testing.TB, opts ...cache.Option) (*cache.Set, func()) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	set, err := cache.Start(ctx, opts...)
	require.NoError(tb, err)
	var once sync.Once
	closeSet := func() {
		once.Do(func() {
			if err := set.Close(); err != nil {
				tb.Errorf("closing caches: %v", err)
			}
		})
	}
	tb.Cleanup(closeSet)
	return set, closeSet
}

// startFixedPort starts a one-upstream set on a fixed port, as a fleet
// instance needs. cache.Start binds the port itself, so the test cannot
// keep a listener of its own; instead of listen-and-close (another process
// may take the port in between) it draws ports below the kernel's
// ephemeral range, which :0 binds and outgoing connections never use, and
// draws again when the port is taken.
func startFixedPort(tb testing.TB, up cache.Upstream, opts ...cache.Option) *cache.Set {
	tb.Helper()
	var lastErr error
	for range 20 {
		up.Port = testnet.DrawBase(1)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		set, err := cache.Start(ctx, append([]cache.Option{cache.WithUpstreams(up), cache.WithFixedPorts(), cache.WithListenAddrs("127.0.0.1")}, opts...)...)
		cancel()
		var opErr *net.OpError
		if err != nil && (errors.Is(err, cache.ErrPortInUse) || errors.As(err, &opErr)) {
			lastErr = err
			continue
		}
		require.NoError(tb, err)
		if set.Cache(up.Host).Reused() {
			set.Close()
			lastErr = fmt.Errorf("port %d is another cache's", up.Port)
			continue
		}
		tb.Cleanup(func() {
			if err := set.Close(); err != nil {
				tb.Errorf("closing caches: %v", err)
			}
		})
		return set
	}
	tb.Fatalf("no free fixed port in 20 draws: %v", lastErr)
	return nil
}

// noWrongBody fails the test for a client that read a whole body whose
// digest is not the blob's: the one thing a cache must never hand out.
func noWrongBody(t *testing.T, o outcome, d v1.Hash, who string) {
	t.Helper()
	if o.complete() && o.digest != d.String() {
		t.Errorf("%s got a complete body with the wrong digest: %s", who, o)
	}
}

// requireNoFills waits until no download is under way in the cache.
func requireNoFills(t *testing.T, c *cache.Cache) {
	t.Helper()
	require.Eventually(t, func() bool {
		ents, err := os.ReadDir(filepath.Join(c.StorageDir(), "v2", "fills"))
		return err == nil && len(ents) == 0
	}, 10*time.Second, 5*time.Millisecond, "a download's files were left behind")
}

// flipByte inverts one byte of a file in place; its size stays the same.
func flipByte(t *testing.T, path string, at int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, 1)
	_, err = f.ReadAt(b, at)
	require.NoError(t, err)
	b[0] ^= 0xff
	_, err = f.WriteAt(b, at)
	require.NoError(t, err)
}

func fileDigest(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// rangeBytes reads bytes lo..hi of a blob through the cache.
func rangeBytes(t *testing.T, addr string, d v1.Hash, lo, hi int64) []byte {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodGet, "http://"+addr+"/v2/app/blobs/"+d.String(), nil)
	require.NoError(t, err)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", lo, hi))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return b
}

// manifestBodyDigest GETs a manifest and hashes the body it got.
func manifestBodyDigest(t *testing.T, addr, repo, ref string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodGet, "http://"+addr+"/v2/"+repo+"/manifests/"+ref, nil)
	require.NoError(t, err)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	got, _, err := readAllDigest(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, got
}

// fleetInstance starts a cold fleet instance for origin's registry.test.
func fleetInstance(t *testing.T, origin *faultyUpstream, redisAddr, s3Addr string) *cache.Cache {
	t.Helper()
	return fleetSet(t, origin, redisAddr, s3Addr).Cache("registry.test")
}

// fleetSet is fleetInstance's set, for a test that closes it, with the
// options given after the fleet's.
func fleetSet(t *testing.T, origin *faultyUpstream, redisAddr, s3Addr string, opts ...cache.Option) *cache.Set {
	t.Helper()
	return startFixedPort(t, origin.upstream("registry.test"), append([]cache.Option{cache.WithStorageDir(t.TempDir()),
		cache.WithFleet(cache.FleetConfig{
			S3Endpoint: "http://" + s3Addr, Bucket: fleettest.Bucket,
			S3Credentials: cache.BasicAuth(fleettest.AccessKey, fleettest.SecretKey),
			Redis:         "redis://" + redisAddr, Advertise: "127.0.0.1",
		})}, opts...)...)
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// keepAliveRequest sends GET /v2/ on conn and reads a kept-alive answer.
func keepAliveRequest(conn net.Conn) error {
	if _, err := io.WriteString(conn, "GET /v2/ HTTP/1.1\r\nHost: cache\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Close {
		return fmt.Errorf("%s, close %v: want a kept-alive 200", resp.Status, resp.Close)
	}
	return nil
}

// stillOpen reads from an idle connection: EOF or a reset is a connection
// the cache closed; nothing within the deadline is one it keeps.
func stillOpen(conn net.Conn) (bool, error) {
	if err := conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
		return false, err
	}
	_, err := conn.Read(make([]byte, 1))
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return true, nil
	case errors.Is(err, io.EOF) || isReset(err):
		return false, nil
	}
	return false, fmt.Errorf("reading an idle connection: %v (want EOF or a timeout)", err)
}
