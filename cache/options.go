package cache

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/pullthrough/pullthrough/internal/engine"
)

// Mode says when caches ask their upstreams.
type Mode = engine.Mode

const (
	// Online revalidates a tag with upstream once its TTL has passed.
	Online = engine.Online
	// Offline serves cached tags without asking upstream; what is missing is
	// still fetched.
	Offline = engine.Offline
	// Strict never asks upstream: anything not cached fails with its name.
	Strict = engine.Strict
)

// ParseMode reads "online", "offline" or "strict".
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{Online, Offline, Strict} {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("mode %q: want online, offline or strict", s)
}

// Option changes how Start sets caches up. Order does not matter, except
// that a later option of the same kind wins. A bad option is an error from
// Start that names it.
type Option interface {
	apply(*settings) error
}

type optionFunc func(*settings) error

func (f optionFunc) apply(s *settings) error { return f(s) }

type settings struct {
	upstreams  []Upstream
	fixedPorts bool
	listen     []string
	listenAll  bool
	open       bool
	allow      []netip.Prefix
	storage    string
	logger     *slog.Logger
	mode       Mode
	tagTTL     time.Duration
	dial       time.Duration
	header     time.Duration
	revalidate time.Duration
	stall      time.Duration
	tier       time.Duration
	idle       time.Duration
	maxConns   int
	fleet      *FleetConfig
	labels     map[string]string
	onDamage   func(Damage)
}

func newSettings(opts []Option) (*settings, error) {
	s := &settings{upstreams: DefaultUpstreams()}
	var errs []error
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o.apply(s); err != nil {
			errs = append(errs, err)
		}
	}
	return s, errors.Join(errs...)
}

// WithUpstreams replaces DefaultUpstreams.
func WithUpstreams(us ...Upstream) Option {
	return optionFunc(func(s *settings) error { s.upstreams = append([]Upstream(nil), us...); return nil })
}

// WithFixedPorts listens on each Upstream's Port instead of one the OS picks.
// A port held by a pullthrough cache for the same upstream is used as is; one
// held by anything else is an error naming the port (ErrPortInUse).
func WithFixedPorts() Option {
	return optionFunc(func(s *settings) error { s.fixedPorts = true; return nil })
}

// WithListenAddrs sets the IP addresses caches listen on. Each must be on this
// host. Default: 127.0.0.1, and docker0's address when docker0 exists.
func WithListenAddrs(ips ...string) Option {
	return optionFunc(func(s *settings) error {
		s.listen, s.listenAll = nil, false
		for _, a := range ips {
			ip := net.ParseIP(a)
			if ip == nil {
				return fmt.Errorf("listen address %q: want an IP address of this host", a)
			}
			s.listen = append(s.listen, ip.String())
		}
		return nil
	})
}

// WithListenAll listens on every interface, as `docker run -p` does. The qemu
// provisioner needs it: its bridge does not exist until the cluster does.
func WithListenAll() Option {
	return optionFunc(func(s *settings) error { s.listenAll = true; return nil })
}

// WithOpenAccess admits clients from any address. By default only loopback and
// local bridge networks (where nodes run) are admitted.
func WithOpenAccess() Option {
	return optionFunc(func(s *settings) error { s.open = true; return nil })
}

// WithAllowedClients admits clients from these networks ("192.168.1.0/24") in
// addition to loopback and local bridges.
func WithAllowedClients(cidrs ...string) Option {
	return optionFunc(func(s *settings) error {
		for _, c := range cidrs {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				return fmt.Errorf("allowed client network %q: want CIDR notation such as 192.168.1.0/24", c)
			}
			s.allow = append(s.allow, p.Masked())
		}
		return nil
	})
}

// WithStorageDir keeps cached content under dir, one folder per upstream.
// Default: DefaultStorageRoot, shared by every process of this user.
func WithStorageDir(dir string) Option {
	return optionFunc(func(s *settings) error {
		if dir == "" {
			return errors.New("storage directory \"\": want a directory path")
		}
		s.storage = dir
		return nil
	})
}

// WithLogger receives what caches have to say. Default: silent.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(s *settings) error { s.logger = l; return nil })
}

// WithMode sets Online (default), Offline or Strict.
func WithMode(m Mode) Option {
	return optionFunc(func(s *settings) error {
		if m < Online || m > Strict {
			return fmt.Errorf("mode %d: want Online, Offline or Strict", int(m))
		}
		s.mode = m
		return nil
	})
}

// WithTagTTL sets how long a tag confirmed by upstream is served without
// asking again (default 1h; negative: ask every time).
func WithTagTTL(d time.Duration) Option {
	return optionFunc(func(s *settings) error { s.tagTTL = d; return nil })
}

// WithTimeouts bounds upstream waits: connecting (default 5s), waiting for
// response headers (30s), and revalidating a tag that is cached (750ms, after
// which the cached copy is served). Zero keeps a default.
func WithTimeouts(dial, header, revalidate time.Duration) Option {
	return optionFunc(func(s *settings) error {
		if dial < 0 || header < 0 || revalidate < 0 {
			return fmt.Errorf("timeouts %s, %s, %s: want durations of zero (the default) or more", dial, header, revalidate)
		}
		s.dial, s.header, s.revalidate = dial, header, revalidate
		return nil
	})
}

// WithStallTimeout abandons a blob download whose upstream sends less than
// 32 KiB in d (default 30s): its clients get an error at once, it is logged
// as a warning naming the upstream and digest, and the next request starts a
// new download. A trickle of a few bytes a second counts as a stall.
func WithStallTimeout(d time.Duration) Option {
	return optionFunc(func(s *settings) error {
		if d < 0 {
			return fmt.Errorf("stall timeout %s: want zero (the default) or more", d)
		}
		s.stall = d
		return nil
	})
}

// WithTierTimeout bounds the wait for a fleet tier's answer (default 3s); a
// tier that misses it is skipped for a back-off period, and the next
// endpoint is asked.
func WithTierTimeout(d time.Duration) Option {
	return optionFunc(func(s *settings) error { s.tier = d; return nil })
}

// WithIdleTimeout closes a client's keep-alive connection after d without a
// request (default 60s).
func WithIdleTimeout(d time.Duration) Option {
	return optionFunc(func(s *settings) error {
		if d < 0 {
			return fmt.Errorf("idle timeout %s: want zero (the default) or more", d)
		}
		s.idle = d
		return nil
	})
}

// WithMaxConns caps the connections one client address holds open to one
// listener (default 512). A new connection past the cap closes that
// address's longest-idle connection, or is refused when none is idle.
func WithMaxConns(n int) Option {
	return optionFunc(func(s *settings) error {
		if n < 0 {
			return fmt.Errorf("connection cap %d: want zero (the default) or more", n)
		}
		s.maxConns = n
		return nil
	})
}

// Defaults for the durations the options set.
const (
	DefaultTagTTL            = engine.DefaultTagTTL
	DefaultDialTimeout       = engine.DefaultDialTimeout
	DefaultHeaderTimeout     = engine.DefaultHeaderTimeout
	DefaultRevalidateTimeout = engine.DefaultRevalidateTimeout
	DefaultStallTimeout      = engine.DefaultStallTimeout
	DefaultTierTimeout       = engine.DefaultTierTimeout
)

// Damage is a stored blob or manifest whose bytes did not match its digest:
// the cache removed it, and fetches it again when next asked.
type Damage = engine.Damage

// WithDamageReport calls f for every stored object a cache finds damaged
// (besides logging it), so that a tool can name the file in its own words.
// f must not block.
func WithDamageReport(f func(Damage)) Option {
	return optionFunc(func(s *settings) error { s.onDamage = f; return nil })
}

// WithLabels are kept in the set's record (Running.Labels), for tools that
// tell their own sets apart in ListRunning.
func WithLabels(labels map[string]string) Option {
	return optionFunc(func(s *settings) error {
		s.labels = map[string]string{}
		for k, v := range labels {
			s.labels[k] = v
		}
		return nil
	})
}
