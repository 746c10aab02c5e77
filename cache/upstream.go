package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"regexp"
	"sort"
	"strconv"
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
	// Tiers are endpoints tried in order before URL: a CI fleet's shared
	// cache (pullthrough serve, Harbor, registry:2, zot). A path in a tier's
	// URL is a repository prefix, as Harbor projects need:
	// "https://harbor.example/dockerhub-proxy". A tier that fails costs at
	// most WithTierTimeout once and is then skipped for a back-off period.
	// Tiers never get Credentials.
	Tiers []string
	// Credentials authenticate to the upstream: BasicAuth or
	// FromCredentialHelper; the zero value pulls anonymously. They stay in
	// the cache: no way of printing, marshalling or logging an Upstream
	// shows them, and they never reach mirror config.
	Credentials Credentials
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

// UpstreamsFrom turns a registry-host → URL map (fixtures' Mirrors, a
// team's own registries) into upstreams, in host order, on the guide's
// ports for the hosts it knows.
func UpstreamsFrom(urls map[string]string) []Upstream {
	hosts := make([]string, 0, len(urls))
	for h := range urls {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	out := make([]Upstream, 0, len(hosts))
	for _, h := range hosts {
		u := Upstream{Host: h, URL: urls[h]}
		for _, d := range DefaultUpstreams() {
			if d.Host == h {
				u.Port = d.Port
			}
		}
		out = append(out, u)
	}
	return out
}

// String never shows credentials, nor a password left in URL.
func (u Upstream) String() string {
	s := fmt.Sprintf("%s=%s", u.Host, redactURL(u.URL))
	if !u.Credentials.IsZero() {
		s += " (" + u.Credentials.String() + ")"
	}
	return s
}

// GoString is what %#v prints: no credentials.
func (u Upstream) GoString() string { return "cache.Upstream{" + u.String() + "}" }

// Format makes every fmt verb print String (or GoString for %#v).
func (u Upstream) Format(f fmt.State, verb rune) { formatRedacted(f, verb, u.String(), u.GoString()) }

// LogValue is what slog prints.
func (u Upstream) LogValue() slog.Value {
	return slog.GroupValue(slog.String("host", u.Host), slog.String("url", redactURL(u.URL)),
		slog.Int("port", u.Port), slog.String("credentials", u.Credentials.String()))
}

// MarshalJSON leaves the credentials out; it says whether there are any.
func (u Upstream) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Host        string `json:"host"`
		URL         string `json:"url"`
		Port        int    `json:"port,omitempty"`
		Credentials string `json:"credentials,omitempty"`
	}{u.Host, redactURL(u.URL), u.Port, u.Credentials.label()})
}

func formatRedacted(f fmt.State, verb rune, s, gos string) {
	if verb == 'v' && f.Flag('#') {
		s = gos
	}
	if verb == 'q' {
		s = strconv.Quote(s)
	}
	_, _ = io.WriteString(f, s)
}

// redactURL hides a password given in a URL's user info.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if i := strings.LastIndex(raw, "@"); i >= 0 && strings.Contains(raw, "://") {
			return raw[:strings.Index(raw, "://")+3] + "REDACTED@" + raw[i+1:]
		}
		return raw
	}
	return u.Redacted()
}

// registryHostRE is a registry host as image references name it: DNS
// labels, an optional port.
var registryHostRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?$`)

// ParseUpstream reads "host=URL", as the command's --upstream takes it:
// "docker.io=https://registry-1.docker.io".
func ParseUpstream(s string) (Upstream, error) {
	host, raw, ok := strings.Cut(s, "=")
	if !ok || host == "" || raw == "" {
		return Upstream{}, fmt.Errorf("want host=URL, such as docker.io=https://registry-1.docker.io")
	}
	u := Upstream{Host: host, URL: raw}
	if _, err := u.validate(); err != nil {
		return Upstream{}, err
	}
	return u, nil
}

// validate is the one check of an upstream's host and URL.
func (u Upstream) validate() (*url.URL, error) {
	if !registryHostRE.MatchString(u.Host) || len(u.Host) > 253 {
		return nil, fmt.Errorf("upstream host %q: want a registry host as image names give it, such as docker.io or registry.local:5000", u.Host)
	}
	r, err := url.Parse(u.URL)
	if err != nil || (r.Scheme != "http" && r.Scheme != "https") || r.Host == "" {
		return nil, fmt.Errorf("upstream %s: URL %q: want http:// or https:// and a host, such as https://%s", u.Host, redactURL(u.URL), u.Host)
	}
	if r.User != nil {
		return nil, fmt.Errorf("upstream %s: URL %s carries credentials: give them apart from the URL (a credential helper), never in it", u.Host, redactURL(u.URL))
	}
	return r, nil
}

func (u Upstream) tiers() ([]*url.URL, error) {
	var out []*url.URL
	for _, t := range u.Tiers {
		r, err := url.Parse(t)
		if err != nil || (r.Scheme != "http" && r.Scheme != "https") || r.Host == "" || r.User != nil {
			return nil, fmt.Errorf("upstream %s: tier %q: want http:// or https:// and a host (and an optional repository prefix path), without credentials", u.Host, redactURL(t))
		}
		out = append(out, r)
	}
	return out, nil
}

// storageName keeps each upstream URL's content apart, so that a fixture
// standing in for registry.k8s.io never fills the real one's cache.
func (u Upstream) storageName() string {
	sum := sha256.Sum256([]byte(u.URL))
	return strings.NewReplacer(":", "_", "/", "_").Replace(u.Host) + "-" + hex.EncodeToString(sum[:4])
}
