package cachetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
)

// authenticator returns nil for anonymous access.
func (u Upstream) authenticator() (authn.Authenticator, error) {
	switch {
	case u.CredentialHelper != "":
		if _, err := exec.LookPath("docker-credential-" + u.CredentialHelper); err != nil {
			return nil, fmt.Errorf("upstream %s: credential helper %q: docker-credential-%s is not on PATH", u.Host, u.CredentialHelper, u.CredentialHelper)
		}
		// Asked directly, not through ggcr's keychain, which turns a
		// helper's failure into anonymous access without a word.
		user, secret, err := credentialHelper(u.CredentialHelper).Get(helperServer(u.Host))
		if err != nil {
			return nil, fmt.Errorf("upstream %s: asking credential helper %q: %w", u.Host, u.CredentialHelper, err)
		}
		if user == "<token>" {
			return authn.FromConfig(authn.AuthConfig{IdentityToken: secret}), nil
		}
		return &authn.Basic{Username: user, Password: secret}, nil
	case u.Username != "" || u.Password != "":
		return &authn.Basic{Username: u.Username, Password: u.Password}, nil
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
