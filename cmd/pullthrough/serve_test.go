package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/internal/fleettest"
)

// origin is a registry whose blob GETs are counted and can be held after a
// number of bytes, for the first GET only.
type origin struct {
	*httptest.Server
	blobGETs     atomic.Int64
	manifestGETs atomic.Int64
	mu           sync.Mutex
	holdAt       int64
	hold         chan struct{}
	manifestHold chan struct{} // non-nil: manifest GETs wait for it to close
}

func newOrigin(t *testing.T) *origin {
	o := &origin{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	o.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/manifests/") && r.Method == http.MethodGet {
			o.manifestGETs.Add(1)
			o.mu.Lock()
			hold := o.manifestHold
			o.mu.Unlock()
			if hold != nil {
				select {
				case <-hold:
				case <-r.Context().Done():
					return
				}
			}
		}
		if strings.Contains(r.URL.Path, "/blobs/sha256:") && r.Method == http.MethodGet {
			o.blobGETs.Add(1)
			o.mu.Lock()
			at, hold := o.holdAt, o.hold
			o.holdAt = 0
			o.mu.Unlock()
			if at > 0 {
				w = &holdWriter{ResponseWriter: w, left: at, hold: hold, done: r.Context().Done()}
			}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(o.Close)
	return o
}

type holdWriter struct {
	http.ResponseWriter
	left       int64
	hold, done <-chan struct{}
	held       bool
}

func (h *holdWriter) Write(p []byte) (int, error) {
	if h.held || int64(len(p)) <= h.left {
		h.left -= int64(len(p))
		return h.ResponseWriter.Write(p)
	}
	n, err := h.ResponseWriter.Write(p[:h.left])
	if err != nil {
		return n, err
	}
	h.ResponseWriter.(http.Flusher).Flush()
	h.held = true
	select {
	case <-h.hold:
	case <-h.done:
		return n, io.ErrClosedPipe
	}
	m, err := h.ResponseWriter.Write(p[h.left:])
	return n + m, err
}

func (o *origin) push(t *testing.T, repoTag string, size int64, seed int64) v1.Layer {
	l, err := random.Layer(size, "application/vnd.oci.image.layer.v1.tar", random.WithSource(rand.New(rand.NewSource(seed))))
	require.NoError(t, err)
	img, err := mutate.AppendLayers(empty.Image, l)
	require.NoError(t, err)
	ref, err := name.ParseReference(strings.TrimPrefix(o.URL, "http://")+"/"+repoTag, name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.Write(ref, img))
	o.blobGETs.Store(0)
	o.manifestGETs.Store(0)
	return l
}

type instance struct {
	cmd  *exec.Cmd
	addr string
}

// startServe starts one `pullthrough serve` process of the fleet, with
// extra flags after the fleet's own, on a port drawn by onDrawnPorts.
func startServe(t *testing.T, o *origin, redisAddr, s3Addr string, claimTTL string, extra ...string) *instance {
	t.Helper()
	var in *instance
	_, failed := onDrawnPorts(t, 1, func(port int) string {
		args := append([]string{"serve", "--upstream", "registry.test=" + o.URL, "--ports-from", fmt.Sprint(port),
			"--storage", t.TempDir(), "--s3-endpoint", "http://" + s3Addr, "--s3-bucket", fleettest.Bucket,
			"--redis", "redis://" + redisAddr, "--advertise", "127.0.0.1", "--listen", "127.0.0.1", "--claim-ttl", claimTTL}, extra...)
		cmd := exec.Command(binary, args...)
		cmd.Env = append(cmd.Environ(), "AWS_ACCESS_KEY_ID="+fleettest.AccessKey, "AWS_SECRET_ACCESS_KEY="+fleettest.SecretKey)
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "# ready" {
				go func() { _, _ = io.Copy(io.Discard, stdout) }()
				in = &instance{cmd: cmd, addr: fmt.Sprintf("127.0.0.1:%d", port)}
				return ""
			}
		}
		_ = cmd.Wait()
		return "serve did not start: " + stderr.String()
	})
	if in == nil {
		t.Fatal(failed)
	}
	return in
}

func getDigest(ctx context.Context, addr, repo string, d v1.Hash) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/"+repo+"/blobs/"+d.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s", resp.Status)
	}
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

func TestServeFleetFetchesEachBlobOnce(t *testing.T) {
	redis, s3srv := fleettest.Redis(t), fleettest.S3(t)
	o := newOrigin(t)
	l := o.push(t, "app:v1", 4<<20, 81)
	d, _ := l.Digest()
	hold := make(chan struct{})
	o.mu.Lock()
	o.holdAt, o.hold = 1<<20, hold
	o.mu.Unlock()
	var fleet []*instance
	for range 3 {
		fleet = append(fleet, startServe(t, o, redis.Addr, s3srv.Addr, "10s"))
	}
	ctx := t.Context()
	var g errgroup.Group
	for i, in := range fleet {
		g.Go(func() error {
			got, err := getDigest(ctx, in.addr, "app", d)
			if err == nil && got != d.String() {
				err = fmt.Errorf("instance %d served %s", i, got)
			}
			return err
		})
	}
	// Every instance has the request before the origin goes on.
	for _, in := range fleet {
		waitStats(t, in, func(s cache.Stats) bool { return s.Requests >= 1 })
	}
	close(hold)
	require.NoError(t, g.Wait())
	assert.EqualValues(t, 1, o.blobGETs.Load(), "blob GETs at the origin for three instances")
	// The blob is in the bucket for the next instance.
	require.Eventually(t, func() bool {
		_, err := fleettest.Client("http://"+s3srv.Addr).HeadObject(ctx, &s3.HeadObjectInput{
			Bucket: aws.String(fleettest.Bucket), Key: aws.String("registry.test/blobs/sha256/" + d.Hex)})
		return err == nil
	}, 10*time.Second, 50*time.Millisecond)
	late := startServe(t, o, redis.Addr, s3srv.Addr, "10s")
	got, err := getDigest(ctx, late.addr, "app", d)
	require.NoError(t, err)
	assert.Equal(t, d.String(), got)
	assert.EqualValues(t, 1, o.blobGETs.Load(), "a new instance reads the bucket, not the origin")
}

// Docker Hub counts manifest GETs against its pull limit: instances of a
// fleet asking for one tag at once make one GET between them, and an
// instance asking soon after gets the manifest from Redis.
func TestServeFleetGetsEachManifestOnce(t *testing.T) {
	redis, s3srv := fleettest.Redis(t), fleettest.S3(t)
	o := newOrigin(t)
	o.push(t, "app:v1", 1024, 86)
	hold := make(chan struct{})
	o.mu.Lock()
	o.manifestHold = hold
	o.mu.Unlock()
	var fleet []*instance
	for range 3 {
		fleet = append(fleet, startServe(t, o, redis.Addr, s3srv.Addr, "10s"))
	}
	ctx := t.Context()
	digests := make([]string, len(fleet))
	var g errgroup.Group
	for i, in := range fleet {
		g.Go(func() (err error) { digests[i], err = getManifestDigest(ctx, in.addr, "app", "v1"); return err })
	}
	require.Eventually(t, func() bool { return o.manifestGETs.Load() >= 1 }, 10*time.Second, 5*time.Millisecond)
	// Every instance has asked before the origin answers.
	for _, in := range fleet {
		waitStats(t, in, func(s cache.Stats) bool { return s.Requests >= 1 })
	}
	close(hold)
	require.NoError(t, g.Wait())
	assert.EqualValues(t, 1, o.manifestGETs.Load(), "manifest GETs at the origin for three instances")
	for _, d := range digests {
		assert.Equal(t, digests[0], d)
	}
	late := startServe(t, o, redis.Addr, s3srv.Addr, "10s")
	d, err := getManifestDigest(ctx, late.addr, "app", "v1")
	require.NoError(t, err)
	assert.Equal(t, digests[0], d)
	assert.EqualValues(t, 1, o.manifestGETs.Load(), "an instance asking a moment later reads what the first one fetched")
}

// waitStats waits until an instance's own counters (its stats endpoint)
// satisfy cond: a condition observed, not a pause.
func waitStats(t *testing.T, in *instance, cond func(cache.Stats) bool) {
	t.Helper()
	var last cache.Stats
	ok := assert.Eventually(t, func() bool {
		resp, err := http.Get("http://" + in.addr + cache.StatsPath)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var s cache.Stats
		if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&s) != nil {
			return false
		}
		last = s
		return cond(s)
	}, 20*time.Second, 5*time.Millisecond)
	if !ok {
		t.Fatalf("instance %s: counters never got there; last %+v", in.addr, last)
	}
}

func getManifestDigest(ctx context.Context, addr, repo, ref string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/"+repo+"/manifests/"+ref, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s", resp.Status)
	}
	sum := sha256.Sum256(b)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != resp.Header.Get("Docker-Content-Digest") {
		return "", fmt.Errorf("manifest body %s, header %s", got, resp.Header.Get("Docker-Content-Digest"))
	}
	return resp.Header.Get("Docker-Content-Digest"), nil
}

func TestServeInstanceKilledMidFetchIsReplaced(t *testing.T) {
	redis, s3srv := fleettest.Redis(t), fleettest.S3(t)
	o := newOrigin(t)
	l := o.push(t, "app:v1", 2<<20, 82)
	d, _ := l.Digest()
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	o.mu.Lock()
	o.holdAt, o.hold = 512<<10, hold
	o.mu.Unlock()
	a := startServe(t, o, redis.Addr, s3srv.Addr, "1s")
	b := startServe(t, o, redis.Addr, s3srv.Addr, "1s")
	ctx := t.Context()
	// A downloads (held by the origin after 512 KiB); a client on B streams
	// A's download.
	ra, err := http.Get("http://" + a.addr + "/v2/app/blobs/" + d.String())
	require.NoError(t, err)
	defer ra.Body.Close()
	_, err = io.ReadFull(ra.Body, make([]byte, 1024))
	require.NoError(t, err)
	type res struct {
		got string
		err error
	}
	done := make(chan res, 1)
	go func() { got, err := getDigest(ctx, b.addr, "app", d); done <- res{got, err} }()
	// B's client is streaming A's download (the origin holds it, so bytes
	// B serves can only be A's) when A dies.
	waitStats(t, b, func(s cache.Stats) bool { return s.ServedBytes > 0 })
	require.NoError(t, a.cmd.Process.Kill()) // SIGKILL mid-download
	r := <-done
	require.NoError(t, r.err, "the client on the surviving instance gets the blob")
	assert.Equal(t, d.String(), r.got)
	assert.EqualValues(t, 2, o.blobGETs.Load(), "the killed download and the one that replaced it")
}

func TestServeKeepsServingWithRedisDown(t *testing.T) {
	redis, s3srv := fleettest.Redis(t), fleettest.S3(t)
	o := newOrigin(t)
	l1 := o.push(t, "one:v1", 256<<10, 83)
	l2 := o.push(t, "two:v1", 256<<10, 84)
	a := startServe(t, o, redis.Addr, s3srv.Addr, "2s")
	ctx := t.Context()
	d1, _ := l1.Digest()
	got, err := getDigest(ctx, a.addr, "one", d1)
	require.NoError(t, err)
	assert.Equal(t, d1.String(), got)
	redis.Stop()
	d2, _ := l2.Digest()
	got, err = getDigest(ctx, a.addr, "two", d2)
	require.NoError(t, err, "a pull with Redis down")
	assert.Equal(t, d2.String(), got)
	_, err = getManifestDigest(ctx, a.addr, "two", "v1")
	require.NoError(t, err, "a manifest with Redis down")
}

// A download that fails at the origin gives its claim up at once: another
// instance asking for the same blob gets the origin's answer, not a wait for
// the claim to expire.
func TestServeFailedFetchReleasesItsClaim(t *testing.T) {
	redis, s3srv := fleettest.Redis(t), fleettest.S3(t)
	o := newOrigin(t)
	o.push(t, "app:v1", 1024, 85)
	a := startServe(t, o, redis.Addr, s3srv.Addr, "10s")
	b := startServe(t, o, redis.Addr, s3srv.Addr, "10s")
	missing := "sha256:" + strings.Repeat("0", 64)
	rdb := goredis.NewClient(&goredis.Options{Addr: redis.Addr})
	t.Cleanup(func() { rdb.Close() })
	for _, in := range []*instance{a, b} {
		resp, err := http.Get("http://" + in.addr + "/v2/app/blobs/" + missing)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusNotFound, resp.StatusCode)
		// Released by the time the client has the answer: the next
		// instance asks the origin itself instead of waiting 10s.
		n, err := rdb.Exists(t.Context(), "pullthrough:claim:registry.test/"+missing).Result()
		require.NoError(t, err)
		assert.Zero(t, n, "the claim of a failed fetch is still held")
	}
	assert.EqualValues(t, 2, o.blobGETs.Load(), "each instance asked the origin once")
}
