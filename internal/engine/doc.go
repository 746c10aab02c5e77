// Package cache is the engine behind cachetest and cmd/pullthrough: one
// pull-through cache for one upstream registry, owning its data path end to
// end.
//
// The request path is
//
//	client → admission, routing and validation (route.go, access.go)
//	       → manifests: coalesced per reference, tags revalidated within a TTL (manifests.go)
//	       → blobs: served from storage, or streamed from one fill (blobs.go, fill.go)
//	       → the upstream over HTTP, with credentials and the token dance (upstream.go)
//
// Storage is content-addressed (store.go): a blob or manifest is stored once
// per upstream, whatever the repository, and each repository holds links to
// the digests its manifests name. A blob reaches storage only through a fill:
// one upstream download, spooled into a part file while every waiting client
// reads it as it grows, verified against its digest, then renamed into place.
// Fills are coordinated across processes sharing the storage directory by a
// lock file per digest (flock): the process holding the lock downloads, the
// others follow its part file, and when a holder dies the lock is free and a
// follower takes the fill over, checking that what its clients were already
// sent matches the new download.
//
// What is checked when:
//   - every fill: the digest and the size upstream announced, before the
//     rename that makes the blob visible;
//   - every serve of a blob: its file size against the size the repository's
//     manifest gave (a file that does not match is removed and fetched
//     again);
//   - every stored manifest: its digest, as it is fetched;
//   - at start and every minute: part files whose lock nobody holds are
//     removed (a fill of another live process holds its lock and is left
//     alone).
//
// Earlier versions embedded distribution's proxy; it fetches a blob once per
// repository and per process, waits for whole blobs on some paths, and had
// to be reached by reflection to shut down. The engine here does what a
// pull needs and nothing else: it takes no pushes and forwards nothing but
// pulls upstream.
package engine
