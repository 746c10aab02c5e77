// Package cachetest runs the pull-through caches of package cache for tests
// that boot Talos clusters, in the test process.
//
// Talos's guide starts one `registry:2` container per upstream by hand and
// passes `--registry-mirror docker.io=http://172.17.0.1:5000 …` to talosctl.
// Here the same thing is one call from TestMain:
//
//	func TestMain(m *testing.M) { cachetest.Main(m) }
//
//	func TestBoot(t *testing.T) {
//		set := cachetest.Get(t)
//		bridge, _ := cache.DockerBridgeIP()
//		flags, _ := set.MirrorFlags(bridge) // docker.io=http://172.17.0.1:41233, …
//		…
//	}
//
// Main, Run and Get share one set across a test binary, with storage under
// the user's cache directory so that the next run starts warm; New starts a
// set for one test, in a temporary directory, and closes it when the test
// ends. Everything else (options, upstreams, counters, mirrors) is package
// cache's: this package only ties a set's lifetime to a test's.
package cachetest
