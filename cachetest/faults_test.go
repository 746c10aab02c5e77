package cachetest_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
	"github.com/pullthrough/pullthrough/internal/testnet"
)

func TestConcurrentColdPullsFetchEachBlobOnce(t *testing.T) {
	up := newTestUpstream(t)
	img := up.push(t, "app:v1", 5)
	// A slow upstream makes the three pulls overlap on every blob.
	up.set(func(u *testUpstream) { u.blobDelay = 100 * time.Millisecond })
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")))
	c := set.Cache("registry.test")
	ctx := testCtx(t)
	var g errgroup.Group
	for range 3 {
		g.Go(func() error {
			got, err := pull(ctx, c, "app:v1")
			if err == nil && got != digestOf(t, img) {
				t.Errorf("digest %s, want %s", got, digestOf(t, img))
			}
			return err
		})
	}
	require.NoError(t, g.Wait())
	assert.EqualValues(t, 4, up.blobGETs.Load(), "three concurrent pulls: each blob fetched from upstream once")
	assert.Positive(t, c.Stats().Coalesced)
}

func TestOfflineModeWarmPullAsksUpstreamNothing(t *testing.T) {
	up := newTestUpstream(t)
	img := up.push(t, "app:v1", 6)
	dir := t.TempDir()
	ctx := testCtx(t)
	u := up.upstream("registry.test")
	// Fill the cache online with the tag TTL off, so only the mode decides.
	online := cachetest.New(t, cache.WithUpstreams(u), cache.WithStorageDir(dir), cache.WithTagTTL(-1))
	_, err := pull(ctx, online.Cache("registry.test"), "app:v1")
	require.NoError(t, err)
	require.NoError(t, online.Close())

	up.total.Store(0)
	offline := cachetest.New(t, cache.WithUpstreams(u), cache.WithStorageDir(dir),
		cache.WithTagTTL(-1), cache.WithMode(cache.Offline))
	got, err := pull(ctx, offline.Cache("registry.test"), "app:v1")
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, img), got)
	assert.Zero(t, up.total.Load(), "offline warm pull reached upstream")
	assert.Zero(t, offline.Cache("registry.test").Stats().UpstreamRequests)
}

func TestStrictModeNamesWhatIsNotCached(t *testing.T) {
	up := newTestUpstream(t)
	up.push(t, "app:v1", 7)
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithMode(cache.Strict))
	_, err := pull(testCtx(t), set.Cache("registry.test"), "app:v1")
	require.Error(t, err)
	assert.ErrorContains(t, err, "registry.test/app:v1 is not cached")
	assert.Zero(t, up.total.Load())
	assert.EqualValues(t, 1, set.Cache("registry.test").Stats().NotCached)
}

func TestUnreachableAtStartThenBack(t *testing.T) {
	// A port held and refusing: the upstream is "down" at start.
	down := testnet.Refuse(t, "127.0.0.1")
	addr := down.Addr

	set := cachetest.New(t, cache.WithUpstreams(cache.Upstream{Host: "registry.test", URL: "http://" + addr}))
	c := set.Cache("registry.test")
	_, err := pull(testCtx(t), c, "app:v1")
	require.Error(t, err, "nothing cached and upstream down")

	up := newTestUpstream(t)
	img := up.push(t, "app:v1", 8)
	back := &http.Server{Handler: up.Config.Handler}
	l, err := down.Listen() // the same port, never free in between
	require.NoError(t, err)
	go back.Serve(l)
	t.Cleanup(func() { back.Close() })

	got, err := pull(testCtx(t), c, "app:v1")
	require.NoError(t, err, "the cache reaches its upstream once it is back")
	assert.Equal(t, digestOf(t, img), got)
}

func TestHungUpstreamFallsBackToCache(t *testing.T) {
	up := newTestUpstream(t)
	img := up.push(t, "app:v1", 9)
	// Revalidate on every pull, so the warm pull does ask the hung upstream.
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithTagTTL(-1),
		cache.WithTimeouts(0, 0, 200*time.Millisecond))
	c := set.Cache("registry.test")
	ctx := testCtx(t)
	_, err := pull(ctx, c, "app:v1")
	require.NoError(t, err)

	hang := make(chan struct{})
	up.set(func(u *testUpstream) { u.hang = hang })
	t.Cleanup(func() { close(hang) })
	// A limit well under the 30 s header timeout: only the 200 ms
	// revalidation timeout lets the pull finish in it. The time itself is
	// BenchmarkWarmPullUpstreamDown's to report.
	limited, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	got, err := pull(limited, c, "app:v1")
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, img), got)
}

func TestRefusedUpstreamStillServesCached(t *testing.T) {
	up := newTestUpstream(t)
	img := up.push(t, "app:v1", 10)
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithTagTTL(-1))
	c := set.Cache("registry.test")
	ctx := testCtx(t)
	_, err := pull(ctx, c, "app:v1")
	require.NoError(t, err)
	up.Close() // connections refused from now on
	got, err := pull(ctx, c, "app:v1")
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, img), got)
}

func TestBlobCutMidwayIsNeverCached(t *testing.T) {
	up := newTestUpstream(t)
	img := up.push(t, "app:v1", 11)
	up.set(func(u *testUpstream) { u.cutAfter = 10 << 10 })
	dir := t.TempDir()
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithStorageDir(dir))
	c := set.Cache("registry.test")
	ctx := testCtx(t)
	_, err := pull(ctx, c, "app:v1")
	require.Error(t, err, "a cut download must reach the client as an error")
	// The bytes stream to the client as they arrive, so a cut upstream cuts
	// the client's response: it sees a broken download, as it would from the
	// registry itself, never a short body taken for whole.
	assert.ErrorContains(t, err, "unexpected EOF", "the client sees the download break")

	layers, err := img.Layers()
	require.NoError(t, err)
	for _, l := range layers {
		d, err := l.Digest()
		require.NoError(t, err)
		_, statErr := os.Stat(blobPath(c, d.Hex))
		assert.True(t, os.IsNotExist(statErr), "partial blob %s was stored", d)
	}

	up.set(func(u *testUpstream) { u.cutAfter = 0 })
	got, err := pull(ctx, c, "app:v1")
	require.NoError(t, err, "pull after the upstream recovers")
	assert.Equal(t, digestOf(t, img), got)
}

// blobPath is where a cache keeps a blob.
func blobPath(c *cache.Cache, hex string) string {
	return filepath.Join(cache.BlobsDir(c.StorageDir()), hex)
}

func TestCredentialsStayInside(t *testing.T) {
	const password = "s3cr3t-Pa55w0rd-xyzzy"
	up := newTestUpstream(t)
	img := up.push(t, "app:v1", 12)
	up.set(func(u *testUpstream) { u.user, u.pass = "robot", password })
	var logs lockedBuffer
	u := up.upstream("registry.test")
	u.Credentials = cache.BasicAuth("robot", password)
	set := cachetest.New(t, cache.WithUpstreams(u), cache.WithLogger(newTextLogger(&logs)))
	got, err := pull(testCtx(t), set.Cache("registry.test"), "app:v1")
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, img), got)

	// And with a wrong password: the error must not carry the secret either.
	bad := up.upstream("bad.test")
	bad.Credentials = cache.BasicAuth("robot", password+"-wrong")
	badSet := cachetest.New(t, cache.WithUpstreams(bad), cache.WithLogger(newTextLogger(&logs)))
	_, pullErr := pull(testCtx(t), badSet.Cache("bad.test"), "app:v1")
	require.Error(t, pullErr)
	assert.Contains(t, logs.String(), "refused", "a refused login is logged")

	flags, err := set.MirrorFlags("127.0.0.1")
	require.NoError(t, err)
	for what, text := range map[string]string{
		"logs":         logs.String(),
		"pull error":   pullErr.Error(),
		"mirror flags": strings.Join(flags, " "),
		"formatting":   fmtAll(u),
	} {
		assert.NotContains(t, text, password, "password leaked into %s", what)
	}
}

func TestClientOutsideLocalNetworksIsRefused(t *testing.T) {
	up := newTestUpstream(t)
	up.push(t, "app:v1", 13)
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")))
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/v2/app/manifests/v1", nil)
	req.RemoteAddr = "198.51.100.7:40000" // TEST-NET-2: on no interface of this host
	cacheHandler(t, set, "registry.test").ServeHTTP(rec, req)
	assert.Equal(t, http.StatusForbidden, rec.Code)
	assert.Contains(t, rec.Body.String(), "198.51.100.7")
	assert.Zero(t, up.total.Load())

	open := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithAllowedClients("198.51.100.0/24"))
	rec = httptest.NewRecorder()
	cacheHandler(t, open, "registry.test").ServeHTTP(rec, req)
	assert.Equal(t, http.StatusOK, rec.Code)
}

func cacheHandler(t *testing.T, set *cache.Set, host string) http.Handler {
	t.Helper()
	h := set.Cache(host).Handler()
	require.NotNil(t, h)
	return h
}

// newTextLogger logs at debug level into w, which the test may read while
// the caches still write.
func newTextLogger(w *lockedBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func fmtAll(v any) string { return fmt.Sprintf("%v %+v %#v %s", v, v, v, v) }

func TestCredentialHelperIsAskedAndNeverShown(t *testing.T) {
	const secret = "helper-S3cret-plugh"
	up := newTestUpstream(t)
	img := up.push(t, "app:v1", 15)
	up.set(func(u *testUpstream) { u.user, u.pass = "robot", secret })
	// A Docker credential helper, as docker-credential-<name> on PATH.
	bin := t.TempDir()
	// It knows registry.test only, as a helper that holds one login.
	script := "#!/bin/sh\nread server\n[ \"$server\" = registry.test ] || { echo 'credentials not found in native keychain' >&2; exit 1; }\n" +
		"echo '{\"ServerURL\":\"'$server'\",\"Username\":\"robot\",\"Secret\":\"" + secret + "\"}'\n"
	require.NoError(t, os.WriteFile(filepath.Join(bin, "docker-credential-pttest"), []byte(script), 0o755))
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))

	var logs lockedBuffer
	u := up.upstream("registry.test")
	u.Credentials = cache.FromCredentialHelper("pttest")
	set := cachetest.New(t, cache.WithUpstreams(u), cache.WithLogger(newTextLogger(&logs)))
	got, err := pull(testCtx(t), set.Cache("registry.test"), "app:v1")
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, img), got)
	assert.NotContains(t, logs.String()+fmtAll(u), secret)

	// A helper without a login for the host is an error, not anonymous.
	other := u
	other.Host = "other.test"
	_, err = cache.Start(testCtx(t), cache.WithUpstreams(other), cache.WithStorageDir(t.TempDir()))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "credentials not found")

	u.Credentials = cache.FromCredentialHelper("pt-missing-helper")
	_, err = cache.Start(testCtx(t), cache.WithUpstreams(u), cache.WithStorageDir(t.TempDir()))
	require.Error(t, err)
	assert.Contains(t, err.Error(), `credential helper "pt-missing-helper"`)
}
