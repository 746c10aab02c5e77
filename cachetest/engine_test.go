package cachetest_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
)

// bigImage is one layer of size bytes (random, so incompressible).
func bigImage(tb testing.TB, size int64, seed int64) (v1.Image, v1.Layer) {
	tb.Helper()
	l, err := random.Layer(size, "application/vnd.oci.image.layer.v1.tar", random.WithSource(rand.NewSource(seed)))
	require.NoError(tb, err)
	img, err := mutate.AppendLayers(empty.Image, l)
	require.NoError(tb, err)
	return img, l
}

func layerDigest(tb testing.TB, l v1.Layer) v1.Hash {
	tb.Helper()
	d, err := l.Digest()
	require.NoError(tb, err)
	return d
}

// pausedBlob is an upstream holding app:v1, one 2 MiB layer, whose next
// blob GET sends 512 KiB and then waits for pause to close.
func pausedBlob(tb testing.TB, seed int64) (*testUpstream, v1.Layer, chan struct{}) {
	tb.Helper()
	up := newTestUpstream(tb)
	img, layer := bigImage(tb, 2<<20, seed)
	up.pushImage(tb, "app:v1", img)
	pause := make(chan struct{})
	up.set(func(u *testUpstream) { u.pauseAfter, u.pause = 512<<10, pause })
	return up, layer, pause
}

// getBlob starts a GET of a blob through a cache and returns the response.
func getBlob(ctx context.Context, tb testing.TB, addr, repo string, d v1.Hash) *http.Response {
	tb.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/"+repo+"/blobs/"+d.String(), nil)
	require.NoError(tb, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(tb, err)
	tb.Cleanup(func() { resp.Body.Close() })
	return resp
}

// readAllDigest reads a body to its end and returns its sha256 and length.
func readAllDigest(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, err
}

func TestColdBlobStreamsBeforeItIsWhole(t *testing.T) {
	up := newTestUpstream(t)
	img, layer := bigImage(t, 4<<20, 21)
	up.pushImage(t, "big/app:v1", img)
	d := layerDigest(t, layer)
	pause := make(chan struct{})
	up.set(func(u *testUpstream) { u.pauseAfter, u.pause = 1<<20, pause })
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")))
	c := set.Cache("registry.test")

	resp := getBlob(testCtx(t), t, c.Addr(), "big/app", d)
	require.Equal(t, http.StatusOK, resp.StatusCode, "headers come before the blob is whole")
	size, err := layer.Size()
	require.NoError(t, err)
	assert.Equal(t, size, resp.ContentLength)
	first := make([]byte, 1<<20)
	_, err = io.ReadFull(resp.Body, first)
	require.NoError(t, err, "the first MiB reaches the client while upstream holds the rest")
	_, statErr := os.Stat(blobPath(c, d.Hex))
	assert.True(t, os.IsNotExist(statErr), "the blob is visible in storage before it is whole and verified")

	close(pause)
	h := sha256.New()
	h.Write(first)
	_, err = io.Copy(h, resp.Body)
	require.NoError(t, err)
	assert.Equal(t, d.Hex, hex.EncodeToString(h.Sum(nil)))
	waitStored(t, c, d)
	assert.EqualValues(t, 1, up.blobGETs.Load())
}

func TestStalledUpstreamIsAbandonedAndRetried(t *testing.T) {
	up := newTestUpstream(t)
	img, layer := bigImage(t, 2<<20, 22)
	up.pushImage(t, "app:v1", img)
	d := layerDigest(t, layer)
	up.set(func(u *testUpstream) { u.stallAfter = 256 << 10 })
	var logs lockedBuffer
	const stall = 300 * time.Millisecond
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")),
		cache.WithStallTimeout(stall), cache.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	c := set.Cache("registry.test")

	// Two clients wait on the same stalled download.
	var g errgroup.Group
	for range 2 {
		g.Go(func() error {
			ctx, cancel := context.WithTimeout(testCtx(t), time.Minute)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.Addr()+"/v2/app/blobs/"+d.String(), nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			_, _, err = readAllDigest(resp.Body)
			if err == nil {
				return fmt.Errorf("a stalled download was served as whole")
			}
			if ctx.Err() != nil {
				return fmt.Errorf("the client waited a minute on a dead download")
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
	_, statErr := os.Stat(blobPath(c, d.Hex))
	assert.True(t, os.IsNotExist(statErr), "a stalled download was stored")
	// The clients' responses are cut before the warning is written.
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "stalled") }, 10*time.Second, 5*time.Millisecond)
	assert.Contains(t, logs.String(), d.String(), "the warning names the digest")
	assert.Contains(t, logs.String(), "upstream=registry.test", "the warning names the upstream")

	up.set(func(u *testUpstream) { u.stallAfter = 0 })
	resp := getBlob(testCtx(t), t, c.Addr(), "app", d)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	got, _, err := readAllDigest(resp.Body)
	require.NoError(t, err, "the next request starts a fresh download")
	assert.Equal(t, d.String(), got)
}

func TestSharedLayerIsFetchedOncePerUpstream(t *testing.T) {
	up := newTestUpstream(t)
	base, err := random.Layer(1<<20, "application/vnd.oci.image.layer.v1.tar", random.WithSource(rand.NewSource(31)))
	require.NoError(t, err)
	var imgs []v1.Image
	for i, repo := range []string{"team/one:v1", "other/two:v1"} {
		own, err := random.Layer(64<<10, "application/vnd.oci.image.layer.v1.tar", random.WithSource(rand.NewSource(int64(40+i))))
		require.NoError(t, err)
		img, err := mutate.AppendLayers(empty.Image, base, own)
		require.NoError(t, err)
		up.pushImage(t, repo, img)
		imgs = append(imgs, img)
	}
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")))
	c := set.Cache("registry.test")
	ctx := testCtx(t)
	_, err = pull(ctx, c, "team/one:v1")
	require.NoError(t, err)
	before := up.sent.Load()
	got, err := pull(ctx, c, "other/two:v1")
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, imgs[1]), got)
	second := up.sent.Load() - before
	assert.Less(t, second, int64(512<<10), "the shared 1 MiB layer was fetched again for the second repository (%d bytes)", second)
}

func TestConcurrentColdPullsOfATagCostOneManifestGET(t *testing.T) {
	up := newTestUpstream(t)
	up.push(t, "app:v1", 23)
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")))
	c := set.Cache("registry.test")
	const clients = 20
	// Hold upstream's answer until every client's request is in the cache.
	up.set(func(u *testUpstream) {
		u.manifestGate = func() {
			// Polling a counter, not a pause: a request counted but not
			// yet at the flight finds the manifest stored when it gets
			// there, which costs no GET either.
			for c.Stats().Requests < clients {
				time.Sleep(5 * time.Millisecond)
			}
		}
	})
	var g errgroup.Group
	for range clients {
		g.Go(func() error { _, err := pull(testCtx(t), c, "app:v1"); return err })
	}
	require.NoError(t, g.Wait())
	assert.EqualValues(t, 1, up.manifestGETs.Load(), "manifest GETs upstream for %d concurrent cold pulls", clients)
	assert.EqualValues(t, 4, up.blobGETs.Load(), "one GET per blob")
}

func TestTruncatedBlobOnDiskIsFetchedAgain(t *testing.T) {
	up := newTestUpstream(t)
	img := up.push(t, "app:v1", 24)
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")))
	c := set.Cache("registry.test")
	ctx := testCtx(t)
	_, err := pull(ctx, c, "app:v1")
	require.NoError(t, err)
	layers, err := img.Layers()
	require.NoError(t, err)
	d := layerDigest(t, layers[0])
	require.NoError(t, os.Truncate(blobPath(c, d.Hex), 100))
	up.blobGETs.Store(0)

	resp := getBlob(ctx, t, c.Addr(), "app", d)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	got, _, err := readAllDigest(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, d.String(), got, "a truncated blob was served")
	assert.EqualValues(t, 1, up.blobGETs.Load(), "the truncated blob is fetched again")
	waitStored(t, c, d) // the client has every byte before the rename
	st, err := os.Stat(blobPath(c, d.Hex))
	require.NoError(t, err)
	size, _ := layers[0].Size()
	assert.Equal(t, size, st.Size(), "the stored copy is whole again")
}

func TestCountersMatchUpstreamByteForByte(t *testing.T) {
	up := newTestUpstream(t)
	img, layer := bigImage(t, 1<<20, 25)
	up.pushImage(t, "app:v1", img)
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")))
	c := set.Cache("registry.test")
	ctx := testCtx(t)

	// A client that leaves mid-transfer, then whole pulls.
	d := layerDigest(t, layer)
	resp := getBlob(ctx, t, c.Addr(), "app", d)
	_, err := io.ReadFull(resp.Body, make([]byte, 4096))
	require.NoError(t, err)
	resp.Body.Close()
	for range 3 {
		_, err := pull(ctx, c, "app:v1")
		require.NoError(t, err)
	}
	s := c.Stats()
	assert.Equal(t, up.sent.Load(), s.UpstreamBytes, "bytes upstream sent against bytes the cache counted")
	assert.Equal(t, up.total.Load(), s.UpstreamRequests, "requests upstream saw against requests the cache counted")
}

// --- two processes on one storage directory ---

const helperEnv = "PULLTHROUGH_TEST_CACHE_HELPER"

// runCacheHelper is a second test process: one cache on the storage and
// upstream it is given, its address on stdout, until killed or stdin closes.
func runCacheHelper() {
	set, err := cache.Start(context.Background(),
		cache.WithUpstreams(cache.Upstream{Host: "registry.test", URL: os.Getenv("UPSTREAM")}),
		cache.WithStorageDir(os.Getenv("STORAGE")), cache.WithListenAddrs("127.0.0.1"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Printf("ADDR %s\n", set.Cache("registry.test").Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	set.Close()
	os.Exit(0)
}

// startHelper starts a cache in another process and returns its address.
func startHelper(t *testing.T, upstreamURL, storage string) (addr string, cmd *exec.Cmd) {
	t.Helper()
	cmd = exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", "UPSTREAM="+upstreamURL, "STORAGE="+storage)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	var once sync.Once
	stop := func() { once.Do(func() { stdin.Close(); _ = cmd.Wait() }) }
	t.Cleanup(func() { _ = cmd.Process.Kill(); stop() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err, "helper process did not start")
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ADDR ")
	require.True(t, ok, "helper said %q", line)
	return addr, cmd
}

func TestTwoProcessesOnOneStorageFetchEachBlobOnce(t *testing.T) {
	up, layer, pause := pausedBlob(t, 26)
	d := layerDigest(t, layer)
	storage := t.TempDir()
	other, _ := startHelper(t, up.URL, storage)
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithStorageDir(storage))
	c := set.Cache("registry.test")
	ctx := testCtx(t)

	r1 := getBlob(ctx, t, other, "app", d) // the other process downloads
	_, err := io.ReadFull(r1.Body, make([]byte, 1024))
	require.NoError(t, err)
	r2 := getBlob(ctx, t, c.Addr(), "app", d) // this one follows
	require.Equal(t, http.StatusOK, r2.StatusCode)
	close(pause)
	var g errgroup.Group
	for _, r := range []io.Reader{r1.Body, r2.Body} {
		g.Go(func() error {
			got, _, err := readAllDigest(r)
			if err == nil && got != d.String() && r == r2.Body {
				err = fmt.Errorf("got %s", got)
			}
			return err
		})
	}
	require.NoError(t, g.Wait())
	assert.EqualValues(t, 1, up.blobGETs.Load(), "two processes on one storage fetched the blob twice")
	assert.Zero(t, c.Stats().UpstreamBytes, "the follower fetched nothing itself")
}

// getManifestStatus GETs a manifest from a cache and returns the status and
// the digest it named.
func getManifestStatus(ctx context.Context, addr, repo, ref string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/"+repo+"/manifests/"+ref, nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), nil
}

// Two processes on one storage asking for one cold tag at once: one GET
// upstream between them, whatever its answer. The upstream holds the first
// GET until this process's cache reports that it waits for the other's
// lock; a second GET, if any, is answered at once and counted.
func TestTwoProcessesOnOneStorageGetEachManifestOnce(t *testing.T) {
	for _, tc := range []struct {
		name, ref  string
		fail       int // the upstream's answer to manifest GETs, 0: the manifest
		wantStatus int
	}{
		{"stored", "v1", 0, http.StatusOK},
		{"upstream fails", "v1", http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newTestUpstream(t)
			up.push(t, "app:v1", 29)
			storage := t.TempDir()
			other, _ := startHelper(t, up.URL, storage)
			// This process's cache says, at debug level, when it finds the
			// lock held by the other: the upstream answers the other's GET
			// only then.
			waiting := make(chan struct{})
			set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithStorageDir(storage),
				cache.WithLogger(slog.New(onMessage{"waiting for another process's fetch of a manifest", sync.OnceFunc(func() { close(waiting) })})))
			c := set.Cache("registry.test")
			var first atomic.Bool
			up.set(func(u *testUpstream) {
				u.manifestFail = tc.fail
				u.manifestGate = func() {
					if first.CompareAndSwap(false, true) {
						select {
						case <-waiting:
						case <-time.After(30 * time.Second): // the assertions below then say what happened
						}
					}
				}
			})
			ctx := testCtx(t)
			type answer struct {
				status int
				digest string
				err    error
			}
			ask := func(addr string) <-chan answer {
				ch := make(chan answer, 1)
				go func() {
					s, d, err := getManifestStatus(ctx, addr, "app", tc.ref)
					ch <- answer{s, d, err}
				}()
				return ch
			}
			fromOther := ask(other)
			require.Eventually(t, func() bool { return up.manifestGETs.Load() == 1 }, 10*time.Second, time.Millisecond,
				"the other process's GET reaches the upstream")
			fromThis := ask(c.Addr())
			a, b := <-fromOther, <-fromThis
			require.NoError(t, a.err)
			require.NoError(t, b.err)
			assert.Equal(t, tc.wantStatus, a.status, "the other process")
			assert.Equal(t, tc.wantStatus, b.status, "this process")
			assert.Equal(t, a.digest, b.digest)
			assert.EqualValues(t, 1, up.manifestGETs.Load(), "manifest GETs upstream from two processes on one storage")
			assert.EqualValues(t, 1, c.Stats().Coalesced, "this process's request shared the other's fetch")
		})
	}
}

// A failure recorded for processes that waited on a fetch is not replayed
// to a request that came after it: that one asks upstream itself.
func TestAFailedManifestFetchIsNotReplayedToTheNextRequest(t *testing.T) {
	up := newTestUpstream(t)
	up.push(t, "app:v1", 30)
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")))
	c := set.Cache("registry.test")
	ctx := testCtx(t)
	up.set(func(u *testUpstream) { u.manifestFail = http.StatusServiceUnavailable })
	status, _, err := getManifestStatus(ctx, c.Addr(), "app", "v1")
	require.NoError(t, err)
	require.Equal(t, http.StatusServiceUnavailable, status)
	up.set(func(u *testUpstream) { u.manifestFail = 0 })
	status, _, err = getManifestStatus(ctx, c.Addr(), "app", "v1")
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, status, "the request right after a failure")
	assert.EqualValues(t, 2, up.manifestGETs.Load())
}

func TestKilledFetchingProcessIsTakenOver(t *testing.T) {
	up, layer, pause := pausedBlob(t, 27)
	d := layerDigest(t, layer)
	t.Cleanup(func() { close(pause) })
	storage := t.TempDir()
	other, cmd := startHelper(t, up.URL, storage)
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithStorageDir(storage))
	c := set.Cache("registry.test")
	ctx := testCtx(t)

	r1 := getBlob(ctx, t, other, "app", d)
	_, err := io.ReadFull(r1.Body, make([]byte, 1024))
	require.NoError(t, err)
	r2 := getBlob(ctx, t, c.Addr(), "app", d)
	require.Equal(t, http.StatusOK, r2.StatusCode)
	// The follower has streamed part of the other process's download.
	head := make([]byte, 4096)
	_, err = io.ReadFull(r2.Body, head)
	require.NoError(t, err)

	require.NoError(t, cmd.Process.Kill()) // SIGKILL mid-download
	h := sha256.New()
	h.Write(head)
	_, err = io.Copy(h, r2.Body)
	require.NoError(t, err, "the follower's client gets the whole blob after the downloader died")
	assert.Equal(t, d.Hex, hex.EncodeToString(h.Sum(nil)))
	assert.EqualValues(t, 2, up.blobGETs.Load(), "one download cut by the kill, one by the process that took over")
	// The client has every byte once the last one is sent; the cache then
	// verifies, renames and cleans up.
	waitStored(t, c, d)
	fills, err := os.ReadDir(filepath.Join(c.StorageDir(), "v2", "fills"))
	require.NoError(t, err)
	assert.Empty(t, fills, "leftovers of the killed download")
	st, err := os.Stat(blobPath(c, d.Hex))
	require.NoError(t, err)
	size, _ := layer.Size()
	assert.Equal(t, size, st.Size())
}

// waitStored waits until a blob's download has been verified and renamed
// into place, and its fill files are gone.
func waitStored(t *testing.T, c *cache.Cache, d v1.Hash) {
	t.Helper()
	require.Eventually(t, func() bool {
		_, err := os.Stat(blobPath(c, d.Hex))
		ents, _ := os.ReadDir(filepath.Join(c.StorageDir(), "v2", "fills"))
		return err == nil && len(ents) == 0
	}, 10*time.Second, 5*time.Millisecond, "blob %s was not stored", d)
}

// onMessage is a slog handler that calls do for each record with message
// msg (at any level) and drops the rest.
type onMessage struct {
	msg string
	do  func()
}

func (h onMessage) Enabled(context.Context, slog.Level) bool { return true }
func (h onMessage) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.do()
	}
	return nil
}
func (h onMessage) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h onMessage) WithGroup(string) slog.Handler      { return h }

// A process on the storage that holds a blob's download and stops making
// progress (its upstream stalls past this process's patience; frozen, say)
// keeps its lock: this process's clients get an error after twice its stall
// timeout and the header timeout, it says why, and it does not fetch the
// blob a second time beside the holder.
func TestFollowerOfADownloadThatMakesNoProgressGivesUp(t *testing.T) {
	up, layer, pause := pausedBlob(t, 31)
	d := layerDigest(t, layer)
	storage := t.TempDir()
	other, _ := startHelper(t, up.URL, storage) // the default 30s stall timeout
	var logs lockedBuffer
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithStorageDir(storage),
		cache.WithStallTimeout(200*time.Millisecond), cache.WithTimeouts(0, 300*time.Millisecond, 0), cache.WithLogger(newTextLogger(&logs)))
	c := set.Cache("registry.test")
	ctx := testCtx(t)

	r1 := getBlob(ctx, t, other, "app", d)
	_, err := io.ReadFull(r1.Body, make([]byte, 1024))
	require.NoError(t, err)
	o := fetchBlob(ctx, c.Addr(), "app", d, nil)
	noWrongBody(t, o, d, "the follower's client")
	assert.False(t, o.complete(), "the follower's client got a whole body from a download that stopped: %s", o)
	assert.Contains(t, logs.String(), "made no progress")
	assert.EqualValues(t, 1, up.blobGETs.Load(), "the follower fetched the blob beside the process holding its download")

	close(pause) // the holder's upstream moves again: its download ends
	_, err = io.Copy(io.Discard, r1.Body)
	require.NoError(t, err)
	o = fetchBlob(ctx, c.Addr(), "app", d, nil)
	assert.True(t, o.complete() && o.digest == d.String(), "after the holder finished: %s", o)
	assert.EqualValues(t, 1, up.blobGETs.Load(), "the holder's download serves this process too")
}
