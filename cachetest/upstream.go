package cachetest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
)

// Upstream is one registry that a cache stands in front of.
type Upstream struct {
	// Host is the registry as image references name it: "docker.io".
	Host string
	// URL is where its content is fetched from: "https://registry-1.docker.io".
	URL string
	// Port is the host port used with WithFixedPorts.
	Port int
	// Username and Password authenticate to the upstream. They stay in the
	// cache: they are never logged, printed by String, or put in mirror config.
	Username, Password string
	// CredentialHelper names a Docker credential helper ("gcloud" runs
	// docker-credential-gcloud) to ask for credentials instead.
	CredentialHelper string
}

// DefaultUpstreams are the registries Talos clusters pull from, on the ports
// of Talos's guide so existing scripts keep working with WithFixedPorts.
func DefaultUpstreams() []Upstream {
	return []Upstream{
		{Host: "docker.io", URL: "https://registry-1.docker.io", Port: 5000},
		// registry.k8s.io took over from k8s.gcr.io, which the guide put on 5001.
		{Host: "registry.k8s.io", URL: "https://registry.k8s.io", Port: 5001},
		{Host: "quay.io", URL: "https://quay.io", Port: 5002},
		{Host: "gcr.io", URL: "https://gcr.io", Port: 5003},
		{Host: "ghcr.io", URL: "https://ghcr.io", Port: 5004},
		{Host: "k8s.gcr.io", URL: "https://k8s.gcr.io", Port: 5005},
		// Talos installer images.
		{Host: "factory.talos.dev", URL: "https://factory.talos.dev", Port: 5006},
	}
}

// String never shows credentials.
func (u Upstream) String() string {
	s := fmt.Sprintf("%s=%s", u.Host, u.URL)
	if u.Username != "" || u.Password != "" || u.CredentialHelper != "" {
		s += " (with credentials)"
	}
	return s
}

// GoString keeps %#v from printing the password.
func (u Upstream) GoString() string { return "cachetest.Upstream{" + u.String() + "}" }

func (u Upstream) validate() (*url.URL, error) {
	if u.Host == "" || strings.ContainsAny(u.Host, "/ ") {
		return nil, fmt.Errorf("upstream host %q: want a registry host such as docker.io", u.Host)
	}
	r, err := url.Parse(u.URL)
	if err != nil || (r.Scheme != "http" && r.Scheme != "https") || r.Host == "" || r.User != nil {
		return nil, fmt.Errorf("upstream %s: URL %q: want http:// or https:// and a host, without credentials (use Username and Password)", u.Host, u.URL)
	}
	return r, nil
}

// storageName keeps each upstream URL's content apart, so that a fixture
// standing in for registry.k8s.io never fills the real one's cache.
func (u Upstream) storageName() string {
	sum := sha256.Sum256([]byte(u.URL))
	return strings.NewReplacer(":", "_", "/", "_").Replace(u.Host) + "-" + hex.EncodeToString(sum[:4])
}
