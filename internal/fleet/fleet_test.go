package fleet

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/internal/engine"
	"github.com/pullthrough/pullthrough/internal/fleettest"
	"github.com/pullthrough/pullthrough/internal/testnet"
)

// servers are one test's real Redis and S3 (versitygw); fleettest skips the
// test when they are not installed, and fails it under CI=true.
type servers struct {
	redis *testnet.Server
	s3    string // http://host:port
	rdb   *redis.Client
	obj   *s3.Client
}

func startServers(tb testing.TB) *servers {
	tb.Helper()
	r, s := fleettest.Redis(tb), fleettest.S3(tb)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	tb.Cleanup(func() { rdb.Close() })
	return &servers{redis: r, s3: "http://" + s.Addr, rdb: rdb, obj: fleettest.Client("http://" + s.Addr)}
}

// instance joins the fleet as one instance advertised at advertise.
func (s *servers) instance(tb testing.TB, advertise string, ttl time.Duration) *Fleet {
	tb.Helper()
	f, err := New(testCtx(tb), Config{
		S3Endpoint: s.s3, Bucket: fleettest.Bucket, AccessKey: fleettest.AccessKey, SecretKey: fleettest.SecretKey,
		Prefix: "registry.test/", Redis: "redis://" + s.redis.Addr, Advertise: advertise, ClaimTTL: ttl,
	})
	require.NoError(tb, err)
	tb.Cleanup(func() { f.Close() })
	return f
}

func testCtx(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	tb.Cleanup(cancel)
	return ctx
}

// blob is random content written to a file, as a verified download leaves it.
func blob(tb testing.TB, size int) (digest.Digest, []byte, string) {
	tb.Helper()
	b := make([]byte, size)
	_, err := rand.Read(b)
	require.NoError(tb, err)
	path := filepath.Join(tb.TempDir(), "blob")
	require.NoError(tb, os.WriteFile(path, b, 0o644))
	return digest.FromBytes(b), b, path
}

// peer stands in for an instance's fill endpoint: it has no download to
// share (404), and counts the requests.
func peer(tb testing.TB) (string, *atomic.Int64) {
	tb.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		http.NotFound(w, r)
	}))
	tb.Cleanup(srv.Close)
	return srv.URL, &n
}

type blobResult struct {
	body []byte
	size int64
	ok   bool
	err  error
}

func readBlob(ctx context.Context, f *Fleet, d digest.Digest) blobResult {
	body, size, ok, err := f.Blob(ctx, d)
	if err != nil || !ok {
		return blobResult{ok: ok, err: err}
	}
	defer body.Close()
	b, err := io.ReadAll(body)
	return blobResult{body: b, size: size, ok: true, err: err}
}

// holdFor checks cond every few milliseconds for d, and fails the test the
// first time it is false.
func holdFor(tb testing.TB, d time.Duration, cond func() bool, msg string) {
	tb.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); {
		if !cond() {
			tb.Fatal(msg)
		}
		time.Sleep(20 * time.Millisecond) // sampling interval of an observation, not a wait for an event
	}
}

func TestBlobClaimIsRenewedPastItsTTLAndReleasedWithTheBlob(t *testing.T) {
	s := startServers(t)
	const ttl = 600 * time.Millisecond
	aURL, asked := peer(t)
	a := s.instance(t, aURL, ttl)
	b := s.instance(t, "http://b.test:5000", ttl)
	d, content, path := blob(t, 300<<10)
	ctx := testCtx(t)

	body, _, ok, err := a.Blob(ctx, d)
	require.NoError(t, err)
	require.False(t, ok, "nothing is stored: the first instance is to download it")
	require.Nil(t, body)
	owner, err := s.rdb.Get(ctx, a.claimKey(d)).Result()
	require.NoError(t, err, "the claim is in redis")
	assert.Equal(t, aURL, owner, "the claim names its holder's address")

	// A second instance waits on the claim while the first downloads.
	res := make(chan blobResult, 1)
	go func() { res <- readBlob(ctx, b, d) }()

	// The download outlasts the claim's TTL three times over: renewal keeps
	// the claim, so the second instance neither takes it nor gives up.
	holdFor(t, 3*ttl, func() bool {
		select {
		case r := <-res:
			t.Errorf("the waiting instance returned while the claim was held: %+v", r)
			return false
		default:
		}
		owner, err := s.rdb.Get(ctx, a.claimKey(d)).Result()
		return err == nil && owner == aURL
	}, "the claim lapsed or changed hands while its holder was still downloading (not renewed)")
	assert.Positive(t, asked.Load(), "the waiting instance asked the holder for its download")
	pttl, err := s.rdb.PTTL(ctx, a.claimKey(d)).Result()
	require.NoError(t, err)
	assert.LessOrEqual(t, pttl, ttl, "a renewed claim still expires: its TTL is at most ClaimTTL")
	assert.Positive(t, pttl)

	a.Done(ctx, d, path)
	n, err := s.rdb.Exists(ctx, a.claimKey(d)).Result()
	require.NoError(t, err)
	assert.Zero(t, n, "Done releases the claim")
	head, err := s.obj.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(fleettest.Bucket), Key: aws.String("registry.test/blobs/sha256/" + d.Encoded())})
	require.NoError(t, err, "Done puts the blob in the bucket, under the upstream's prefix")
	assert.EqualValues(t, len(content), aws.ToInt64(head.ContentLength))

	select {
	case r := <-res:
		require.NoError(t, r.err)
		require.True(t, r.ok, "the waiting instance gets the stored blob once the claim goes")
		assert.EqualValues(t, len(content), r.size)
		assert.True(t, bytes.Equal(content, r.body), "the waiting instance read other bytes than were stored")
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting instance did not return within 10s of the blob being stored")
	}
}

func TestClaimOfAClosedInstanceExpiresAndIsTakenOver(t *testing.T) {
	s := startServers(t)
	const ttl = 500 * time.Millisecond
	aURL, _ := peer(t)
	a := s.instance(t, aURL, ttl)
	b := s.instance(t, "http://b.test:5000", ttl)
	d, _, _ := blob(t, 1<<10)
	ctx := testCtx(t)

	_, _, ok, err := a.Blob(ctx, d)
	require.NoError(t, err)
	require.False(t, ok)
	// Another instance's release does not touch a claim it does not hold.
	b.Done(ctx, d, "")
	owner, err := s.rdb.Get(ctx, a.claimKey(d)).Result()
	require.NoError(t, err, "a release by an instance that does not hold the claim removed it")
	assert.Equal(t, aURL, owner)

	// A holder that stops (Close: no more renewals) leaves a claim that
	// expires on its own, and a waiting instance takes the download over.
	require.NoError(t, a.Close())
	start := time.Now()
	r := readBlob(ctx, b, d)
	took := time.Since(start)
	require.NoError(t, r.err)
	assert.False(t, r.ok, "the waiting instance is to download the blob itself")
	assert.Less(t, took, ttl+5*time.Second, "the claim outlived its dead holder by far more than ClaimTTL")
	owner, err = s.rdb.Get(ctx, b.claimKey(d)).Result()
	require.NoError(t, err)
	assert.Equal(t, "http://b.test:5000", owner, "the claim changed hands")
}

func TestBlobReadsTheStoredObjectAndDiscardDeletesIt(t *testing.T) {
	s := startServers(t)
	a := s.instance(t, "http://a.test:5000", time.Second)
	d, content, _ := blob(t, 2<<20)
	ctx := testCtx(t)
	key := "registry.test/blobs/sha256/" + d.Encoded()
	// Written by another instance, or by hand: the key layout is the contract.
	_, err := s.obj.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(fleettest.Bucket), Key: aws.String(key), Body: bytes.NewReader(content)})
	require.NoError(t, err)

	r := readBlob(ctx, a, d)
	require.NoError(t, r.err)
	require.True(t, r.ok, "a stored object is read from the bucket")
	assert.EqualValues(t, len(content), r.size, "the size is the object's")
	assert.True(t, bytes.Equal(content, r.body), "the bytes are the object's")
	n, err := s.rdb.Exists(ctx, a.claimKey(d)).Result()
	require.NoError(t, err)
	assert.Zero(t, n, "reading a stored blob takes no claim")

	a.Discard(ctx, d)
	_, err = s.obj.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(fleettest.Bucket), Key: aws.String(key)})
	require.Error(t, err, "Discard left the object in the bucket")
	r = readBlob(ctx, a, d)
	require.NoError(t, r.err)
	assert.False(t, r.ok, "after Discard the next fetch goes to the origin (a claim), not the bucket")
}

func TestBlobWithRedisDownIsAnErrorNotAWait(t *testing.T) {
	s := startServers(t)
	a := s.instance(t, "http://a.test:5000", time.Second)
	d, _, _ := blob(t, 1<<10)
	s.redis.Stop()
	start := time.Now()
	_, _, ok, err := a.Blob(testCtx(t), d)
	require.Error(t, err, "without redis the instance fetches on its own: Blob says so")
	assert.False(t, ok)
	assert.Less(t, time.Since(start), 15*time.Second, "a dead redis is found within its timeouts")
}

func TestManifestRecordIsSharedAndExpires(t *testing.T) {
	s := startServers(t)
	const ttl = time.Second
	a := s.instance(t, "http://a.test:5000", 5*time.Second)
	b := s.instance(t, "http://b.test:5000", 5*time.Second)
	ctx := testCtx(t)
	const key = "app:v1"
	record := []byte(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:00"}`)

	rec, ok, err := a.Manifest(ctx, key)
	require.NoError(t, err)
	require.False(t, ok, "no record yet: the first instance is to fetch the manifest")
	require.Nil(t, rec)

	type manifestResult struct {
		rec []byte
		ok  bool
		err error
	}
	res := make(chan manifestResult, 1)
	go func() {
		rec, ok, err := b.Manifest(ctx, key)
		res <- manifestResult{rec, ok, err}
	}()
	holdFor(t, 300*time.Millisecond, func() bool {
		select {
		case r := <-res:
			t.Errorf("a second instance did not wait for the first one's fetch: %+v", r)
			return false
		default:
			return true
		}
	}, "the second instance returned while the first one fetched")

	a.ManifestDone(ctx, key, record, ttl)
	select {
	case r := <-res:
		require.NoError(t, r.err)
		require.True(t, r.ok, "the waiting instance gets the record")
		assert.Equal(t, record, r.rec)
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting instance did not get the record within 10s")
	}
	n, err := s.rdb.Exists(ctx, a.manifestClaimKey(key)).Result()
	require.NoError(t, err)
	assert.Zero(t, n, "ManifestDone releases the claim")
	pttl, err := s.rdb.PTTL(ctx, a.manifestKey(key)).Result()
	require.NoError(t, err)
	assert.Positive(t, pttl, "the record expires")
	assert.LessOrEqual(t, pttl, ttl, "the record lives no longer than the TTL given")

	// Later instances read it without fetching, until it expires.
	rec, ok, err = b.Manifest(ctx, key)
	require.NoError(t, err)
	assert.True(t, ok)
	assert.Equal(t, record, rec)
	require.Eventually(t, func() bool {
		n, err := s.rdb.Exists(ctx, a.manifestKey(key)).Result()
		return err == nil && n == 0
	}, ttl+5*time.Second, 20*time.Millisecond, "the record outlived its TTL")
	_, ok, err = b.Manifest(ctx, key)
	require.NoError(t, err)
	assert.False(t, ok, "after the record expired the next instance fetches the manifest again")
	b.ManifestDone(ctx, key, nil, ttl)
}

func TestManifestClaimIsRenewedAndAFailedFetchLeavesNoRecord(t *testing.T) {
	s := startServers(t)
	const ttl = 500 * time.Millisecond
	a := s.instance(t, "http://a.test:5000", ttl)
	b := s.instance(t, "http://b.test:5000", ttl)
	ctx := testCtx(t)
	const key = "app:v2"

	_, ok, err := a.Manifest(ctx, key)
	require.NoError(t, err)
	require.False(t, ok)
	done := make(chan error, 1)
	var bOK atomic.Bool
	go func() {
		_, ok, err := b.Manifest(ctx, key)
		bOK.Store(ok)
		done <- err
	}()
	// A slow fetch outlasts the claim's TTL: the claim is renewed, the
	// other instance keeps waiting.
	holdFor(t, 3*ttl, func() bool {
		select {
		case err := <-done:
			t.Errorf("the waiting instance returned while the claim was held (err %v)", err)
			return false
		default:
		}
		owner, err := s.rdb.Get(ctx, a.manifestClaimKey(key)).Result()
		return err == nil && owner == "http://a.test:5000"
	}, "the manifest claim lapsed while its holder was still fetching (not renewed)")

	// The fetch failed: no record, the claim goes, the waiting instance
	// gets the claim and fetches itself.
	a.ManifestDone(ctx, key, nil, time.Minute)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting instance did not return within 10s of the claim's release")
	}
	assert.False(t, bOK.Load(), "a failed fetch left a record")
	n, err := s.rdb.Exists(ctx, a.manifestKey(key)).Result()
	require.NoError(t, err)
	assert.Zero(t, n, "a failed fetch left a record in redis")
	owner, err := s.rdb.Get(ctx, a.manifestClaimKey(key)).Result()
	require.NoError(t, err)
	assert.Equal(t, "http://b.test:5000", owner, "the waiting instance holds the claim now")
	b.ManifestDone(ctx, key, nil, ttl)
}

// The fill endpoint a peer is asked at is the engine's.
func TestPeerIsAskedAtTheFillPath(t *testing.T) {
	s := startServers(t)
	var path atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path.Store(r.URL.Path)
		_, _ = io.WriteString(w, "peer bytes")
	}))
	t.Cleanup(srv.Close)
	a := s.instance(t, srv.URL, time.Second)
	b := s.instance(t, "http://b.test:5000", time.Second)
	d := digest.FromString("peer bytes")
	ctx := testCtx(t)
	_, _, ok, err := a.Blob(ctx, d)
	require.NoError(t, err)
	require.False(t, ok)
	r := readBlob(ctx, b, d)
	require.NoError(t, r.err)
	require.True(t, r.ok, "while a peer downloads, the others stream its download")
	assert.Equal(t, "peer bytes", string(r.body))
	assert.Equal(t, engine.FillPath+d.String(), path.Load())
	a.Done(ctx, d, "")
}
