package cache

import "github.com/pullthrough/pullthrough/internal/engine"

// What every cache answers besides the registry API, and the headers it
// names itself with (to admitted clients only): HeaderUpstream is the
// registry host it caches, HeaderIdentity its remote's identity and mode
// (two caches with the same identity are interchangeable), HeaderStorage
// its storage directory.
const (
	StatsPath      = engine.StatsPath   // GET: Stats as JSON
	ClientsPath    = engine.ClientsPath // GET: Stats per client address as JSON
	MetricsPath    = engine.MetricsPath // GET: counters in Prometheus's text format
	HeaderUpstream = engine.HeaderUpstream
	HeaderIdentity = engine.HeaderIdentity
	HeaderStorage  = engine.HeaderStorage
)

// Identity names what a cache does: its remote (hashed) and its mode.
func Identity(remote string, mode Mode) string { return engine.Identity(remote, mode) }
