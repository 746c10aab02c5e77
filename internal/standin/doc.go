// Package standin is the engine of the stand-in Talos node: the part of a
// node's boot that matters to a registry cache, and nothing else.
//
// A real Talos node in Talos's docker provisioner reads its machine config
// from the USERDATA environment variable, and its containerd then pulls the
// images of pkg/images List(config) through the registry mirrors the config
// names. Load does the first half with Talos's own configloader and images
// packages; Run does the second the way containerd's resolver and fetcher do
// it through a mirror: HEAD of the manifest by tag with ?ns=<registry>, GET
// of the manifest by digest (and of the platform's manifest when the tag is
// an index), then GET of the config and every layer, each digest verified
// while the body streams by. Main wires both to a process: it is what the
// talos-standin binary runs.
//
// Where this departs from containerd, on purpose:
//   - Nothing is stored: bodies are hashed and discarded, so the node works
//     on a read-only root file system and a second boot pulls everything
//     again, as a node with an empty disk would.
//   - Hosts are tried as containerd tries them, step by step (resolve,
//     manifest, each blob): the mirror endpoints in order, then the registry
//     itself unless the mirror says skipFallback; any error moves on, 429 is
//     retried five times on a host, 500/503/504 once on the last host. Each
//     step the registry itself served is reported as a Fallback. "The
//     registry itself" is https://<registry> unless Options.Fallback (or
//     EnvFallback) maps it to a stand-in; a registry with no mirror at all
//     is bounded by DirectTimeout, since offline it can only fail.
//   - Layers of one image are fetched one after the other; a few images are
//     pulled at a time (Options.Parallel).
//
// The package prints nothing itself: progress goes to Options.Log, and the
// summary is written by WriteSummary to a writer the caller names.
package standin
