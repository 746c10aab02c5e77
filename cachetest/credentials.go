package cachetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// authenticator returns nil for anonymous access.
func (u Upstream) authenticator() (authn.Authenticator, error) {
	switch {
	case u.CredentialHelper != "":
		// ggcr's helper keychain falls back to anonymous when the helper
		// cannot run; a helper that is not there is a mistake to report.
		if _, err := exec.LookPath("docker-credential-" + u.CredentialHelper); err != nil {
			return nil, fmt.Errorf("upstream %s: credential helper %q: docker-credential-%s is not on PATH", u.Host, u.CredentialHelper, u.CredentialHelper)
		}
		reg, err := name.NewRegistry(hostOf(u.URL))
		if err != nil {
			return nil, fmt.Errorf("upstream %s: parsing registry host: %w", u.Host, err)
		}
		kc := authn.NewKeychainFromHelper(credentialHelper(u.CredentialHelper))
		a, err := kc.Resolve(reg)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: asking credential helper %q: %w", u.Host, u.CredentialHelper, err)
		}
		return a, nil
	case u.Username != "" || u.Password != "":
		return &authn.Basic{Username: u.Username, Password: u.Password}, nil
	}
	return nil, nil
}

func hostOf(rawURL string) string {
	_, rest, _ := strings.Cut(rawURL, "://")
	host, _, _ := strings.Cut(rest, "/")
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
