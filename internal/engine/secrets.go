package engine

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
)

// credentials are what the cache authenticates to its upstream with. They
// exist only here; every way of printing the type shows that there are
// credentials, never what they are.
type credentials struct {
	user, password string
	identityToken  string // an OAuth2 refresh token (Docker's "identitytoken")
	registryToken  string // a bearer token used as is
}

func credentialsFrom(a authn.Authenticator) (*credentials, error) {
	if a == nil {
		return &credentials{}, nil
	}
	cfg, err := a.Authorization()
	if err != nil {
		return nil, fmt.Errorf("reading credentials: %w", err)
	}
	c := &credentials{user: cfg.Username, password: cfg.Password, identityToken: cfg.IdentityToken, registryToken: cfg.RegistryToken}
	if cfg.Auth != "" && c.user == "" {
		if raw, err := base64.StdEncoding.DecodeString(cfg.Auth); err == nil {
			c.user, c.password, _ = strings.Cut(string(raw), ":")
		}
	}
	return c, nil
}

func (c *credentials) hasBasic() bool { return c != nil && (c.user != "" || c.password != "") }

func (c *credentials) any() bool {
	return c.hasBasic() || c.identityToken != "" || c.registryToken != ""
}

func (c *credentials) String() string {
	if c.any() {
		return "credentials(redacted)"
	}
	return "anonymous"
}

func (c *credentials) GoString() string             { return c.String() }
func (c *credentials) Format(f fmt.State, _ rune)   { _, _ = f.Write([]byte(c.String())) }
func (c *credentials) LogValue() slog.Value         { return slog.StringValue(c.String()) }
func (c *credentials) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// secrets are every form a credential travels in: the raw secrets, the
// basic-auth header's base64, and bearer tokens obtained with them. Text
// from upstream (error bodies echo headers, sometimes) and errors of
// libraries pass through redact before they reach a log or a client.
type secrets struct {
	mu   sync.RWMutex
	list []string
}

func newSecrets(c *credentials) *secrets {
	s := &secrets{}
	if c == nil {
		return s
	}
	s.add(c.password)
	s.add(c.identityToken)
	s.add(c.registryToken)
	if c.hasBasic() {
		s.add(base64.StdEncoding.EncodeToString([]byte(c.user + ":" + c.password)))
		s.add(base64.URLEncoding.EncodeToString([]byte(c.user + ":" + c.password)))
	}
	return s
}

func (s *secrets) add(v string) {
	if len(v) < 4 { // too short to tell from ordinary text; still never printed by credentials
		if v == "" {
			return
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, have := range s.list {
		if have == v {
			return
		}
	}
	s.list = append(s.list, v)
}

// authHeaderRE finds an Authorization header's value echoed in text.
var authHeaderRE = regexp.MustCompile(`(?i)\b(basic|bearer)\s+[A-Za-z0-9+/=._~-]{8,}`)

// codeRE is the shape of a registry error code.
var codeRE = regexp.MustCompile(`^[A-Z_]{1,40}$`)

func (s *secrets) redact(text string) string {
	s.mu.RLock()
	for _, v := range s.list {
		text = strings.ReplaceAll(text, v, "REDACTED")
	}
	s.mu.RUnlock()
	return authHeaderRE.ReplaceAllString(text, "$1 REDACTED")
}
