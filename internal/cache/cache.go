package cache

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/google/go-containerregistry/pkg/authn"
)

// Mode says when a cache asks its upstream.
type Mode int

const (
	// ModeOnline revalidates a tag with upstream once its TTL has passed, and
	// fetches whatever is missing.
	ModeOnline Mode = iota
	// ModeOffline serves cached tags without asking upstream, and still
	// fetches what is missing.
	ModeOffline
	// ModeStrict never asks upstream: anything not cached is an error that
	// names it. It proves that a set of images is available locally.
	ModeStrict
)

func (m Mode) String() string {
	switch m {
	case ModeOnline:
		return "online"
	case ModeOffline:
		return "offline"
	case ModeStrict:
		return "strict"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Config is one cache's settings. Zero durations take the defaults below.
type Config struct {
	Host       string   // registry host as images name it, e.g. docker.io
	Remote     *url.URL // where it is fetched from, e.g. https://registry-1.docker.io
	StorageDir string
	Mode       Mode
	// TagTTL is how long a tag confirmed by upstream is served without asking
	// again. Negative: always ask.
	TagTTL            time.Duration
	DialTimeout       time.Duration
	HeaderTimeout     time.Duration
	RevalidateTimeout time.Duration
	Auth              authn.Authenticator // nil: anonymous
	Access            *AccessPolicy       // nil: everyone
	Logger            *slog.Logger        // nil: silent
}

// Defaults for Config's durations.
const (
	DefaultTagTTL            = time.Hour
	DefaultDialTimeout       = 5 * time.Second
	DefaultHeaderTimeout     = 30 * time.Second
	DefaultRevalidateTimeout = 750 * time.Millisecond
)

// Cache is one running pull-through cache: an http.Handler plus the loopback
// gateway its proxy fetches through.
type Cache struct {
	front   *front
	gw      *gateway
	app     *handlers.App
	gwSrv   *http.Server
	gwLn    net.Listener
	cancel  context.CancelFunc
	stats   *counters
	unhook  func()
	storage string
}

// New starts a cache. It does not contact the upstream.
func New(ctx context.Context, cfg Config) (c *Cache, err error) {
	if cfg.Remote == nil || (cfg.Remote.Scheme != "http" && cfg.Remote.Scheme != "https") || cfg.Remote.Host == "" {
		return nil, fmt.Errorf("upstream %q: remote URL must be http:// or https:// with a host", cfg.Host)
	}
	if err := checkWritable(cfg.StorageDir); err != nil {
		return nil, fmt.Errorf("upstream %q: storage directory %q is not writable: %w", cfg.Host, cfg.StorageDir, err)
	}
	setLog := cfg.Logger
	if setLog == nil {
		setLog = slog.New(slog.DiscardHandler)
	}
	log := setLog.With("upstream", cfg.Host)
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.TagTTL, DefaultTagTTL)
	def(&cfg.DialTimeout, DefaultDialTimeout)
	def(&cfg.HeaderTimeout, DefaultHeaderTimeout)
	def(&cfg.RevalidateTimeout, DefaultRevalidateTimeout)

	driver := filesystem.New(filesystem.DriverParameters{RootDirectory: cfg.StorageDir, MaxThreads: 100})
	base, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c = &Cache{cancel: cancel, stats: &counters{}, storage: cfg.StorageDir}
	defer func() {
		if err != nil {
			c.Close()
			c = nil
		}
	}()
	local, err := newLocalView(base, driver)
	if err != nil {
		return c, fmt.Errorf("upstream %q: opening storage: %w", cfg.Host, err)
	}
	gw := &gateway{
		remote:            cfg.Remote,
		auth:              cfg.Auth,
		mode:              cfg.Mode,
		tagTTL:            cfg.TagTTL,
		revalidateTimeout: cfg.RevalidateTimeout,
		base:              newBaseTransport(cfg.DialTimeout, cfg.HeaderTimeout),
		local:             local,
		tags:              openTagBook(cfg.StorageDir),
		stats:             c.stats,
		log:               log,
		now:               time.Now,
		transports:        map[string]http.RoundTripper{},
	}
	c.gw = gw
	c.gwLn, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return c, fmt.Errorf("upstream %q: listening for the gateway on loopback: %w", cfg.Host, err)
	}
	c.gwSrv = &http.Server{Handler: gw, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	go c.gwSrv.Serve(c.gwLn)

	c.unhook = bridgeLogs(setLog)
	c.app, err = newApp(base, cfg.StorageDir, "http://"+c.gwLn.Addr().String())
	if err != nil {
		return c, fmt.Errorf("upstream %q: starting distribution: %w", cfg.Host, err)
	}
	c.front = &front{
		host:      cfg.Host,
		identity:  Identity(cfg.Remote.String(), cfg.Mode),
		app:       c.app,
		local:     local,
		stats:     c.stats,
		mode:      cfg.Mode,
		access:    cfg.Access,
		log:       log,
		files:     blobFiles{driver: driver},
		manifests: manifestFiles{local: local, tags: gw.tags, mode: cfg.Mode, tagTTL: cfg.TagTTL, now: gw.now},
		ctx:       base,
		flights:   map[string]*flight{},
	}
	return c, nil
}

// Identity names what a cache does: its remote (hashed, so no URL detail is
// exposed) and its mode. Two caches with the same identity are
// interchangeable.
func Identity(remote string, mode Mode) string {
	sum := sha256.Sum256([]byte(remote))
	return hex.EncodeToString(sum[:6]) + "/" + mode.String()
}

// newApp embeds distribution in proxy mode. NewApp panics on bad
// configuration; that becomes an error here.
func newApp(ctx context.Context, dir, remote string) (app *handlers.App, err error) {
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	noTTL := time.Duration(0)
	cfg := &configuration.Configuration{Version: "0.1"}
	cfg.Storage = configuration.Storage{
		"filesystem": configuration.Parameters{"rootdirectory": dir},
		// The purger is a goroutine that outlives Shutdown, and a proxy
		// takes no uploads to purge.
		"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
	}
	cfg.HTTP.Secret = hex.EncodeToString(secret)
	// TTL 0 keeps cached content for good: test images are pinned, and the
	// expiry scheduler would be one more goroutine and state file.
	cfg.Proxy = configuration.Proxy{RemoteURL: remote, TTL: &noTTL}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("distribution rejected its configuration: %v", p)
		}
	}()
	return handlers.NewApp(ctx, cfg), nil
}

func checkWritable(dir string) error {
	if dir == "" {
		return errors.New("no directory given")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".write-check-*")
	if err != nil {
		return err
	}
	name := f.Name()
	f.Close()
	return os.Remove(filepath.Clean(name))
}

// ServeHTTP answers registry API requests from clients.
func (c *Cache) ServeHTTP(w http.ResponseWriter, r *http.Request) { c.front.ServeHTTP(w, r) }

// Stats returns the counters since start.
func (c *Cache) Stats() Stats { return c.stats.snapshot() }

// StorageDir is where the cache keeps its content.
func (c *Cache) StorageDir() string { return c.storage }

// Close stops detached fetches and the gateway. The caller stops its own
// servers in front of the cache first.
func (c *Cache) Close() error {
	c.cancel()
	if c.front != nil {
		c.front.mu.Lock()
		c.front.closed = true
		c.front.mu.Unlock()
		c.front.wg.Wait()
	}
	if c.gw != nil {
		c.gw.base.CloseIdleConnections()
	}
	var errs []error
	if c.app != nil {
		errs = append(errs, c.app.Shutdown())
		closeEvents(c.app)
	}
	if c.gwSrv != nil {
		errs = append(errs, c.gwSrv.Close())
	} else if c.gwLn != nil {
		errs = append(errs, c.gwLn.Close())
	}
	if c.unhook != nil {
		c.unhook()
	}
	return errors.Join(errs...)
}
