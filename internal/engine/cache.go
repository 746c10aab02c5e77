package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"
)

// Mode says when a cache asks its upstream.
type Mode int

const (
	// Online revalidates a tag with upstream once its TTL has passed, and
	// fetches whatever is missing.
	Online Mode = iota
	// Offline serves cached tags without asking upstream, and still
	// fetches what is missing.
	Offline
	// Strict never asks upstream: anything not cached is an error that
	// names it. It proves that a set of images is available locally.
	Strict
)

func (m Mode) String() string {
	switch m {
	case Online:
		return "online"
	case Offline:
		return "offline"
	case Strict:
		return "strict"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Config is one cache's settings. Zero durations take the defaults below.
type Config struct {
	Host   string   // registry host as images name it, e.g. docker.io
	Remote *url.URL // where it is fetched from, e.g. https://registry-1.docker.io
	// Tiers are tried in order before Remote: a fleet's shared cache
	// (another pullthrough, Harbor, registry:2, zot). A path in a tier's URL
	// is a repository prefix. Tiers get no credentials.
	Tiers      []*url.URL
	StorageDir string
	Mode       Mode
	// TagTTL is how long a tag confirmed by upstream is served without asking
	// again. Negative: always ask.
	TagTTL            time.Duration
	DialTimeout       time.Duration
	HeaderTimeout     time.Duration
	RevalidateTimeout time.Duration
	// StallTimeout abandons a blob download whose upstream sends nothing for
	// this long.
	StallTimeout time.Duration
	// TierTimeout bounds the wait for a tier's response headers; a tier that
	// misses it is skipped for a back-off period.
	TierTimeout time.Duration
	// Fleet, when set, shares blobs and manifests with other instances: a
	// blob missing here is read from the fleet's storage or from the
	// instance already downloading it, a manifest from what the instance
	// that fetched it left, and only one instance fetches from upstream.
	Fleet  Fleet
	Auth   authn.Authenticator // nil: anonymous
	Access *AccessPolicy       // nil: everyone
	Logger *slog.Logger        // nil: silent
	// OnDamage, when set, hears of every stored object found damaged (and
	// removed, to be fetched again), besides the log.
	OnDamage func(Damage)
}

// Defaults for Config's durations.
const (
	DefaultTagTTL            = time.Hour
	DefaultDialTimeout       = 5 * time.Second
	DefaultHeaderTimeout     = 30 * time.Second
	DefaultRevalidateTimeout = 750 * time.Millisecond
	DefaultStallTimeout      = 30 * time.Second
	DefaultTierTimeout       = 3 * time.Second
)

// HeaderUpstream is set on every response of a cache to the registry host it
// caches, HeaderIdentity to its remote's identity and mode, and
// HeaderStorage to its storage directory. cachetest uses them to recognise
// a cache of its own, doing the same job, on a fixed port.
const (
	HeaderUpstream = "Pullthrough-Upstream"
	HeaderIdentity = "Pullthrough-Identity"
	HeaderStorage  = "Pullthrough-Storage"
)

// StatsPath answers GET with a cache's Stats as JSON.
const StatsPath = "/_pullthrough/stats"

// ClientsPath answers GET with a cache's Clients as JSON: the counters of
// each client address, for `pullthrough status --clients`. Only admitted
// clients reach it, as every path.
const ClientsPath = "/_pullthrough/clients"

// Cache is one running pull-through cache, an http.Handler.
type Cache struct {
	cfg      Config
	identity string
	store    *store
	up       *upstream
	secrets  *secrets
	stats    *counters
	log      *slog.Logger
	flights  singleflight.Group // manifests, by repository and reference

	// ctx bounds downloads, which outlive the request that started them; it
	// ends when the cache closes.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	clients   clientBook     // counters per client address
	verified  verifiedFiles  // stored blobs hashed and found whole
	manifests manifestMemory // small manifests, by digest

	mu     sync.Mutex
	fills  map[digest.Digest]*fill
	closed bool
}

// New starts a cache. It does not contact the upstream.
func New(ctx context.Context, cfg Config) (*Cache, error) {
	if cfg.Remote == nil || (cfg.Remote.Scheme != "http" && cfg.Remote.Scheme != "https") || cfg.Remote.Host == "" {
		return nil, fmt.Errorf("upstream %q: remote URL must be http:// or https:// with a host", cfg.Host)
	}
	if cfg.Remote.User != nil {
		return nil, fmt.Errorf("upstream %q: remote URL %s carries credentials: pass them as Auth", cfg.Host, cfg.Remote.Redacted())
	}
	if err := checkWritable(cfg.StorageDir); err != nil {
		return nil, fmt.Errorf("upstream %q: storage directory %q is not writable: %w", cfg.Host, cfg.StorageDir, err)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.TagTTL, DefaultTagTTL)
	def(&cfg.DialTimeout, DefaultDialTimeout)
	def(&cfg.HeaderTimeout, DefaultHeaderTimeout)
	def(&cfg.RevalidateTimeout, DefaultRevalidateTimeout)
	def(&cfg.StallTimeout, DefaultStallTimeout)
	def(&cfg.TierTimeout, DefaultTierTimeout)
	for _, t := range cfg.Tiers {
		if t == nil || (t.Scheme != "http" && t.Scheme != "https") || t.Host == "" || t.User != nil {
			return nil, fmt.Errorf("upstream %q: fleet tier URL must be http:// or https:// with a host and no credentials", cfg.Host)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("upstream", cfg.Host)
	creds, err := credentialsFrom(cfg.Auth)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %w", cfg.Host, err)
	}
	st, err := openStore(cfg.StorageDir)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: opening storage %q: %w", cfg.Host, cfg.StorageDir, err)
	}
	sec := newSecrets(creds)
	stats := &counters{}
	base, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c := &Cache{
		cfg:      cfg,
		identity: Identity(cfg.Remote.String(), cfg.Mode),
		store:    st,
		up:       newUpstream(cfg.Host, append(append([]*url.URL(nil), cfg.Tiers...), cfg.Remote), creds, cfg.DialTimeout, cfg.HeaderTimeout, cfg.TierTimeout, stats, sec, log),
		secrets:  sec,
		stats:    stats,
		log:      log,
		ctx:      base,
		cancel:   cancel,
		fills:    map[digest.Digest]*fill{},
	}
	c.sweep()
	c.dropOldLayout()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-base.Done():
				return
			case <-t.C:
				c.sweep()
			}
		}
	}()
	return c, nil
}

func (c *Cache) sweep() {
	c.store.relock()
	if files, bytes := c.store.sweep(time.Now()); files > 0 {
		c.log.Info("removed leftovers of interrupted downloads", "files", files, "bytes", bytes)
	}
}

// Identity names what a cache does: its remote (hashed, so no URL detail is
// exposed) and its mode. Two caches with the same identity are
// interchangeable.
func Identity(remote string, mode Mode) string {
	sum := sha256.Sum256([]byte(remote))
	return hex.EncodeToString(sum[:6]) + "/" + mode.String()
}

// ServeHTTP answers the pull side of the registry API.
func (c *Cache) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Docker-Distribution-API-Version", "registry/2.0")
	if !c.cfg.Access.Allowed(r.RemoteAddr) {
		c.log.Warn("refused a client outside loopback and Docker's bridges", "client", r.RemoteAddr)
		h.Set("Connection", "close")
		writeRegistryError(w, http.StatusForbidden, "DENIED",
			fmt.Sprintf("client %s is not on loopback or a Docker or cluster bridge; open the cache to admit it", r.RemoteAddr))
		return
	}
	// Only to admitted clients: what the cache is and where it stores.
	h.Set(HeaderUpstream, c.cfg.Host)
	h.Set(HeaderIdentity, c.identity)
	h.Set(HeaderStorage, c.cfg.StorageDir)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		writeRegistryError(w, http.StatusMethodNotAllowed, "UNSUPPORTED",
			fmt.Sprintf("method %s: this is a pull-through cache of %s and serves pulls only (GET and HEAD)", r.Method, c.cfg.Host))
		return
	}
	if r.URL.Path == MetricsPath {
		c.writeMetrics(w)
		return
	}
	if strings.HasPrefix(r.URL.Path, FillPath) && c.cfg.Fleet != nil {
		c.servePeer(w, r)
		return
	}
	if r.URL.Path == StatsPath {
		h.Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(c.Stats())
		return
	}
	if r.URL.Path == ClientsPath {
		h.Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(c.Clients())
		return
	}
	rt := parseRoute(r.URL.Path)
	switch rt.kind {
	case kindBase:
		h.Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("{}\n"))
		return
	case kindOther:
		writeRegistryError(w, http.StatusNotFound, "UNSUPPORTED",
			fmt.Sprintf("path %q: this cache answers the pull API: /v2/, /v2/<name>/manifests/<reference>, /v2/<name>/blobs/<digest>, /v2/<name>/tags/list and /v2/<name>/referrers/<digest>", trunc(r.URL.Path)))
		return
	}
	if code, msg, ok := rt.check(); !ok {
		writeRegistryError(w, http.StatusBadRequest, code, msg)
		return
	}
	c.stats.requests.Add(1)
	client := c.clients.of(r.RemoteAddr)
	client.requests.Add(1)
	cw := &countingWriter{ResponseWriter: w, n: &c.stats.servedBytes, client: client}
	switch rt.kind {
	case kindBlob:
		c.serveBlob(cw, r, rt)
	case kindManifest:
		c.serveManifest(cw, r, rt)
	default:
		c.serveList(cw, r, rt)
	}
}

func (c *Cache) notCached(w http.ResponseWriter, rt route) {
	c.note(w, notCachedOf, 1)
	code := "MANIFEST_UNKNOWN"
	if rt.kind == kindBlob {
		code = "BLOB_UNKNOWN"
	}
	c.log.Warn("not cached (strict mode)", "ref", c.cfg.Host+"/"+rt.String())
	writeRegistryError(w, http.StatusNotFound, code,
		fmt.Sprintf("%s/%s is not cached and the cache is in strict mode", c.cfg.Host, rt.String()))
}

// Stats returns the counters since start.
func (c *Cache) Stats() Stats { return c.stats.snapshot() }

// EndpointStats counts, per endpoint (fleet tiers, then the origin), the
// requests sent and the body bytes it served.
type EndpointStats struct {
	Endpoint string `json:"endpoint"`
	Requests int64  `json:"requests"`
	Bytes    int64  `json:"bytes"`
}

// Endpoints returns the counters of each endpoint, in the order tried.
func (c *Cache) Endpoints() []EndpointStats {
	out := make([]EndpointStats, 0, len(c.up.endpoints))
	for _, ep := range c.up.endpoints {
		out = append(out, EndpointStats{Endpoint: ep.label, Requests: ep.requests.Load(), Bytes: ep.bytes.Load()})
	}
	return out
}

// StorageDir is where the cache keeps its content.
func (c *Cache) StorageDir() string { return c.cfg.StorageDir }

// Close stops downloads under way (their part files are removed) and waits
// for them. The caller stops its own servers in front of the cache first.
func (c *Cache) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	c.up.base.CloseIdleConnections()
	c.store.close()
	return nil
}
