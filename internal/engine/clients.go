package engine

import (
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// Per-client counters: what each client address asked for and was served,
// so that a cluster can say which node pulled what. Only in memory and in
// Clients(): /metrics keeps its labels bounded and never names a client.

// maxClients bounds the addresses counted one by one; the rest are counted
// together under OtherClients.
const maxClients = 1024

// OtherClients is the key of the clients past maxClients.
const OtherClients = "other"

type clientBook struct {
	mu sync.Mutex
	m  map[string]*counters
}

func (b *clientBook) of(remoteAddr string) *counters {
	ip, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		ip = remoteAddr
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[string]*counters{}
	}
	if c, ok := b.m[ip]; ok {
		return c
	}
	if len(b.m) >= maxClients {
		ip = OtherClients
		if c, ok := b.m[ip]; ok {
			return c
		}
	}
	c := &counters{}
	b.m[ip] = c
	return c
}

func (b *clientBook) snapshot() map[string]Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]Stats, len(b.m))
	for ip, c := range b.m {
		out[ip] = c.snapshot()
	}
	return out
}

// Clients returns the counters of each client address (IP) since start:
// requests, hits, misses, not cached and served bytes; the upstream
// counters are the cache's, not a client's.
func (c *Cache) Clients() map[string]Stats { return c.clients.snapshot() }

var (
	hitsOf      = func(c *counters) *atomic.Int64 { return &c.hits }
	missesOf    = func(c *counters) *atomic.Int64 { return &c.misses }
	notCachedOf = func(c *counters) *atomic.Int64 { return &c.notCached }
	coalescedOf = func(c *counters) *atomic.Int64 { return &c.coalesced }
)

// Unrouted counts a request the set's router refused before it reached any
// cache (a registry the set does not cache), for the cache and the client.
func (c *Cache) Unrouted(remoteAddr string) {
	c.stats.unrouted.Add(1)
	c.clients.of(remoteAddr).unrouted.Add(1)
}

// note adds n to a counter of the cache and of the client w answers.
func (c *Cache) note(w http.ResponseWriter, pick func(*counters) *atomic.Int64, n int64) {
	pick(c.stats).Add(n)
	if cw, ok := w.(*countingWriter); ok && cw.client != nil {
		pick(cw.client).Add(n)
	}
}
