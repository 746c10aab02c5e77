package standin

import (
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"reflect"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/siderolabs/talos/pkg/images"
	"github.com/siderolabs/talos/pkg/machinery/config/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
)

var (
	// ErrNoUserdata means USERDATA is empty or is not base64 of a config.
	ErrNoUserdata = errors.New("no machine config in USERDATA")
	// ErrNoMirrors means the machine config names no registry mirror with
	// an endpoint: the stand-in exists to pull through mirrors.
	ErrNoMirrors = errors.New("machine config has no registry mirrors")
	// ErrBadEndpoint means a mirror endpoint is not an http(s) URL with a host.
	ErrBadEndpoint = errors.New("malformed registry mirror endpoint")
)

// Node is what a stand-in node knows once it has read its machine config.
type Node struct {
	// MachineType is "controlplane", "worker" or "init".
	MachineType string
	// Hostname is the hostname the config sets, if any.
	Hostname string
	// Images are the images the node pulls at boot, in images.List order.
	Images []Image
	// Mirrors maps a registry host ("registry.k8s.io", or "*" for every
	// registry without its own entry) to its mirror.
	Mirrors map[string]Mirror
}

// Image is one reference of images.List, split as a mirror request needs it.
type Image struct {
	Ref        string // "registry.k8s.io/pause:3.10.1"
	Registry   string // "registry.k8s.io"; Docker Hub is "docker.io", as containerd names it
	Repository string // "pause"
	Tag        string // "3.10.1"
}

// Mirror is one registry's mirror configuration.
type Mirror struct {
	Endpoints    []Endpoint
	SkipFallback bool
}

// Endpoint is one mirror endpoint.
type Endpoint struct {
	// URL is the endpoint as the config gives it.
	URL string
	// base is where registry API paths go: URL with /v2 appended, unless
	// the config says overridePath, as containerd's hosts configuration does.
	base *url.URL
}

// LoadUserdata decodes USERDATA as Talos's docker provisioner writes it
// (base64 of the machine config) and loads it with Load.
func LoadUserdata(userdata string) (*Node, error) {
	userdata = strings.Join(strings.Fields(userdata), "")
	if userdata == "" {
		return nil, fmt.Errorf("reading USERDATA: %w: the variable is empty or unset", ErrNoUserdata)
	}
	raw, err := base64.StdEncoding.DecodeString(userdata)
	if err != nil {
		return nil, fmt.Errorf("decoding USERDATA (%d characters) as base64: %w: %w", len(userdata), ErrNoUserdata, err)
	}
	return Load(raw)
}

// Load reads a machine config with Talos's configloader and works out what
// the node pulls and through which mirrors. A config without mirrors, or
// with a mirror endpoint that is not an http(s) URL with a host, is an error
// naming the value.
func Load(machineConfig []byte) (*Node, error) {
	prov, err := configloader.NewFromBytes(machineConfig)
	if err != nil {
		return nil, fmt.Errorf("loading machine config: %w", err)
	}
	if prov.Machine() == nil || prov.Cluster() == nil {
		return nil, fmt.Errorf("loading machine config: %w: it has no machine or cluster section (v1alpha1 document)", ErrNoUserdata)
	}
	n := &Node{MachineType: prov.Machine().Type().String()}
	if h := prov.NetworkHostnameConfig(); h != nil {
		n.Hostname = h.Hostname()
	}
	if n.Mirrors, err = mirrors(prov); err != nil {
		return nil, err
	}
	if n.Images, err = bootImages(prov); err != nil {
		return nil, err
	}
	return n, nil
}

func mirrors(cfg config.Config) (map[string]Mirror, error) {
	out := map[string]Mirror{}
	all := cfg.RegistryMirrorConfigs()
	for _, host := range slices.Sorted(maps.Keys(all)) {
		mc := all[host]
		m := Mirror{SkipFallback: mc.SkipFallback()}
		for _, ep := range mc.Endpoints() {
			raw := endpointString(ep)
			base, err := endpointBase(raw, ep.OverridePath())
			if err != nil {
				return nil, fmt.Errorf("reading registry mirror for %q: endpoint %q: %w: %w", host, raw, ErrBadEndpoint, err)
			}
			m.Endpoints = append(m.Endpoints, Endpoint{URL: raw, base: base})
		}
		if len(m.Endpoints) == 0 {
			return nil, fmt.Errorf("reading registry mirror for %q: %w: it lists no endpoints", host, ErrNoMirrors)
		}
		out[host] = m
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("reading registry mirrors: %w: the stand-in pulls only through mirrors; "+
			"add a RegistryMirrorConfig document (name: registry.k8s.io, endpoints: [{url: http://172.17.0.1:5000}]) "+
			"or talosctl --registry-mirror", ErrNoMirrors)
	}
	return out, nil
}

// endpointString guards against a document whose url key is empty: Talos
// leaves its URL nil, and String on it would panic.
func endpointString(ep config.RegistryEndpointConfig) (s string) {
	defer func() {
		if recover() != nil {
			s = ""
		}
	}()
	return ep.Endpoint()
}

func endpointBase(raw string, overridePath bool) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("it is empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("scheme %q: want http or https", u.Scheme)
	}
	if u.Hostname() == "" {
		return nil, errors.New("it has no host")
	}
	if p := u.Port(); p != "" && !validPort(p) {
		return nil, fmt.Errorf("port %q is not a number from 1 to 65535", p)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, errors.New("want no user, query or fragment")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	if !overridePath && !strings.HasSuffix(u.Path, "/v2") {
		u.Path += "/v2"
	}
	u.RawPath = ""
	return u, nil
}

func validPort(p string) bool {
	n := 0
	for _, c := range p {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
		if n > 65535 {
			return false
		}
	}
	return n > 0
}

// bootImages flattens images.Versions by reflection, so an image a later
// Talos adds to the struct is pulled without a change here. images.List
// panics on a reference it cannot parse (a config naming a bad image).
func bootImages(cfg config.Config) (out []Image, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("listing boot images of the machine config: %v", r)
		}
	}()
	v := reflect.ValueOf(images.List(cfg))
	for i := range v.NumField() {
		tag, ok := v.Field(i).Interface().(name.Tag)
		if !ok {
			continue
		}
		reg := tag.RegistryStr()
		if reg == name.DefaultRegistry {
			reg = "docker.io" // go-containerregistry says index.docker.io; containerd and mirrors say docker.io
		}
		out = append(out, Image{Ref: tag.String(), Registry: reg, Repository: tag.RepositoryStr(), Tag: tag.TagStr()})
	}
	if len(out) == 0 {
		return nil, errors.New("listing boot images of the machine config: images.List gave none")
	}
	return out, nil
}

// MirrorFor returns the mirror for a registry host: its own, else "*".
func (n *Node) MirrorFor(host string) (Mirror, bool) {
	if m, ok := n.Mirrors[host]; ok {
		return m, true
	}
	m, ok := n.Mirrors["*"]
	return m, ok
}
