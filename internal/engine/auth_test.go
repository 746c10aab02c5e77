package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tokenRegistry is a registry whose pulls need a bearer token for the
// repository's pull scope, and a token server that issues one only the way
// its mode demands: basic credentials on a GET, an OAuth2 refresh grant
// (rotating the refresh token) on a POST, or no server at all when the
// registry takes a registry token as is.
type tokenRegistry struct {
	t        *testing.T
	mode     string // "basic", "refresh", "registry-token"
	srv      *httptest.Server
	manifest []byte

	mu       sync.Mutex
	refresh  string   // the refresh token the server accepts now
	issued   []string // tokens issued
	exchange []string // how each token was asked for: "GET basic", "POST refresh"
	served   int      // manifest requests answered 200
}

// revoke stops honouring every token issued so far.
func (r *tokenRegistry) revoke() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.issued = nil
}

func (r *tokenRegistry) servedCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.served
}

const (
	testUser, testPassword = "ci-bot", "s3cret-password"
	testRegistryToken      = "registry-token-abcdef"
)

func newTokenRegistry(t *testing.T, mode string) *tokenRegistry {
	r := &tokenRegistry{t: t, mode: mode, refresh: "refresh-one-123456",
		manifest: []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("a", 64) + `","size":2},"layers":[]}`)}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *tokenRegistry) serve(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path == "/token" {
		r.token(w, req)
		return
	}
	want := ""
	switch r.mode {
	case "registry-token":
		want = "Bearer " + testRegistryToken
	default:
		r.mu.Lock()
		for _, tok := range r.issued {
			if req.Header.Get("Authorization") == "Bearer "+tok && strings.Contains(tok, "repository:lib/app:pull") {
				want = "Bearer " + tok
			}
		}
		r.mu.Unlock()
	}
	if want == "" || req.Header.Get("Authorization") != want {
		w.Header().Set("Www-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="test.registry"`, r.srv.URL))
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if req.URL.Path == "/v2/" {
		w.WriteHeader(http.StatusOK)
		return
	}
	if req.URL.Path != "/v2/lib/app/manifests/v1" {
		http.NotFound(w, req)
		return
	}
	r.mu.Lock()
	r.served++
	r.mu.Unlock()
	sum := sha256.Sum256(r.manifest)
	w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	w.Header().Set("Docker-Content-Digest", "sha256:"+hex.EncodeToString(sum[:]))
	_, _ = w.Write(r.manifest)
}

func (r *tokenRegistry) token(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var scope, how string
	switch {
	case r.mode == "basic" && req.Method == http.MethodGet:
		user, pass, ok := req.BasicAuth()
		if !ok || user != testUser || pass != testPassword {
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
			return
		}
		scope, how = req.URL.Query().Get("scope"), "GET basic"
	case r.mode == "refresh" && req.Method == http.MethodPost:
		if err := req.ParseForm(); err != nil || req.PostForm.Get("grant_type") != "refresh_token" ||
			req.PostForm.Get("refresh_token") != r.refresh || req.PostForm.Get("service") != "test.registry" {
			http.Error(w, `{"error":"invalid_grant"}`, http.StatusUnauthorized)
			return
		}
		scope, how = req.PostForm.Get("scope"), "POST refresh"
	default:
		http.Error(w, "this token server does not take "+req.Method+" in mode "+r.mode, http.StatusUnauthorized)
		return
	}
	tok := fmt.Sprintf("tok-%d-%s", len(r.issued), scope)
	r.issued = append(r.issued, tok)
	r.exchange = append(r.exchange, how)
	resp := map[string]any{"access_token": tok, "expires_in": 300}
	if r.mode == "refresh" {
		r.refresh = fmt.Sprintf("refresh-rotated-%d", len(r.issued))
		resp["refresh_token"] = r.refresh
	}
	_ = json.NewEncoder(w).Encode(resp)
}

func startAuthCache(t *testing.T, r *tokenRegistry, auth authn.Authenticator) *httptest.Server {
	t.Helper()
	_, srv := startAuthEngine(t, r, auth)
	return srv
}

// startAuthEngine is startAuthCache with the engine, for tests that look
// at its tokens.
func startAuthEngine(t *testing.T, r *tokenRegistry, auth authn.Authenticator) (*Cache, *httptest.Server) {
	t.Helper()
	remote, err := url.Parse(r.srv.URL)
	require.NoError(t, err)
	c, err := New(context.Background(), Config{Host: "test.registry", Remote: remote, StorageDir: t.TempDir(), Auth: auth, TagTTL: -1})
	require.NoError(t, err)
	srv := httptest.NewServer(c)
	t.Cleanup(func() { srv.Close(); c.Close() })
	return c, srv
}

func getManifest(t *testing.T, srv *httptest.Server) (int, string) {
	t.Helper()
	resp, err := http.Get(srv.URL + "/v2/lib/app/manifests/v1")
	require.NoError(t, err)
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = fmt.Fprint(&b, resp.Header.Get("Docker-Content-Digest"))
	return resp.StatusCode, b.String()
}

func TestAuthBasicGetsATokenForThePullScope(t *testing.T) {
	r := newTokenRegistry(t, "basic")
	srv := startAuthCache(t, r, &authn.Basic{Username: testUser, Password: testPassword})
	status, _ := getManifest(t, srv)
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, []string{"GET basic"}, r.exchange)
	assert.Contains(t, r.issued[0], "repository:lib/app:pull")
}

func TestAuthIdentityTokenIsExchangedByTheRefreshGrant(t *testing.T) {
	r := newTokenRegistry(t, "refresh")
	srv := startAuthCache(t, r, authn.FromConfig(authn.AuthConfig{IdentityToken: "refresh-one-123456"}))
	status, _ := getManifest(t, srv)
	require.Equal(t, http.StatusOK, status, "an identity token must be exchanged, not dropped for anonymous access")
	assert.Equal(t, []string{"POST refresh"}, r.exchange)
}

func TestAuthRefreshTokenRotatedByTheServerIsUsedNext(t *testing.T) {
	r := newTokenRegistry(t, "refresh")
	c, srv := startAuthEngine(t, r, authn.FromConfig(authn.AuthConfig{IdentityToken: "refresh-one-123456"}))
	status, _ := getManifest(t, srv)
	require.Equal(t, http.StatusOK, status)
	// A new scope needs a new exchange, which only the rotated token passes.
	c.up.mu.Lock()
	c.up.tokens = map[string]bearer{}
	c.up.mu.Unlock()
	status, _ = getManifest(t, srv)
	require.Equal(t, http.StatusOK, status, "the second exchange must use the refresh token the server rotated to")
	assert.Equal(t, []string{"POST refresh", "POST refresh"}, r.exchange)
}

func TestAuthRegistryTokenIsSentAsIs(t *testing.T) {
	r := newTokenRegistry(t, "registry-token")
	srv := startAuthCache(t, r, authn.FromConfig(authn.AuthConfig{RegistryToken: testRegistryToken}))
	status, _ := getManifest(t, srv)
	assert.Equal(t, http.StatusOK, status)
	assert.Empty(t, r.exchange, "a registry token needs no token server")
}

func TestAuthWrongPasswordIsRefusedTruthfullyAndNeverEchoed(t *testing.T) {
	r := newTokenRegistry(t, "basic")
	srv := startAuthCache(t, r, &authn.Basic{Username: testUser, Password: "wrong-password-xyz"})
	resp, err := http.Get(srv.URL + "/v2/lib/app/manifests/v1")
	require.NoError(t, err)
	defer resp.Body.Close()
	var body struct {
		Errors []struct{ Code, Message string }
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.NotEmpty(t, body.Errors)
	assert.Contains(t, body.Errors[0].Message, "refused a token")
	assert.NotContains(t, body.Errors[0].Message, "wrong-password-xyz")
}

// A token past its expiry is not sent: the next request asks the token
// server again (the token is aged here; waiting out the spec's one-minute
// floor would make a test of a minute).
func TestAuthExpiredTokenIsFetchedAgain(t *testing.T) {
	r := newTokenRegistry(t, "basic")
	c, srv := startAuthEngine(t, r, &authn.Basic{Username: testUser, Password: testPassword})
	status, _ := getManifest(t, srv)
	require.Equal(t, http.StatusOK, status)
	status, _ = getManifest(t, srv)
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, []string{"GET basic"}, r.exchange, "a token within its lifetime is used again")

	c.up.mu.Lock()
	for k, b := range c.up.tokens {
		b.expires = time.Now().Add(-time.Second)
		c.up.tokens[k] = b
	}
	c.up.mu.Unlock()
	status, _ = getManifest(t, srv)
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, []string{"GET basic", "GET basic"}, r.exchange, "an expired token is replaced, not sent")
	assert.Equal(t, 3, r.servedCount(), "the GET and both revalidations were answered")
}

// A token the registry stops honouring before its stated expiry (revoked,
// or the clocks disagree) is answered with a 401: the cache fetches a new
// one and asks again within the same client request.
func TestAuthTokenRefusedBeforeItsExpiryIsFetchedAgain(t *testing.T) {
	r := newTokenRegistry(t, "basic")
	srv := startAuthCache(t, r, &authn.Basic{Username: testUser, Password: testPassword})
	status, _ := getManifest(t, srv)
	require.Equal(t, http.StatusOK, status)
	r.revoke()
	status, _ = getManifest(t, srv)
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, []string{"GET basic", "GET basic"}, r.exchange, "a refused token is replaced")
	assert.Equal(t, 2, r.servedCount(), "the revalidation was answered with the new token, not served stale")
}
