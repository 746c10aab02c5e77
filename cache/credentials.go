package cache

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
)

// Credentials authenticate a cache to its upstream. They are held here and
// nowhere else: String, GoString, every fmt verb, JSON and slog show only
// which kind they are.
type Credentials struct {
	user, password string
	helper         string
}

// BasicAuth is a user name and password (or token) for the upstream; the
// cache uses them for basic auth or to obtain bearer tokens, as registries
// ask.
func BasicAuth(user, password string) Credentials { return Credentials{user: user, password: password} }

// FromCredentialHelper asks a Docker credential helper ("gcloud" runs
// docker-credential-gcloud) for the upstream's credentials when the cache
// starts.
func FromCredentialHelper(name string) Credentials { return Credentials{helper: name} }

// IsZero reports anonymous access.
func (c Credentials) IsZero() bool { return c == Credentials{} }

func (c Credentials) label() string {
	switch {
	case c.helper != "":
		return "credential helper " + c.helper
	case !c.IsZero():
		return "basic auth (redacted)"
	}
	return ""
}

// String says which kind of credentials these are, never what they are.
func (c Credentials) String() string {
	if l := c.label(); l != "" {
		return l
	}
	return "anonymous"
}

// GoString is what %#v prints.
func (c Credentials) GoString() string { return "cache.Credentials{" + c.String() + "}" }

// Format makes every fmt verb print String.
func (c Credentials) Format(f fmt.State, verb rune) {
	formatRedacted(f, verb, c.String(), c.GoString())
}

// LogValue is what slog prints.
func (c Credentials) LogValue() slog.Value { return slog.StringValue(c.String()) }

// MarshalText is what encoding/json and others print.
func (c Credentials) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// authenticator returns nil for anonymous access.
func (u Upstream) authenticator() (authn.Authenticator, error) {
	c := u.Credentials
	switch {
	case c.helper != "":
		if _, err := exec.LookPath("docker-credential-" + c.helper); err != nil {
			return nil, fmt.Errorf("upstream %s: credential helper %q: docker-credential-%s is not on PATH", u.Host, c.helper, c.helper)
		}
		// Asked directly, not through ggcr's keychain, which turns a
		// helper's failure into anonymous access without a word.
		user, secret, err := credentialHelper(c.helper).Get(helperServer(u.Host))
		if err != nil {
			return nil, fmt.Errorf("upstream %s: asking credential helper %q: %w", u.Host, c.helper, err)
		}
		if user == "<token>" {
			return authn.FromConfig(authn.AuthConfig{IdentityToken: secret}), nil
		}
		return &authn.Basic{Username: user, Password: secret}, nil
	case !c.IsZero():
		return &authn.Basic{Username: c.user, Password: c.password}, nil
	}
	return nil, nil
}

// helperServer is the server name Docker stores a registry's credentials
// under: Docker Hub's is its v1 index URL, whatever host serves the pulls.
func helperServer(host string) string {
	if host == "docker.io" || host == "index.docker.io" || host == "registry-1.docker.io" {
		return authn.DefaultAuthKey
	}
	return host
}

// credentialHelper runs docker-credential-NAME as Docker does.
type credentialHelper string

func (h credentialHelper) Get(serverURL string) (string, string, error) {
	cmd := exec.Command("docker-credential-"+string(h), "get")
	cmd.Stdin = strings.NewReader(serverURL)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		// The helper's stderr may say why; its stdout may hold a secret.
		return "", "", fmt.Errorf("running docker-credential-%s: %w: %s", h, err, strings.TrimSpace(errOut.String()))
	}
	var resp struct{ Username, Secret string }
	if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
		return "", "", fmt.Errorf("reading docker-credential-%s output: not the helper protocol's JSON", h)
	}
	return resp.Username, resp.Secret, nil
}
