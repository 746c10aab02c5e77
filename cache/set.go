package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pullthrough/pullthrough/internal/engine"
	"github.com/pullthrough/pullthrough/internal/fleet"
)

// Set is a group of running caches, one per upstream.
type Set struct {
	mode      Mode
	caches    []*Cache
	addrs     []string
	listenAll bool
	root      string
	router    *router
	runFile   string // this set's record for ListRunning
	labels    map[string]string
}

// Cache is one upstream's cache in a Set.
type Cache struct {
	set     *Set
	up      Upstream
	listen  string // where this process reaches the cache: a listen address
	port    int
	engine  *engine.Cache
	storage string
	logger  *slog.Logger
	remote  string      // host:port of the other process's cache while reused
	reused  atomic.Bool // another process serves the port
	stop    chan struct{}
	wg      sync.WaitGroup
	access  *engine.AccessPolicy
	fleet   *fleet.Fleet
	idle    time.Duration

	maxConns int

	closeOnce sync.Once

	mu         sync.Mutex
	servers    []*http.Server
	base       Stats
	remoteBase Stats
	clientBase map[string]Stats
}

// Start starts one cache per upstream, all at once, and returns when each
// answers GET /v2/. If one fails, the others are stopped and the error names
// the upstream that failed. ctx bounds the start only; caches run until Close.
func Start(ctx context.Context, opts ...Option) (*Set, error) {
	s, err := newSettings(opts)
	if err != nil {
		return nil, err
	}
	return start(ctx, s)
}

// DefaultStorageRoot is where caches keep their content unless told
// otherwise: pullthrough under the user's cache directory
// (~/.cache/pullthrough), shared by cachetest.Main, `pullthrough up` and
// every other process of the user, so that the next run starts warm.
func DefaultStorageRoot() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("finding the user cache directory for storage: %w (use WithStorageDir)", err)
	}
	return filepath.Join(dir, "pullthrough"), nil
}

func start(ctx context.Context, s *settings) (*Set, error) {
	if len(s.upstreams) == 0 {
		return nil, errors.New("no upstreams: want at least one (see DefaultUpstreams)")
	}
	seen := map[string]bool{}
	for _, u := range s.upstreams {
		if _, err := u.validate(); err != nil {
			return nil, err
		}
		if seen[u.Host] {
			return nil, fmt.Errorf("upstream host %q is listed twice: want one cache per registry host", u.Host)
		}
		seen[u.Host] = true
	}
	if s.fleet != nil {
		if err := s.fleet.validate(); err != nil {
			return nil, err
		}
		if !s.fixedPorts {
			return nil, errors.New("a fleet instance needs fixed ports (WithFixedPorts): its peers reach it at the advertised address and the upstream's port")
		}
	}
	addrs, err := s.listenAddrs()
	if err != nil {
		return nil, err
	}
	root := s.storage
	if root == "" {
		if root, err = DefaultStorageRoot(); err != nil {
			return nil, err
		}
	}
	set := &Set{mode: s.mode, addrs: addrs, listenAll: s.listenAll, root: root, labels: s.labels, caches: make([]*Cache, len(s.upstreams))}
	set.router = &router{set: set}
	g, gctx := errgroup.WithContext(ctx)
	for i, u := range s.upstreams {
		g.Go(func() error {
			c, err := startCache(gctx, s, set, u, addrs, filepath.Join(root, u.storageName()))
			set.caches[i] = c
			if err != nil {
				return fmt.Errorf("starting cache for %s: %w", u.Host, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		set.Close()
		return nil, err
	}
	set.router.ready()
	set.record()
	return set, nil
}

func (s *settings) listenAddrs() ([]string, error) {
	if s.listenAll {
		return []string{"0.0.0.0"}, nil
	}
	if len(s.listen) == 0 {
		addrs := []string{"127.0.0.1"}
		if ip, err := DockerBridgeIP(); err == nil {
			addrs = append(addrs, ip)
		}
		return addrs, nil
	}
	return s.listen, nil
}

func startCache(ctx context.Context, s *settings, set *Set, u Upstream, addrs []string, storage string) (*Cache, error) {
	remote, err := u.validate()
	if err != nil {
		return nil, err
	}
	c := &Cache{set: set, up: u, storage: storage, listen: addrs[0], stop: make(chan struct{}), idle: s.idle, maxConns: s.maxConns}
	if c.listen == "0.0.0.0" {
		c.listen = "127.0.0.1"
	}
	lns, err := listen(ctx, u, addrs, s.fixedPorts, engine.Identity(remote.String(), engine.Mode(s.mode)))
	var reuse *reuseError
	switch {
	case errors.As(err, &reuse):
		// Another process's cache for the same upstream, remote and mode
		// holds the port. Share its storage (fills are coordinated across
		// processes), and take its port over if it goes away.
		c.port = u.Port
		c.remote = reuse.hostPort
		if st, err := os.Stat(reuse.storage); reuse.storage != "" && err == nil && st.IsDir() {
			c.storage = reuse.storage
		}
		c.reused.Store(true)
	case err != nil:
		return nil, err
	default:
		c.port = lns[0].Addr().(*net.TCPAddr).Port
	}
	auth, err := u.authenticator()
	if err != nil {
		closeListeners(lns)
		return nil, err
	}
	tiers, err := u.tiers()
	if err != nil {
		closeListeners(lns)
		return nil, err
	}
	c.logger = s.logger
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	c.access = &engine.AccessPolicy{Open: s.open, Allow: s.allow}
	var fl engine.Fleet
	if s.fleet != nil && !c.reused.Load() {
		f, err := s.fleet.connect(ctx, u.Host, c.port, c.logger)
		if err != nil {
			closeListeners(lns)
			return nil, fmt.Errorf("joining the fleet: %w", err)
		}
		c.fleet = f
		fl = f
	}
	c.engine, err = engine.New(ctx, engine.Config{
		Host:              u.Host,
		Remote:            remote,
		Tiers:             tiers,
		TierTimeout:       s.tier,
		StorageDir:        c.storage,
		Mode:              engine.Mode(s.mode),
		TagTTL:            s.tagTTL,
		DialTimeout:       s.dial,
		HeaderTimeout:     s.header,
		RevalidateTimeout: s.revalidate,
		StallTimeout:      s.stall,
		Auth:              auth,
		Access:            c.access,
		Fleet:             fl,
		Logger:            c.logger,
		OnDamage:          s.onDamage,
	})
	if err != nil {
		closeListeners(lns)
		if c.fleet != nil {
			c.fleet.Close()
		}
		return nil, err
	}
	if c.reused.Load() {
		c.wg.Add(1)
		go c.takeOver(addrs)
		return c, nil
	}
	c.serve(lns)
	if err := waitReady(ctx, c.Addr()); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func (c *Cache) serve(lns []net.Listener) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.set.router.forPort(c)
	for _, l := range lns {
		c.servers = append(c.servers, serveOn(l, h, c.access, c.idle, c.maxConns, c.logger))
	}
}

// takeOver listens on a reused cache's port once its owner lets it go, so
// that pulls keep working when the process that started it exits.
func (c *Cache) takeOver(addrs []string) {
	defer c.wg.Done()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		lns, err := listenAll(addrs, c.port)
		if err != nil {
			continue
		}
		c.serve(lns)
		c.reused.Store(false)
		c.logger.Info("took over a cache's port from the process that had it", "upstream", c.up.Host, "port", c.port)
		return
	}
}

func closeListeners(lns []net.Listener) {
	for _, l := range lns {
		l.Close()
	}
}

// Close stops every cache the set started. Content stays in storage. A
// second Close does nothing and returns nil.
func (s *Set) Close() error {
	s.unrecord()
	var errs []error

	for _, c := range s.caches {
		if c != nil {
			errs = append(errs, c.close())
		}
	}
	return errors.Join(errs...)
}

// Mode is the mode every cache of the set runs in. A strict set needs
// skipFallback in a real node's mirror config (provisioners sets it), or its
// containerd pulls what the cache refuses from the registry itself.
func (s *Set) Mode() Mode { return s.mode }

// StorageRoot is the directory under which each cache keeps its content.
func (s *Set) StorageRoot() string { return s.root }

// Caches returns the caches in upstream order.
func (s *Set) Caches() []*Cache { return append([]*Cache(nil), s.caches...) }

// Cache returns the cache for a registry host, or nil.
func (s *Set) Cache(host string) *Cache {
	for _, c := range s.caches {
		if c.up.Host == host {
			return c
		}
	}
	return nil
}

// Stats returns each cache's counters by registry host.
func (s *Set) Stats() map[string]Stats {
	m := make(map[string]Stats, len(s.caches))
	for _, c := range s.caches {
		m[c.up.Host] = c.Stats()
	}
	return m
}

// Clients adds up, per client address, what every cache of the set served
// it: Clients of each cache, summed.
func (s *Set) Clients() map[string]Stats {
	out := map[string]Stats{}
	for _, c := range s.caches {
		for ip, st := range c.Clients() {
			out[ip] = out[ip].Add(st)
		}
	}
	return out
}

// Total adds up the counters of every cache.
func (s *Set) Total() Stats {
	var t Stats
	for _, c := range s.caches {
		t = t.Add(c.Stats())
	}
	return t
}

// ResetStats starts every cache's counters from zero.
func (s *Set) ResetStats() {
	for _, c := range s.caches {
		c.ResetStats()
	}
}

// Upstream returns what the cache stands in front of.
func (c *Cache) Upstream() Upstream { return c.up }

// Host is the registry host the cache serves, e.g. "docker.io".
func (c *Cache) Host() string { return c.up.Host }

// Port is the port the cache listens on, on every listen address.
func (c *Cache) Port() int { return c.port }

// Addr is the host:port this process reaches the cache on: loopback unless
// the listen addresses leave it out.
func (c *Cache) Addr() string { return net.JoinHostPort(c.listen, strconv.Itoa(c.port)) }

// Endpoint is Addr as a URL, for clients on this host.
func (c *Cache) Endpoint() string { return "http://" + c.Addr() }

// StorageDir is where the cache keeps its content.
func (c *Cache) StorageDir() string { return c.storage }

// Handler is the cache's registry API handler, for serving it on a listener
// of one's own.
func (c *Cache) Handler() http.Handler { return c.set.router.forPort(c) }

// Endpoints says, per endpoint tried (tiers in order, the origin last), how
// many requests this process sent it and how many body bytes it served.
func (c *Cache) Endpoints() []EndpointStats {
	return c.engine.Endpoints()
}

// Reused reports that WithFixedPorts found a pullthrough cache of another
// process for this upstream on the port, and that process still serves it.
// This process shares its storage and takes the port over when it exits.
func (c *Cache) Reused() bool { return c.reused.Load() }

// Stats returns the counters since start or the last ResetStats: while the
// cache is reused, those of the process serving the port, read over HTTP;
// then this process's own.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	own := c.engine.Stats().Sub(c.base)
	remoteBase := c.remoteBase
	c.mu.Unlock()
	// The HTTP call is made without the lock, which takeOver needs.
	if c.reused.Load() {
		if r, err := remoteStats(c.remote); err == nil {
			return own.Add(r.Sub(remoteBase))
		}
	}
	return own
}

// Clients returns what each client address (an IP: a node, this host)
// asked this cache for and was served, since start or the last ResetStats,
// in this process. Upstream counters stay the cache's own.
func (c *Cache) Clients() map[string]Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.engine.Clients()
	for ip, s := range out {
		out[ip] = s.Sub(c.clientBase[ip])
		if out[ip] == (Stats{}) {
			delete(out, ip)
		}
	}
	return out
}

// ResetStats starts the counters from zero.
func (c *Cache) ResetStats() {
	var remote *Stats
	if c.reused.Load() {
		if r, err := remoteStats(c.remote); err == nil {
			remote = &r
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.base = c.engine.Stats()
	c.clientBase = c.engine.Clients()
	if remote != nil {
		c.remoteBase = *remote
	}
}

func remoteStats(hostPort string) (Stats, error) {
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + hostPort + engine.StatsPath)
	if err != nil {
		return Stats{}, err
	}
	defer resp.Body.Close()
	var s Stats
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("%s answered %s", engine.StatsPath, resp.Status)
	}
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// close stops the cache; a later call does nothing and returns nil.
func (c *Cache) close() error {
	first := false
	c.closeOnce.Do(func() { first = true; close(c.stop) })
	c.wg.Wait()
	if !first {
		return nil
	}
	var errs []error
	// Let requests under way finish, briefly, so none reaches the engine
	// after it closed; then drop whatever is left.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c.mu.Lock()
	servers := c.servers
	c.mu.Unlock()
	for _, srv := range servers {
		if err := srv.Shutdown(ctx); err != nil {
			errs = append(errs, srv.Close())
		}
	}
	if c.engine != nil {
		errs = append(errs, c.engine.Close())
	}
	if c.fleet != nil {
		errs = append(errs, c.fleet.Close())
	}
	return errors.Join(errs...)
}

// String names the cache, where it listens and what it stands in front of;
// never credentials.
func (c *Cache) String() string {
	if c == nil {
		return "<nil cache>"
	}
	s := fmt.Sprintf("cache %s at %s for %s", c.up.Host, c.Endpoint(), redactURL(c.up.URL))
	if c.Reused() {
		s += " (reused)"
	}
	return s
}

// GoString is what %#v prints.
func (c *Cache) GoString() string { return "&cache.Cache{" + c.String() + "}" }

// Format makes every fmt verb print String: the struct itself holds the
// upstream's credentials.
func (c *Cache) Format(f fmt.State, verb rune) { formatRedacted(f, verb, c.String(), c.GoString()) }

// LogValue is what slog prints.
func (c *Cache) LogValue() slog.Value { return slog.StringValue(c.String()) }

// String lists the caches.
func (s *Set) String() string {
	if s == nil {
		return "<nil set>"
	}
	parts := make([]string, 0, len(s.caches))
	for _, c := range s.caches {
		parts = append(parts, c.String())
	}
	return "[" + strings.Join(parts, "; ") + "]"
}

// GoString is what %#v prints.
func (s *Set) GoString() string { return "&cache.Set" + s.String() }

// Format makes every fmt verb print String.
func (s *Set) Format(f fmt.State, verb rune) { formatRedacted(f, verb, s.String(), s.GoString()) }

// LogValue is what slog prints.
func (s *Set) LogValue() slog.Value { return slog.StringValue(s.String()) }
