package cache

import "sync/atomic"

// Stats counts what one cache did since it started (cachetest's ResetStats
// keeps a baseline and subtracts it).
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
	// UpstreamRequests is every request the cache sent to its upstream,
	// including tag revalidations and authentication pings.
	UpstreamRequests int64 `json:"upstream_requests"`
	// UpstreamBytes is the response body bytes received from upstream.
	UpstreamBytes int64 `json:"upstream_bytes"`
	// ServedBytes is the response body bytes sent to clients.
	ServedBytes int64 `json:"served_bytes"`
}

type counters struct {
	requests, hits, misses, coalesced, notCached atomic.Int64
	upstreamRequests, upstreamBytes, servedBytes atomic.Int64
}

func (c *counters) snapshot() Stats {
	return Stats{
		Requests:         c.requests.Load(),
		Hits:             c.hits.Load(),
		Misses:           c.misses.Load(),
		Coalesced:        c.coalesced.Load(),
		NotCached:        c.notCached.Load(),
		UpstreamRequests: c.upstreamRequests.Load(),
		UpstreamBytes:    c.upstreamBytes.Load(),
		ServedBytes:      c.servedBytes.Load(),
	}
}
