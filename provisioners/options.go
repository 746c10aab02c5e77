package provisioners

import (
	"log/slog"

	"github.com/pullthrough/pullthrough/cache"
)

// Option changes how Create and New make a cluster. Order does not matter.
type Option func(*settings)

type settings struct {
	caches       *cache.Set
	mirrors      map[string]string
	single       bool
	inNet        *InNetwork
	skipFallback bool
	bridge       string
	logger       *slog.Logger
	readiness    Readiness
}

// WithCaches fills the registry mirrors from a running cache set: one mirror
// per cached upstream, at the address nodes reach the host on.
func WithCaches(s *cache.Set) Option { return func(o *settings) { o.caches = s } }

// WithMirrors sets the registry mirrors from a map of registry host to URL
// ("docker.io" → "http://172.17.0.1:5000"), for caches this process did not
// start: the guide's registry:2 containers, `pullthrough up`, a fleet tier.
// With WithCaches as well, these win for the hosts they name.
func WithMirrors(m map[string]string) Option {
	return func(o *settings) {
		if o.mirrors == nil {
			o.mirrors = map[string]string{}
		}
		for h, u := range m {
			o.mirrors[h] = u
		}
	}
}

// WithSingleMirror gives nodes one mirror for every registry, Talos's "*"
// mirror, at one port of the caches of WithCaches: containerd sends every
// pull to it with ?ns=<registry>, and the caches route by it. A registry
// the set does not cache is refused by the caches (with skipFallback, the
// node's pull then fails and names it; without, containerd fetches it from
// the registry itself).
func WithSingleMirror() Option { return func(o *settings) { o.single = true } }

// WithSkipFallback writes the mirrors as Talos RegistryMirrorConfig
// documents with skipFallback: true, so a node's containerd never pulls from
// the registry itself when a mirror fails. WithCaches sets it for a strict
// set: without it a strict-mode verification would pass on a real node that
// silently pulled from the internet.
func WithSkipFallback() Option { return func(o *settings) { o.skipFallback = true } }

// WithBridgeAddr overrides the address nodes reach the caches on (default:
// docker0's address for docker, the CIDR's gateway for qemu).
func WithBridgeAddr(ip string) Option { return func(o *settings) { o.bridge = ip } }

// WithLogger receives what this package and Talos's provisioners say while
// creating, waiting for and destroying a cluster, one record a line at Info,
// with a "cluster" attribute; it is the same option shape as cachetest's.
// Default: nothing is said. No call of this package writes to stderr.
func WithLogger(l *slog.Logger) Option { return func(o *settings) { o.logger = l } }

// WithReadiness replaces the default check, talosctl's post-create checks,
// which need a real Talos: fixtures.StandinReady() for stand-in nodes, or
// AllOf several checks.
func WithReadiness(r Readiness) Option { return func(o *settings) { o.readiness = r } }
