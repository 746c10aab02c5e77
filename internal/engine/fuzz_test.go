package engine

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// FuzzRoute: any path parses without panic, and a route that passes check
// maps to storage paths inside the storage directory.
func FuzzRoute(f *testing.F) {
	for _, p := range []string{
		"/v2/", "/v2/library/alpine/manifests/3.20", "/v2/a/b/c/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"/v2/../etc/manifests/x", "/v2/a/manifests/..", "/v2/a/blobs/uploads", "/v2/a//b/manifests/v1", "/v2/A/manifests/v1",
		"/v2/a/manifests/sha256:../../x", "/v2/_/manifests/v1", "/v2/a/tags/list", "/v2/a/manifests/v1/../../x",
	} {
		f.Add(p)
	}
	root := filepath.Join(f.TempDir(), "root")
	s := &store{root: root}
	f.Fuzz(func(t *testing.T, path string) {
		rt := parseRoute(path)
		if rt.kind != kindManifest && rt.kind != kindBlob {
			return
		}
		if _, _, ok := rt.check(); !ok {
			return
		}
		for _, p := range []string{s.repoPath(rt.name, "_tags", rt.ref), s.repoPath(rt.name, "_links", "x")} {
			rel, err := filepath.Rel(root, p)
			if err != nil || strings.HasPrefix(rel, "..") || strings.Contains(rel, string(filepath.Separator)+"..") {
				t.Fatalf("route %+v escapes storage: %s", rt, p)
			}
			if strings.Contains(rt.name, "..") || strings.HasPrefix(rt.ref, ".") {
				t.Fatalf("route %+v passed check with a dot path", rt)
			}
		}
	})
}

// FuzzChallenge: any WWW-Authenticate header parses without panic.
func FuzzChallenge(f *testing.F) {
	for _, h := range []string{
		`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`,
		`Basic realm="x"`, `Bearer realm="a,b",service=c`, `bearer`, `Bearer ,,,="`, ``,
	} {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, h string) {
		scheme, params := parseChallenge(h)
		if scheme != strings.ToLower(scheme) {
			t.Fatalf("scheme %q not lower-cased", scheme)
		}
		_ = params
	})
}

// FuzzRedact: a secret never survives redaction, whatever text surrounds it
// and in whichever encoding it travels.
func FuzzRedact(f *testing.F) {
	f.Add("user", "s3cret-password", "error: got %s from upstream")
	f.Add("robot", "p@ss:w0rd", `{"message":"Authorization: Basic %s"}`)
	f.Add("a", "tok", "%s%s")
	f.Fuzz(func(t *testing.T, user, password, text string) {
		if len(password) < 4 || strings.Contains(password, "REDACTED") || strings.Contains("REDACTED", password) {
			return
		}
		c := &credentials{user: user, password: password}
		s := newSecrets(c)
		basic := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
		for _, secret := range []string{password, basic} {
			in := strings.ReplaceAll(text, "%s", secret) + " " + secret
			if out := s.redact(in); strings.Contains(out, secret) {
				t.Fatalf("secret %q survived: %q", secret, out)
			}
		}
	})
}

// FuzzServe: whatever method, path and headers a client sends, only GET or
// HEAD of a pull path of a valid name reaches upstream, without the client's
// headers.
func FuzzServe(f *testing.F) {
	for _, c := range [][3]string{
		{"GET", "/v2/app/manifests/v1", ""},
		{"DELETE", "/v2/app/manifests/v1", ""},
		{"PUT", "/v2/app/manifests/v1", "application/json"},
		{"POST", "/v2/app/blobs/uploads/", ""},
		{"GET", "/v2/../admin/x", ""},
		{"GET", "/v2/app/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "bytes=0-1"},
		{"HEAD", "/v2/a/b/manifests/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", ""},
		{"GET", "/v2/app/tags/list", ""},
		{"GET", "/_pullthrough/stats", ""},
	} {
		f.Add(c[0], c[1], c[2])
	}
	var mu sync.Mutex
	var bad []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rt := parseRoute(r.URL.Path)
		_, _, ok := rt.check()
		ok = ok || (rt.kind == kindBase && r.Method == http.MethodGet) // the one /v2/ ping
		if (r.Method != http.MethodGet && r.Method != http.MethodHead) || !ok || r.Header.Get("X-Client") != "" || r.Header.Get("Range") != "" {
			mu.Lock()
			bad = append(bad, r.Method+" "+r.URL.String())
			mu.Unlock()
		}
		w.WriteHeader(http.StatusNotFound)
	}))
	f.Cleanup(up.Close)
	remote, _ := url.Parse(up.URL)
	c, err := New(context.Background(), Config{Host: "reg.test", Remote: remote, StorageDir: f.TempDir()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { c.Close() })
	f.Fuzz(func(t *testing.T, method, path, header string) {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Method = method
		req.URL = &url.URL{Path: path}
		req.Header.Set("X-Client", "x")
		req.Header.Set("Range", header)
		req.Header.Set("Accept", header)
		req.RemoteAddr = "127.0.0.1:1234"
		c.ServeHTTP(httptest.NewRecorder(), req)
		mu.Lock()
		defer mu.Unlock()
		if len(bad) > 0 {
			t.Fatalf("reached upstream: %v", bad)
		}
	})
}
