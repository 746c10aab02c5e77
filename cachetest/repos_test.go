package cachetest_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
)

// scopedUpstream stands in front of a testUpstream as a registry whose
// repositories do not all hold what another one does: go-containerregistry's
// in-memory registry answers a blob in any repository once one has it, so
// this one refuses every request under /v2/private/ (404, as registries
// answer for what a repository does not hold). It counts requests by
// method and kind, and can label manifests text/plain, as some registries do.
type scopedUpstream struct {
	*httptest.Server
	mu        sync.Mutex
	counts    map[string]int // "HEAD blob", "GET manifest", ...
	plainType bool
}

func newScopedUpstream(t *testing.T, behind *testUpstream) *scopedUpstream {
	t.Helper()
	target, err := url.Parse(behind.URL)
	require.NoError(t, err)
	s := &scopedUpstream{counts: map[string]int{}}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(resp *http.Response) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.plainType && strings.Contains(resp.Request.URL.Path, "/manifests/") {
			resp.Header.Set("Content-Type", "text/plain")
		}
		return nil
	}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := "other"
		switch {
		case strings.Contains(r.URL.Path, "/blobs/"):
			kind = "blob"
		case strings.Contains(r.URL.Path, "/manifests/"):
			kind = "manifest"
		}
		s.mu.Lock()
		s.counts[r.Method+" "+kind]++
		s.mu.Unlock()
		if strings.HasPrefix(r.URL.Path, "/v2/private/") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = fmt.Fprintf(w, `{"errors":[{"code":"%s_UNKNOWN","message":"not in this repository"}]}`, strings.ToUpper(kind))
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *scopedUpstream) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts = map[string]int{}
}

func (s *scopedUpstream) count(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[key]
}

func (s *scopedUpstream) upstream(host string) cache.Upstream {
	return cache.Upstream{Host: host, URL: s.URL}
}

// do sends one request to a cache and returns its status, headers and body.
func do(t *testing.T, method, url string, header http.Header) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), method, url, nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, body
}

const manifestAccept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"

// pulledAsA is an image held by repositories a and b upstream (behind a
// scoped upstream), pulled through a new cache as a:v1 only; the upstream's
// counters start after that pull.
func pulledAsA(t *testing.T, seed int64, opts ...cache.Option) (*scopedUpstream, *cache.Cache, v1.Image) {
	t.Helper()
	behind := newTestUpstream(t)
	img := behind.push(t, "a:v1", seed)
	behind.pushImage(t, "b:v1", img)
	up := newScopedUpstream(t, behind)
	c := cachetest.New(t, append([]cache.Option{cache.WithUpstreams(up.upstream("registry.test"))}, opts...)...).Cache("registry.test")
	_, err := pull(testCtx(t), c, "a:v1")
	require.NoError(t, err)
	up.reset()
	return up, c, img
}

// firstLayer is the digest of an image's first layer.
func firstLayer(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	layers, err := img.Layers()
	require.NoError(t, err)
	return layerDigest(t, layers[0])
}

// A blob stored for one repository is served for another only when
// upstream confirms that one holds it: one HEAD, no bytes, then linked. A
// repository upstream refuses gets the refusal, not the stored bytes; in
// strict mode a repository it was never linked to is not served at all.
func TestBlobStoredForAnotherRepositoryIsConfirmedByOneHEAD(t *testing.T) {
	storage := t.TempDir()
	up, c, img := pulledAsA(t, 41, cache.WithStorageDir(storage))
	d := firstLayer(t, img)

	o := fetchBlob(testCtx(t), c.Addr(), "b", d, nil)
	require.True(t, o.complete() && o.digest == d.String(), "through repository b: %s", o)
	assert.Equal(t, 1, up.count("HEAD blob"), "upstream asked whether b holds the blob")
	assert.Zero(t, up.count("GET blob"), "bytes fetched again for a blob already stored")
	o = fetchBlob(testCtx(t), c.Addr(), "b", d, nil)
	require.True(t, o.complete(), "b again: %s", o)
	assert.Equal(t, 1, up.count("HEAD blob"), "b asked again after it was linked")

	status, _, body := do(t, http.MethodGet, c.Endpoint()+"/v2/private/blobs/"+d.String(), nil)
	assert.Equal(t, http.StatusNotFound, status, "a repository upstream refuses (%d bytes)", len(body))
	assert.NotEqual(t, d.String(), digestOfBytes(body), "the stored bytes were handed to a repository upstream refused")
	assert.Zero(t, up.count("GET blob"))

	strict := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithStorageDir(storage), cache.WithMode(cache.Strict))
	sc := strict.Cache("registry.test")
	up.reset()
	o = fetchBlob(testCtx(t), sc.Addr(), "b", d, nil)
	assert.True(t, o.complete() && o.digest == d.String(), "strict, a linked repository: %s", o)
	o = fetchBlob(testCtx(t), sc.Addr(), "c", d, nil)
	assert.False(t, o.complete(), "strict served a repository the blob was never linked to: %s", o)
	assert.Equal(t, http.StatusNotFound, o.status, "strict, an unlinked repository: %s", o)
	assert.EqualValues(t, 1, sc.Stats().NotCached)
	assert.Zero(t, up.count("HEAD blob")+up.count("GET blob"), "strict mode asked upstream")
}

// The same for a manifest asked for by digest.
func TestManifestByDigestStoredForAnotherRepositoryIsConfirmedByOneHEAD(t *testing.T) {
	up, c, img := pulledAsA(t, 43)
	d := digestOf(t, img).String()

	accept := http.Header{"Accept": {manifestAccept}}
	status, h, body := do(t, http.MethodGet, c.Endpoint()+"/v2/b/manifests/"+d, accept)
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, d, digestOfBytes(body))
	assert.Equal(t, d, h.Get("Docker-Content-Digest"))
	assert.Equal(t, 1, up.count("HEAD manifest"), "upstream asked whether b holds the manifest")
	assert.Zero(t, up.count("GET manifest"))
	status, _, _ = do(t, http.MethodGet, c.Endpoint()+"/v2/b/manifests/"+d, accept)
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, 1, up.count("HEAD manifest"), "b asked again after it was linked")

	status, _, body = do(t, http.MethodGet, c.Endpoint()+"/v2/private/manifests/"+d, accept)
	assert.Equal(t, http.StatusNotFound, status, "a repository upstream refuses: %s", body)
	assert.NotEqual(t, d, digestOfBytes(body))
}

// A HEAD of a cold blob is answered from one HEAD upstream: its size and
// digest, no bytes fetched, nothing stored; the GET after it fetches once.
func TestColdBlobHEADFetchesNothing(t *testing.T) {
	behind := newTestUpstream(t)
	img := behind.push(t, "app:v1", 47)
	up := newScopedUpstream(t, behind)
	c := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test"))).Cache("registry.test")
	layers, err := img.Layers()
	require.NoError(t, err)
	d := layerDigest(t, layers[0])
	size, err := layers[0].Size()
	require.NoError(t, err)

	status, h, body := do(t, http.MethodHead, c.Endpoint()+"/v2/app/blobs/"+d.String(), nil)
	require.Equal(t, http.StatusOK, status)
	assert.Empty(t, body)
	assert.Equal(t, fmt.Sprint(size), h.Get("Content-Length"))
	assert.Equal(t, d.String(), h.Get("Docker-Content-Digest"))
	assert.Equal(t, 1, up.count("HEAD blob"))
	assert.Zero(t, up.count("GET blob"), "a HEAD fetched the blob")
	_, err = os.Stat(blobPath(c, d.Hex))
	assert.ErrorIs(t, err, os.ErrNotExist, "a HEAD stored the blob")

	o := fetchBlob(testCtx(t), c.Addr(), "app", d, nil)
	require.True(t, o.complete() && o.digest == d.String(), "%s", o)
	assert.Equal(t, 1, up.count("GET blob"))
}

// A range asked for while the blob is being fetched is served from that
// download, once it is whole: the right bytes, and no second GET upstream.
func TestRangeDuringAFillIsServedFromThatDownload(t *testing.T) {
	up, layer, pause := pausedBlob(t, 53)
	d := layerDigest(t, layer)
	rc, err := layer.Compressed()
	require.NoError(t, err)
	whole, err := io.ReadAll(rc)
	require.NoError(t, err)
	c := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test"))).Cache("registry.test")
	ctx := testCtx(t)

	first := make(chan outcome, 1)
	go func() { first <- fetchBlob(ctx, c.Addr(), "app", d, nil) }()
	require.Eventually(t, func() bool { return up.blobGETs.Load() == 1 }, 10*time.Second, 5*time.Millisecond)
	type part struct {
		lo, hi int64
		got    []byte
		err    error
	}
	parts := []*part{{lo: 100, hi: 199}, {lo: 1 << 20, hi: 1<<20 + 4095}, {lo: int64(len(whole)) - 10, hi: int64(len(whole)) - 1}}
	var wg sync.WaitGroup
	for _, p := range parts {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.Endpoint()+"/v2/app/blobs/"+d.String(), nil)
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", p.lo, p.hi))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				p.err = err
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusPartialContent {
				p.err = fmt.Errorf("status %s", resp.Status)
				return
			}
			p.got, p.err = io.ReadAll(resp.Body)
		})
	}
	require.Eventually(t, func() bool { return c.Stats().Requests == int64(1+len(parts)) }, 10*time.Second, 5*time.Millisecond,
		"the range requests reach the cache while the download is paused")
	close(pause)
	wg.Wait()
	o := <-first
	require.True(t, o.complete() && o.digest == d.String(), "the whole blob: %s", o)
	for _, p := range parts {
		require.NoError(t, p.err, "bytes %d-%d", p.lo, p.hi)
		assert.Equal(t, whole[p.lo:p.hi+1], p.got, "bytes %d-%d", p.lo, p.hi)
	}
	assert.EqualValues(t, 1, up.blobGETs.Load(), "GETs upstream for one blob and %d ranges of it during its download", len(parts))
}

// `pullthrough gc` removes the least recently served first: serving a
// stored blob moves its mtime to now (to the hour).
func TestServingAStoredBlobMarksItRecentlyUsed(t *testing.T) {
	up := newTestUpstream(t)
	img := up.push(t, "app:v1", 59)
	c := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test"))).Cache("registry.test")
	_, err := pull(testCtx(t), c, "app:v1")
	require.NoError(t, err)
	layers, err := img.Layers()
	require.NoError(t, err)
	d := layerDigest(t, layers[0])
	path := blobPath(c, d.Hex)
	old := time.Now().Add(-3 * time.Hour)
	require.NoError(t, os.Chtimes(path, old, old))

	o := fetchBlob(testCtx(t), c.Addr(), "app", d, nil)
	require.True(t, o.complete() && o.digest == d.String(), "%s", o)
	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.WithinDuration(t, time.Now(), st.ModTime(), time.Minute, "a blob served now still looks three hours unused to gc")
}

// A manifest an upstream labels text/plain is served under its own media
// type (its mediaType field), cold and warm: clients pick a parser by it.
func TestManifestMislabelledUpstreamIsServedUnderItsOwnMediaType(t *testing.T) {
	behind := newTestUpstream(t)
	img := behind.push(t, "app:v1", 61)
	want, err := img.MediaType()
	require.NoError(t, err)
	up := newScopedUpstream(t, behind)
	up.plainType = true
	c := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test"))).Cache("registry.test")
	accept := http.Header{"Accept": {manifestAccept}}
	for _, when := range []string{"cold", "warm"} {
		status, h, body := do(t, http.MethodGet, c.Endpoint()+"/v2/app/manifests/v1", accept)
		require.Equal(t, http.StatusOK, status, "%s: %s", when, body)
		assert.Equal(t, string(want), h.Get("Content-Type"), when)
	}
	assert.Equal(t, 1, up.count("GET manifest"))
}

// digestOfBytes is the sha256 digest of a body.
func digestOfBytes(b []byte) string {
	d, _, _ := readAllDigest(bytes.NewReader(b))
	return d
}

// A blob stored for another repository whose stored size is not what
// upstream gives for this one is not served: it is removed and fetched.
func TestBlobStoredForAnotherRepositoryWithTheWrongSizeIsFetchedAgain(t *testing.T) {
	up, c, img := pulledAsA(t, 67)
	d := firstLayer(t, img)
	path := blobPath(c, d.Hex)
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.NoError(t, os.Truncate(path, st.Size()/2))

	o := fetchBlob(testCtx(t), c.Addr(), "b", d, nil)
	assert.True(t, o.complete() && o.digest == d.String(), "through repository b: %s", o)
	assert.Equal(t, 1, up.count("HEAD blob"), "upstream asked for b's size")
	assert.Equal(t, 1, up.count("GET blob"), "the cut copy was fetched again")
	waitStored(t, c, d)
	st, err = os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, o.n, st.Size(), "the stored copy is whole again")
}
