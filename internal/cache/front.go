package cache

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"

	"github.com/opencontainers/go-digest"
)

// HeaderUpstream is set on every response of a cache to the registry host it
// caches, and HeaderIdentity to its remote's identity and mode. cachetest
// uses them to recognise a cache of its own, doing the same job, on a fixed
// port.
const (
	HeaderUpstream = "Pullthrough-Upstream"
	HeaderIdentity = "Pullthrough-Identity"
)

// front is the handler clients talk to. It counts, enforces access and strict
// mode, and turns concurrent requests for one blob into one upstream fetch.
type front struct {
	host      string
	identity  string // Identity of the remote and mode
	app       http.Handler
	local     *localView
	stats     *counters
	mode      Mode
	access    *AccessPolicy
	log       *slog.Logger
	files     blobFiles
	manifests manifestFiles

	// ctx bounds detached fetches; it ends when the cache closes.
	ctx context.Context
	wg  sync.WaitGroup

	mu      sync.Mutex
	flights map[string]*flight
	closed  bool // no new fetches: Close is waiting for the others
}

// flight is one upstream fetch of a blob, shared by every request for it.
type flight struct {
	done   chan struct{}
	status int
	header http.Header
	body   []byte // error body only; a fetched blob is served from storage
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set(HeaderUpstream, f.host)
	w.Header().Set(HeaderIdentity, f.identity)
	if !f.access.Allowed(r.RemoteAddr) {
		f.log.Warn("refused client outside loopback and local bridge networks", "client", r.RemoteAddr)
		writeRegistryError(w, http.StatusForbidden, "DENIED",
			fmt.Sprintf("client %s is not on loopback or a local bridge network; open the cache to admit it", r.RemoteAddr))
		return
	}
	rt := parseRoute(r.URL.Path)
	if rt.kind == kindOther || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		f.app.ServeHTTP(w, r)
		return
	}
	f.stats.requests.Add(1)
	cw := &countingWriter{ResponseWriter: w, n: &f.stats.servedBytes}
	ctx := r.Context()
	if f.local.has(ctx, rt) {
		f.stats.hits.Add(1)
		if rt.kind == kindBlob && f.files.serveBlob(ctx, cw, r, digest.Digest(rt.ref)) {
			return
		}
		if rt.kind == kindManifest && f.manifests.serve(ctx, cw, r, rt) {
			return
		}
		f.app.ServeHTTP(cw, r)
		return
	}
	if f.mode == ModeStrict {
		f.stats.notCached.Add(1)
		code := "MANIFEST_UNKNOWN"
		if rt.kind == kindBlob {
			code = "BLOB_UNKNOWN"
		}
		f.log.Warn("not cached (strict mode)", "ref", f.host+"/"+rt.String())
		writeRegistryError(w, http.StatusNotFound, code,
			fmt.Sprintf("%s/%s is not cached and the cache is in strict mode", f.host, rt.String()))
		return
	}
	f.stats.misses.Add(1)
	if rt.kind != kindBlob || r.Method != http.MethodGet {
		f.app.ServeHTTP(cw, r)
		return
	}
	fl := f.join(rt)
	select {
	case <-fl.done:
	case <-ctx.Done():
		// The fetch goes on for the other requests and for the cache.
		return
	}
	if fl.status/100 != 2 {
		// Only the error's own headers: distribution may have set the blob's
		// Content-Length before the fetch failed.
		if ct := fl.header.Get("Content-Type"); ct != "" {
			w.Header().Set("Content-Type", ct)
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(fl.body)))
		w.WriteHeader(fl.status)
		_, _ = w.Write(fl.body)
		return
	}
	if f.files.serveBlob(ctx, cw, r, digest.Digest(rt.ref)) {
		return
	}
	f.app.ServeHTTP(cw, r)
}

// join returns the flight for a blob, starting it if none is under way. The
// fetch runs detached from the request that started it: a client that goes
// away does not abort it for the others.
func (f *front) join(rt route) *flight {
	key := rt.name + "@" + rt.ref
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		fl := &flight{done: make(chan struct{}), status: http.StatusServiceUnavailable, body: []byte("cache closing\n")}
		close(fl.done)
		return fl
	}
	if fl, ok := f.flights[key]; ok {
		f.stats.coalesced.Add(1)
		return fl
	}
	fl := &flight{done: make(chan struct{})}
	f.flights[key] = fl
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		f.fetch(rt, fl)
		f.mu.Lock()
		delete(f.flights, key)
		f.mu.Unlock()
		close(fl.done)
	}()
	return fl
}

func (f *front) fetch(rt route, fl *flight) {
	dgst := digest.Digest(rt.ref)
	unlock, err := lockDigest(f.ctx, dgst)
	if err != nil {
		fl.status, fl.body = http.StatusServiceUnavailable, []byte("cache closing\n")
		return
	}
	defer unlock()
	if f.local.hasBlob(f.ctx, rt.name, dgst) {
		fl.status = http.StatusOK
		return
	}
	req, err := http.NewRequestWithContext(f.ctx, http.MethodGet, "/v2/"+rt.name+"/blobs/"+rt.ref, nil)
	if err != nil {
		fl.status, fl.body = http.StatusBadRequest, []byte(err.Error())
		return
	}
	rec := &discardRecorder{header: http.Header{}}
	func() {
		defer func() {
			if p := recover(); p != nil {
				rec.status = http.StatusBadGateway
				rec.body = fmt.Appendf(nil, "fetching blob %s: %v\n", rt.String(), p)
			}
		}()
		f.app.ServeHTTP(rec, req)
	}()
	fl.status, fl.header, fl.body = rec.status, rec.header, rec.body
	if fl.status == 0 {
		fl.status = http.StatusOK
	}
	if fl.status/100 == 2 && !f.local.hasBlob(f.ctx, rt.name, dgst) {
		// The proxy streamed it but did not store it (a broken or cut body):
		// report a failure rather than a second upstream fetch per client.
		fl.header = http.Header{}
		fl.status = http.StatusBadGateway
		fl.body = fmt.Appendf(nil, `{"errors":[{"code":"UNAVAILABLE","message":"fetching %s/%s from upstream did not complete"}]}`+"\n", f.host, rt.String())
		fl.header.Set("Content-Type", "application/json")
	}
}

// discardRecorder is the response writer of a detached fetch: the proxy
// writes the blob into storage and here at once; only errors are kept.
type discardRecorder struct {
	header http.Header
	status int
	body   []byte
}

func (d *discardRecorder) Header() http.Header { return d.header }

func (d *discardRecorder) WriteHeader(status int) {
	if d.status == 0 {
		d.status = status
	}
}

func (d *discardRecorder) Write(p []byte) (int, error) {
	if d.status == 0 {
		d.status = http.StatusOK
	}
	if d.status/100 != 2 && len(d.body) < 64<<10 {
		d.body = append(d.body, p...)
	}
	return len(p), nil
}

// countingWriter counts response bytes before writing them, so that a
// client that has read its last byte sees it in the counters already.
type countingWriter struct {
	http.ResponseWriter
	n interface{ Add(int64) int64 }
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	n, err := c.ResponseWriter.Write(p)
	if n < len(p) {
		c.n.Add(int64(n - len(p)))
	}
	return n, err
}

// Unwrap lets http.ResponseController reach the real writer.
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// digestLocks serialises upstream fetches of one digest across every cache in
// the process: distribution's proxy keeps its in-flight set in a package-level
// map keyed by digest alone, so two caches fetching the same blob at once
// would make one of them skip storing it.
var digestLocks = struct {
	sync.Mutex
	m map[digest.Digest]*digestLock
}{m: map[digest.Digest]*digestLock{}}

type digestLock struct {
	ch   chan struct{}
	refs int
}

func lockDigest(ctx context.Context, d digest.Digest) (func(), error) {
	digestLocks.Lock()
	l, ok := digestLocks.m[d]
	if !ok {
		l = &digestLock{ch: make(chan struct{}, 1)}
		digestLocks.m[d] = l
	}
	l.refs++
	digestLocks.Unlock()
	release := func() {
		digestLocks.Lock()
		if l.refs--; l.refs == 0 {
			delete(digestLocks.m, d)
		}
		digestLocks.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}
