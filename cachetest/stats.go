package cachetest

import "fmt"

// Stats counts what one cache did since it started or since ResetStats.
type Stats struct {
	// Requests is the number of manifest and blob requests from clients.
	Requests int64 `json:"requests"`
	// Hits were answered from storage. A tag past its TTL is still checked
	// with upstream first; that request shows in UpstreamRequests.
	Hits int64 `json:"hits"`
	// Misses needed content from upstream, or waited for another request's
	// download of it.
	Misses int64 `json:"misses"`
	// Coalesced misses shared another request's upstream fetch of the same
	// blob or manifest instead of starting their own.
	Coalesced int64 `json:"coalesced"`
	// NotCached counts requests refused in strict mode because the content
	// was not in storage.
	NotCached int64 `json:"not_cached"`
	// UpstreamRequests is every request the cache sent upstream: tag
	// revalidations, token requests and redirect hops included.
	UpstreamRequests int64 `json:"upstream_requests"`
	// UpstreamBytes is the response body bytes received from upstream.
	UpstreamBytes int64 `json:"upstream_bytes"`
	// ServedBytes is the response body bytes sent to clients.
	ServedBytes int64 `json:"served_bytes"`
}

// Add returns s plus o, field by field.
func (s Stats) Add(o Stats) Stats {
	return Stats{s.Requests + o.Requests, s.Hits + o.Hits, s.Misses + o.Misses, s.Coalesced + o.Coalesced,
		s.NotCached + o.NotCached, s.UpstreamRequests + o.UpstreamRequests, s.UpstreamBytes + o.UpstreamBytes, s.ServedBytes + o.ServedBytes}
}

// Sub returns s minus base, field by field.
func (s Stats) Sub(base Stats) Stats {
	return Stats{s.Requests - base.Requests, s.Hits - base.Hits, s.Misses - base.Misses, s.Coalesced - base.Coalesced,
		s.NotCached - base.NotCached, s.UpstreamRequests - base.UpstreamRequests, s.UpstreamBytes - base.UpstreamBytes, s.ServedBytes - base.ServedBytes}
}

// String names every counter, so t.Log(set.Total()) reads on its own.
func (s Stats) String() string {
	return fmt.Sprintf("requests %d, hits %d, misses %d (%d coalesced), not cached %d, upstream %d requests %d bytes, served %d bytes",
		s.Requests, s.Hits, s.Misses, s.Coalesced, s.NotCached, s.UpstreamRequests, s.UpstreamBytes, s.ServedBytes)
}

// EndpointStats counts what one endpoint of a cache served: a fleet tier or
// the origin.
type EndpointStats struct {
	// Endpoint is the endpoint's scheme, host and repository prefix.
	Endpoint string `json:"endpoint"`
	// Requests is the requests this process sent it.
	Requests int64 `json:"requests"`
	// Bytes is the response body bytes it served.
	Bytes int64 `json:"bytes"`
}
