package cachetest_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
	"github.com/pullthrough/pullthrough/internal/fleettest"
)

func TestUpstreamFlippingAByteGivesNoClientAWrongBody(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int64
		at   func(size int64) int64
	}{
		{"first byte of 4 MiB", 4 << 20, func(int64) int64 { return 0 }},
		{"middle byte of 4 MiB", 4 << 20, func(s int64) int64 { return s / 2 }},
		{"last byte of 4 MiB", 4 << 20, func(s int64) int64 { return s - 1 }},
		{"last byte of 100 KiB", 100 << 10, func(s int64) int64 { return s - 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newFaultyUpstream(t)
			img, layer := bigImage(t, tc.size, 91)
			up.pushImage(t, "app:v1", img)
			d := layerDigest(t, layer)
			size, err := layer.Size()
			require.NoError(t, err)
			c := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test"))).Cache("registry.test")
			up.flipAt.Store(tc.at(size))
			const clients = 15
			up.waitForRequests(c, clients)

			outs := make([]outcome, clients)
			var g errgroup.Group
			for i := range clients {
				g.Go(func() error { outs[i] = fetchBlob(testCtx(t), c.Addr(), "app", d, nil); return nil })
			}
			require.NoError(t, g.Wait())
			cut := 0
			for i, o := range outs {
				noWrongBody(t, o, d, fmt.Sprintf("client %d", i))
				if !o.complete() {
					cut++
				}
			}
			t.Logf("%d of %d clients saw an error or a cut; %d upstream blob GETs", cut, clients, up.blobGETs.Load())
			assert.Equal(t, clients, cut, "only damaged bytes came from upstream, yet a client got a whole body")
			requireNoFills(t, c)
			_, statErr := os.Stat(blobPath(c, d.Hex))
			assert.True(t, os.IsNotExist(statErr), "a blob with the wrong digest was stored")

			up.gate.Store(nil)
			up.flipAt.Store(-1)
			o := fetchBlob(testCtx(t), c.Addr(), "app", d, nil)
			require.True(t, o.complete(), "after the upstream heals: %s", o)
			assert.Equal(t, d.String(), o.digest)
			waitStored(t, c, d)
		})
	}
}

func TestDamagedStoredBlobIsFetchedAgain(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int64
		rng  bool
		// inRequest: the damage is found before the first byte is sent and
		// the blob fetched again in the same request; else the first pull
		// may be cut.
		inRequest bool
	}{
		// Hashed before the first byte: fetched again in the same request.
		{"small", 256 << 10, false, true},
		// Hashed as sent, the last byte held back: a cut, then right.
		{"large", 3 << 20, false, false},
		// A range is hashed before it is sent, whatever the size.
		{"large range", 3 << 20, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newFaultyUpstream(t)
			img, layer := bigImage(t, tc.size, 92)
			up.pushImage(t, "app:v1", img)
			d := layerDigest(t, layer)
			rc, err := layer.Compressed()
			require.NoError(t, err)
			want, err := io.ReadAll(rc)
			require.NoError(t, err)
			rc.Close()
			root := t.TempDir()
			opts := []cache.Option{cache.WithUpstreams(up.upstream("registry.test")), cache.WithStorageDir(root)}
			first, closeFirst := startSet(t, opts...)
			c := first.Cache("registry.test")
			o := fetchBlob(testCtx(t), c.Addr(), "app", d, nil)
			require.True(t, o.complete() && o.digest == d.String(), "cold pull: %s", o)
			waitStored(t, c, d)
			closeFirst()

			flipByte(t, blobPath(c, d.Hex), tc.size/2)
			up.blobGETs.Store(0)
			second, _ := startSet(t, opts...)
			c = second.Cache("registry.test")
			var header http.Header
			lo, hi := tc.size/2-1000, tc.size/2+1000 // the damaged byte is in it
			if tc.rng {
				header = http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", lo, hi)}}
			}
			got := fetchBlob(testCtx(t), c.Addr(), "app", d, header)
			if tc.rng {
				require.True(t, got.complete(), "the range was not answered: %s", got)
				body := rangeBytes(t, c.Addr(), d, lo, hi)
				assert.True(t, bytes.Equal(want[lo:hi+1], body), "a range of a damaged blob was served from the damage")
			} else {
				noWrongBody(t, got, d, "the first pull")
				if tc.inRequest {
					require.True(t, got.complete(), "a small damaged blob is fetched again within the request: %s", got)
				}
			}
			pulls := 1
			for !got.complete() && pulls < 2 {
				got = fetchBlob(testCtx(t), c.Addr(), "app", d, nil)
				noWrongBody(t, got, d, "the second pull")
				pulls++
			}
			require.True(t, got.complete(), "still not right after %d pulls: %s", pulls, got)
			t.Logf("right after %d pull(s), %d upstream blob GETs", pulls, up.blobGETs.Load())
			assert.EqualValues(t, 1, c.Stats().Damaged, "the damaged blob is counted once")
			assert.EqualValues(t, 1, up.blobGETs.Load(), "the damaged blob is fetched again once")
			waitStored(t, c, d)
			assert.Equal(t, d.String(), fileDigest(t, blobPath(c, d.Hex)), "the stored copy is whole again")
		})
	}
}

func TestDamagedStoredManifestIsRewritten(t *testing.T) {
	up := newFaultyUpstream(t)
	img, _ := bigImage(t, 64<<10, 93)
	up.pushImage(t, "app:v1", img)
	md := digestOf(t, img)
	root := t.TempDir()
	opts := []cache.Option{cache.WithUpstreams(up.upstream("registry.test")), cache.WithStorageDir(root)}
	first, closeFirst := startSet(t, opts...)
	c := first.Cache("registry.test")
	_, err := pull(testCtx(t), c, "app:v1")
	require.NoError(t, err)
	path := blobPath(c, md.Hex)
	require.Equal(t, md.String(), fileDigest(t, path), "the manifest is stored by digest")
	closeFirst()

	flipByte(t, path, 10)
	up.manifestGETs.Store(0)
	second, _ := startSet(t, opts...)
	c = second.Cache("registry.test")
	for i := range 3 {
		status, got := manifestBodyDigest(t, c.Addr(), "app", md.String())
		require.Equal(t, http.StatusOK, status, "GET %d", i+1)
		assert.Equal(t, md.String(), got, "GET %d served a manifest body with another digest", i+1)
	}
	assert.EqualValues(t, 1, up.manifestGETs.Load(), "the damaged manifest costs one upstream GET, then none")
	assert.EqualValues(t, 1, c.Stats().Damaged)
	assert.Equal(t, md.String(), fileDigest(t, path), "the stored manifest was rewritten")
}

func TestDamagedBucketObjectIsReplacedFromTheOrigin(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func([]byte) []byte
		// sized: the instance has the manifest first, so it knows the
		// blob's size and finds a wrong-sized object before sending a byte.
		sized bool
	}{
		{"one byte flipped", func(b []byte) []byte { b[len(b)/2] ^= 0xff; return b }, false},
		{"truncated", func(b []byte) []byte { return b[:1<<20] }, false},
		{"truncated, size known from the manifest", func(b []byte) []byte { return b[:1<<20] }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rd, s3srv := fleettest.Redis(t), fleettest.S3(t)
			bucket := fleettest.Client("http://" + s3srv.Addr)
			origin := newFaultyUpstream(t)
			img, layer := bigImage(t, 3<<20, 94)
			origin.pushImage(t, "app:v1", img)
			d := layerDigest(t, layer)
			key := "registry.test/blobs/sha256/" + d.Hex
			ctx := testCtx(t)

			a := fleetInstance(t, origin, rd.Addr, s3srv.Addr)
			o := fetchBlob(ctx, a.Addr(), "app", d, nil)
			require.True(t, o.complete() && o.digest == d.String(), "cold pull through the fleet: %s", o)
			stored := func() []byte {
				out, err := bucket.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(fleettest.Bucket), Key: aws.String(key)})
				if err != nil {
					return nil
				}
				defer out.Body.Close()
				b, _ := io.ReadAll(out.Body)
				return b
			}
			var obj []byte
			require.Eventually(t, func() bool { obj = stored(); return obj != nil }, 20*time.Second, 20*time.Millisecond, "the blob never reached the bucket")
			_, err := bucket.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(fleettest.Bucket), Key: aws.String(key), Body: bytes.NewReader(tc.damage(obj))})
			require.NoError(t, err)
			origin.blobGETs.Store(0)

			// A cold instance finds the damaged object in the bucket.
			b := fleetInstance(t, origin, rd.Addr, s3srv.Addr)
			if tc.sized {
				status, _ := manifestBodyDigest(t, b.Addr(), "app", "v1")
				require.Equal(t, http.StatusOK, status)
			}
			got := fetchBlob(ctx, b.Addr(), "app", d, nil)
			noWrongBody(t, got, d, "the first pull")
			if tc.sized {
				require.True(t, got.complete(), "a wrong-sized object is replaced within the request: %s", got)
			}
			pulls := 1
			for !got.complete() && pulls < 2 {
				got = fetchBlob(ctx, b.Addr(), "app", d, nil)
				noWrongBody(t, got, d, "the second pull")
				pulls++
			}
			require.True(t, got.complete(), "still not right after %d pulls: %s", pulls, got)
			assert.EqualValues(t, 1, origin.blobGETs.Load(), "the origin is asked once for the damaged blob")
			require.Eventually(t, func() bool {
				sum := sha256.Sum256(stored())
				return hex.EncodeToString(sum[:]) == d.Hex
			}, 20*time.Second, 20*time.Millisecond, "the bucket's object was not replaced with the origin's bytes")

			// A third instance is served from the bucket, not the origin.
			o = fetchBlob(ctx, fleetInstance(t, origin, rd.Addr, s3srv.Addr).Addr(), "app", d, nil)
			require.True(t, o.complete() && o.digest == d.String(), "a pull after the repair: %s", o)
			assert.EqualValues(t, 1, origin.blobGETs.Load(), "the repaired object serves the fleet")
		})
	}
}

// An instance streaming another instance's download when that one stops
// takes the download over from the origin within its client's response:
// the new bytes must start with what the client already has. When they do,
// the client gets the whole blob in that one response; when they do not
// (the origin now sends other bytes), the response is cut and nothing is
// stored: a client is never handed a body with the wrong digest.
func TestFleetTakeOverContinuesOnlyOnTheSameBytes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		flipAt int64 // in the origin's answer to the take-over; -1: none
	}{
		{"same bytes", -1},
		{"other bytes", 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rd, s3srv := fleettest.Redis(t), fleettest.S3(t)
			origin := newFaultyUpstream(t)
			img, layer := bigImage(t, 2<<20, 96)
			origin.pushImage(t, "app:v1", img)
			d := layerDigest(t, layer)
			origin.pause = make(chan struct{})
			t.Cleanup(func() { close(origin.pause) })
			origin.pauseAt.Store(768 << 10)
			var logs lockedBuffer
			aSet := fleetSet(t, origin, rd.Addr, s3srv.Addr)
			a := aSet.Cache("registry.test")
			b := fleetSet(t, origin, rd.Addr, s3srv.Addr, cache.WithLogger(newTextLogger(&logs))).Cache("registry.test")
			ctx := testCtx(t)

			fromA := make(chan outcome, 1)
			go func() { fromA <- fetchBlob(ctx, a.Addr(), "app", d, nil) }()
			require.Eventually(t, func() bool { return origin.blobGETs.Load() == 1 }, 10*time.Second, 5*time.Millisecond)
			fromB := make(chan outcome, 1)
			go func() { fromB <- fetchBlob(ctx, b.Addr(), "app", d, nil) }()
			// B's client has bytes of A's download (the origin holds it,
			// so they can only be A's) when A stops.
			require.Eventually(t, func() bool { return b.Stats().ServedBytes > 0 }, 10*time.Second, 5*time.Millisecond)
			origin.flipAt.Store(tc.flipAt)
			require.NoError(t, aSet.Close())
			<-fromA
			o := <-fromB
			noWrongBody(t, o, d, "B's client")
			assert.EqualValues(t, 2, origin.blobGETs.Load(), "A's download and B's take-over")
			assert.Contains(t, logs.String(), "resuming from the next", "B resumed the download it streamed")
			if tc.flipAt < 0 {
				assert.True(t, o.complete() && o.digest == d.String(), "B's client, in the response A's download began: %s", o)
				return
			}
			assert.False(t, o.complete(), "B's client was handed a body the new bytes did not match: %s", o)
			assert.Contains(t, logs.String(), "does not match what was already received")
			requireNoFills(t, b)
			_, err := os.Stat(blobPath(b, d.Hex))
			assert.ErrorIs(t, err, os.ErrNotExist, "B stored a blob from a mismatched take-over")
			origin.flipAt.Store(-1)
			o = fetchBlob(ctx, b.Addr(), "app", d, nil)
			assert.True(t, o.complete() && o.digest == d.String(), "the next pull: %s", o)
		})
	}
}

// A manifest one instance of a fleet fetched by tag is served to the
// others from the fleet's record, but never for longer than the tag TTL: a
// fleet whose caches always ask upstream (a negative TTL) shares no tag.
func TestFleetSharesATagNoLongerThanItsTagTTL(t *testing.T) {
	for _, tc := range []struct {
		name     string
		tagTTL   time.Duration
		wantGETs int64
	}{
		{"default tag TTL", 0, 1},
		{"always ask", -1, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rd, s3srv := fleettest.Redis(t), fleettest.S3(t)
			origin := newFaultyUpstream(t)
			img, _ := bigImage(t, 4<<10, 97)
			origin.pushImage(t, "app:v1", img)
			var opts []cache.Option
			if tc.tagTTL != 0 {
				opts = append(opts, cache.WithTagTTL(tc.tagTTL))
			}
			a := fleetSet(t, origin, rd.Addr, s3srv.Addr, opts...).Cache("registry.test")
			b := fleetSet(t, origin, rd.Addr, s3srv.Addr, opts...).Cache("registry.test")
			want := digestOf(t, img).String()
			for _, c := range []*cache.Cache{a, b} {
				status, got := manifestBodyDigest(t, c.Addr(), "app", "v1")
				require.Equal(t, http.StatusOK, status)
				assert.Equal(t, want, got)
			}
			assert.EqualValues(t, tc.wantGETs, origin.manifestGETs.Load(), "manifest GETs at the origin for one tag through two instances")
		})
	}
}
