package cachetest_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
	"github.com/pullthrough/pullthrough/internal/fleettest"
)

func TestIdleConnectionsAreClosedAndPullsGoOn(t *testing.T) {
	up := newFaultyUpstream(t)
	img, layer := bigImage(t, 256<<10, 95)
	up.pushImage(t, "app:v1", img)
	d := layerDigest(t, layer)
	const idle, conns = 2 * time.Second, 1000
	c := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithIdleTimeout(idle), cache.WithMaxConns(2*conns)).Cache("registry.test")

	// Each connection makes one request and keeps the connection alive.
	opened := make([]net.Conn, conns)
	answered := make([]time.Time, conns)
	var g errgroup.Group
	g.SetLimit(64)
	for i := range conns {
		g.Go(func() error {
			conn, err := net.DialTimeout("tcp", c.Addr(), 10*time.Second)
			if err != nil {
				return err
			}
			opened[i] = conn
			if _, err := io.WriteString(conn, "GET /v2/ HTTP/1.1\r\nHost: cache\r\n\r\n"); err != nil {
				return err
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			answered[i] = time.Now()
			if resp.StatusCode != http.StatusOK || resp.Close {
				return fmt.Errorf("connection %d: %s, close %v: want a kept-alive 200", i, resp.Status, resp.Close)
			}
			return nil
		})
	}
	t.Cleanup(func() {
		for _, c := range opened {
			if c != nil {
				c.Close()
			}
		}
	})
	require.NoError(t, g.Wait())

	o := fetchBlob(testCtx(t), c.Addr(), "app", d, nil)
	pulled := time.Now()
	require.True(t, o.complete() && o.digest == d.String(), "a pull beside %d idle connections: %s", conns, o)

	// Every connection is closed by the cache: a read sees EOF well before
	// the deadline.
	closed := make([]time.Time, conns)
	var r errgroup.Group
	for i, conn := range opened {
		r.Go(func() error {
			_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, err := conn.Read(make([]byte, 1))
			closed[i] = time.Now()
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isReset(err) {
				return fmt.Errorf("connection %d: %v (want EOF: closed by the cache)", i, err)
			}
			return nil
		})
	}
	require.NoError(t, r.Wait())
	openAtPull, longest, shortest := 0, time.Duration(0), time.Hour
	for i := range conns {
		if closed[i].After(pulled) {
			openAtPull++
		}
		longest = max(longest, closed[i].Sub(answered[i]))
		shortest = min(shortest, closed[i].Sub(answered[i]))
	}
	t.Logf("idle connections closed %v to %v after their request; %d open when the pull ended", shortest, longest, openAtPull)
	assert.Greater(t, openAtPull, conns*9/10, "the pull did not run beside the idle connections")
	assert.Less(t, longest, idle+15*time.Second, "an idle connection outlived the idle timeout by far")
	assert.Greater(t, shortest, idle/2, "a connection was closed long before the idle timeout")
}

func TestTricklingUpstreamIsAbandoned(t *testing.T) {
	up := newFaultyUpstream(t)
	img, layer := bigImage(t, 256<<10, 96)
	up.pushImage(t, "app:v1", img)
	d := layerDigest(t, layer)
	const stall = 2 * time.Second
	c := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithStallTimeout(stall)).Cache("registry.test")
	up.trickle.Store(true)

	ctx, cancel := context.WithTimeout(testCtx(t), 30*time.Second)
	defer cancel()
	start := time.Now()
	o := fetchBlob(ctx, c.Addr(), "app", d, nil)
	took := time.Since(start)
	t.Logf("a 1 byte/s upstream: %s after %v", o, took)
	require.NoError(t, ctx.Err(), "the client waited 30s on a trickle")
	assert.False(t, o.complete(), "a trickle was served as whole")
	assert.True(t, o.status == http.StatusGatewayTimeout || o.status == http.StatusOK && o.err != nil, "want a 504 or a cut: %s", o)
	requireNoFills(t, c)

	up.trickle.Store(false)
	o = fetchBlob(testCtx(t), c.Addr(), "app", d, nil)
	require.True(t, o.complete() && o.digest == d.String(), "the next request after the trickle: %s", o)
	assert.EqualValues(t, 2, up.blobGETs.Load(), "the next request starts a fresh download")
}

func TestStorageInUseLockAndRemovedLayout(t *testing.T) {
	up := newFaultyUpstream(t)
	img, layer := bigImage(t, 128<<10, 97)
	up.pushImage(t, "app:v1", img)
	d := layerDigest(t, layer)
	root := t.TempDir()
	set, closeSet := startSet(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithStorageDir(root))
	c := set.Cache("registry.test")
	dirs, err := cache.StorageDirs(root)
	require.NoError(t, err)
	require.Len(t, dirs, 1)
	assert.Equal(t, c.StorageDir(), dirs[0].Path)
	assert.True(t, dirs[0].InUse, "a running cache's storage is in use")

	// Removed by hand under the running cache: the layout is made again.
	require.NoError(t, os.RemoveAll(dirs[0].Content))
	o := fetchBlob(testCtx(t), c.Addr(), "app", d, nil)
	require.True(t, o.complete() && o.digest == d.String(), "a pull after the layout was removed: %s", o)
	waitStored(t, c, d)
	_, err = pull(testCtx(t), c, "app:v1")
	require.NoError(t, err, "a whole image after the layout was removed")
	dirs, err = cache.StorageDirs(root)
	require.NoError(t, err)
	require.Len(t, dirs, 1, "the recreated layout is a storage directory again")

	closeSet()
	dirs, err = cache.StorageDirs(root)
	require.NoError(t, err)
	require.Len(t, dirs, 1)
	assert.False(t, dirs[0].InUse, "a closed cache's storage is not in use")
}

func TestStorageIsInUseAgainOnceItsLayoutIsRecreated(t *testing.T) {
	up := newFaultyUpstream(t)
	img, layer := bigImage(t, 128<<10, 98)
	up.pushImage(t, "app:v1", img)
	d := layerDigest(t, layer)
	root := t.TempDir()
	c := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithStorageDir(root)).Cache("registry.test")
	require.NoError(t, os.RemoveAll(filepath.Join(c.StorageDir(), "v2")))
	o := fetchBlob(testCtx(t), c.Addr(), "app", d, nil)
	require.True(t, o.complete() && o.digest == d.String(), "a pull after the layout was removed: %s", o)
	waitStored(t, c, d)
	require.Eventually(t, func() bool {
		dirs, err := cache.StorageDirs(root)
		return err == nil && len(dirs) == 1 && dirs[0].InUse
	}, 5*time.Second, 20*time.Millisecond, "the running cache's recreated storage is not reported in use")
}

func TestConnectionCapPerAddressClosesTheLongestIdle(t *testing.T) {
	up := newFaultyUpstream(t)
	img, layer := bigImage(t, 64<<10, 99)
	up.pushImage(t, "app:v1", img)
	d := layerDigest(t, layer)
	const capacity, extra = 20, 5
	c := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithMaxConns(capacity)).Cache("registry.test")
	// An address of the test's own, so that no other client of the cache
	// (Start's readiness probe, kept alive on 127.0.0.1) shares its cap.
	dialer := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}

	// One at a time, so that the first opened are the longest idle.
	var conns []net.Conn
	t.Cleanup(func() {
		for _, conn := range conns {
			conn.Close()
		}
	})
	for i := range capacity + extra {
		conn, err := dialer.Dial("tcp", c.Addr())
		require.NoError(t, err)
		conns = append(conns, conn)
		require.NoError(t, keepAliveRequest(conn), "connection %d", i)
	}
	open := make([]bool, len(conns))
	var g errgroup.Group
	for i, conn := range conns {
		g.Go(func() (err error) { open[i], err = stillOpen(conn); return err })
	}
	require.NoError(t, g.Wait())
	var closed []int
	for i, o := range open {
		if !o {
			closed = append(closed, i)
		}
	}
	t.Logf("closed for newer connections: %v", closed)
	assert.Len(t, closed, extra, "an address past its cap of %d keeps %d connections", capacity, capacity+extra-len(closed))
	for _, i := range closed {
		// Which of the oldest goes first depends on when the server marked
		// each idle, which lags the answer a client reads by a scheduling
		// delay; the newest are never the longest idle.
		assert.Less(t, i, capacity, "connection %d, among the %d newest, was closed while older idle ones were open", i, extra)
	}

	tr := &http.Transport{DialContext: dialer.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	o := fetchBlobWith(testCtx(t), &http.Client{Transport: tr}, c.Addr(), "app", d, nil)
	require.True(t, o.complete() && o.digest == d.String(), "a pull from an address at its cap: %s", o)
}

// A download that outlives the fleet's claim TTL keeps its claim: a second
// instance arriving after the TTL streams the first one's download instead
// of going to the origin itself.
func TestFleetDownloadOutlivingItsClaimTTLIsFetchedOnce(t *testing.T) {
	rd, s3srv := fleettest.Redis(t), fleettest.S3(t)
	origin := newFaultyUpstream(t)
	img, layer := bigImage(t, 2<<20, 100)
	origin.pushImage(t, "app:v1", img)
	d := layerDigest(t, layer)
	const ttl = time.Second
	release := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	hold := func() { <-release }
	origin.gate.Store(&hold)
	instance := func() *cache.Cache {
		return startFixedPort(t, origin.upstream("registry.test"), cache.WithStorageDir(t.TempDir()),
			cache.WithFleet(cache.FleetConfig{
				S3Endpoint: "http://" + s3srv.Addr, Bucket: fleettest.Bucket,
				S3Credentials: cache.BasicAuth(fleettest.AccessKey, fleettest.SecretKey),
				Redis:         "redis://" + rd.Addr, Advertise: "127.0.0.1", ClaimTTL: ttl,
			})).Cache("registry.test")
	}
	a, b := instance(), instance()
	ctx := testCtx(t)
	first := make(chan outcome, 1)
	go func() { first <- fetchBlob(ctx, a.Addr(), "app", d, nil) }()
	require.Eventually(t, func() bool { return origin.blobGETs.Load() == 1 }, 10*time.Second, 5*time.Millisecond, "the first instance never asked the origin")
	// The subject here is elapsed time: the download must outlive the claim's
	// TTL three times over before the second instance asks.
	time.Sleep(3 * ttl)
	second := make(chan outcome, 1)
	go func() { second <- fetchBlob(ctx, b.Addr(), "app", d, nil) }()
	require.Eventually(t, func() bool { return b.Stats().Requests == 1 }, 10*time.Second, 5*time.Millisecond)
	close(release)
	for name, ch := range map[string]chan outcome{"first": first, "second": second} {
		o := <-ch
		assert.True(t, o.complete() && o.digest == d.String(), "the %s instance's pull: %s", name, o)
	}
	assert.EqualValues(t, 1, origin.blobGETs.Load(), "the claim lapsed during a download longer than its TTL: the origin was asked again")
}
