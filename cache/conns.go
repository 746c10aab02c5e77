package cache

import (
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/pullthrough/pullthrough/internal/engine"
)

// Defaults for the listeners' bounds.
const (
	DefaultIdleTimeout = 60 * time.Second
	DefaultMaxConns    = 512
	// refusedConns is how many connections an address the access policy
	// refuses may hold: enough to read the 403 that says why.
	refusedConns = 4
)

// serveOn serves h on l with every connection bounded: admission checked at
// accept, a cap per client address, an idle timeout, and a deadline for a
// request's headers (slowloris).
func serveOn(l net.Listener, h http.Handler, access *engine.AccessPolicy, idle time.Duration, maxConns int, log *slog.Logger) *http.Server {
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	if maxConns <= 0 {
		maxConns = DefaultMaxConns
	}
	t := &connTracker{max: maxConns, access: access, by: map[string]map[net.Conn]*connInfo{}}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       idle,
		ConnState:         t.state,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go func() { _ = srv.Serve(&trackedListener{Listener: l, t: t}) }()
	return srv
}

type connInfo struct {
	idle      bool
	idleSince time.Time
}

// connTracker counts connections per client address and closes the
// longest-idle one of an address that reaches the cap.
type connTracker struct {
	max    int
	access *engine.AccessPolicy

	mu sync.Mutex
	by map[string]map[net.Conn]*connInfo
}

type trackedListener struct {
	net.Listener
	t *connTracker
}

func (l *trackedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.t.admit(c) {
			return c, nil
		}
		c.Close()
	}
}

func addrOf(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// admit registers a new connection, or reports false when its address may
// hold no more.
func (t *connTracker) admit(c net.Conn) bool {
	addr := addrOf(c)
	limit := t.max
	if !t.access.Allowed(c.RemoteAddr().String()) {
		limit = refusedConns
	}
	t.mu.Lock()
	conns := t.by[addr]
	if conns == nil {
		conns = map[net.Conn]*connInfo{}
		t.by[addr] = conns
	}
	var evict net.Conn
	if len(conns) >= limit {
		var oldest time.Time
		for oc, info := range conns {
			if info.idle && (evict == nil || info.idleSince.Before(oldest)) {
				evict, oldest = oc, info.idleSince
			}
		}
		if evict == nil {
			t.mu.Unlock()
			return false
		}
		delete(conns, evict)
	}
	conns[c] = &connInfo{}
	t.mu.Unlock()
	if evict != nil {
		evict.Close()
	}
	return true
}

func (t *connTracker) state(c net.Conn, s http.ConnState) {
	addr := addrOf(c)
	t.mu.Lock()
	defer t.mu.Unlock()
	conns := t.by[addr]
	switch s {
	case http.StateIdle:
		if info := conns[c]; info != nil {
			info.idle, info.idleSince = true, time.Now()
		}
	case http.StateActive:
		if info := conns[c]; info != nil {
			info.idle = false
		}
	case http.StateClosed, http.StateHijacked:
		delete(conns, c)
		if len(conns) == 0 {
			delete(t.by, addr)
		}
	}
}
