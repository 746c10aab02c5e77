// Package cache is the engine behind cachetest: one pull-through cache for
// one upstream registry, built around an embedded distribution v3 registry.
//
// The request path is
//
//	client → front (access, counters, one fetch per blob, strict mode)
//	       → distribution's App in proxy mode (storage, manifests, tags)
//	       → gateway on loopback (timeouts, credentials, tag TTL, offline)
//	       → the real upstream
//
// Distribution's proxy is used as is. Its weak spots for booting clusters are
// handled on either side of it rather than in a fork: the front handler makes
// concurrent requests for one blob share a single upstream fetch (the proxy
// refetches without storing, distribution issue #3969), and the gateway, which
// is the proxy's "remote", answers the proxy's ping itself (so a cache starts
// while its upstream is unreachable), bounds every upstream wait, carries the
// credentials, and fails tag revalidations fast when a tag was checked within
// its TTL or the cache is offline, which makes the proxy serve its local copy.
package cache
