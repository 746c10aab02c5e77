package cachetest_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/cachetest"
)

const leakPassword = "Tr0ub4dor-and-3-xyzzy"

// everyForm prints v in every fmt verb and encoder a user might reach for.
func everyForm(t *testing.T, v any) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%T %v", "%d"} {
		out[verb] = fmt.Sprintf(verb, v)
	}
	if b, err := json.Marshal(v); err == nil {
		out["json"] = string(b)
	}
	for name, h := range map[string]func(*bytes.Buffer) slog.Handler{
		"slog-json": func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
		"slog-text": func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
	} {
		var b bytes.Buffer
		slog.New(h(&b)).Info("x", "value", v)
		out[name] = b.String()
	}
	return out
}

func TestCredentialsNeverPrinted(t *testing.T) {
	up := newTestUpstream(t)
	up.push(t, "app:v1", 51)
	u := up.upstream("registry.test")
	u.Credentials = cache.BasicAuth("robot", leakPassword)
	set := cachetest.New(t, cache.WithUpstreams(u))
	basic := base64.StdEncoding.EncodeToString([]byte("robot:" + leakPassword))
	for what, v := range map[string]any{
		"Upstream": u, "*Upstream": &u, "Credentials": u.Credentials,
		"*Cache": set.Cache("registry.test"), "*Set": set, "[]Upstream": []cache.Upstream{u},
		"Caches()": set.Caches(),
	} {
		for form, text := range everyForm(t, v) {
			assert.NotContains(t, text, leakPassword, "%s printed with %s", what, form)
			assert.NotContains(t, text, basic, "%s printed with %s", what, form)
		}
	}
	_, err := cache.Start(testCtx(t), cache.WithUpstreams(cache.Upstream{Host: "h.test", URL: "https://alice:" + leakPassword + "@h.test"}))
	require.Error(t, err)
	assert.NotContains(t, err.Error(), leakPassword, "a URL's password repeated in an error")
	assert.Contains(t, err.Error(), "h.test")
}

// tokenRegistry is a registry that demands the token dance and, when a
// token is wrong, echoes the Authorization header in its error body, as
// some do.
func tokenRegistry(t *testing.T, user, pass string) (*httptest.Server, *atomic.Int64) {
	var tokens atomic.Int64
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			gu, gp, ok := r.BasicAuth()
			if !ok || gu != user || gp != pass {
				w.WriteHeader(http.StatusUnauthorized)
				fmt.Fprintf(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad login, you sent %s"}]}`, r.Header.Get("Authorization"))
				return
			}
			tokens.Add(1)
			fmt.Fprintf(w, `{"token":"tok-%d-secret-bearer","expires_in":300}`, tokens.Load())
			return
		}
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer tok-") {
			w.Header().Set("Www-Authenticate", `Bearer realm="`+srv.URL+`/token",service="reg.test"`)
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required; got %q"}]}`, r.Header.Get("Authorization"))
			return
		}
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, `{"errors":[{"code":"DENIED","message":"no access with %s"}]}`, r.Header.Get("Authorization"))
	}))
	t.Cleanup(srv.Close)
	return srv, &tokens
}

func TestFailedAuthLogsNoSecretInAnyEncoding(t *testing.T) {
	for _, tc := range []struct{ name, pass string }{{"wrong password", leakPassword + "-wrong"}, {"right password, no access", leakPassword}} {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := tokenRegistry(t, "robot", leakPassword)
			var logs lockedBuffer
			log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			set := cachetest.New(t, cache.WithUpstreams(cache.Upstream{Host: "reg.test", URL: srv.URL, Credentials: cache.BasicAuth("robot", tc.pass)}),
				cache.WithLogger(log))
			resp, err := http.Get(set.Cache("reg.test").Endpoint() + "/v2/app/manifests/v1")
			require.NoError(t, err)
			var body bytes.Buffer
			_, _ = body.ReadFrom(resp.Body)
			resp.Body.Close()
			assert.Contains(t, []int{http.StatusUnauthorized, http.StatusForbidden}, resp.StatusCode, body.String())
			assert.Contains(t, body.String(), "reg.test", "the error names the upstream")
			text := logs.String() + body.String()
			for _, secret := range []string{leakPassword, base64.StdEncoding.EncodeToString([]byte("robot:" + tc.pass)), "secret-bearer", tc.pass} {
				assert.NotContains(t, text, secret)
			}
		})
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestOnlyPullsReachUpstream sends what a local process might try to every
// port the cache process opened on loopback: none of it reaches upstream.
func TestOnlyPullsReachUpstream(t *testing.T) {
	var seen []string
	var mu sync.Mutex
	upSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path+" auth="+strconv.FormatBool(r.Header.Get("Authorization") != ""))
		mu.Unlock()
		w.WriteHeader(http.StatusNotFound)
	}))
	t.Cleanup(upSrv.Close)
	set := cachetest.New(t, cache.WithUpstreams(cache.Upstream{Host: "reg.test", URL: upSrv.URL, Credentials: cache.BasicAuth("robot", leakPassword)}))
	upPort := upSrv.Listener.Addr().(*net.TCPAddr).Port
	ports := listeningPorts(t)
	require.Contains(t, ports, set.Cache("reg.test").Port())
	client := &http.Client{Timeout: 5 * time.Second}
	for _, port := range ports {
		if port == upPort {
			continue
		}
		for _, m := range []string{http.MethodDelete, http.MethodPut, http.MethodPost, http.MethodPatch} {
			for _, p := range []string{"/v2/app/manifests/v1", "/v2/app/blobs/uploads/", "/v2/../admin/x", "/admin"} {
				req, _ := http.NewRequestWithContext(context.Background(), m, "http://127.0.0.1:"+strconv.Itoa(port)+p, strings.NewReader("{}"))
				requireRefusal(t, client, req)
			}
		}
		for _, p := range []string{"/v2/../admin/x", "/v2/app/../../admin/manifests/v1", "/admin", "/v2/_catalog"} {
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(port)+p, nil)
			requireRefusal(t, client, req)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Empty(t, seen, "requests that reached upstream")
}

// requireRefusal sends req and requires an answer that refuses it (4xx): a port
// that does not answer at all proves nothing.
func requireRefusal(t *testing.T, client *http.Client, req *http.Request) {
	t.Helper()
	resp, err := client.Do(req)
	if !assert.NoError(t, err, "%s %s", req.Method, req.URL) {
		return
	}
	resp.Body.Close()
	assert.True(t, resp.StatusCode >= 400 && resp.StatusCode < 500, "%s %s: %s, want a refusal", req.Method, req.URL, resp.Status)
}

// listeningPorts lists the TCP ports this process listens on, from
// /proc/net/tcp and the process's own socket inodes.
func listeningPorts(t *testing.T) []int {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	for _, fd := range fds {
		l, err := os.Readlink("/proc/self/fd/" + fd.Name())
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var ports []int
	for _, f := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 || fs[3] != "0A" || !inodes[fs[9]] { // 0A: LISTEN
				continue
			}
			_, hexPort, _ := strings.Cut(fs[1], ":")
			p, err := strconv.ParseInt(hexPort, 16, 32)
			if err == nil {
				ports = append(ports, int(p))
			}
		}
	}
	return ports
}
