package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// gateway is the "remote" that distribution's proxy talks to, on loopback.
// It forwards to the real upstream with bounded waits and credentials, and
// answers with a fast 503 where the proxy should fall back to its storage.
type gateway struct {
	remote *url.URL
	auth   authn.Authenticator // nil: anonymous
	mode   Mode
	tagTTL time.Duration
	// revalidateTimeout bounds a tag check when a cached copy exists.
	revalidateTimeout time.Duration
	base              *http.Transport
	local             *localView
	tags              *tagBook
	stats             *counters
	log               *slog.Logger
	now               func() time.Time

	mu         sync.Mutex
	transports map[string]http.RoundTripper // by repository
	blobHeads  sync.Map                     // name@digest → http.Header

	// downUntil is a unix-nano deadline: while it is in the future, tag
	// revalidations skip upstream at once instead of each waiting for a timeout.
	downUntil atomic.Int64
	backoff   atomic.Int64
}

const (
	minBackoff = time.Second
	maxBackoff = 30 * time.Second
)

func newBaseTransport(dial, header time.Duration) *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: dial, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   dial,
		ResponseHeaderTimeout: header,
		ExpectContinueTimeout: time.Second,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
}

func (g *gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v2/" || r.URL.Path == "/v2" {
		// The proxy pings its remote at start and before most calls; answering
		// here is what lets a cache start while its upstream is unreachable.
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		w.WriteHeader(http.StatusOK)
		return
	}
	rt := parseRoute(r.URL.Path)
	ctx := r.Context()
	isTag := rt.kind == kindManifest && !rt.isDigest()
	revalidating := false
	// The proxy resolves a tag with a HEAD and falls back to its local tag when
	// that fails; a GET by tag that follows is the manifest content itself,
	// asked for only when it is not in storage, so it always goes upstream.
	if isTag && r.Method == http.MethodGet && g.isDown() && g.local.hasTag(ctx, rt.name, rt.ref) {
		// distribution's client follows a failed tag HEAD with a GET; with
		// upstream down, that GET must not wait for a timeout again.
		g.serveLocal("tag served from cache: upstream recently unreachable")
	}
	if isTag && r.Method == http.MethodHead && g.local.hasTag(ctx, rt.name, rt.ref) {
		switch {
		case g.mode != ModeOnline:
			g.serveLocal("tag served from cache: " + g.mode.String() + " mode")
		case g.tags.fresh(rt.String(), g.tagTTL, g.now()):
			g.serveLocal("tag served from cache: checked within its TTL")
		case g.isDown():
			g.serveLocal("tag served from cache: upstream recently unreachable")
		}
		revalidating = true
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, g.revalidateTimeout)
		defer cancel()
	}
	if rt.kind == kindBlob && r.Method == http.MethodHead {
		if h, ok := g.blobHeads.Load(rt.name + "@" + rt.ref); ok {
			// Blobs are addressed by content, so a HEAD answered once holds
			// for good. The proxy HEADs each blob twice before its GET; on a
			// 30 ms link that is worth saving.
			for k, v := range h.(http.Header) {
				w.Header()[k] = v
			}
			w.WriteHeader(http.StatusOK)
			return
		}
	}
	if g.mode == ModeStrict {
		g.fail(w, http.StatusServiceUnavailable, "strict mode: upstream is never asked")
		return
	}
	resp, err := g.forward(ctx, r, rt)
	if err != nil {
		if r.Context().Err() == nil {
			// Not the client going away: the upstream failed.
			g.markDown()
		}
		if revalidating {
			g.log.Warn("revalidating tag failed; serving the cached copy", "ref", rt.String(), "error", err)
			g.serveLocal("tag served from cache: revalidation failed")
		}
		g.log.Warn("fetching from upstream failed", "ref", rt.String(), "error", err)
		g.fail(w, http.StatusBadGateway, err.Error())
		return
	}
	defer resp.Body.Close()
	g.log.Debug("upstream answered", "method", r.Method, "ref", rt.String(), "status", resp.StatusCode)
	failing := resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests
	if failing {
		g.markDown()
	} else {
		g.markUp()
	}
	if revalidating && (resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") == "") {
		// Any other answer would make distribution retry with a GET by
		// tag, unbounded and counted against rate limits: keep the copy.
		g.log.Warn("revalidating tag: upstream answered without a digest; serving the cached copy", "ref", rt.String(), "status", resp.StatusCode)
		g.serveLocal("tag served from cache: revalidation answered " + resp.Status)
	}
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		g.log.Warn("upstream refused access; check this upstream's credentials", "ref", rt.String(), "status", resp.StatusCode)
	}
	if isTag && resp.StatusCode == http.StatusOK {
		if err := g.tags.mark(rt.String(), g.now()); err != nil {
			g.log.Warn("recording tag revalidation", "ref", rt.String(), "error", err)
		}
	}
	for _, h := range []string{"Content-Type", "Content-Length", "Docker-Content-Digest", "Etag", "Www-Authenticate"} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	if rt.kind == kindBlob && r.Method == http.MethodHead && resp.StatusCode == http.StatusOK {
		g.blobHeads.Store(rt.name+"@"+rt.ref, w.Header().Clone())
	}
	w.WriteHeader(resp.StatusCode)
	// Counted as read, before distribution gets the bytes.
	n, err := io.Copy(w, countingReader{resp.Body, &g.stats.upstreamBytes})
	if err != nil {
		// Abort the connection so the proxy sees a broken body, never a short
		// one that it might take for complete.
		g.log.Warn("upstream body broke off", "ref", rt.String(), "bytes", n, "error", err)
		panic(http.ErrAbortHandler)
	}
}

func (g *gateway) forward(ctx context.Context, in *http.Request, rt route) (*http.Response, error) {
	target := *g.remote
	target.Path = strings.TrimSuffix(g.remote.Path, "/") + in.URL.Path
	target.RawQuery = in.URL.RawQuery
	req, err := http.NewRequestWithContext(ctx, in.Method, target.String(), nil)
	if err != nil {
		return nil, err
	}
	for _, h := range []string{"Accept", "Range", "If-None-Match"} {
		for _, v := range in.Header.Values(h) {
			req.Header.Add(h, v)
		}
	}
	tr, err := g.transportFor(ctx, rt.name)
	if err != nil {
		return nil, err
	}
	// A client, not a bare RoundTripper, so that registry redirects to blob
	// storage are followed here and counted; ggcr's transport drops the
	// credentials when a redirect leaves the registry's host.
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("requesting %s %s from %s: %w", in.Method, rt.String(), g.remote.Host, err)
	}
	return resp, nil
}

// transportFor returns a transport authorised to pull from one repository.
// It is made on first use, not at start, so an unreachable upstream never
// stops a cache from starting.
func (g *gateway) transportFor(ctx context.Context, repo string) (http.RoundTripper, error) {
	if g.auth == nil && g.remote.Scheme == "http" {
		// A plain-HTTP upstream without credentials (a local registry or a
		// fixture) needs no token dance, and the ping would cost a request.
		return countingTransport{g.base, g.stats}, nil
	}
	g.mu.Lock()
	tr, ok := g.transports[repo]
	g.mu.Unlock()
	if ok {
		return tr, nil
	}
	opts := []name.Option{}
	if g.remote.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(g.remote.Host, opts...)
	if err != nil {
		return nil, fmt.Errorf("parsing upstream host %q: %w", g.remote.Host, err)
	}
	auth := g.auth
	if auth == nil {
		auth = authn.Anonymous
	}
	scope := reg.Repo(repo).Scope(transport.PullScope)
	tr, err = transport.NewWithContext(ctx, reg, auth, countingTransport{g.base, g.stats}, []string{scope})
	if err != nil {
		return nil, fmt.Errorf("authenticating to %s for %s: %w", g.remote.Host, repo, redact(err, g.auth))
	}
	g.mu.Lock()
	g.transports[repo] = tr
	g.mu.Unlock()
	return tr, nil
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// countingTransport sits under the auth transport, so pings, token requests
// and redirected blob downloads are counted too: "nothing went upstream" means
// nothing at all.
type countingTransport struct {
	next  http.RoundTripper
	stats *counters
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.stats.upstreamRequests.Add(1)
	return c.next.RoundTrip(r)
}

// serveLocal makes the proxy use its local tag. Any HTTP answer to its HEAD,
// even an error, makes distribution's client retry with a GET, which would
// reach upstream; a connection closed without an answer is an error it
// returns as is, and the proxy then falls back to storage.
func (g *gateway) serveLocal(why string) {
	g.log.Debug(why)
	panic(http.ErrAbortHandler)
}

func (g *gateway) fail(w http.ResponseWriter, status int, msg string) {
	g.log.Debug("gateway answered itself", "status", status, "message", msg)
	writeRegistryError(w, status, "UNAVAILABLE", msg)
}

func (g *gateway) isDown() bool {
	return g.now().UnixNano() < g.downUntil.Load()
}

func (g *gateway) markDown() {
	b := time.Duration(g.backoff.Load())
	if b < minBackoff {
		b = minBackoff
	} else if b *= 2; b > maxBackoff {
		b = maxBackoff
	}
	g.backoff.Store(int64(b))
	g.downUntil.Store(g.now().Add(b).UnixNano())
}

func (g *gateway) markUp() {
	g.backoff.Store(0)
	g.downUntil.Store(0)
}

// redact removes a password from an error's text, in case a library puts it
// there.
func redact(err error, auth authn.Authenticator) error {
	if err == nil || auth == nil {
		return err
	}
	cfg, aerr := auth.Authorization()
	if aerr != nil || cfg == nil {
		return err
	}
	msg := err.Error()
	for _, secret := range []string{cfg.Password, cfg.IdentityToken, cfg.RegistryToken, cfg.Auth} {
		if secret != "" {
			msg = strings.ReplaceAll(msg, secret, "REDACTED")
		}
	}
	if msg == err.Error() {
		return err
	}
	return errors.New(msg)
}
