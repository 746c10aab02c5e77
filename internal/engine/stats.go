package engine

import (
	"fmt"
	"sync/atomic"
)

// Stats counts what one cache did since it started (the public package's
// ResetStats keeps a baseline and subtracts it).
type Stats struct {
	// Requests is the number of manifest and blob requests from clients.
	Requests int64 `json:"requests"`
	// Hits were answered from storage. A tag past its TTL is still checked
	// with upstream first; that request shows in UpstreamRequests.
	Hits int64 `json:"hits"`
	// Misses needed content from upstream (or waited for another request's fetch).
	Misses int64 `json:"misses"`
	// Coalesced misses shared another request's upstream fetch of the same blob
	// instead of starting their own.
	Coalesced int64 `json:"coalesced"`
	// NotCached counts requests refused in strict mode because the content was
	// not in storage.
	NotCached int64 `json:"not_cached"`
	// Unrouted counts requests for a registry the set does not cache
	// (containerd's ?ns= naming another registry, through one endpoint),
	// refused with 404 without asking any upstream. Counted by the cache
	// whose port received them.
	Unrouted int64 `json:"unrouted"`
	// UpstreamRequests is every request the cache sent to its upstream,
	// including tag revalidations and authentication pings.
	UpstreamRequests int64 `json:"upstream_requests"`
	// UpstreamBytes is the response body bytes received from upstream.
	UpstreamBytes int64 `json:"upstream_bytes"`
	// ServedBytes is the response body bytes sent to clients.
	ServedBytes int64 `json:"served_bytes"`
	// Damaged counts stored blobs and manifests whose bytes did not match
	// their digest (rot on disk, a file changed by hand): each was removed
	// and fetched again.
	Damaged int64 `json:"damaged"`
}

type counters struct {
	requests, hits, misses, coalesced, notCached atomic.Int64
	unrouted                                     atomic.Int64
	upstreamRequests, upstreamBytes, servedBytes atomic.Int64
	rotten                                       atomic.Int64
}

func (c *counters) snapshot() Stats {
	return Stats{
		Requests:         c.requests.Load(),
		Hits:             c.hits.Load(),
		Misses:           c.misses.Load(),
		Coalesced:        c.coalesced.Load(),
		NotCached:        c.notCached.Load(),
		Unrouted:         c.unrouted.Load(),
		UpstreamRequests: c.upstreamRequests.Load(),
		UpstreamBytes:    c.upstreamBytes.Load(),
		ServedBytes:      c.servedBytes.Load(),
		Damaged:          c.rotten.Load(),
	}
}

// Add returns s plus o, field by field.
func (s Stats) Add(o Stats) Stats { return s.combine(o, 1) }

// Sub returns s minus base, field by field.
func (s Stats) Sub(base Stats) Stats { return s.combine(base, -1) }

func (s Stats) combine(o Stats, sign int64) Stats {
	return Stats{
		Requests:         s.Requests + sign*o.Requests,
		Hits:             s.Hits + sign*o.Hits,
		Misses:           s.Misses + sign*o.Misses,
		Coalesced:        s.Coalesced + sign*o.Coalesced,
		NotCached:        s.NotCached + sign*o.NotCached,
		Unrouted:         s.Unrouted + sign*o.Unrouted,
		UpstreamRequests: s.UpstreamRequests + sign*o.UpstreamRequests,
		UpstreamBytes:    s.UpstreamBytes + sign*o.UpstreamBytes,
		ServedBytes:      s.ServedBytes + sign*o.ServedBytes,
		Damaged:          s.Damaged + sign*o.Damaged,
	}
}

// String names every counter, so t.Log(set.Total()) reads on its own.
func (s Stats) String() string {
	out := fmt.Sprintf("requests %d, hits %d, misses %d (%d coalesced), not cached %d, upstream %d requests %d bytes, served %d bytes",
		s.Requests, s.Hits, s.Misses, s.Coalesced, s.NotCached, s.UpstreamRequests, s.UpstreamBytes, s.ServedBytes)
	if s.Unrouted > 0 {
		out += fmt.Sprintf(", %d for registries not cached here", s.Unrouted)
	}
	if s.Damaged > 0 {
		out += fmt.Sprintf(", %d damaged and fetched again", s.Damaged)
	}
	return out
}
