package cachetest_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
	"github.com/pullthrough/pullthrough/internal/testnet"
)

type registryError struct {
	status int
	code   string
	msg    string
	header http.Header
}

func getErr(t *testing.T, url string) (registryError, time.Duration) {
	t.Helper()
	start := time.Now()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	took := time.Since(start)
	var body struct {
		Errors []struct{ Code, Message string }
	}
	raw, _ := io.ReadAll(resp.Body)
	require.NoError(t, json.Unmarshal(raw, &body), "error body %q is not the spec's JSON", raw)
	require.NotEmpty(t, body.Errors)
	return registryError{resp.StatusCode, body.Errors[0].Code, body.Errors[0].Message, resp.Header}, took
}

// TestErrorsSayWhatFailed: each upstream failure reaches the client as the
// distribution spec's error, with a status that says what failed.
func TestErrorsSayWhatFailed(t *testing.T) {
	refused := func() string { return "http://" + testnet.Refuse(t, "127.0.0.1").Addr }
	answer := func(status int, header map[string]string, body string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for k, v := range header {
				w.Header().Set(k, v)
			}
			w.WriteHeader(status)
			io.WriteString(w, body)
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	// The hung upstream counts the requests it got and those the cache
	// gave up on: a hung upstream is waited for once, then abandoned.
	var hungAsked, hungAbandoned atomic.Int64
	hung := func() string {
		done := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hungAsked.Add(1)
			select {
			case <-done:
			case <-r.Context().Done():
				hungAbandoned.Add(1)
			}
		}))
		t.Cleanup(func() { close(done); srv.Close() })
		return srv.URL
	}
	const header = time.Second
	for _, tc := range []struct {
		name    string
		url     string
		path    string
		status  int
		code    string
		says    []string
		headers []string
	}{
		{"refused", refused(), "/v2/app/manifests/v1", http.StatusBadGateway, "UNAVAILABLE", []string{"reg.test", "unreachable", "connection refused"}, nil},
		{"hung", hung(), "/v2/app/manifests/v1", http.StatusGatewayTimeout, "UNAVAILABLE", []string{"reg.test", "did not answer in time"}, nil},
		{"500", answer(500, nil, `{"errors":[{"code":"UNKNOWN","message":"database on fire"}]}`), "/v2/app/manifests/v1", http.StatusBadGateway, "UNKNOWN", []string{"reg.test", "failed", "500", "database on fire"}, nil},
		{"503", answer(503, nil, "maintenance"), "/v2/app/blobs/sha256:" + strings.Repeat("a", 64), http.StatusServiceUnavailable, "UNAVAILABLE", []string{"reg.test", "503"}, nil},
		{"401", answer(401, nil, `{"errors":[{"code":"UNAUTHORIZED","message":"login first"}]}`), "/v2/app/manifests/v1", http.StatusUnauthorized, "UNAUTHORIZED", []string{"reg.test", "refused access", "login first"}, nil},
		{"403", answer(403, nil, `{"errors":[{"code":"DENIED","message":"private repository"}]}`), "/v2/app/manifests/v1", http.StatusForbidden, "DENIED", []string{"refused access", "private repository"}, nil},
		{"404", answer(404, nil, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown tag=v1"}]}`), "/v2/app/manifests/v1", http.StatusNotFound, "MANIFEST_UNKNOWN", []string{"reg.test", "not found", "unknown tag=v1"}, nil},
		{"429", answer(429, map[string]string{"Retry-After": "60", "RateLimit-Remaining": "0;w=21600"}, `{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit"}]}`), "/v2/app/manifests/v1", http.StatusTooManyRequests, "TOOMANYREQUESTS", []string{"rate limiting", "pull rate limit"}, []string{"Retry-After", "Ratelimit-Remaining"}},
		{"bad name", answer(200, nil, ""), "/v2/" + strings.Repeat("a", 256) + "/manifests/v1", http.StatusBadRequest, "NAME_INVALID", []string{"repository name"}, nil},
		{"bad digest", answer(200, nil, ""), "/v2/app/blobs/sha256:zz", http.StatusBadRequest, "DIGEST_INVALID", []string{"digest"}, nil},
		{"push", answer(200, nil, ""), "", http.StatusMethodNotAllowed, "UNSUPPORTED", []string{"pulls only"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set := cachetest.New(t, cache.WithUpstreams(cache.Upstream{Host: "reg.test", URL: tc.url}),
				cache.WithTimeouts(0, header, 0))
			c := set.Cache("reg.test")
			var got registryError
			if tc.path == "" {
				req, _ := http.NewRequest(http.MethodPut, c.Endpoint()+"/v2/app/manifests/v1", strings.NewReader("{}"))
				resp, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				var body struct {
					Errors []struct{ Code, Message string }
				}
				require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
				resp.Body.Close()
				got = registryError{status: resp.StatusCode, code: body.Errors[0].Code, msg: body.Errors[0].Message}
			} else {
				got, _ = getErr(t, c.Endpoint()+tc.path)
			}
			assert.Equal(t, tc.status, got.status, got.msg)
			assert.Equal(t, tc.code, got.code, got.msg)
			for _, s := range tc.says {
				assert.Contains(t, got.msg, s)
			}
			if tc.name == "hung" {
				require.Eventually(t, func() bool { return hungAbandoned.Load() == hungAsked.Load() }, 10*time.Second, 5*time.Millisecond,
					"the cache answered 504 but still waits on the hung upstream")
				assert.EqualValues(t, 1, hungAsked.Load(), "a hung upstream is waited for once")
			}
			for _, h := range tc.headers {
				assert.NotEmpty(t, got.header.Get(h), "header %s passed on", h)
			}
		})
	}
}

// TestDiskFullIs507: a cache whose disk cannot hold a blob says so.
func TestDiskFullIs507(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir).CombinedOutput(); err != nil {
		skipUnlessCI(t, "a 1 MiB tmpfs for a full disk needs mount (root): %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", dir).Run() })
	up := newTestUpstream(t)
	img, layer := bigImage(t, 2<<20, 61)
	up.pushImage(t, "app:v1", img)
	set := cachetest.New(t, cache.WithUpstreams(up.upstream("reg.test")), cache.WithStorageDir(dir))
	got, _ := getErr(t, set.Cache("reg.test").Endpoint()+"/v2/app/blobs/"+layerDigest(t, layer).String())
	assert.Equal(t, http.StatusInsufficientStorage, got.status, got.msg)
	assert.Contains(t, got.msg, "disk is full")
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.NotEmpty(t, ents, fmt.Sprint("storage was used: ", ents))
}

// A manifest whose bytes are not what upstream says they are (a digest
// header that does not match, a body that is not the digest asked for) or
// that is larger than the spec's 4 MiB is refused with the spec's error and
// not stored: the next request asks upstream again.
func TestManifestThatDoesNotMatchItsDigestIsRefusedAndNotStored(t *testing.T) {
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("a", 64) + `","size":2},"layers":[]}`)
	other := "sha256:" + strings.Repeat("b", 64)
	big := append([]byte(`{"schemaVersion":2,"annotations":{"x":"`), bytes.Repeat([]byte("x"), 4<<20)...)
	big = append(big, `"}}`...)
	for _, tc := range []struct {
		name, ref, header string
		body              []byte
		code              string
	}{
		{"digest header differs", "v1", other, body, "DIGEST_INVALID"},
		{"body is not the digest asked for", other, "", body, "DIGEST_INVALID"},
		{"larger than 4 MiB", "v1", "", big, "MANIFEST_INVALID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var gets atomic.Int64
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				gets.Add(1)
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				if tc.header != "" {
					w.Header().Set("Docker-Content-Digest", tc.header)
				}
				_, _ = w.Write(tc.body)
			}))
			t.Cleanup(up.Close)
			c := cachetest.New(t, cache.WithUpstreams(cache.Upstream{Host: "registry.test", URL: up.URL})).Cache("registry.test")
			for range 2 {
				e, _ := getErr(t, c.Endpoint()+"/v2/app/manifests/"+tc.ref)
				assert.Equal(t, http.StatusBadGateway, e.status)
				assert.Equal(t, tc.code, e.code, e.msg)
				assert.Contains(t, e.msg, "registry.test")
			}
			assert.EqualValues(t, 2, gets.Load(), "a refused manifest was stored: the second request did not ask upstream")
		})
	}
}
