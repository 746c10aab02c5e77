package provisioners

import (
	"io"

	"github.com/pullthrough/pullthrough/cachetest"
)

// Option changes how Create and New make a cluster. Order does not matter.
type Option func(*settings)

type settings struct {
	caches    *cachetest.Set
	bridge    string
	log       io.Writer
	readiness Readiness
}

// WithCaches fills the registry mirrors from a running cache set: one mirror
// per cached upstream, at the address nodes reach the host on.
func WithCaches(s *cachetest.Set) Option { return func(o *settings) { o.caches = s } }

// WithBridgeAddr overrides the address nodes reach the caches on (default:
// docker0's address for docker, the CIDR's gateway for qemu).
func WithBridgeAddr(ip string) Option { return func(o *settings) { o.bridge = ip } }

// WithLogWriter receives the provisioner's progress. Default: discarded.
func WithLogWriter(w io.Writer) Option { return func(o *settings) { o.log = w } }

// WithReadiness replaces the default check: talosctl's post-create checks for
// a real Talos image, the stand-in's done report for fixtures' stand-in.
func WithReadiness(r Readiness) Option { return func(o *settings) { o.readiness = r } }
