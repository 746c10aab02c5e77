// Package cachetest starts pull-through registry caches for tests that boot
// Talos clusters, one per upstream registry, in the test process.
//
// Talos's guide starts one `registry:2` container per upstream by hand and
// passes `--registry-mirror docker.io=http://172.17.0.1:5000 …` to talosctl.
// Here the same thing is one call from TestMain:
//
//	func TestMain(m *testing.M) { cachetest.Main(m) }
//
//	func TestBoot(t *testing.T) {
//		set := cachetest.Get(t)
//		bridge, _ := cachetest.DockerBridgeIP()
//		flags, _ := set.MirrorFlags(bridge) // docker.io=http://172.17.0.1:41233, …
//		…
//	}
//
// Each cache is distribution v3's pull-through cache (the registry inside
// `registry:2`) embedded in the process, with a handler on either side of it
// (package internal/cache): concurrent pulls of one blob share one upstream
// fetch, a tag confirmed within its TTL is served without asking upstream, a
// cache starts and serves while its upstream is unreachable, upstream waits
// are bounded, and a broken download is never stored.
//
// Defaults, each changed by an option: the upstreams of DefaultUpstreams; ports
// chosen by the OS (WithFixedPorts keeps the guide's 5000–5006); listening on
// loopback and docker0's address when docker0 exists; clients admitted from
// loopback and local bridge networks only; storage under the user's cache
// directory for Start and Main (the next run starts warm) and in a temporary
// directory for New; silent unless given a logger.
package cachetest
