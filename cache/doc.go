// Package cache runs pull-through registry caches: one per upstream registry,
// started in parallel, each on its own port, and every port one endpoint for
// every registry of the set (containerd's ?ns=, a /v2/<registry>/… path
// prefix, Talos's "*" mirror).
//
// It is what Talos's guide does by hand with one `registry:2` container per
// upstream, as a library: Start returns a Set, whose Mirrors and MirrorFlags
// are the talosctl --registry-mirror values for the address nodes reach this
// host at, and whose Stats count exactly what was served and fetched.
// cachetest ties a Set to a test binary or a test; cmd/pullthrough and a
// fleet instance (WithFleet) build theirs the same way.
//
// The engine behind each cache (internal/engine) fetches each blob once
// across clients, repositories and processes sharing a storage directory,
// streams it to every waiting client while it arrives, never stores or
// completes a body whose digest is wrong, revalidates a tag with one HEAD
// once its TTL has passed, starts and serves while its upstream is down, and
// bounds every upstream wait.
//
// Defaults, each changed by an option: the upstreams of DefaultUpstreams;
// ports chosen by the OS (WithFixedPorts keeps the guide's 5000–5006);
// listening on loopback and docker0's address when docker0 exists; clients
// admitted from loopback and local bridge networks only; storage under
// DefaultStorageRoot; silent unless given a logger.
package cache
