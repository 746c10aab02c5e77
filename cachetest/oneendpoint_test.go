package cachetest_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
)

func get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

// One port serves every registry of the set: containerd's ?ns= and a
// /v2/<registry>/ path prefix route to that registry's cache, which answers
// with OCI-Namespace; ns is never forwarded; an unknown registry is refused
// without any upstream request.
func TestOneEndpointRoutesByNamespaceAndPathPrefix(t *testing.T) {
	a, b := newTestUpstream(t), newTestUpstream(t)
	imgB := b.push(t, "lib/y:v1", 7)
	set := cachetest.New(t, cache.WithUpstreams(a.upstream("a.test"), b.upstream("b.test")))
	port := set.Cache("a.test").Endpoint()

	resp, body := get(t, port+"/v2/lib/y/manifests/v1?ns=b.test")
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	assert.Equal(t, "b.test", resp.Header.Get("OCI-Namespace"))
	assert.Equal(t, digestOf(t, imgB).String(), resp.Header.Get("Docker-Content-Digest"))
	assert.Zero(t, a.total.Load(), "a request for b.test reached a.test")

	resp, body = get(t, port+"/v2/b.test/lib/y/manifests/v1")
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	assert.Equal(t, "b.test", resp.Header.Get("OCI-Namespace"))

	// A whole pull by path prefix, as the Docker daemon or an old skopeo
	// would make it against the first cache's port.
	ref, err := name.ParseReference(set.Cache("a.test").Addr()+"/b.test/lib/y:v1", name.Insecure)
	require.NoError(t, err)
	img, err := remote.Image(ref, remote.WithContext(testCtx(t)))
	require.NoError(t, err)
	got, err := img.Digest()
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, imgB), got)
	assert.Zero(t, a.total.Load())
	assert.Positive(t, set.Cache("b.test").Stats().Hits)

	before := a.total.Load() + b.total.Load()
	requests := set.Total().Requests
	resp, body = get(t, port+"/v2/lib/y/manifests/v1?ns=evil.example")
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.Contains(t, string(body), `registry \"evil.example\" is not cached here`)
	assert.Contains(t, string(body), "--upstream evil.example=")
	assert.Equal(t, before, a.total.Load()+b.total.Load(), "an unknown registry cost an upstream request")
	// Counted as what it was, for the port's cache and for the client.
	assert.EqualValues(t, 1, set.Cache("a.test").Stats().Unrouted)
	assert.Zero(t, set.Cache("b.test").Stats().Unrouted)
	assert.EqualValues(t, 1, set.Clients()["127.0.0.1"].Unrouted, "the client's refusals")
	assert.Equal(t, requests, set.Total().Requests, "a refusal counted as a pull request")
	assert.Contains(t, set.Total().String(), "1 for registries not cached here")

	// The guide's port per upstream keeps working as before.
	resp, _ = get(t, set.Cache("b.test").Endpoint()+"/v2/lib/y/manifests/v1")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
}

func TestTagListIsServedPaginatedAndKeptForWhenUpstreamIsDown(t *testing.T) {
	up := newTestUpstream(t)
	for _, tag := range []string{"v1", "v2", "v3"} {
		up.push(t, "lib/app:"+tag, 3)
	}
	dir := t.TempDir()
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithStorageDir(dir))
	c := set.Cache("registry.test")

	var list struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}
	resp, body := get(t, c.Endpoint()+"/v2/lib/app/tags/list")
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.NoError(t, json.Unmarshal(body, &list))
	assert.Equal(t, []string{"v1", "v2", "v3"}, list.Tags)

	resp, body = get(t, c.Endpoint()+"/v2/lib/app/tags/list?n=1&last=v1")
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.NoError(t, json.Unmarshal(body, &list))
	assert.Equal(t, []string{"v2"}, list.Tags)

	up.Close() // the upstream goes away: the last good answer is served
	resp, body = get(t, c.Endpoint()+"/v2/lib/app/tags/list")
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.NoError(t, json.Unmarshal(body, &list))
	assert.Equal(t, []string{"v1", "v2", "v3"}, list.Tags)
}

func TestTagListInStrictModeIsWhatIsStored(t *testing.T) {
	up := newTestUpstream(t)
	up.push(t, "lib/app:v1", 3)
	up.push(t, "lib/app:v2", 4)
	dir := t.TempDir()
	online := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithStorageDir(dir))
	_, err := pull(testCtx(t), online.Cache("registry.test"), "lib/app:v2")
	require.NoError(t, err)
	require.NoError(t, online.Close())

	strict := cachetest.New(t, cache.WithUpstreams(up.upstream("registry.test")), cache.WithStorageDir(dir), cache.WithMode(cache.Strict))
	before := up.total.Load()
	resp, body := get(t, strict.Cache("registry.test").Endpoint()+"/v2/lib/app/tags/list")
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	assert.JSONEq(t, `{"name":"lib/app","tags":["v2"]}`, string(body))
	assert.Equal(t, before, up.total.Load(), "strict mode asked upstream")
}

func TestReferrersAreProxiedFilteredAndKept(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	host := strings.TrimPrefix(reg.URL, "http://")
	base, err := random.Image(512, 1, random.WithSource(rand.NewSource(9)))
	require.NoError(t, err)
	baseRef, err := name.ParseReference(host+"/lib/app:v1", name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.Write(baseRef, base))
	desc, err := partial.Descriptor(base)
	require.NoError(t, err)
	sig := mutate.Subject(mutate.ConfigMediaType(empty.Image, "application/vnd.example.sig"), *desc).(v1.Image)
	sigRef, err := name.ParseReference(host+"/lib/app:sig", name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.Write(sigRef, sig))

	set := cachetest.New(t, cache.WithUpstreams(cache.Upstream{Host: "registry.test", URL: reg.URL}))
	c := set.Cache("registry.test")
	url := fmt.Sprintf("%s/v2/lib/app/referrers/%s", c.Endpoint(), desc.Digest)
	var idx struct {
		Manifests []struct {
			ArtifactType string `json:"artifactType"`
		} `json:"manifests"`
	}
	resp, body := get(t, url)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.NoError(t, json.Unmarshal(body, &idx))
	require.Len(t, idx.Manifests, 1)
	assert.Equal(t, "application/vnd.example.sig", idx.Manifests[0].ArtifactType)

	resp, body = get(t, url+"?artifactType=application/vnd.example.other")
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.NoError(t, json.Unmarshal(body, &idx))
	assert.Empty(t, idx.Manifests)
	assert.Equal(t, "artifactType", resp.Header.Get("OCI-Filters-Applied"))

	reg.Close() // kept: the last good answer when upstream is gone
	resp, body = get(t, url)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.NoError(t, json.Unmarshal(body, &idx))
	assert.Len(t, idx.Manifests, 1)
}
