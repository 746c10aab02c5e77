package engine

import (
	"context"
	"io"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// endpoint is one place a cache fetches from: a fleet tier (another cache,
// Harbor, registry:2, zot) or the origin registry. A path in its URL is a
// repository prefix, as Harbor projects and zot prefixes use
// (https://harbor.example/v2/dockerhub-proxy or https://harbor.example/dockerhub-proxy).
type endpoint struct {
	remote *url.URL // scheme and host only
	prefix string   // repository prefix, without slashes at either end
	label  string   // for messages and counters: scheme, host, prefix

	downUntil atomic.Int64 // unix nanos: skipped (if not the last) until then
	backoff   atomic.Int64
	requests  atomic.Int64
	bytes     atomic.Int64

	// challenge is the endpoint's bearer challenge, learnt from its /v2/
	// (or any 401): with it, a token for a new repository is fetched before
	// the first request, not after a 401 that registries count as a pull.
	mu        sync.Mutex
	pinged    bool
	challenge map[string]string // nil: no bearer auth here
}

func newEndpoint(u *url.URL) *endpoint {
	r := &url.URL{Scheme: u.Scheme, Host: u.Host}
	p := strings.Trim(u.Path, "/")
	p = strings.Trim(strings.TrimPrefix(p, "v2"), "/")
	label := r.String()
	if p != "" {
		label += "/" + p
	}
	return &endpoint{remote: r, prefix: p, label: label}
}

func (e *endpoint) isDown() bool { return time.Now().UnixNano() < e.downUntil.Load() }

func (e *endpoint) markDown() {
	b := time.Duration(e.backoff.Load())
	if b < minBackoff {
		b = minBackoff
	} else if b *= 2; b > maxBackoff {
		b = maxBackoff
	}
	e.backoff.Store(int64(b))
	e.downUntil.Store(time.Now().Add(b).UnixNano())
}

func (e *endpoint) markUp() {
	if e.backoff.Load() != 0 {
		e.backoff.Store(0)
		e.downUntil.Store(0)
	}
}

// endpointBody counts the bytes an endpoint served and ends the request's
// context when closed.
type endpointBody struct {
	io.ReadCloser
	ep     *endpoint
	cancel context.CancelFunc
}

func (b *endpointBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.ep.bytes.Add(int64(n))
	return n, err
}

func (b *endpointBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

func (u *upstream) origin() *endpoint { return u.endpoints[len(u.endpoints)-1] }

// isDown reports that every endpoint failed recently: tag revalidations then
// serve the cached copy at once.
func (u *upstream) isDown() bool {
	for _, ep := range u.endpoints {
		if !ep.isDown() {
			return false
		}
	}
	return true
}

// markDown marks the origin down (a failure seen after do returned).
func (u *upstream) markDown() { u.origin().markDown() }
