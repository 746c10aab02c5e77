package cachetest

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/pullthrough/pullthrough/internal/cache"
)

// Mode says when caches ask their upstreams.
type Mode int

const (
	// Online revalidates a tag with upstream once its TTL has passed.
	Online Mode = iota
	// Offline serves cached tags without asking upstream; what is missing is
	// still fetched.
	Offline
	// Strict never asks upstream: anything not cached fails with its name.
	Strict
)

// The engine's modes are the same numbers: Mode converts to cache.Mode.
// A difference fails to compile: the index is out of range.
var (
	_ = [1]struct{}{}[Online-Mode(cache.ModeOnline)]
	_ = [1]struct{}{}[Offline-Mode(cache.ModeOffline)]
	_ = [1]struct{}{}[Strict-Mode(cache.ModeStrict)]
)

// Option changes how Start, New and Main set caches up. Order does not matter,
// except that a later option of the same kind wins.
type Option func(*settings)

type settings struct {
	upstreams  []Upstream
	fixedPorts bool
	listen     []string
	listenAll  bool
	open       bool
	allow      []netip.Prefix
	storage    string
	persist    bool
	logger     *slog.Logger
	mode       Mode
	tagTTL     time.Duration
	dial       time.Duration
	header     time.Duration
	revalidate time.Duration
	stall      time.Duration
	tier       time.Duration
	errs       []error
}

// WithUpstreams replaces DefaultUpstreams.
func WithUpstreams(us ...Upstream) Option {
	return func(s *settings) { s.upstreams = append([]Upstream(nil), us...) }
}

// WithFixedPorts listens on each Upstream's Port instead of one the OS picks.
// A port held by a pullthrough cache for the same upstream is used as is; one
// held by anything else is an error naming the port.
func WithFixedPorts() Option { return func(s *settings) { s.fixedPorts = true } }

// WithListenAddrs sets the IP addresses caches listen on. Each must be on this
// host. Default: 127.0.0.1, and docker0's address when docker0 exists.
func WithListenAddrs(ips ...string) Option {
	return func(s *settings) { s.listen = append([]string(nil), ips...); s.listenAll = false }
}

// WithListenAll listens on every interface, as `docker run -p` does. The qemu
// provisioner needs it: its bridge does not exist until the cluster does.
func WithListenAll() Option { return func(s *settings) { s.listenAll = true } }

// WithOpenAccess admits clients from any address. By default only loopback and
// local bridge networks (where nodes run) are admitted.
func WithOpenAccess() Option { return func(s *settings) { s.open = true } }

// WithAllowedClients admits clients from these networks ("192.168.1.0/24") in
// addition to loopback and local bridges.
func WithAllowedClients(cidrs ...string) Option {
	return func(s *settings) {
		for _, c := range cidrs {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				s.errs = append(s.errs, fmt.Errorf("allowed client network %q: want CIDR notation such as 192.168.1.0/24", c))
				continue
			}
			s.allow = append(s.allow, p.Masked())
		}
	}
}

// WithStorageDir keeps cached content under dir, one folder per upstream.
func WithStorageDir(dir string) Option { return func(s *settings) { s.storage = dir } }

// WithPersistentStorage makes New keep content under the user's cache
// directory, as Start and Main do, instead of a temporary directory.
func WithPersistentStorage() Option { return func(s *settings) { s.persist = true } }

// WithLogger receives what caches have to say. Default: silent.
func WithLogger(l *slog.Logger) Option { return func(s *settings) { s.logger = l } }

// WithMode sets Online (default), Offline or Strict.
func WithMode(m Mode) Option { return func(s *settings) { s.mode = m } }

// WithTagTTL sets how long a tag confirmed by upstream is served without
// asking again (default 1h; negative: ask every time).
func WithTagTTL(d time.Duration) Option { return func(s *settings) { s.tagTTL = d } }

// WithTimeouts bounds upstream waits: connecting (default 5s), waiting for
// response headers (30s), and revalidating a tag that is cached (750ms, after
// which the cached copy is served). Zero keeps a default.
func WithTimeouts(dial, header, revalidate time.Duration) Option {
	return func(s *settings) { s.dial, s.header, s.revalidate = dial, header, revalidate }
}

// WithStallTimeout abandons a blob download whose upstream sends nothing for
// d (default 30s): its clients get an error at once, it is logged as a
// warning naming the upstream and digest, and the next request starts a new
// download.
func WithStallTimeout(d time.Duration) Option { return func(s *settings) { s.stall = d } }

// WithTierTimeout bounds the wait for a fleet tier's answer (default 3s); a
// tier that misses it is skipped for a back-off period, and the next
// endpoint is asked.
func WithTierTimeout(d time.Duration) Option { return func(s *settings) { s.tier = d } }

// String is "online", "offline" or "strict".
func (m Mode) String() string { return cache.Mode(m).String() }
