package engine

import (
	"fmt"
	"io"
	"net/http"
	"strings"
)

// MetricsPath answers GET with a cache's counters in Prometheus's text
// format, the field's convention for a /metrics endpoint.
const MetricsPath = "/metrics"

var metricHelp = []struct {
	name, help string
	value      func(Stats) int64
}{
	{"pullthrough_requests_total", "Manifest and blob requests from clients.", func(s Stats) int64 { return s.Requests }},
	{"pullthrough_hits_total", "Requests answered from storage.", func(s Stats) int64 { return s.Hits }},
	{"pullthrough_misses_total", "Requests that needed content from upstream.", func(s Stats) int64 { return s.Misses }},
	{"pullthrough_coalesced_total", "Misses that shared another request's upstream fetch.", func(s Stats) int64 { return s.Coalesced }},
	{"pullthrough_not_cached_total", "Requests refused in strict mode.", func(s Stats) int64 { return s.NotCached }},
	{"pullthrough_unrouted_total", "Requests for a registry this set does not cache, refused.", func(s Stats) int64 { return s.Unrouted }},
	{"pullthrough_upstream_requests_total", "Requests sent upstream, token requests and redirects included.", func(s Stats) int64 { return s.UpstreamRequests }},
	{"pullthrough_upstream_bytes_total", "Response body bytes received from upstream.", func(s Stats) int64 { return s.UpstreamBytes }},
	{"pullthrough_served_bytes_total", "Response body bytes sent to clients.", func(s Stats) int64 { return s.ServedBytes }},
}

func (c *Cache) writeMetrics(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	s := c.Stats()
	label := fmt.Sprintf(`{upstream=%q,mode=%q}`, c.cfg.Host, c.cfg.Mode.String())
	var b strings.Builder
	for _, m := range metricHelp {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s counter\n%s%s %d\n", m.name, m.help, m.name, m.name, label, m.value(s))
	}
	_, _ = io.WriteString(w, b.String())
}
